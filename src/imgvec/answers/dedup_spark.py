"""`imgvec dupes` beyond EXACT_MAX vectors: Spark stages whose tasks store what they find. The driver plans, trains
k-means on a bounded sample, and reads back counts: nothing it holds grows with the images or the duplicates.

  identical   HashTask: each row's (sha256, bytes); a shuffle finds the rows of the same bytes
  near        the pairs of vectors at the threshold, copies of identical files left out: k-means clusters, each
              vector assigned to one or two, every pair of a cluster compared exactly (answers.pairs) -> links
  components  the links' connected components (answers.components)
  rows        RowsTask: path, bytes, input and features of the rows that are in a group
  label       a task per group of the same bytes (groups.label_identical: its kept file), then a task per
              component (groups.label_near, each identical group seen through its kept file): witnesses, and
              with --verify their pixels, checked in the task
  result      groups ranked largest first and numbered, members by (group, path), the files --keep lists by
              path: stored under OUTPUT/_imgvec_dupes/, which StoredDuplicates streams file by file

--against (other outputs, "OLD"): the same stages over every output, OLD's row ids made nodes above OTHER
(pairs.as_nodes). Only OLD's rows whose bytes OUTPUT has join the identical stage; OUTPUT's vectors are searched
in OLD's index by tasks, or OLD's vectors go to OUTPUT's clusters, where only the pairs that hold a row of OUTPUT
are compared; OLD's files are always kept (groups.label_near's forced rows).

A component is one task's up to PIECE members; a larger one (millions of near-identical images) is labelled in
pieces (_pieces), so that no task holds more than about PIECE members' vectors.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgvec.answers import pairs
from imgvec.answers.components import EDGES, components
from imgvec.answers.groups import Duplicates, Group, label_identical, label_near
from imgvec.answers.pairs import OTHER, SOURCE_SHIFT, as_binary, as_nodes, matrix_of, union
from imgvec.base.storage import Location, open_location
from imgvec.dataset import names
from imgvec.dataset.output import FeatureDataset, features_matrix, read_part
from imgvec.dataset.rows import part_ids
from imgvec.dataset.searchable import Searchable, parts_plan
from imgvec.dataset.writing import remove_own
from imgvec.spark.stored import read_file, read_stored, store, stored
from imgvec.spark.tasks import RowTask, each_group

PIECE = 50_000  # members one task labels at most (~100 MB of 512-d vectors; label_near's pairs grow with its square)
HASHES = pa.schema([("id", pa.int64()), ("sha256", pa.string()), ("bytes", pa.int64())])
# first: the group's smallest id (a NEW row's); outside: the group holds another output's file
IDENTICAL = pa.schema([("id", pa.int64()), ("first", pa.int64()), ("outside", pa.bool_())])
# features as raw float32 bytes: the JVM moves one value per row, not dim array elements (measured below)
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
        centroids, how = pairs.centroids(spark, [runs[n] for n in clustered], [sources[n] for n in clustered], clusters,
                                    threshold, work)
        links, how = pairs.links_frame(spark, runs, sources, indexes, centroids, threshold, copies, how)
        edges = store(spark, links.select(F.col("a").alias("u"), F.col("b").alias("v")), work.child("links"), EDGES,
                      report)
        near = components(spark, work.child("links"), edges, work)
        grouped = near.select("id").union(identical.select("id")).distinct()
        found = [_task_frame(spark, plan, RowsTask(source.location, number))
                 for number, (source, plan) in enumerate(zip(sources, runs, strict=True))]
        rows, _ = _kept(spark, union(found).join(grouped, "id"), work.child("rows"), ROWS)
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


def _identical_frame(spark, runs: list[pa.Table], sources: list[Searchable]):
    """IDENTICAL for every row whose bytes another row has too, in groups that hold a row of OUTPUT (sources[0]);
    another output's rows are read only where OUTPUT has their bytes."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    hashes = [_task_frame(spark, plan, HashTask(source.location, number))
              for number, (source, plan) in enumerate(zip(sources, runs, strict=True))]
    mine = hashes[0].select("sha256", "bytes")
    hashes = union([hashes[0], *(theirs.join(mine, ["sha256", "bytes"], "left_semi") for theirs in hashes[1:])])
    same = Window.partitionBy("sha256", "bytes")
    return (hashes.withColumn("first", F.min("id").over(same)).withColumn("n", F.count("id").over(same))
            .withColumn("outside", F.max("id").over(same) >= OTHER)
            .filter((F.col("n") > 1) & (F.col("first") < OTHER)).select(*IDENTICAL.names))


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
                     as_binary(matrix, having, table.num_rows)], schema=ROWS)


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
        vectors = matrix_of(table.column("features").combine_chunks())
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
