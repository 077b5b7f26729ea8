"""The near-duplicate search of `imgvec dupes` at scale (answers.dedup_spark): which pairs of vectors are compared,
and the links among those at the threshold, as Spark stages.

  centroids  k-means (FAISS) on a sample of at most TRAINING_BYTES, on the driver; where more clusters are wanted
             than that trains, two levels: each coarse cluster cut into finer ones by a task (SampleTask draws
             their rows, fine_task trains them); stored for the tasks with each cluster's expected blocks
  assign     AssignTask: each vector to its nearest cluster, and to the second too when that is almost as near (a
             pair across the border is still compared); a cluster larger than UNIT rows is cut into blocks by row
             id, each row going to every pair of blocks it belongs to
  compare    a shuffle by block pair; compare_task: every pair of a block pair, exactly -> links
  query      --against an output with an index: QueryTask searches it, memory-mapped, in the tasks

Rows of several outputs are nodes of one graph (as_nodes): OUTPUT's row ids, then each other output's above OTHER.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from imgvec.base import defaults
from imgvec.base.storage import Location, open_location, read_npz, write_npz
from imgvec.dataset.output import FeatureDataset
from imgvec.dataset.rows import part_vectors
from imgvec.dataset.searchable import Searchable
from imgvec.kernels.similarity import linked, normalise
from imgvec.spark.stored import read_file, read_stored, store
from imgvec.spark.tasks import RowTask, ddl, task_frame

AGAINST_K = 32  # neighbours OLD's index returns per new image, of which those at the threshold are links
SOURCE_SHIFT = 56  # node = (output number << 56) | row id: row ids use 32 bits of row and 24 of part number
OTHER = 1 << SOURCE_SHIFT  # the first node of another output: NEW's rows are the nodes below it
UNIT = 8_192  # rows of one block compared on Spark: 2 blocks of 2048-d floats = 128 MB
SAMPLE_PER_CLUSTER = 40  # k-means sample: FAISS asks for at least 39 points per centroid
ASSIGNED = pa.schema([("cluster", pa.int64()), ("low", pa.int64()), ("high", pa.int64()), ("block", pa.int64()),
                      ("id", pa.int64()), ("features", pa.binary())])
LINKS = pa.schema([("a", pa.int64()), ("b", pa.int64())])
DRAWN = pa.schema([("coarse", pa.int64()), ("weight", pa.float64()), ("features", pa.binary())])
FINE = pa.schema([("coarse", pa.int64()), ("sub", pa.int64()), ("centroid", pa.binary()), ("expected", pa.float64())])


def union(frames: list):
    """The DataFrames' rows, one after another (the same columns, by name)."""
    frame = frames[0]
    for other in frames[1:]:
        frame = frame.unionByName(other)
    return frame


def as_nodes(source: int, ids) -> np.ndarray:
    """Row ids of output number `source` (0: OUTPUT, then each --against) as nodes of one graph over them all."""
    return (np.int64(source) << SOURCE_SHIFT) | np.asarray(ids, np.int64)


def as_binary(matrix: np.ndarray, having: np.ndarray, count: int) -> pa.BinaryArray:
    """Rows of `matrix` as float32 bytes at positions `having` of `count` rows; null elsewhere."""
    width = matrix.shape[1] * 4 if matrix.ndim == 2 else 0
    present = np.zeros(count, bool)
    present[having] = True
    offsets = np.concatenate([[0], np.cumsum(present * width)]).astype(np.int32)
    validity = pa.array(present).buffers()[1]
    data = pa.py_buffer(np.ascontiguousarray(matrix, np.float32))
    return pa.Array.from_buffers(pa.binary(), count, [validity, pa.py_buffer(offsets), data])


