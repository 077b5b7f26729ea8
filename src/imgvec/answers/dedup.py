"""`imgvec dupes`: groups of byte-identical files, and of near-duplicate images by cosine similarity.

Byte-identical: the same sha256 and byte length, recorded by `embed`; found first. Near-duplicates:
features with cosine similarity >= threshold, joined transitively into groups for browsing, among
distinct contents: one copy of each identical group stands for it (and is that group's kept file),
so a file is compared once, and its copies are listed in their identical group.

What may be deleted never rests on a chain: inside each group, members in keep order (the first
path, or the largest file) each join the most similar kept file at cosine >= threshold, or are kept
themselves (kernels.witness). So every file `--keep` lists has a kept file of its own group at or above
the threshold, and a group reports its weakest pair. A file kept for its identical copies is kept in
its near group too, so that no witness is itself deleted.

`against`: only groups holding an image of OUTPUT, compared with the images of other outputs (by
their index where they have one); their files are always kept.

Small outputs (up to EXACT_MAX vectors), or `exact`: every pair, in this process (kernels.similarity).
Beyond, SemDeDup-style on Spark, the driver only planning:
  driver   k-means centroids (FAISS) trained on a sample; each cluster's expected size from it
  tasks    read their parts; each vector goes to its nearest centroid, and to the second nearest
           too when that is almost as near (a pair across the border is still compared); a cluster
           larger than UNIT rows is cut into blocks by row id, and each row goes to every pair of
           blocks it belongs to
  shuffle  by block pair (cluster, block, block); each is compared exactly (kernels.similarity.linked)
           and returns a link per row and each row's best pair: rows that have a near-duplicate only
  driver   joins the links into groups (vectorised union-find); memory grows with the number of
           duplicates, not of images
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa

from imgvec.base import defaults
from imgvec.base.paths import comparable
from imgvec.base.progress import Progress
from imgvec.base.settings import RunOptions
from imgvec.dataset.output import FeatureDataset, features_matrix, read_part
from imgvec.dataset.rows import part_ids, part_vectors
from imgvec.dataset.searchable import Searchable, check_comparable, open_searchable, parts_plan
from imgvec.inputs.readback import where
from imgvec.kernels.similarity import groups, linked, normalise
from imgvec.kernels.witness import around_kept, best_partners, keep_order, weakest_pair, witnesses
from imgvec.spark.tasks import RowTask

UNIT = 8_192  # rows of one block compared on Spark: 2 blocks of 2048-d floats = 128 MB
SAMPLE_PER_CLUSTER = 40  # k-means sample: FAISS asks for at least 39 points per centroid
AGAINST_K = 32  # neighbours an index returns per new image, of which those at the threshold are pairs
SOURCE_SHIFT = 56  # node = (output number << 56) | row id: row ids use 32 bits of row and 24 of part number
HASHES = pa.schema([("id", pa.int64()), ("sha256", pa.string()), ("bytes", pa.int64())])
# features as raw float32 bytes: the JVM moves one value per row, not dim array elements (measured below)
ASSIGNED = pa.schema([("cluster", pa.int64()), ("low", pa.int64()), ("high", pa.int64()), ("block", pa.int64()),
                      ("id", pa.int64()), ("features", pa.binary())])
LINKS = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("similarity", pa.float32())])  # null: a link only
TABLE = pa.schema([("path", pa.string()), ("group", pa.int64()), ("kind", pa.string()),
                   ("representative", pa.string()), ("similarity", pa.float32()), ("kept_file", pa.string()),
                   ("kept_similarity", pa.float32())])
# with --verify: whether each file's witness pair verified by its pixels (null: not checked), its matching points, and
# why its pixels could not be compared (an image gone or unreadable; null when they were)
VERIFIED_TABLE = pa.schema([*TABLE, ("verified", pa.bool_()), ("matches", pa.int64()), ("verify_error", pa.string())])


@dataclass
class Group:
    kind: str  # "identical" (same bytes) or "near" (cosine >= threshold)
    representative: str  # the first file the group keeps (in keep order)
    # {path, similarity: best pair in the group, bytes, kept_file: the kept file it is a copy of (itself when
    #  kept), kept_similarity: cosine to that file, output: the output it is in}
    members: list[dict] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # every file the group keeps
    weakest: dict | None = None  # {a, b, similarity}: the least similar pair of members


@dataclass
class Duplicates:
    groups: list[Group]
    images: int  # images with features
    threshold: float
    how: str  # "exact" or "clustered (K clusters, ...)"
    threshold_source: str = ""  # where the threshold came from: the user, a calibration, the model's default
    seconds: float = 0.0
    verified: bool = False  # every witness pair was checked by its pixels (--verify)
    unverified: list[str] = field(default_factory=list)  # files kept because no kept file verified them
    unreadable: list[str] = field(default_factory=list)  # of those, the ones whose pair's image is gone or unreadable

    def to_delete(self) -> list[str]:
        """Every file that has a kept file of its group at cosine >= threshold: what --keep lists."""
        return sorted({m["path"] for g in self.groups for m in g.members if m["kept_file"] != m["path"]})

    def table(self) -> pa.Table:
        schema = VERIFIED_TABLE if self.verified else TABLE
        return pa.Table.from_pylist([{"group": n, "kind": g.kind, "representative": g.representative, **m}
                                     for n, g in enumerate(self.groups) for m in g.members], schema=schema)


def evidence(member: dict) -> str:
    """The pixel verifier's word on a file's witness pair (dupes --verify), as the listing and the page say it."""
    if member.get("verified") is None:
        return ""
    problem = member.get("verify_error")
    if problem:  # the pixels could not be compared at all: say why, not "0 matching points"
        return f"not verified: {problem}" + ("; restore it or embed again without it" if "missing:" in problem else "")
    return (f"verified: {member['matches']} matching points" if member["verified"]
            else f"not verified ({member['matches']} matching points)")


def resolve_threshold(features: Searchable, threshold: float | None) -> tuple[float, str]:
    """The threshold to use and where it comes from: given, calibrated on this output, or the model's default."""
    if threshold is not None:
        return threshold, "given"
    calibration = features.metadata.get("calibration") or {}
    if isinstance(calibration.get("threshold"), (int, float)):
        grown = calibration.get("images") and features.count > 2 * calibration["images"]
        return float(calibration["threshold"]), (
            f"calibrated on this output by imgvec calibrate (expected precision >= {calibration.get('precision')})"
            + (f"; at {calibration['images']} images, and it holds {features.count} now: false pairs grow with "
               "the square of the size, run imgvec calibrate again" if grown else ""))
    model = features.metadata.get("model")
    if model in defaults.THRESHOLDS:
        return defaults.THRESHOLDS[model], (f"the default for {model}; imgvec calibrate {features.location} "
                                            "would fit one to this collection")
    return defaults.THRESHOLD, (f"imgvec's default for a model it has not measured; imgvec calibrate "
                                f"{features.location} would fit one to this collection")


