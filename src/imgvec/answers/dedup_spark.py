"""`imgvec dupes` beyond EXACT_MAX vectors: Spark stages whose tasks store what they find. The driver plans, trains
k-means on a bounded sample, and reads back counts: nothing it holds grows with the images or the duplicates.

  identical   HashTask: each row's (sha256, bytes); a shuffle finds the rows of the same bytes
  centroids   k-means (FAISS) on a sample of at most TRAINING_BYTES, on the driver; stored for the tasks, with
              each cluster's expected size
  links       AssignTask: each vector (copies of identical files left out) goes to its nearest centroid, and to
              the second too when that is almost as near (a pair across the border is still compared); a
              cluster larger than UNIT rows is cut into blocks by row id, each row going to every pair of blocks
              it belongs to; a shuffle by block pair; compare_task: every pair of a block pair, exactly
  components  the links' connected components (answers.components)
  rows        RowsTask: path, bytes, input and features of the rows that are in a group
  label       a task per group of the same bytes (groups.label_identical: its kept file), then a task per
              component (groups.label_near, each identical group seen through its kept file): witnesses, and
              with --verify their pixels, checked in the task
  result      groups ranked largest first and numbered, members by (group, path), the files --keep lists by
              path: stored under OUTPUT/_imgvec_dupes/, which StoredDuplicates streams file by file

--against (other outputs, "OLD"): the same stages over every output, OLD's row ids made nodes above OTHER
(as_nodes). Only OLD's rows whose bytes OUTPUT has join the identical stage; OUTPUT's vectors are searched in
OLD's index by tasks (QueryTask), or OLD's vectors go to OUTPUT's clusters, where compare_task computes only the
pairs that hold a row of OUTPUT; OLD's files are always kept (groups.label_near's forced rows).

A component is one task's up to PIECE members; a larger one (millions of near-identical images) is labelled in
pieces (_pieces), so that no task holds more than about PIECE members' vectors.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgvec.answers.components import EDGES, components
from imgvec.answers.groups import Duplicates, Group, label_identical, label_near
from imgvec.base import defaults
from imgvec.base.storage import Location, open_location
from imgvec.dataset import names
from imgvec.dataset.output import FeatureDataset, features_matrix, read_part
from imgvec.dataset.rows import part_ids, part_vectors
from imgvec.dataset.searchable import Searchable, parts_plan
from imgvec.dataset.writing import remove_own
from imgvec.kernels.similarity import linked, normalise
from imgvec.spark.stored import read_file, read_stored, store, stored
from imgvec.spark.tasks import RowTask, ddl, each_group

AGAINST_K = 32  # neighbours OLD's index returns per new image, of which those at the threshold are links
SOURCE_SHIFT = 56  # node = (output number << 56) | row id: row ids use 32 bits of row and 24 of part number
OTHER = 1 << SOURCE_SHIFT  # the first node of another output: NEW's rows are the nodes below it
PIECE = 50_000  # members one task labels at most (~100 MB of 512-d vectors; label_near's pairs grow with its square)
UNIT = 8_192  # rows of one block compared on Spark: 2 blocks of 2048-d floats = 128 MB
SAMPLE_PER_CLUSTER = 40  # k-means sample: FAISS asks for at least 39 points per centroid
HASHES = pa.schema([("id", pa.int64()), ("sha256", pa.string()), ("bytes", pa.int64())])
# first: the group's smallest id (a NEW row's); outside: the group holds another output's file
IDENTICAL = pa.schema([("id", pa.int64()), ("first", pa.int64()), ("outside", pa.bool_())])
# features as raw float32 bytes: the JVM moves one value per row, not dim array elements (measured below)
ASSIGNED = pa.schema([("cluster", pa.int64()), ("low", pa.int64()), ("high", pa.int64()), ("block", pa.int64()),
                      ("id", pa.int64()), ("features", pa.binary())])
LINKS = pa.schema([("a", pa.int64()), ("b", pa.int64())])
DRAWN = pa.schema([("coarse", pa.int64()), ("weight", pa.float64()), ("features", pa.binary())])
FINE = pa.schema([("coarse", pa.int64()), ("sub", pa.int64()), ("centroid", pa.binary()), ("expected", pa.float64())])
ROWS = pa.schema([("id", pa.int64()), ("path", pa.string()), ("bytes", pa.int64()), ("input", pa.string()),
                  ("features", pa.binary())])
_GROUP = [("kind", pa.string()), ("key", pa.int64()), ("sub", pa.int64()), ("size", pa.int64()),
          ("representative", pa.string()), ("weakest_a", pa.string()), ("weakest_b", pa.string()),
          ("weakest_similarity", pa.float32())]
_MEMBER = [("path", pa.string()), ("bytes", pa.int64()), ("input", pa.string()), ("similarity", pa.float32()),
           ("kept_file", pa.string()), ("kept_similarity", pa.float32()), ("verified", pa.bool_()),
           ("matches", pa.int64()), ("verify_error", pa.string()), ("output", pa.string())]
# a member of a labelled group (key: the group of the same bytes' first id, or the component; sub: which of the
# groups formed around kept files in a component), with its group's facts
LABELLED = pa.schema([*_GROUP, ("node", pa.int64()), *_MEMBER, ("unverified", pa.bool_()),
                      ("unreadable", pa.bool_())])
GROUPS = pa.schema([*_GROUP, ("kept", pa.list_(pa.string()))])
NUMBERED = pa.schema([("kind", pa.string()), ("key", pa.int64()), ("sub", pa.int64()), ("group", pa.int64())])
MEMBERS = pa.schema([("group", pa.int64()), ("kind", pa.string()), ("representative", pa.string()), *_MEMBER])
PATHS = pa.schema([("path", pa.string())])
UNVERIFIED = pa.schema([("path", pa.string()), ("unreadable", pa.bool_())])
RANKED_PLAN = pa.schema([("id", pa.int64()), ("file", pa.string()), ("first", pa.int64())])


def hashes_of(dataset: FeatureDataset, name: str, number: int) -> pa.Table:
    """The ids, sha256 and byte lengths of one part's rows that have them."""
    table = read_part(dataset.where.child(name), ["sha256", "bytes"])
    table = table.append_column("id", pa.array(part_ids(number, np.arange(table.num_rows))))
    return table.filter(table.column("sha256").is_valid()).select(HASHES.names)