def matrix_of(features: pa.BinaryArray) -> np.ndarray:
    """Rows of float32 bytes, all of one length and back to back -> [n, dim]."""
    offsets = np.frombuffer(features.buffers()[1], np.int32)[features.offset : features.offset + len(features) + 1]
    data = np.frombuffer(features.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    return data.view(np.float32).reshape(len(features), -1)


def centroids(spark, runs: list[pa.Table], sources: list[Searchable], clusters: int | None, threshold: float,
               work: Location) -> tuple[str, str]:
    """k-means centroids for the rows of `sources` (OUTPUT, then the other outputs searched by them), stored in
    `work` with each cluster's blocks; (where, how the search went). Clusters of about CLUSTER_SIZE rows of all the
    sources (an OLD of 10^7 against a NEW of 10^5 makes 5,000 clusters, not 50 cut into blocks that each of OLD's
    rows would go to). One level, trained here on a sample of every source as of its rows, bounded by
    TRAINING_BYTES; where more clusters are wanted than such a sample trains, two: each of those coarse clusters
    is cut into finer ones in a task of its own (_fine)."""
    import faiss

    margin, total = 1.0 - threshold, sum(source.count for source in sources)
    wanted = clusters or max(1, round(total / defaults.CLUSTER_SIZE))
    most = max(1, defaults.TRAINING_BYTES // (4 * sources[0].dim) // SAMPLE_PER_CLUSTER)  # what the sample trains
    coarse = min(wanted, most)
    sizes = [max(1, round(SAMPLE_PER_CLUSTER * coarse * source.count / total)) for source in sources]
    sample, spans = np.empty((sum(sizes), sources[0].dim), np.float32), []
    for source, size in zip(sources, sizes, strict=True):  # each source's sample read into one array
        start = spans[-1][1] if spans else 0
        spans.append((start, start + len(source.sample(size, into=sample[start:])[1])))
    sample = sample[: spans[-1][1]]
    coarse = min(coarse, len(sample))
    kmeans = faiss.Kmeans(sample.shape[1], coarse, niter=20, seed=0, spherical=True)
    kmeans.train(sample)
    centroids = kmeans.centroids.astype(np.float32)
    found = [_expected(sample[a:b], centroids, margin, source.count)
             for (a, b), source in zip(spans, sources, strict=True)]
    expected, second = sum(e for e, _ in found), found[0][1]
    where, finer, how = work.child("centroids.npz"), {}, f"{coarse} k-means clusters"
    if wanted > most:  # each coarse cluster cut into finer ones, about in proportion to its rows
        cuts = np.maximum(1, np.round(expected * wanted / max(expected.sum(), 1))).astype(np.int64)
        write_npz(where, centroids=centroids, cuts=cuts, expected=expected)
        offsets, expected, files = _fine(spark, runs, sources, where, margin, work.child("fine"))
        finer = {"offsets": offsets, "fine": np.array(files), "folder": work.child("fine").uri}
        how = f"{len(expected)} k-means clusters in two levels ({coarse}, each cut by a task)"
    blocks = _blocks(expected)
    write_npz(where, centroids=centroids, blocks=blocks, **finer)
    return where.uri, (f"clustered: {how}, {int(sum(blocks * (blocks + 1) // 2))} compared blocks, {second:.0%} of "
                       f"vectors also in a second cluster")


def _fine(spark, runs: list[pa.Table], sources: list[Searchable], coarse: Location, margin: float,
          folder: Location) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The second level: tasks draw about SAMPLE_PER_CLUSTER rows per finer cluster of each coarse cluster from
    every source (SampleTask), then a task per coarse cluster trains its finer ones (fine_task), stored in `folder`.
    Returns where each coarse cluster's finer ones start in one numbering (a coarse cluster that drew no row is one
    cluster, its centroid), the rows expected in each, and the stored files: sizes and names, never vectors."""
    from imgvec.spark import compat

    drawn = union([task_frame(spark, plan, SampleTask(source.location, coarse.uri))
                    for source, plan in zip(sources, runs, strict=True)])
    written = store(spark, compat.apply_in_arrow(drawn.groupBy("coarse"), fine_task(coarse.uri, margin), ddl(FINE)),
                    folder, FINE)
    found = list(read_stored(folder, written, FINE, ["coarse", "sub", "expected"]))
    found = pa.concat_tables(found) if found else FINE.empty_table().select(["coarse", "sub", "expected"])
    count = len(read_npz(coarse)["cuts"])
    subs = np.maximum(1, np.bincount(found.column("coarse").to_numpy(), minlength=count))
    offsets = np.concatenate([[0], np.cumsum(subs)]).astype(np.int64)
    expected = np.zeros(offsets[-1])
    expected[offsets[found.column("coarse").to_numpy()] + found.column("sub").to_numpy()] = found.column(
        "expected").to_numpy()
    return offsets, expected, written.column("file").to_pylist()


def _expected(sample: np.ndarray, centroids: np.ndarray, margin: float, count: int) -> tuple[np.ndarray, float]:
    """Per cluster, the rows of `count` expected in it (from the sample's assignment); and the share of vectors
    that also go to a second cluster."""
    rows, nearest = _pairs(*Clusters(centroids, None).quantizer.search(sample, min(2, len(centroids))), margin)
    expected = np.bincount(nearest, minlength=len(centroids)).astype(np.float64)
    return expected * (count / len(sample)), (len(rows) - len(sample)) / len(sample)



def _blocks(expected: np.ndarray) -> np.ndarray:
    """Per cluster, the blocks of at most about UNIT rows its expected rows are cut into."""
    return np.maximum(1, np.ceil(expected / UNIT)).astype(np.int64)


def links_frame(spark, runs: list[pa.Table], sources: list[Searchable], indexes: list, centroids: str,
                 threshold: float, copies, how: str):
    """(LINKS of the near pairs that hold a row of OUTPUT, how): among OUTPUT's vectors but `copies` (a DataFrame
    of ids) by their clusters; to each other output's by its index (`indexes`, None where it has none), else by the
    same clusters."""
    from imgvec.spark import compat

    margin = 1.0 - threshold  # a pair at the threshold may straddle two clusters whose centroids are this close
    assigned = task_frame(spark, runs[0], AssignTask(sources[0].location, centroids, margin)).join(copies, "id",
                                                                                                    "left_anti")
    pairs, indexed, searches = assigned.select("cluster", "low", "high").distinct(), [], []
    for number, (other, index) in enumerate(zip(sources[1:], indexes, strict=True), 1):
        if index is not None:
            task = QueryTask(sources[0].location, other.location, number, threshold)
            indexed.append(task_frame(spark, runs[0], task).join(copies.withColumnRenamed("id", "a"), "a",
                                                                  "left_anti"))
            searches.append(f"{other.location} by its {index.summary}")
            continue
        theirs = task_frame(spark, runs[number], AssignTask(other.location, centroids, margin, number))
        assigned = assigned.unionByName(theirs.join(pairs, ["cluster", "low", "high"], "left_semi"))
        searches.append(f"{other.location} by the same clusters")
    links = compat.apply_in_arrow(assigned.groupBy("cluster", "low", "high"), compare_task(threshold), ddl(LINKS))
    return union([links, *indexed]), how + "".join(f"; against {search}" for search in searches)


def _each_part(output: str, rows) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, normalised vectors) of each part a task's rows name (parts_plan), those without features left out."""
    dataset = FeatureDataset(output)
    for row in rows:
        for name, number in zip(row["parts"], row["numbers"], strict=True):
            ids, vectors = part_vectors(dataset.where.child(name), number)
            if len(ids):
                yield ids, normalise(vectors)


@dataclass(frozen=True)
class AssignTask(RowTask):
    """Each vector of a task's parts -> its cluster (and a second one near the border) -> its blocks."""

    RESULT: ClassVar[pa.Schema] = ASSIGNED
    output: str
    centroids: str  # where centroids() stored them, with each cluster's blocks
    margin: float
    source: int = 0  # its ids are nodes of this output (as_nodes)

    def run(self, rows):
        clusters = Clusters.load(self.centroids)
        for ids, vectors in _each_part(self.output, rows):
            yield _assign(as_nodes(self.source, ids), vectors, clusters, self.margin)


@dataclass
class Clusters:
    """What centroids() stored, as the tasks use it: the (coarse) centroids, and with two levels the finer centroids
    of each coarse cluster, numbered one after another (offsets)."""

    centroids: np.ndarray
    blocks: np.ndarray | None  # None in the first level's file, which SampleTask reads
    offsets: np.ndarray | None = None
    fine: np.ndarray | None = None
    _quantizer: object = None

    @property
    def quantizer(self):
        import faiss

        if self._quantizer is None:
            self._quantizer = faiss.IndexFlatIP(self.centroids.shape[1])
            self._quantizer.add(self.centroids)
        return self._quantizer

    @classmethod
    def load(cls, uri: str) -> Clusters:
        stored = read_npz(open_location(uri))
        clusters = cls(stored["centroids"], stored["blocks"].astype(np.int64) if "blocks" in stored else None)
        if "offsets" in stored:
            clusters.offsets = stored["offsets"]
            clusters.fine = np.repeat(clusters.centroids, np.diff(clusters.offsets), axis=0)  # one each: no draw
            folder = open_location(str(stored["folder"]))
            for name in stored["fine"]:
                table = read_file(folder, str(name), FINE)
                at = clusters.offsets[table.column("coarse").to_numpy()] + table.column("sub").to_numpy()
                clusters.fine[at] = matrix_of(table.column("centroid").combine_chunks())
        return clusters

    def of(self, vectors: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """(row, cluster) pairs: each row's nearest cluster, and its second where almost as near; with two
        levels, the same among the finer clusters of each coarse one a row is in."""
        rows, coarse = _pairs(*self.quantizer.search(vectors, min(2, len(self.centroids))), margin)
        if self.offsets is None:
            return rows, coarse
        order = np.argsort(coarse, kind="stable")
        rows, coarse = rows[order], coarse[order]
        found, clusters = [], []
        for start, end in _runs_of(coarse):
            first, last = self.offsets[coarse[start]], self.offsets[coarse[start] + 1]
            mine, fine = _pairs(*_best_two(vectors[rows[start:end]] @ self.fine[first:last].T), margin)
            found.append(rows[start:end][mine])
            clusters.append(first + fine)
        return np.concatenate(found), np.concatenate(clusters)


def _pairs(similarities: np.ndarray, nearest: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(row, cluster) pairs from each row's nearest clusters, best first: the nearest, and the second where it is
    within `margin` (a pair of rows at the threshold may straddle the border)."""
    rows = np.arange(len(nearest))
    if nearest.shape[1] == 1:
        return rows, nearest[:, 0].astype(np.int64)
    second = np.flatnonzero(similarities[:, 1] >= similarities[:, 0] - margin)
    return np.concatenate([rows, second]), np.concatenate([nearest[:, 0], nearest[second, 1]]).astype(np.int64)


def _best_two(similarities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's two largest similarities and their columns, best first (one where there is one column)."""
    if similarities.shape[1] == 1:
        return similarities, np.zeros(similarities.shape, np.int64)
    top = np.argpartition(-similarities, 1, axis=1)[:, :2]  # the first is the best: argpartition puts it before
    return np.take_along_axis(similarities, top, axis=1), top


def _runs_of(values: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of equal values in a sorted array."""
    edges = np.concatenate([[0], np.flatnonzero(np.diff(values)) + 1, [len(values)]])
    return zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)


def _assign(ids, vectors, clusters: Clusters, margin: float) -> pa.RecordBatch:
    rows, cluster = clusters.of(vectors, margin)
    count = clusters.blocks[cluster]
    block = ids[rows] % count  # row ids spread a big cluster evenly over its blocks
    # each row meets every block of its cluster once: one pair of blocks (low, high) per other block
    repeat = np.repeat(np.arange(len(rows)), count)
    other = np.concatenate([np.arange(c) for c in count]) if len(count) else np.empty(0, np.int64)
    mine = block[repeat]
    chosen = vectors[rows[repeat]]
    features = as_binary(chosen, np.arange(len(chosen)), len(chosen))
    return pa.RecordBatch.from_arrays([
        pa.array(cluster[repeat]), pa.array(np.minimum(mine, other)), pa.array(np.maximum(mine, other)),
        pa.array(mine), pa.array(ids[rows[repeat]]), features], schema=ASSIGNED)


@dataclass(frozen=True)
class SampleTask(RowTask):
    """A draw of each coarse cluster's rows for its finer clusters' training: about SAMPLE_PER_CLUSTER rows per
    finer cluster (centroids' cuts), chosen by a hash of the row id (the same draw every time), each weighed by the
    rows it stands for."""

    RESULT: ClassVar[pa.Schema] = DRAWN
    output: str
    coarse: str  # centroids' first level: centroids, cuts, expected

    def run(self, rows):
        stored = read_npz(open_location(self.coarse))
        quantizer = Clusters(stored["centroids"], None).quantizer
        rate = np.minimum(1.0, SAMPLE_PER_CLUSTER * stored["cuts"] / np.maximum(stored["expected"], 1.0))
        for ids, vectors in _each_part(self.output, rows):
            coarse = quantizer.search(vectors, 1)[1][:, 0]
            drawn = np.flatnonzero(_uniform(ids) < rate[coarse])
            yield pa.RecordBatch.from_arrays(
                [pa.array(coarse[drawn].astype(np.int64)), pa.array(1.0 / rate[coarse[drawn]]),
                 as_binary(vectors[drawn], np.arange(len(drawn)), len(drawn))], schema=DRAWN)


def _uniform(ids: np.ndarray) -> np.ndarray:
    """A number in [0, 1) for each id, evenly spread and the same every time (a multiplicative hash)."""
    mixed = np.asarray(ids, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return (mixed >> np.uint64(11)).astype(np.float64) / 2.0**53


def fine_task(coarse: str, margin: float):
    """A coarse cluster's drawn rows -> its finer centroids (k-means, as many as centroids' cuts say, fewer when
    fewer rows were drawn), with the rows expected in each. A plain function: see compare_task."""

    def train(table: pa.Table) -> pa.Table:
        import faiss

        cluster = table.column("coarse")[0].as_py()
        cuts = int(read_npz(open_location(coarse))["cuts"][cluster])
        vectors = matrix_of(table.column("features").combine_chunks())
        weights = table.column("weight").to_numpy()
        count = max(1, min(cuts, len(vectors)))
        if count == 1:
            centroids = normalise(vectors.mean(axis=0, keepdims=True))
        else:
            # a draw has about SAMPLE_PER_CLUSTER rows a centroid, sometimes fewer: not a warning on the user's screen
            kmeans = faiss.Kmeans(vectors.shape[1], count, niter=20, seed=0, spherical=True, min_points_per_centroid=1)
            kmeans.train(vectors)
            centroids = kmeans.centroids.astype(np.float32)
        rows, nearest = _pairs(*_best_two(vectors @ centroids.T), margin)
        expected = np.bincount(nearest, weights=weights[rows], minlength=count)
        return pa.table({"coarse": np.full(count, cluster, np.int64), "sub": np.arange(count, dtype=np.int64),
                         "centroid": as_binary(centroids, np.arange(count), count), "expected": expected},
                        schema=FINE)

    return train


def compare_task(threshold: float):
    """One block pair (cluster, block, block) -> every pair of rows compared exactly -> LINKS that tie each row to
    its group. Pairs of two other outputs' rows (--against) are not compared: only groups with a row of OUTPUT count.

    A plain function (not a callable object): PySpark tells grouped-map signatures apart by argument count.
    """

    def compare(table: pa.Table) -> pa.Table:
        low, high = table.column("low")[0].as_py(), table.column("high")[0].as_py()
        block = table.column("block").to_numpy()
        ids = table.column("id").to_numpy()
        vectors = matrix_of(table.column("features").combine_chunks())
        mine = ids < OTHER
        if low == high:
            a, b = mine, ~mine
            found = [linked(vectors[a], ids[a], vectors[a], ids[a], threshold, same=True)]
        else:
            a, b = block == low, block == high
            found = [linked(vectors[a & mine], ids[a & mine], vectors[b], ids[b], threshold, same=False)]
            a, b = a & ~mine, b & mine
        if a.any() and b.any():
            found.append(linked(vectors[a], ids[a], vectors[b], ids[b], threshold, same=False))
        return pa.table({"a": np.concatenate([f[0] for f in found]), "b": np.concatenate([f[1] for f in found])},
                        schema=LINKS)

    return compare


@dataclass(frozen=True)
class QueryTask(RowTask):
    """Each vector of a task's parts of OUTPUT -> the rows of another output (`source`) its index finds at the
    threshold: LINKS to that output's nodes. The index is opened segment by segment, memory-mapped, in the task."""

    RESULT: ClassVar[pa.Schema] = LINKS
    output: str
    other: str
    source: int
    threshold: float

    def run(self, rows):
        from imgvec.answers.index import NeighbourIndex

        # checked against the output's parts on the driver: here without listing them (2x10^5 names at 10^8)
        index = NeighbourIndex.open(FeatureDataset(self.other), stale_ok=True)
        k = min(AGAINST_K, index.description["count"])
        for ids, vectors in _each_part(self.output, rows):
            similarities, found = index.search(vectors, k)
            near, columns = np.nonzero((similarities >= self.threshold) & (found >= 0))
            yield pa.record_batch([pa.array(ids[near]), pa.array(as_nodes(self.source, found[near, columns]))],
                                  schema=LINKS)
