"""`imgvec dupes`: groups of byte-identical files, and of near-duplicate images by cosine similarity.

Byte-identical: the same sha256 and byte length, recorded by `embed`; found first. Near-duplicates:
features with cosine similarity >= threshold, joined transitively into groups, among distinct
contents: one copy of each identical group stands for it (and is shown as that group's
representative), so a file is compared once, and its copies are listed in their identical group.

Small outputs (up to EXACT_MAX vectors), or `exact`: every pair, in this process (search.py).
Beyond, SemDeDup-style on Spark, the driver only planning:
  driver   k-means centroids (FAISS) trained on a sample; each cluster's expected size from it
  tasks    read their parts; each vector goes to its nearest centroid, and to the second nearest
           too when that is almost as near (a pair across the border is still compared); a cluster
           larger than UNIT rows is cut into blocks by row id, and each row goes to every pair of
           blocks it belongs to
  shuffle  by (cluster, block, block); each group compares exactly (search.linked) and returns
           a link per row and each row's best pair: rows that have a near-duplicate only
  driver   joins the links into groups (vectorised union-find); memory grows with the number of
           duplicates, not of images
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from imgvec import defaults
from imgvec.output import FeatureDataset, open_output, part_ids, part_vectors, parts_plan, read_part
from imgvec.progress import Progress
from imgvec.search import groups, linked, normalise, sample_vectors

UNIT = 8_192  # rows of one block compared on Spark: 2 blocks of 2048-d floats = 128 MB
SAMPLE_PER_CLUSTER = 40  # k-means sample: FAISS asks for at least 39 points per centroid
HASHES = pa.schema([("id", pa.int64()), ("sha256", pa.string()), ("bytes", pa.int64())])
# features as raw float32 bytes: the JVM moves one value per row, not dim array elements (measured below)
ASSIGNED = pa.schema([("cluster", pa.int64()), ("low", pa.int64()), ("high", pa.int64()), ("block", pa.int64()),
                      ("id", pa.int64()), ("features", pa.binary())])
LINKS = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("similarity", pa.float32())])  # null: a link only


@dataclass
class Group:
    kind: str  # "identical" (same bytes) or "near" (cosine >= threshold)
    representative: str  # the file --keep keeps
    members: list[dict] = field(default_factory=list)  # {path, similarity, bytes}


@dataclass
class Duplicates:
    groups: list[Group]
    images: int  # images with features
    threshold: float
    how: str  # "exact" or "clustered (K clusters, ...)"
    seconds: float = 0.0

    def to_delete(self) -> list[str]:
        """Every file of every group but its representative: what --keep would have one delete."""
        return sorted({m["path"] for g in self.groups for m in g.members if m["path"] != g.representative})

    def table(self) -> pa.Table:
        rows = [{"path": m["path"], "group": n, "kind": g.kind, "representative": g.representative,
                 "similarity": m["similarity"]} for n, g in enumerate(self.groups) for m in g.members]
        return pa.Table.from_pylist(rows, schema=pa.schema([
            ("path", pa.string()), ("group", pa.int64()), ("kind", pa.string()), ("representative", pa.string()),
            ("similarity", pa.float32())]))


def find_duplicates(output: str, threshold: float = defaults.THRESHOLD, *, keep: str = defaults.KEEP,
                    exact: bool = False, clusters: int | None = None, master: str = "local[*]",
                    conf: dict | None = None, spark=None, quiet: bool = False) -> Duplicates:
    """Identical and near-duplicate groups of OUTPUT. ValueError (before any job) for bad arguments."""
    if not -1 <= threshold <= 1:
        raise ValueError("--threshold is a cosine similarity between -1 and 1, e.g. 0.9")
    if keep not in defaults.KEEPS:
        raise ValueError(f"--keep is one of {', '.join(defaults.KEEPS)}, not {keep!r}")
    if clusters is not None and (exact or clusters < 1):
        raise ValueError("--clusters is a number of k-means clusters (at least 1), and cannot go with --exact")
    started = time.monotonic()
    dataset, metadata = open_output(output)
    parts = dataset.part_names()
    if not parts:
        raise ValueError(f"{dataset.location} holds no features yet")
    count = dataset.size(metadata)
    if exact or (clusters is None and count <= defaults.EXACT_MAX):
        identical, near, images, how = _in_process(dataset, parts, threshold)
    else:
        from imgvec.jobs import session

        spark = spark or session(master, conf or {})
        progress = Progress(count, quiet=quiet, unit="vectors")
        try:
            identical, near, images, how = _on_spark(spark, dataset, parts, threshold, clusters, count,
                                                     lambda share: progress.update(share * count))
        finally:
            progress.close()
    result = Duplicates(_label(dataset, parts, identical, near, keep), images, threshold, how)
    result.seconds = time.monotonic() - started
    return result


def _in_process(dataset, parts, threshold):
    identical = _identical(pa.concat_tables([_hashes(dataset, name, number) for number, name in enumerate(parts)]))
    copies = _copies(identical)
    ids, vectors, images = [], [], 0
    for number, name in enumerate(parts):
        part_rows, part = part_vectors(dataset.where.child(name), number)
        keep = ~np.isin(part_rows, copies)
        images += len(part_rows)
        if keep.any():
            ids.append(part_rows[keep])
            vectors.append(normalise(part[keep]))
    if not ids:
        raise ValueError(f"{dataset.location} holds no features (every image failed)")
    ids, vectors = np.concatenate(ids), np.concatenate(vectors)
    return identical, groups(*linked(vectors, ids, vectors, ids, threshold, same=True)), images, "exact"


def _copies(identical: list[list[int]]) -> np.ndarray:
    """The rows the near-duplicate search leaves out: all but the first of each identical group."""
    return np.array(sorted(i for g in identical for i in g[1:]), np.int64)


def _hashes(dataset, name: str, number: int) -> pa.Table:
    table = read_part(dataset.where.child(name), ["sha256", "bytes"])
    table = table.append_column("id", pa.array(part_ids(number, np.arange(table.num_rows))))
    return table.filter(table.column("sha256").is_valid()).select(HASHES.names)


def _identical(hashes: pa.Table) -> list[list[int]]:
    """Ids of rows with the same sha256 and length, groups of two or more."""
    same = hashes.group_by(["sha256", "bytes"]).aggregate([("id", "list")])
    return [sorted(g) for g in same.column("id_list").to_pylist() if len(g) > 1]


def _label(dataset, parts, identical: list[list[int]], near, keep: str) -> list[Group]:
    """Groups with paths, sizes and a representative each, largest first."""
    ids = sorted({i for g in identical for i in g} | {i for g in near for i, _ in g})
    rows = dataset.rows_of(ids, parts, ["path", "bytes"]).to_pylist()
    about = dict(zip(ids, rows, strict=True))
    result, stands_for = [], {}
    for members in identical:
        group = _group("identical", [(i, 1.0) for i in members], about, keep)
        representative = next(i for i in members if about[i]["path"] == group.representative)
        stands_for[members[0]] = representative  # the copy the near search saw -> the one kept
        result.append(group)
    for members in near:
        result.append(_group("near", [(stands_for.get(i, i), s) for i, s in members], about, keep))
    return sorted(result, key=lambda g: (-len(g.members), g.kind, g.representative))


def _group(kind: str, members, about: dict, keep: str) -> Group:
    rows = sorted(({"path": about[i]["path"], "similarity": round(float(s), 6), "bytes": about[i]["bytes"]}
                   for i, s in members), key=lambda m: m["path"])
    kept = max(rows, key=lambda m: m["bytes"] or -1) if keep == "largest" else rows[0]  # ties: the first path
    return Group(kind, kept["path"], rows)


# --- at scale, on Spark ---------------------------------------------------------------------


@dataclass(frozen=True)
class HashTask:
    """Each row's sha256 and length, from the parts of one task."""

    output: str

    def __call__(self, batches):
        dataset = FeatureDataset(self.output)
        for batch in batches:
            for row in batch.to_pylist():
                for name, number in zip(row["parts"], row["numbers"], strict=True):
                    yield from _hashes(dataset, name, number).to_batches()