# --- the stages -----------------------------------------------------------------------------------


def stored_duplicates(spark, features: Searchable, threshold: float, clusters: int | None, keep: str,
                      verify: bool, report, olds: list[Searchable] = ()) -> StoredDuplicates:
    """Every stage on Spark; the result stored under the output by the tasks. `olds`: other outputs (--against),
    whose files are kept and whose groups without a file of OUTPUT are not looked for."""
    from pyspark.sql import functions as F

    from imgvec.answers.index import NeighbourIndex

    folder = features.dataset.where.child(names.DUPES)
    work = folder.child(f"work-{uuid.uuid4().hex[:8]}")
    sources = [features, *olds]
    indexes = [NeighbourIndex.open(old.dataset, metadata=old.metadata, parts=old.parts) for old in olds]
    runs = [_runs(spark, source) for source in sources]
    outputs = [source.location for source in sources] if olds else None
    try:
        identical, same_bytes = _kept(spark, _identical_frame(spark, runs, sources), work.child("identical"),
                                      IDENTICAL)
        # left out of the near search: copies, and OUTPUT's files identical to another output's (searched as it)
        copies = identical.filter((F.col("id") != F.col("first")) | F.col("outside")).select("id")
        clustered = [number for number, index in enumerate([None, *indexes]) if index is None]
        centroids, how = _centroids(spark, [runs[n] for n in clustered], [sources[n] for n in clustered], clusters,
                                    threshold, work)
        links, how = _links_frame(spark, runs, sources, indexes, centroids, threshold, copies, how)
        edges = store(spark, links.select(F.col("a").alias("u"), F.col("b").alias("v")), work.child("links"), EDGES,
                      report)
        near = components(spark, work.child("links"), edges, work)
        grouped = near.select("id").union(identical.select("id")).distinct()
        found = [_task_frame(spark, plan, RowsTask(source.location, number))
                 for number, (source, plan) in enumerate(zip(sources, runs, strict=True))]
        rows, _ = _kept(spark, _union(found).join(grouped, "id"), work.child("rows"), ROWS)
        members, same = near.select("component", "id", F.lit(False).alias("forced")), None
        if same_bytes:
            same, _ = _kept(spark, each_group(identical.join(rows.drop("features"), "id"), "first",
                                              identical_task(keep, verify, outputs), LABELLED),
                            work.child("same"), LABELLED)
            stands = same.filter(F.col("path") == F.col("kept_file")).select(F.col("key").alias("id"),
                                                                              F.col("node").alias("kept"))
            members = near.join(stands, "id", "left").select(
                "component", F.coalesce("kept", "id").alias("id"), F.col("kept").isNotNull().alias("forced"))
        alike, _ = _kept(spark, each_group(_pieces(members).join(rows, "id"), "component",
                                           near_task(keep, threshold, verify, outputs), LABELLED),
                         work.child("near"), LABELLED)
        labelled = alike if same is None else same.unionByName(alike)
        return _result(spark, labelled, folder, features.count, threshold, how, verify)
    finally:
        _remove(work)


