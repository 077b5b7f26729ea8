"""What a resumed run has left to do, found on Spark: the pieces' names joined with the paths already in the output;
and a manifest's names made unique, so that a path it lists twice is embedded once.

Neither the names nor the done paths reach the driver: small tasks first count the parts' rows and error kinds and
find a damaged part (CountTask); then, in one job, tasks enumerate each piece's names (NamesTask) and read the
parts' `path` column (PathsTask), Spark anti-joins them (and keeps a repeated name in the first piece that lists
it), and each piece's task (batch.shard) is given the names it still needs, how many it holds and how many of its
entries repeated a name.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from imgvec.dataset.output import FeatureDataset, OutputError, read_part
from imgvec.inputs.pieces import piece_of
from imgvec.spark import compat
from imgvec.spark.tasks import RowTask, ddl, run_tasks, task_frame

NAMES = pa.schema([("id", pa.int64()), ("path", pa.string())])
PATHS = pa.schema([("path", pa.string())])
COUNTED = pa.schema([("rows", pa.int64()), ("error_kinds", pa.string()), ("damaged", pa.string())])
PARTS = pa.schema([("id", pa.int64()), ("parts", pa.list_(pa.string()))])
BATCH_ROWS = 100_000


def plan_parts(parts: list[str], tasks: int) -> pa.Table:
    """The output's part names in `tasks` runs (the resumed run's reading of what is done)."""
    size = max(1, -(-len(parts) // max(tasks, 1)))
    chunks = [parts[i:i + size] for i in range(0, len(parts), size)]
    return pa.table({"id": list(range(len(chunks))), "parts": chunks}, schema=PARTS)


@dataclass(frozen=True)
class NamesTask(RowTask):
    """The paths of each piece, as the shard task would write them (a resumed run joins them with the output's)."""

    RESULT: ClassVar[pa.Schema] = NAMES
    source: object

    def run(self, rows):
        for row in rows:
            paths = self.source.names(piece_of(row))
            yield pa.RecordBatch.from_arrays([pa.array(np.full(len(paths), row["id"], np.int64)), paths], schema=NAMES)


@dataclass(frozen=True)
class CountTask(RowTask):
    """Rows and error kinds of some of the output's parts, and the first damaged one: read before the join, so that a
    damaged part is one line on the driver, not a failed task."""

    RESULT: ClassVar[pa.Schema] = COUNTED
    output: str

    def run(self, rows):
        where = FeatureDataset(self.output).where
        for row in rows:
            total, kinds, damaged = 0, Counter(), None
            for name in row["parts"]:
                try:
                    errors = read_part(where.child(name), ["error"]).column(0)
                except OutputError as exc:
                    damaged = damaged or str(exc)
                    continue
                total += len(errors)
                kinds.update(e.split(":", 1)[0] for e in errors.drop_null().to_pylist())
            yield pa.RecordBatch.from_pylist([{"rows": total, "error_kinds": json.dumps(kinds), "damaged": damaged}],
                                             schema=COUNTED)


@dataclass(frozen=True)
class PathsTask(RowTask):
    """The paths of some of the output's parts: what is done (in a few large batches: each is a trip to the JVM)."""

    RESULT: ClassVar[pa.Schema] = PATHS
    output: str

    def run(self, rows):
        where = FeatureDataset(self.output).where
        for row in rows:
            tables, held = [], 0
            for name in row["parts"]:
                tables.append(read_part(where.child(name), ["path"]))  # CountTask found none damaged
                held += tables[-1].num_rows
                if held >= BATCH_ROWS or name == row["parts"][-1]:
                    yield pa.RecordBatch.from_arrays([pa.concat_tables(tables).column(0).combine_chunks()],
                                                     schema=PATHS)
                    tables, held = [], 0


def counted_before(spark, dataset: FeatureDataset, earlier: list[str], tasks: int) -> Counter:
    """The output's rows by error kind before this run (None: with features), counted by tasks; a damaged part is an
    OutputError then, before any piece's task starts."""
    before, damaged = Counter(), None
    for row in run_tasks(spark, plan_parts(earlier, tasks), CountTask(dataset.location)).to_pylist():
        kinds = Counter(json.loads(row["error_kinds"]))
        before += kinds + Counter({None: row["rows"] - sum(kinds.values())})
        damaged = damaged or row["damaged"]
    if damaged:
        raise OutputError(damaged)
    return before


def joined_job(spark, plan, source, dataset: FeatureDataset, earlier: list[str], task, tasks: int):
    """The job of a run that must know the names first: each piece's names anti-joined, on Spark, with the paths
    already in the output (`earlier`: its parts, when resumed), and made unique (each path to the first piece that
    names it) where the source may name one twice (a manifest); then each piece's task given what it still needs
    (todo), how many names it holds (total) and how many of its entries named a path again (repeated)."""
    from pyspark.sql import functions as F

    # Each piece's names counted, and those not in the output (an anti-join: duplicates in the output cannot
    # multiply them) gathered, per piece before the rows move (partial aggregation). Both sides in `tasks`
    # partitions by path and a shuffle hash join: sorting 10^7 paths that share their first bytes was slow.
    names = task_frame(spark, plan, NamesTask(source), tasks)
    total = names.groupBy("id").agg(F.count("*").alias("total"))
    repeated = F.lit(0)
    if getattr(source, "may_repeat", False):  # each entry counted, then each path kept in its first piece only
        listed = total.withColumnRenamed("total", "listed")
        names = names.groupBy("path").agg(F.min("id").alias("id"))
        total = listed.join(names.groupBy("id").agg(F.count("*").alias("total")), "id", "left")
        repeated = F.col("listed") - F.coalesce("total", F.lit(0))
    if earlier:
        done = task_frame(spark, plan_parts(earlier, tasks), PathsTask(dataset.location)).repartition(tasks, "path")
        names = names.repartition(tasks, "path").join(done.hint("shuffle_hash"), "path", "left_anti")
    todo = names.groupBy("id").agg(F.collect_list("path").alias("todo"))
    left = (total.join(todo, "id", "left")  # a piece with nothing left gets an empty todo, never a null one
            .select("id", F.coalesce("total", F.lit(0)).alias("total"), repeated.alias("repeated"),
                    F.coalesce("todo", F.array().cast("array<string>")).alias("todo"))
            .repartition(tasks, "id"))
    plan_rows = F.broadcast(compat.frame_of(spark, plan, ddl(plan.schema)))
    return left.join(plan_rows, "id").mapInArrow(task, ddl(task.RESULT))
