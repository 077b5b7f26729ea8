"""`imgvec dupes`: groups of byte-identical files, and of near-duplicate images by cosine similarity.

Byte-identical: the same sha256 and byte length, recorded by `embed`; found first. Near-duplicates:
features with cosine similarity >= threshold, joined transitively into candidates, among distinct
contents: one copy of each identical group stands for it (and is that group's kept file), so a file is
compared once, and its copies are listed in their identical group. Which files a group keeps and why
each other one may go: answers.groups.

Small outputs (up to EXACT_MAX vectors), or `exact`: every pair, in this process (kernels.similarity),
the groups labelled here. Beyond: every stage on Spark, stored by its tasks (answers.dedup_spark).

`against`: only groups holding an image of OUTPUT, compared with the images of other outputs (by
their index where they have one); their files are always kept. Small: in this process; large: the same
Spark stages over all the outputs.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgvec.answers.dedup_spark import check_writable, hashes_of, stored_duplicates
from imgvec.answers.groups import Duplicates, Group, evidence, group_order, label_identical, label_near
from imgvec.answers.pairs import AGAINST_K, SOURCE_SHIFT, as_nodes
from imgvec.base import defaults
from imgvec.base.paths import comparable
from imgvec.base.progress import Progress
from imgvec.base.settings import RunOptions
from imgvec.dataset.output import features_matrix
from imgvec.dataset.searchable import Searchable, check_comparable, open_searchable
from imgvec.kernels.similarity import groups, linked, normalise

__all__ = ["Duplicates", "Group", "evidence", "find_duplicates", "resolve_threshold"]


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
    if not exact and (clusters is not None or count > defaults.EXACT_MAX):  # every stage on Spark
        from imgvec.spark.session import session

        check_writable(features)
        progress = Progress(count, quiet=run.quiet, unit="vectors")
        try:
            with session(run) as spark:
                found = stored_duplicates(spark, features, threshold, clusters, keep, verify,
                                          lambda share: progress.update(share * count), olds)
        finally:
            progress.close()
        found.threshold_source, found.seconds = source, time.monotonic() - started
        return found
    identical, known = _identical_across(features, olds) if olds else (None, np.empty(0, np.int64))
    own, links, how = _in_process(features, threshold, known)
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
    identical = _identical(pa.concat_tables([hashes_of(features.dataset, name, number)
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


def _identical(hashes: pa.Table) -> list[list[int]]:
    """Ids of rows with the same sha256 and length, groups of two or more."""
    same = hashes.group_by(["sha256", "bytes"]).aggregate([("id", "list")])
    return [sorted(g) for g in same.column("id_list").to_pylist() if len(g) > 1]


# --- against other outputs ------------------------------------------------------------------


def _identical_across(new: Searchable, olds: list[Searchable]) -> tuple[list[list[int]], np.ndarray]:
    """Groups of identical files that hold a file of NEW, over NEW and the OLD outputs (nodes: as_nodes), and the rows
    of NEW identical to an OLD file: their content is searched as OLD's, so the near search leaves them out. OLD's
    hashes are read a part at a time and only those NEW has too are kept: memory follows NEW, whatever OLD holds."""
    tables = [_as_nodes(0, hashes_of(new.dataset, name, number)) for number, name in enumerate(new.parts)]
    mine = pa.concat_tables(tables).column("sha256").unique() if tables else pa.array([], pa.string())
    for source, old in enumerate(olds, 1):
        for number, name in enumerate(old.parts):
            hashes = hashes_of(old.dataset, name, number)
            tables.append(_as_nodes(source, hashes.filter(pc.is_in(hashes.column("sha256"), value_set=mine))))
    identical = [g for g in _identical(pa.concat_tables(tables)) if g[0] >> SOURCE_SHIFT == 0]  # sorted: NEW first
    known = [i for g in identical if g[-1] >> SOURCE_SHIFT for i in g if i >> SOURCE_SHIFT == 0]
    return identical, np.array(known, np.int64)


def _as_nodes(source: int, hashes: pa.Table) -> pa.Table:
    return hashes.set_column(0, "id", pa.array(as_nodes(source, hashes.column("id").to_numpy())))


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
    nodes (as_nodes). `check`: pairs of places -> {pair: verify.Verdict}, when a witness must be verified by its
    pixels."""
    nodes = sorted({i for g in identical for i in g} | {i for g in near for i, _ in g})
    about = _rows(sources, nodes)
    result, stands_for = [], {}
    for members in identical:
        group, kept = label_identical([about[i] for i in members], keep, check is not None)
        stands_for[members[0]] = members[kept]  # the copy the near search saw -> the one kept
        result.append(group)
    witnessing = set(stands_for.values())
    candidates = []
    for members in near:
        ids = [stands_for.get(i, i) for i, _ in members]
        # kept whatever they resemble: other outputs' files, and files whose identical copies they witness
        candidates.append([{**about[i], "forced": about[i]["source"] > 0 or i in witnessing} for i in ids])
    near_groups, unverified, unreadable = label_near(candidates, keep, threshold, check)
    return sorted([*result, *near_groups], key=group_order), sorted(unverified), sorted(unreadable)


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