def _pieces(members):
    """Components of at most PIECE members as they are; a larger one cut into pieces of about PIECE by a hash of the
    node, each labelled on its own (its component: the piece's smallest node): a file's witness is in its piece,
    and a giant component finishes, at the price of more files kept than one labelling would keep."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    size = F.count("*").over(Window.partitionBy("component"))
    piece = F.when(size > PIECE, F.pmod(F.xxhash64("id"), F.ceil(size / PIECE))).otherwise(F.lit(0))
    return (members.withColumn("piece", piece)
            .withColumn("component", F.min("id").over(Window.partitionBy("component", "piece"))).drop("piece"))


def as_nodes(source: int, ids) -> np.ndarray:
    """Row ids of output number `source` (0: OUTPUT, then each --against) as nodes of one graph over them all."""
    return (np.int64(source) << SOURCE_SHIFT) | np.asarray(ids, np.int64)


def check_writable(features: Searchable) -> None:
    """The stages store their work and result under OUTPUT/_imgvec_dupes/: a ValueError (one line, before any job)
    when OUTPUT cannot be written there."""
    folder = features.dataset.where.child(names.DUPES)
    probe = folder.child(f".tmp-{uuid.uuid4().hex[:8]}-part-000000.parquet")  # a name of imgvec's (names)
    try:
        folder.make_folder()
        probe.write_bytes(b"")
        probe.delete()
    except OSError as error:
        raise ValueError(f"dupes of {features.count} images stores its result in {folder.uri}, which cannot be "
                         f"written ({error.strerror or error}); give an output you can write to, or --exact "
                         "(every pair, in this process: slow at this size)") from None
    finally:
        with contextlib.suppress(OSError):
            if folder.is_folder() and not folder.entries():  # made for the probe: a stored result stays
                folder.delete_folder()


def _runs(spark, features: Searchable) -> pa.Table:
    from imgvec.spark.session import task_slots

    return parts_plan(features.parts, 4 * (task_slots(spark) or 8))


def _task_frame(spark, runs: pa.Table, task: RowTask):
    from imgvec.spark.tasks import task_frame

    return task_frame(spark, runs, task)


def _kept(spark, frame, folder: Location, schema: pa.Schema, report=None):
    """`frame` stored by its tasks and read again (its stages run once, whatever reads it after), and its rows."""
    written = store(spark, frame, folder, schema, report)
    return stored(spark, folder, written, schema), int(pc.sum(written.column("rows")).as_py() or 0)


def _union(frames: list):
    frame = frames[0]
    for other in frames[1:]:
        frame = frame.unionByName(other)
    return frame


def _identical_frame(spark, runs: list[pa.Table], sources: list[Searchable]):
    """IDENTICAL for every row whose bytes another row has too, in groups that hold a row of OUTPUT (sources[0]);
    another output's rows are read only where OUTPUT has their bytes."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    hashes = [_task_frame(spark, plan, HashTask(source.location, number))
              for number, (source, plan) in enumerate(zip(sources, runs, strict=True))]
    mine = hashes[0].select("sha256", "bytes")
    hashes = _union([hashes[0], *(theirs.join(mine, ["sha256", "bytes"], "left_semi") for theirs in hashes[1:])])
    same = Window.partitionBy("sha256", "bytes")
    return (hashes.withColumn("first", F.min("id").over(same)).withColumn("n", F.count("id").over(same))
            .withColumn("outside", F.max("id").over(same) >= OTHER)
            .filter((F.col("n") > 1) & (F.col("first") < OTHER)).select(*IDENTICAL.names))