def find_duplicates(output: str, threshold: float | None = None, *, keep: str = defaults.KEEP,
                    exact: bool = False, clusters: int | None = None, against: list[str] = (),
                    verify: bool = False, run: RunOptions = RunOptions()) -> Duplicates:
    """Identical and near-duplicate groups of OUTPUT (those holding one of its images, `against` others).
    `verify`: a file is deletable only when its pixels verify it against its kept file (answers.verify), checked on
    Spark's workers when there are many pairs. ValueError (before any job) for bad arguments."""
    if threshold is not None and not -1 <= threshold <= 1:
        raise ValueError("--threshold is a cosine similarity between -1 and 1, e.g. 0.9")
    if keep not in defaults.KEEPS:
        raise ValueError(f"--keep is one of {', '.join(defaults.KEEPS)}, not {keep!r}")
    if clusters is not None and (exact or clusters < 1):
        raise ValueError("--clusters is a number of k-means clusters (at least 1), and cannot go with --exact")
    for location in against:
        if comparable(location) == comparable(output):
            raise ValueError(f"--against {location} is OUTPUT itself: every file would be its own copy; give "
                             "another output (new images --against old ones), or leave --against out")
    started = time.monotonic()
    features = open_searchable(output)
    olds = [open_searchable(location) for location in against]
    for old in olds:
        check_comparable(features, old)
    threshold, source = resolve_threshold(features, threshold)
    count = features.count
    identical, known = _identical_across(features, olds) if olds else (None, np.empty(0, np.int64))
    if exact or (clusters is None and count <= defaults.EXACT_MAX):
        own, links, how = _in_process(features, threshold, known)
    else:
        from imgvec.spark.session import session

        progress = Progress(count, quiet=run.quiet, unit="vectors")
        try:
            with session(run) as spark:
                own, links, how = _on_spark(spark, features, threshold, clusters, known,
                                            lambda share: progress.update(share * count))
        finally:
            progress.close()
    if olds:
        links, how = _against(features, olds, known, links, threshold, how)
    check = None
    if verify:
        from imgvec.answers.verify import verify_pairs

        def check(pairs):
            progress = Progress(len(pairs), quiet=run.quiet, unit="pairs verified")
            try:
                return verify_pairs(pairs, run, report=lambda share: progress.update(share * len(pairs)))
            finally:
                progress.close()

    listed, unverified, unreadable = _file_groups([features, *olds], own if identical is None else identical,
                                                  groups(*links), keep, threshold, check)
    found = Duplicates(listed, count, threshold, how, source, verified=verify, unverified=unverified,
                       unreadable=unreadable)
    found.seconds = time.monotonic() - started
    return found