@dataclass(frozen=True)
class AssignTask:
    """Each vector of a task's parts -> its cluster (and a second one near the border) -> its blocks."""

    output: str
    centroids: bytes  # [clusters, dim] float32
    blocks: tuple[int, ...]  # per cluster: how many blocks of about UNIT rows it is cut into
    margin: float

    def __call__(self, batches):
        import faiss

        dataset = FeatureDataset(self.output)
        centroids = np.frombuffer(self.centroids, np.float32).reshape(len(self.blocks), -1)
        quantizer = faiss.IndexFlatIP(centroids.shape[1])
        quantizer.add(centroids)
        blocks = np.asarray(self.blocks, np.int64)
        for batch in batches:
            for row in batch.to_pylist():
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
    """One (cluster, block, block) group -> every pair compared exactly -> its links and best pairs.

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


def _on_spark(spark, dataset, parts, threshold, clusters, count, report):
    import faiss
    from pyspark.sql import functions as F

    from imgvec.jobs import collect, ddl, one_row_per_partition, task_slots

    runs = parts_plan(parts, 4 * (task_slots(spark) or 8))

    def plan(skip: np.ndarray):
        """The runs of parts, each with the rows in them that the near-duplicate search leaves out."""
        mine = [skip[np.isin(skip >> 32, numbers)].tolist() for numbers in runs.column("numbers").to_pylist()]
        return one_row_per_partition(spark, runs.append_column("skip", pa.array(mine, pa.list_(pa.int64()))))

    nothing = np.empty(0, np.int64)
    same = (plan(nothing).mapInArrow(HashTask(dataset.location), ddl(HASHES))
            .groupBy("sha256", "bytes").agg(F.collect_list("id").alias("ids")).filter(F.size("ids") > 1))
    identical = [sorted(g) for g in collect(spark, same.select("ids")).column("ids").to_pylist()]
    copies = _copies(identical)

    clusters = clusters or max(1, round(count / defaults.CLUSTER_SIZE))
    _, sample = sample_vectors(dataset, parts, SAMPLE_PER_CLUSTER * clusters)
    clusters = min(clusters, len(sample))
    kmeans = faiss.Kmeans(sample.shape[1], clusters, niter=20, seed=0, spherical=True)
    kmeans.train(sample)
    centroids = kmeans.centroids.astype(np.float32)
    margin = 1.0 - threshold  # a pair at the threshold may straddle two clusters whose centroids are this close
    blocks, second = _blocks(sample, centroids, margin, count)
    assigned = plan(copies).mapInArrow(AssignTask(dataset.location, centroids.tobytes(), tuple(blocks), margin),
                                       ddl(ASSIGNED))
    compared = assigned.groupBy("cluster", "low", "high").applyInArrow(compare_task(threshold), ddl(LINKS))
    links = collect(spark, compared, report)
    is_link = links.column("similarity").is_null().to_numpy(zero_copy_only=False)
    a, b = links.column("a").to_numpy(), links.column("b").to_numpy()
    similarity = links.column("similarity").to_numpy(zero_copy_only=False)
    near = groups(a[is_link], b[is_link], a[~is_link], b[~is_link], similarity[~is_link])
    how = (f"clustered: {clusters} k-means clusters, {int(sum(blocks * (blocks + 1) // 2))} compared blocks, "
           f"{second:.0%} of vectors also in a second cluster")
    return identical, near, count, how


def _blocks(sample: np.ndarray, centroids: np.ndarray, margin: float, count: int) -> tuple[np.ndarray, float]:
    """Per cluster, the blocks its expected rows (from the sample's assignment) are cut into; and the share of
    vectors that also go to a second cluster."""
    import faiss

    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(centroids)
    near = min(2, len(centroids))
    similarities, nearest = quantizer.search(sample, near)
    expected = np.bincount(nearest[:, 0], minlength=len(centroids)).astype(np.float64)
    second = similarities[:, 1] >= similarities[:, 0] - margin if near == 2 else np.zeros(len(sample), bool)
    expected += np.bincount(nearest[second, 1], minlength=len(centroids))
    expected *= count / len(sample)
    return np.maximum(1, np.ceil(expected / UNIT)).astype(np.int64), float(second.mean())