def _centroids(spark, runs: list[pa.Table], sources: list[Searchable], clusters: int | None, threshold: float,
               work: Location) -> tuple[str, str]:
    """k-means centroids for the rows of `sources` (OUTPUT, then the other outputs searched by them), stored in
    `work` with each cluster's blocks; (where, how the search went). One level, trained here on a sample of OUTPUT
    bounded by TRAINING_BYTES; where CLUSTER_SIZE asks for more clusters than such a sample trains, two: each of
    those coarse clusters is cut into finer ones in a task of its own (_fine)."""
    import faiss

    features, margin = sources[0], 1.0 - threshold
    wanted = clusters or max(1, round(features.count / defaults.CLUSTER_SIZE))
    most = max(1, defaults.TRAINING_BYTES // (4 * features.dim) // SAMPLE_PER_CLUSTER)  # what the sample trains
    coarse = min(wanted, most)
    _, sample = features.sample(SAMPLE_PER_CLUSTER * coarse)
    coarse = min(coarse, len(sample))
    kmeans = faiss.Kmeans(sample.shape[1], coarse, niter=20, seed=0, spherical=True)
    kmeans.train(sample)
    centroids = kmeans.centroids.astype(np.float32)
    expected, second = _expected(sample, centroids, margin, features.count)
    for other in sources[1:]:  # a bounded sample of its own, for its share of each cluster
        expected += _expected(other.sample(len(sample))[1], centroids, margin, other.count)[0]
    where, finer, how = work.child("centroids.npz"), {}, f"{coarse} k-means clusters"
    if wanted > most:  # each coarse cluster cut into finer ones, about in proportion to its rows
        cuts = np.maximum(1, np.round(expected * wanted / max(expected.sum(), 1))).astype(np.int64)
        _save(where, centroids=centroids, cuts=cuts, expected=expected)
        offsets, expected, files = _fine(spark, runs, sources, where, margin, work.child("fine"))
        finer = {"offsets": offsets, "fine": np.array(files), "folder": work.child("fine").uri}
        how = f"{len(expected)} k-means clusters in two levels ({coarse}, each cut by a task)"
    blocks = _blocks(expected)
    _save(where, centroids=centroids, blocks=blocks, **finer)
    return where.uri, (f"clustered: {how}, {int(sum(blocks * (blocks + 1) // 2))} compared blocks, {second:.0%} of "
                       f"vectors also in a second cluster")


def _save(where: Location, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    where.write_bytes(buffer.getvalue())


def _fine(spark, runs: list[pa.Table], sources: list[Searchable], coarse: Location, margin: float,
          folder: Location) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The second level: tasks draw about SAMPLE_PER_CLUSTER rows per finer cluster of each coarse cluster from
    every source (SampleTask), then a task per coarse cluster trains its finer ones (fine_task), stored in `folder`.
    Returns where each coarse cluster's finer ones start in one numbering (a coarse cluster that drew no row is one
    cluster, its centroid), the rows expected in each, and the stored files: sizes and names, never vectors."""
    from imgvec.spark import compat

    drawn = _union([_task_frame(spark, plan, SampleTask(source.location, coarse.uri))
                    for source, plan in zip(sources, runs, strict=True)])
    written = store(spark, compat.apply_in_arrow(drawn.groupBy("coarse"), fine_task(coarse.uri, margin), ddl(FINE)),
                    folder, FINE)
    found = list(read_stored(folder, written, FINE, ["coarse", "sub", "expected"]))
    found = pa.concat_tables(found) if found else FINE.empty_table().select(["coarse", "sub", "expected"])
    count = len(np.load(io.BytesIO(coarse.read_bytes()))["cuts"])
    subs = np.maximum(1, np.bincount(found.column("coarse").to_numpy(), minlength=count))
    offsets = np.concatenate([[0], np.cumsum(subs)]).astype(np.int64)
    expected = np.zeros(offsets[-1])
    expected[offsets[found.column("coarse").to_numpy()] + found.column("sub").to_numpy()] = found.column(
        "expected").to_numpy()
    return offsets, expected, written.column("file").to_pylist()


def _links_frame(spark, runs: list[pa.Table], sources: list[Searchable], indexes: list, centroids: str,
                 threshold: float, copies, how: str):
    """(LINKS of the near pairs that hold a row of OUTPUT, how): among OUTPUT's vectors but `copies` (a DataFrame
    of ids) by their clusters; to each other output's by its index (`indexes`, None where it has none), else by the
    same clusters."""
    from imgvec.spark import compat

    margin = 1.0 - threshold  # a pair at the threshold may straddle two clusters whose centroids are this close
    assigned = _task_frame(spark, runs[0], AssignTask(sources[0].location, centroids, margin)).join(copies, "id",
                                                                                                    "left_anti")
    pairs, indexed, searches = assigned.select("cluster", "low", "high").distinct(), [], []
    for number, (other, index) in enumerate(zip(sources[1:], indexes, strict=True), 1):
        if index is not None:
            task = QueryTask(sources[0].location, other.location, number, threshold)
            indexed.append(_task_frame(spark, runs[0], task).join(copies.withColumnRenamed("id", "a"), "a",
                                                                  "left_anti"))
            searches.append(f"{other.location} by its {index.summary}")
            continue
        theirs = _task_frame(spark, runs[number], AssignTask(other.location, centroids, margin, number))
        assigned = assigned.unionByName(theirs.join(pairs, ["cluster", "low", "high"], "left_semi"))
        searches.append(f"{other.location} by the same clusters")
    links = compat.apply_in_arrow(assigned.groupBy("cluster", "low", "high"), compare_task(threshold), ddl(LINKS))
    return _union([links, *indexed]), how + "".join(f"; against {search}" for search in searches)


def _result(spark, labelled, folder: Location, images: int, threshold: float, how: str, verify: bool):
    """Groups ranked (largest first, then identical before near, then by the first kept file) and numbered; their
    members by (group, path); the files to delete and those kept unverified, by path: all stored in `folder`."""
    from pyspark.sql import functions as F

    from imgvec.spark.tasks import collect

    kept = F.when(F.col("path") == F.col("kept_file"), F.col("path"))
    facts = [F.first(name).alias(name) for name in ("size", "representative", "weakest_a", "weakest_b",
                                                     "weakest_similarity")]
    groups = (labelled.groupBy("kind", "key", "sub").agg(*facts, F.array_sort(F.collect_list(kept)).alias("kept"))
              .orderBy(F.desc("size"), "kind", "representative", "key", "sub"))
    written = {}
    for name in ("groups", "members", "delete", "unverified"):
        _remove(folder.child(name))
    written["groups"] = store(spark, groups, folder.child("groups"), GROUPS)
    ranks = written["groups"].column("rows").to_numpy()
    plan = pa.table({"id": np.arange(len(ranks)), "file": written["groups"].column("file"),
                     "first": np.concatenate([[0], np.cumsum(ranks)[:-1]]).astype(np.int64)}, schema=RANKED_PLAN)
    numbered = _task_frame(spark, plan, NumberTask(folder.child("groups").uri))
    members = (labelled.join(numbered, ["kind", "key", "sub"]).select(*MEMBERS.names).orderBy("group", "path"))
    written["members"] = store(spark, members, folder.child("members"), MEMBERS)
    listed = stored(spark, folder.child("members"), written["members"], MEMBERS)
    written["delete"] = store(spark, listed.filter(F.col("path") != F.col("kept_file")).select("path").distinct()
                              .orderBy("path"), folder.child("delete"), PATHS)
    unreadable = 0
    if verify:
        written["unverified"] = store(spark, labelled.filter("unverified").select("path", "unreadable")
                                      .orderBy("path"), folder.child("unverified"), UNVERIFIED)
        unreadable = collect(spark, stored(spark, folder.child("unverified"), written["unverified"], UNVERIFIED)
                             .filter("unreadable").agg(F.count("*").alias("n"))).column("n")[0].as_py()
    identical = collect(spark, stored(spark, folder.child("groups"), written["groups"], GROUPS)
                        .filter(F.col("kind") == "identical").agg(F.count("*").alias("n")))
    total = {name: int(pc.sum(table.column("rows")).as_py() or 0) for name, table in written.items()}
    counts = {"groups": total["groups"], "identical": identical.column("n")[0].as_py(), "delete": total["delete"],
              "unverified": total.get("unverified", 0), "unreadable": unreadable}
    return StoredDuplicates([], images, threshold, how, verified=verify, folder=folder, written=written,
                            stored_counts=counts)


def _remove(folder: Location) -> None:
    remove_own(folder, names.is_dupes_file)


# --- the tasks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HashTask(RowTask):
    """Each row's sha256 and length, from the parts of one task."""

    RESULT: ClassVar[pa.Schema] = HASHES
    output: str
    source: int = 0  # its ids are nodes of this output (as_nodes)

    def run(self, rows):
        dataset = FeatureDataset(self.output)
        for row in rows:
            for name, number in zip(row["parts"], row["numbers"], strict=True):
                table = hashes_of(dataset, name, number)
                yield from table.set_column(0, "id", pa.array(as_nodes(self.source, table.column("id")))).to_batches()