def _in_process(features: Searchable, threshold: float, known: np.ndarray):
    """(identical groups, links and best pairs of the near-duplicates, how): every pair, in this process.
    `known`: rows left out of the near search (identical to another output's file)."""
    identical = _identical(pa.concat_tables([_hashes(features.dataset, name, number)
                                             for number, name in enumerate(features.parts)]))
    ids, vectors = _distinct_vectors(features, np.union1d(_copies(identical), known))
    return identical, linked(vectors, ids, vectors, ids, threshold, same=True), "exact"


def _distinct_vectors(features: Searchable, copies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids and normalised vectors of every row with features, but the copies of identical files."""
    ids, vectors = [np.empty(0, np.int64)], [np.empty((0, features.dim), np.float32)]
    for number in range(len(features.parts)):
        part_rows, part = features.vectors(number)
        mine = ~np.isin(part_rows, copies)
        if mine.any():
            ids.append(part_rows[mine])
            vectors.append(normalise(part[mine]))
    return np.concatenate(ids), np.concatenate(vectors)


def _copies(identical: list[list[int]]) -> np.ndarray:
    """The rows the near-duplicate search leaves out: all but the first of each identical group."""
    return np.array(sorted(i for g in identical for i in g[1:]), np.int64)


def _hashes(dataset: FeatureDataset, name: str, number: int) -> pa.Table:
    table = read_part(dataset.where.child(name), ["sha256", "bytes"])
    table = table.append_column("id", pa.array(part_ids(number, np.arange(table.num_rows))))
    return table.filter(table.column("sha256").is_valid()).select(HASHES.names)


def _identical(hashes: pa.Table) -> list[list[int]]:
    """Ids of rows with the same sha256 and length, groups of two or more."""
    same = hashes.group_by(["sha256", "bytes"]).aggregate([("id", "list")])
    return [sorted(g) for g in same.column("id_list").to_pylist() if len(g) > 1]


# --- against other outputs ------------------------------------------------------------------


def as_nodes(source: int, ids) -> np.ndarray:
    """Row ids of output number `source` as nodes of one graph over several outputs."""
    return (np.int64(source) << SOURCE_SHIFT) | np.asarray(ids, np.int64)


def _identical_across(new: Searchable, olds: list[Searchable]) -> tuple[list[list[int]], np.ndarray]:
    """Groups of identical files that hold a file of NEW, over NEW and the OLD outputs (nodes: as_nodes), and the rows
    of NEW identical to an OLD file: their content is searched as OLD's, so the near search leaves them out."""
    tables = []
    for source, features in enumerate([new, *olds]):
        for number, name in enumerate(features.parts):
            hashes = _hashes(features.dataset, name, number)
            tables.append(hashes.set_column(0, "id", pa.array(as_nodes(source, hashes.column("id").to_numpy()))))
    identical = [g for g in _identical(pa.concat_tables(tables)) if g[0] >> SOURCE_SHIFT == 0]  # sorted: NEW first
    known = [i for g in identical if g[-1] >> SOURCE_SHIFT for i in g if i >> SOURCE_SHIFT == 0]
    return identical, np.array(known, np.int64)


def _against(new: Searchable, olds: list[Searchable], known: np.ndarray, links, threshold: float, how: str):
    """NEW's links with those to the OLD outputs added: its images near an OLD image (by OLD's index, or every
    OLD vector). Only groups that hold an image of NEW come of it: every link added has one end in NEW."""
    from imgvec.answers.index import NeighbourIndex

    ids, vectors = _distinct_vectors(new, known)
    a, b, s, searches = [], [], [], []
    for source, old in enumerate(olds, 1):
        index = NeighbourIndex.open(old.dataset, metadata=old.metadata, parts=old.parts)
        if index is not None:
            similarities, found = index.search(vectors, min(AGAINST_K, old.count))
            rows, cols = np.nonzero((similarities >= threshold) & (found >= 0))
            a.append(ids[rows])
            b.append(as_nodes(source, found[rows, cols]))
            s.append(similarities[rows, cols])
            searches.append(f"{old.location} by its {index.summary}")
            continue
        for number in range(len(old.parts)):
            old_ids, old_vectors = old.vectors(number)
            similarities = vectors @ normalise(old_vectors).T if len(old_ids) else np.empty((len(ids), 0))
            rows, cols = np.nonzero(similarities >= threshold)
            a.append(ids[rows])
            b.append(as_nodes(source, old_ids[cols]))
            s.append(similarities[rows, cols])
        searches.append(f"{old.location} exactly")
    a, b = np.concatenate([np.empty(0, np.int64), *a]), np.concatenate([np.empty(0, np.int64), *b])
    s = np.concatenate([np.empty(0, np.float32), *s]).astype(np.float32)
    link_from, link_to, best_id, best_partner, best_similarity = links
    links = (link_from, link_to, np.concatenate([best_id, a, b]), np.concatenate([best_partner, b, a]),
             np.concatenate([best_similarity, s, s]))
    return links, f"{how}; against {'; '.join(searches)}"


# --- labelling: paths, kept files, witnesses ---------------------------------------------------


def _file_groups(sources: list[Searchable], identical: list[list[int]], near, keep: str, threshold: float,
                 check=None) -> tuple[list[Group], list[str], list[str]]:
    """Groups with paths, sizes, kept files and their witnesses, largest first, the files kept because no kept
    file verified them, and those of them whose pixels could not be compared (an image gone or unreadable). Ids are
    nodes (as_nodes). `check`: pairs of places (_place) -> {pair: verify.Verdict}, when a witness must be verified by
    its pixels."""
    nodes = sorted({i for g in identical for i in g} | {i for g in near for i, _ in g})
    about = _rows(sources, nodes)
    result, stands_for = [], {}
    for members in identical:
        order = keep_order([about[i] for i in members], keep)
        kept = members[order[0]]
        stands_for[members[0]] = kept  # the copy the near search saw -> the one kept
        # the same bytes: nothing to verify
        unchecked = {"verified": None, "matches": None, "verify_error": None} if check else {}
        rows = [{**_member_fields(about[i]), "similarity": 1.0, "kept_file": about[kept]["path"],
                 "kept_similarity": 1.0, **unchecked} for i in members]
        result.append(_group("identical", rows, [about[kept]["path"]],
                             {"a": about[members[0]]["path"], "b": about[members[1]]["path"], "similarity": 1.0}))
    witnessing = set(stands_for.values())
    candidates = []
    for members in near:
        ids = [stands_for.get(i, i) for i, _ in members]
        rows = [about[i] for i in ids]
        order = keep_order(rows, keep)
        vectors = normalise(np.stack([rows[k]["features"] for k in order]))
        # kept whatever they resemble: other outputs' files, and files whose identical copies they witness
        forced = np.array([rows[k]["source"] > 0 or ids[k] in witnessing for k in order])
        candidates.append(([rows[k] for k in order], vectors, forced))
    assigned, verdicts = _choose_witnesses(candidates, threshold, check)
    unverified, unreadable = [], []
    for (rows, vectors, _), (leader, similarity, refused) in zip(candidates, assigned, strict=True):
        for positions in around_kept(vectors, leader):
            members_rows = []
            for position, best in zip(positions, best_partners(vectors[positions]).tolist(), strict=True):
                kept = rows[leader[position]]
                row = {**_member_fields(rows[position]), "similarity": round(float(best), 6), "kept_file": kept["path"],
                       "kept_similarity": round(float(similarity[position]), 6)}
                if check:
                    tried = [verdicts[_place(rows[k]), _place(rows[position])] for k in refused.get(position, ())]
                    verdict = (verdicts[_place(kept), _place(rows[position])] if leader[position] != position
                               else max(tried, key=lambda v: (v.error is None, v.matches)) if tried else None)
                    row.update(verified=verdict and verdict.verified, matches=verdict and verdict.matches,
                               verify_error=verdict and verdict.error)
                    if tried and leader[position] == position:
                        unverified.append(rows[position]["path"])
                        if verdict.error:  # no kept file's pixels could be compared with it
                            unreadable.append(rows[position]["path"])
                members_rows.append(row)
            kept_paths = [rows[p]["path"] for p in positions if leader[p] == p]
            a, b, weakest = weakest_pair(vectors[positions])
            result.append(_group("near", members_rows, kept_paths, {"a": rows[positions[a]]["path"],
                                                                     "b": rows[positions[b]]["path"],
                                                                     "similarity": round(float(weakest), 6)}))
    return (sorted(result, key=lambda g: (-len(g.members), g.kind, g.representative)), sorted(unverified),
            sorted(unreadable))


def _choose_witnesses(candidates: list, threshold: float, check):
    """Per candidate group (rows, vectors and forced files in keep order): (leader, similarity, refused: {position:
    kept positions whose pixels did not verify it}), and the verdicts. With `check`, in rounds: every witness pair
    not yet verified is checked at once (one job), the refused ones are taken out, and the witnesses are chosen
    again, until every witness is verified; a file that no kept file verifies is kept."""
    refused = [set() for _ in candidates]
    verdicts = {}
    while True:
        assigned = [witnesses(vectors, threshold, forced, refused[g])
                    for g, (_, vectors, forced) in enumerate(candidates)]
        if check is None:
            return [(leader, similarity, {}) for leader, similarity in assigned], verdicts
        pairs = {(g, int(k), i) for g, (leader, _) in enumerate(assigned) for i, k in enumerate(leader) if k != i}
        paths = {(g, k, i): (_place(candidates[g][0][k]), _place(candidates[g][0][i])) for g, k, i in pairs}
        needed = sorted({pair for pair in paths.values() if pair not in verdicts})
        if not needed:
            break
        verdicts.update(check(needed))
        for (g, k, i), pair in paths.items():
            if not verdicts[pair].verified:
                refused[g].add((k, i))
    result = []
    for (leader, similarity), pairs in zip(assigned, refused, strict=True):
        tried = {}
        for k, i in pairs:
            tried.setdefault(i, []).append(k)
        result.append((leader, similarity, tried))
    return result, verdicts


def _group(kind: str, rows: list[dict], kept: list[str], weakest: dict) -> Group:
    return Group(kind, kept[0], sorted(rows, key=lambda m: m["path"]), kept, weakest)


def _member_fields(row: dict) -> dict:
    shown = {"path": row["path"], "bytes": row["bytes"], **({"input": row["input"]} if row.get("input") else {})}
    return {**shown, "output": row["output"]} if "output" in row else shown


def _place(row: dict) -> str:
    """Where a row's image is read again (its pixels verified, its thumbnail made)."""
    return where(row["path"], row.get("input"))


def _rows(sources: list[Searchable], nodes: list[int]) -> dict[int, dict]:
    """{node: {path, bytes, features, input, source[, output]}}, read from the parts that hold them. Features are
    rows of one float32 matrix per output (None where a row has none): 0.5 KB a 128-d vector, where a list of
    Python floats took 4 KB."""
    nodes = np.asarray(nodes, np.int64)
    about = {}
    for source, features in enumerate(sources):
        mine = nodes[(nodes >> SOURCE_SHIFT) == source]
        table = features.rows(mine & ((np.int64(1) << SOURCE_SHIFT) - 1), ["path", "bytes", "features", "input"])
        vectors = [None] * table.num_rows
        for row, vector in zip(*features_matrix(table.column("features")), strict=True):
            vectors[row] = vector
        for node, row, vector in zip(mine.tolist(), table.drop_columns(["features"]).to_pylist(), vectors,
                                     strict=True):
            about[node] = {**row, "features": vector, "source": source,
                           **({"output": features.location} if len(sources) > 1 else {})}
    return about


# --- at scale, on Spark ---------------------------------------------------------------------


@dataclass(frozen=True)
class HashTask(RowTask):
    """Each row's sha256 and length, from the parts of one task."""

    RESULT: ClassVar[pa.Schema] = HASHES
    output: str

    def run(self, rows):
        dataset = FeatureDataset(self.output)
        for row in rows:
            for name, number in zip(row["parts"], row["numbers"], strict=True):
                yield from _hashes(dataset, name, number).to_batches()


@dataclass(frozen=True)
class AssignTask(RowTask):
    """Each vector of a task's parts -> its cluster (and a second one near the border) -> its blocks."""

    RESULT: ClassVar[pa.Schema] = ASSIGNED
    output: str
    centroids: bytes  # [clusters, dim] float32
    blocks: tuple[int, ...]  # per cluster: how many blocks of about UNIT rows it is cut into
    margin: float

    def run(self, rows):
        import faiss

        dataset = FeatureDataset(self.output)
        centroids = np.frombuffer(self.centroids, np.float32).reshape(len(self.blocks), -1)
        quantizer = faiss.IndexFlatIP(centroids.shape[1])
        quantizer.add(centroids)
        blocks = np.asarray(self.blocks, np.int64)
        for row in rows:
            for name, number in zip(row["parts"], row["numbers"], strict=True):
                ids, vectors = part_vectors(dataset.where.child(name), number)
                keep = ~np.isin(ids, row["skip"])
                if keep.any():
                    yield _assign(ids[keep], normalise(vectors[keep]), quantizer, blocks, self.margin)


def _assign(ids, vectors, quantizer, blocks: np.ndarray, margin: float) -> pa.RecordBatch:
    near = min(2, quantizer.ntotal)
    similarities, clusters = quantizer.search(vectors, near)
    rows, cluster = [np.arange(len(ids))], [clusters[:, 0]]
    if near == 2:
        second = np.flatnonzero(similarities[:, 1] >= similarities[:, 0] - margin)
        rows.append(second)
        cluster.append(clusters[second, 1])
    rows, cluster = np.concatenate(rows), np.concatenate(cluster).astype(np.int64)
    count = blocks[cluster]
    block = ids[rows] % count  # row ids spread a big cluster evenly over its blocks
    # each row meets every block of its cluster once: one pair of blocks (low, high) per other block
    repeat = np.repeat(np.arange(len(rows)), count)
    other = np.concatenate([np.arange(c) for c in count]) if len(count) else np.empty(0, np.int64)
    mine = block[repeat]
    chosen = np.ascontiguousarray(vectors[rows[repeat]], np.float32)
    width = chosen.shape[1] * 4
    offsets = pa.py_buffer(np.arange(0, len(chosen) * width + 1, width, dtype=np.int32))
    features = pa.Array.from_buffers(pa.binary(), len(chosen), [None, offsets, pa.py_buffer(chosen)])
    return pa.RecordBatch.from_arrays([
        pa.array(cluster[repeat]), pa.array(np.minimum(mine, other)), pa.array(np.maximum(mine, other)),
        pa.array(mine), pa.array(ids[rows[repeat]]), features], schema=ASSIGNED)


def compare_task(threshold: float):
    """One block pair (cluster, block, block) -> every pair of rows compared exactly -> its links and best pairs.

    A plain function (not a callable object): PySpark tells grouped-map signatures apart by argument count.
    """

    def compare(table: pa.Table) -> pa.Table:
        low, high = table.column("low")[0].as_py(), table.column("high")[0].as_py()
        block = table.column("block").to_numpy()
        ids = table.column("id").to_numpy()
        vectors = _matrix(table.column("features").combine_chunks())
        if low == high:
            result = linked(vectors, ids, vectors, ids, threshold, same=True)
        else:
            a, b = block == low, block == high
            result = linked(vectors[a], ids[a], vectors[b], ids[b], threshold, same=False)
        link_from, link_to, best_id, best_partner, best_similarity = result
        similarity = np.concatenate([np.full(len(link_from), np.nan, np.float32), best_similarity])
        return pa.table({"a": np.concatenate([link_from, best_id]), "b": np.concatenate([link_to, best_partner]),
                         "similarity": pa.array(similarity, pa.float32(), from_pandas=True)}, schema=LINKS)

    return compare


def _matrix(features: pa.BinaryArray) -> np.ndarray:
    """Rows of float32 bytes, all of one length and back to back -> [n, dim]."""
    offsets = np.frombuffer(features.buffers()[1], np.int32)[features.offset : features.offset + len(features) + 1]
    data = np.frombuffer(features.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    return data.view(np.float32).reshape(len(features), -1)


def _on_spark(spark, features: Searchable, threshold, clusters, known: np.ndarray, report):
    """(identical groups, links and best pairs, how): k-means clusters on Spark, every pair inside each."""
    import faiss
    from pyspark.sql import functions as F

    from imgvec.spark import compat
    from imgvec.spark.session import task_slots
    from imgvec.spark.tasks import ddl, run_tasks

    runs = parts_plan(features.parts, 4 * (task_slots(spark) or 8))

    def plan(skip: np.ndarray) -> pa.Table:
        """The runs of parts, each with the rows in them that the near-duplicate search leaves out."""
        mine = [skip[np.isin(skip >> 32, numbers)].tolist() for numbers in runs.column("numbers").to_pylist()]
        return runs.append_column("skip", pa.array(mine, pa.list_(pa.int64())))

    def same_bytes(frame):
        return (frame.groupBy("sha256", "bytes").agg(F.collect_list("id").alias("ids")).filter(F.size("ids") > 1)
                .select("ids"))

    same = run_tasks(spark, plan(np.empty(0, np.int64)), HashTask(features.location), then=same_bytes)
    identical = [sorted(g) for g in same.column("ids").to_pylist()]
    copies = np.union1d(_copies(identical), known)

    count = features.count
    clusters = clusters or max(1, round(count / defaults.CLUSTER_SIZE))
    _, sample = features.sample(SAMPLE_PER_CLUSTER * clusters)
    clusters = min(clusters, len(sample))
    kmeans = faiss.Kmeans(sample.shape[1], clusters, niter=20, seed=0, spherical=True)
    kmeans.train(sample)
    centroids = kmeans.centroids.astype(np.float32)
    margin = 1.0 - threshold  # a pair at the threshold may straddle two clusters whose centroids are this close
    blocks, second = _blocks(sample, centroids, margin, count)
    task = AssignTask(features.location, centroids.tobytes(), tuple(blocks), margin)
    links = run_tasks(spark, plan(copies), task, report, then=lambda assigned: compat.apply_in_arrow(
        assigned.groupBy("cluster", "low", "high"), compare_task(threshold), ddl(LINKS)))
    is_link = links.column("similarity").is_null().to_numpy(zero_copy_only=False)
    a, b = links.column("a").to_numpy(), links.column("b").to_numpy()
    similarity = links.column("similarity").to_numpy(zero_copy_only=False).astype(np.float32)
    how = (f"clustered: {clusters} k-means clusters, {int(sum(blocks * (blocks + 1) // 2))} compared blocks, "
           f"{second:.0%} of vectors also in a second cluster")
    return identical, (a[is_link], b[is_link], a[~is_link], b[~is_link], similarity[~is_link]), how


def _blocks(sample: np.ndarray, centroids: np.ndarray, margin: float, count: int) -> tuple[np.ndarray, float]:
    """Per cluster, the blocks its expected rows (from the sample's assignment) are cut into; and the share of
    vectors that also go to a second cluster."""
    import faiss

    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(centroids)
    near = min(2, len(centroids))
    similarities, nearest = quantizer.search(sample, near)
    expected = np.bincount(nearest[:, 0], minlength=len(centroids)).astype(np.float64)
    second = np.zeros(len(sample), bool)
    if near == 2:  # one cluster (--clusters 1) has no second
        second = similarities[:, 1] >= similarities[:, 0] - margin
        expected += np.bincount(nearest[second, 1], minlength=len(centroids))
    expected *= count / len(sample)
    return np.maximum(1, np.ceil(expected / UNIT)).astype(np.int64), float(second.mean())