@dataclass(frozen=True)
class RowsTask(RowTask):
    """Each row's path, bytes, input and features (float32 bytes; null where it has none), from one task's parts."""

    RESULT: ClassVar[pa.Schema] = ROWS
    output: str
    source: int = 0  # its ids are nodes of this output (as_nodes)

    def run(self, rows):
        dataset = FeatureDataset(self.output)
        for row in rows:
            for name, number in zip(row["parts"], row["numbers"], strict=True):
                table = read_part(dataset.where.child(name), ["path", "bytes", "input", "features"])
                having, matrix = features_matrix(table.column("features"))
                yield pa.RecordBatch.from_arrays(
                    [pa.array(as_nodes(self.source, part_ids(number, np.arange(table.num_rows)))),
                     *(table.column(c).combine_chunks().cast(ROWS.field(c).type) for c in ("path", "bytes", "input")),
                     _as_binary(matrix, having, table.num_rows)], schema=ROWS)


def _as_binary(matrix: np.ndarray, having: np.ndarray, count: int) -> pa.BinaryArray:
    """Rows of `matrix` as float32 bytes at positions `having` of `count` rows; null elsewhere."""
    width = matrix.shape[1] * 4 if matrix.ndim == 2 else 0
    present = np.zeros(count, bool)
    present[having] = True
    offsets = np.concatenate([[0], np.cumsum(present * width)]).astype(np.int32)
    validity = pa.array(present).buffers()[1]
    data = pa.py_buffer(np.ascontiguousarray(matrix, np.float32))
    return pa.Array.from_buffers(pa.binary(), count, [validity, pa.py_buffer(offsets), data])


@dataclass(frozen=True)
class AssignTask(RowTask):
    """Each vector of a task's parts -> its cluster (and a second one near the border) -> its blocks."""

    RESULT: ClassVar[pa.Schema] = ASSIGNED
    output: str
    centroids: str  # where _centroids stored them, with each cluster's blocks
    margin: float
    source: int = 0  # its ids are nodes of this output (as_nodes)

    def run(self, rows):
        clusters = Clusters.load(self.centroids)
        dataset = FeatureDataset(self.output)
        for row in rows:
            for name, number in zip(row["parts"], row["numbers"], strict=True):
                ids, vectors = part_vectors(dataset.where.child(name), number)
                if len(ids):
                    yield _assign(as_nodes(self.source, ids), normalise(vectors), clusters, self.margin)


@dataclass
class Clusters:
    """What _centroids stored, as the tasks use it: the (coarse) centroids, and with two levels the finer centroids
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
        stored = np.load(io.BytesIO(open_location(uri).read_bytes()))
        clusters = cls(stored["centroids"], stored["blocks"].astype(np.int64) if "blocks" in stored else None)
        if "offsets" in stored:
            clusters.offsets = stored["offsets"]
            clusters.fine = np.repeat(clusters.centroids, np.diff(clusters.offsets), axis=0)  # one each: no draw
            folder = open_location(str(stored["folder"]))
            for name in stored["fine"]:
                table = read_file(folder, str(name), FINE)
                at = clusters.offsets[table.column("coarse").to_numpy()] + table.column("sub").to_numpy()
                clusters.fine[at] = _matrix(table.column("centroid").combine_chunks())
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
    features = _as_binary(chosen, np.arange(len(chosen)), len(chosen))
    return pa.RecordBatch.from_arrays([
        pa.array(cluster[repeat]), pa.array(np.minimum(mine, other)), pa.array(np.maximum(mine, other)),
        pa.array(mine), pa.array(ids[rows[repeat]]), features], schema=ASSIGNED)


@dataclass(frozen=True)
class SampleTask(RowTask):
    """A draw of each coarse cluster's rows for its finer clusters' training: about SAMPLE_PER_CLUSTER rows per
    finer cluster (_centroids' cuts), chosen by a hash of the row id (the same draw every time), each weighed by the
    rows it stands for."""

    RESULT: ClassVar[pa.Schema] = DRAWN
    output: str
    coarse: str  # _centroids' first level: centroids, cuts, expected

    def run(self, rows):
        stored = np.load(io.BytesIO(open_location(self.coarse).read_bytes()))
        quantizer = Clusters(stored["centroids"], None).quantizer
        rate = np.minimum(1.0, SAMPLE_PER_CLUSTER * stored["cuts"] / np.maximum(stored["expected"], 1.0))
        dataset = FeatureDataset(self.output)
        for row in rows:
            for name, number in zip(row["parts"], row["numbers"], strict=True):
                ids, vectors = part_vectors(dataset.where.child(name), number)
                if not len(ids):
                    continue
                vectors = normalise(vectors)
                coarse = quantizer.search(vectors, 1)[1][:, 0]
                drawn = np.flatnonzero(_uniform(ids) < rate[coarse])
                yield pa.RecordBatch.from_arrays(
                    [pa.array(coarse[drawn].astype(np.int64)), pa.array(1.0 / rate[coarse[drawn]]),
                     _as_binary(vectors[drawn], np.arange(len(drawn)), len(drawn))], schema=DRAWN)


def _uniform(ids: np.ndarray) -> np.ndarray:
    """A number in [0, 1) for each id, evenly spread and the same every time (a multiplicative hash)."""
    mixed = np.asarray(ids, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return (mixed >> np.uint64(11)).astype(np.float64) / 2.0**53


def fine_task(coarse: str, margin: float):
    """A coarse cluster's drawn rows -> its finer centroids (k-means, as many as _centroids' cuts say, fewer when
    fewer rows were drawn), with the rows expected in each. A plain function: see compare_task."""

    def train(table: pa.Table) -> pa.Table:
        import faiss

        cluster = table.column("coarse")[0].as_py()
        cuts = int(np.load(io.BytesIO(open_location(coarse).read_bytes()))["cuts"][cluster])
        vectors = _matrix(table.column("features").combine_chunks())
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
                         "centroid": _as_binary(centroids, np.arange(count), count), "expected": expected},
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
        vectors = _matrix(table.column("features").combine_chunks())
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
        dataset = FeatureDataset(self.output)
        for row in rows:
            for name, number in zip(row["parts"], row["numbers"], strict=True):
                ids, vectors = part_vectors(dataset.where.child(name), number)
                if not len(ids):
                    continue
                similarities, found = index.search(normalise(vectors), k)
                near, columns = np.nonzero((similarities >= self.threshold) & (found >= 0))
                yield pa.record_batch([pa.array(ids[near]), pa.array(as_nodes(self.source, found[near, columns]))],
                                      schema=LINKS)


def identical_task(keep: str, checked: bool, outputs: list[str] | None = None):
    """The rows of one group of the same bytes -> its members labelled (LABELLED): which one it keeps.
    `outputs`: the location of each source, where there are several (--against): another output's file is kept."""

    def label(table: pa.Table) -> list[dict]:
        table = table.sort_by("id")
        ids = table.column("id").to_pylist()
        rows = [{**row, **_origin(node, outputs)} for row, node in
                zip(table.select(["path", "bytes", "input"]).to_pylist(), ids, strict=True)]
        group, _ = label_identical(rows, keep, checked)
        return _labelled("identical", table.column("first")[0].as_py(), [group], rows, ids)

    return label


def near_task(keep: str, threshold: float, verify: bool, outputs: list[str] | None = None):
    """The rows of one component of the links -> its groups around kept files, labelled (LABELLED). With `verify`
    every witness pair is checked by its pixels here, in rounds, until each deletable file has a verified one."""

    def label(table: pa.Table) -> list[dict]:
        from imgvec.answers.verify import verdicts_here

        # in any order: label_near puts the rows in keep order
        paths, sizes, inputs, forced, ids = (table.column(name).to_pylist() for name in
                                             ("path", "bytes", "input", "forced", "id"))
        vectors = _matrix(table.column("features").combine_chunks())
        rows = [{"path": p, "bytes": b, "input": i, "features": v, **_origin(node, outputs),
                 "forced": f or node >= OTHER}  # kept whatever they resemble: other outputs' files, witnesses
                for p, b, i, f, v, node in zip(paths, sizes, inputs, forced, vectors, ids, strict=True)]
        groups, unverified, unreadable = label_near([rows], keep, threshold, verdicts_here if verify else None)
        return _labelled("near", table.column("component")[0].as_py(), groups, rows, ids, set(unverified),
                         set(unreadable))

    return label


def _origin(node: int, outputs: list[str] | None) -> dict:
    """Which output a node's row is in: its number (source), and its location where there are several."""
    source = node >> SOURCE_SHIFT
    return {"source": source, **({"output": outputs[source]} if outputs else {})}


def _labelled(kind: str, key: int, groups: list[Group], rows: list[dict], ids: list[int], unverified=frozenset(),
              unreadable=frozenset()) -> list[dict]:
    """The rows (LABELLED) of the groups labelled from one group of the same bytes or one component (`rows`, whose
    nodes are `ids`)."""
    nodes = {(row["path"], row.get("output")): node for row, node in zip(rows, ids, strict=True)}
    labelled = []
    for sub, group in enumerate(groups):
        facts = {"kind": kind, "key": key, "sub": sub, "size": len(group.members),
                 "representative": group.representative, "weakest_a": group.weakest["a"],
                 "weakest_b": group.weakest["b"], "weakest_similarity": group.weakest["similarity"]}
        labelled += [{**facts, **member, "node": nodes[member["path"], member.get("output")],
                      "unverified": member["path"] in unverified, "unreadable": member["path"] in unreadable}
                     for member in group.members]
    return labelled


def _matrix(features: pa.BinaryArray) -> np.ndarray:
    """Rows of float32 bytes, all of one length and back to back -> [n, dim]."""
    offsets = np.frombuffer(features.buffers()[1], np.int32)[features.offset : features.offset + len(features) + 1]
    data = np.frombuffer(features.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    return data.view(np.float32).reshape(len(features), -1)


def _blocks(expected: np.ndarray) -> np.ndarray:
    """Per cluster, the blocks of at most about UNIT rows its expected rows are cut into."""
    return np.maximum(1, np.ceil(expected / UNIT)).astype(np.int64)


def _expected(sample: np.ndarray, centroids: np.ndarray, margin: float, count: int) -> tuple[np.ndarray, float]:
    """Per cluster, the rows of `count` expected in it (from the sample's assignment); and the share of vectors
    that also go to a second cluster."""
    rows, nearest = _pairs(*Clusters(centroids, None).quantizer.search(sample, min(2, len(centroids))), margin)
    expected = np.bincount(nearest, minlength=len(centroids)).astype(np.float64)
    return expected * (count / len(sample)), (len(rows) - len(sample)) / len(sample)


@dataclass(frozen=True)
class NumberTask(RowTask):
    """Ranked groups of one stored file -> their numbers: the file's first number, then one each in order."""

    RESULT: ClassVar[pa.Schema] = NUMBERED
    folder: str

    def run(self, rows):
        for row in rows:
            table = read_file(open_location(self.folder), row["file"], GROUPS, ["kind", "key", "sub"])
            numbers = pa.array(row["first"] + np.arange(table.num_rows, dtype=np.int64))
            yield from table.append_column("group", numbers).to_batches()


# --- the result, streamed -------------------------------------------------------------------------


@dataclass
class StoredDuplicates(Duplicates):
    """A result Spark's tasks stored (_result): what the command prints is read file by file, never all at once."""

    folder: Location | None = None
    written: dict = field(default_factory=dict)  # stage -> (file, rows) of each file stored, in order
    stored_counts: dict = field(default_factory=dict)

    def counts(self) -> dict:
        return self.stored_counts

    def _each(self, name: str, schema: pa.Schema, columns=None) -> Iterator[dict]:
        for table in read_stored(self.folder.child(name), self.written[name], schema, columns):
            yield from table.to_pylist()

    def each_group(self) -> Iterator[Group]:
        members = self._each("members", MEMBERS)
        pending = next(members, None)
        for number, group in enumerate(self._each("groups", GROUPS)):
            listed = []
            while pending is not None and pending["group"] == number:
                listed.append(_member(pending, self.verified))
                pending = next(members, None)
            weakest = {"a": group["weakest_a"], "b": group["weakest_b"],
                       "similarity": round(group["weakest_similarity"], 6)}
            yield Group(group["kind"], group["representative"], listed, group["kept"], weakest)

    def each_deletable(self) -> Iterator[str]:
        return (row["path"] for row in self._each("delete", PATHS))

    def each_unverified(self, unreadable: bool = False) -> Iterator[str]:
        if "unverified" in self.written:  # stored with --verify only
            yield from (row["path"] for row in self._each("unverified", UNVERIFIED)
                        if row["unreadable"] or not unreadable)

    def tables(self) -> Iterator[pa.Table]:
        from imgvec.answers.groups import TABLE, VERIFIED_TABLE

        schema = VERIFIED_TABLE if self.verified else TABLE
        yield schema.empty_table()  # the file's schema, when no group was found
        for table in read_stored(self.folder.child("members"), self.written["members"], MEMBERS):
            yield table.select(schema.names).cast(schema)


def _member(row: dict, verified: bool) -> dict:
    """A stored member as the in-memory result has it (groups.label_near)."""
    member = {"path": row["path"], "bytes": row["bytes"], **({"input": row["input"]} if row["input"] else {}),
              **({"output": row["output"]} if row["output"] else {}), "similarity": round(row["similarity"], 6),
              "kept_file": row["kept_file"], "kept_similarity": round(row["kept_similarity"], 6)}
    if verified:
        member.update(verified=row["verified"], matches=row["matches"], verify_error=row["verify_error"])
    return member
