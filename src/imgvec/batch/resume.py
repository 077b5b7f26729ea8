"""What a resumed run has left to do, found on Spark: the pieces' names joined with the paths already in the output.

Neither the names nor the done paths reach the driver: tasks enumerate each piece's names (NamesTask) and read
the parts' `path` and `error` columns (PathsTask); Spark joins them, and each piece's task (batch.shard) is given
the names it still needs. The same read counts the output's rows and error kinds before the run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgvec.dataset.output import FeatureDataset, OutputError, read_part
from imgvec.inputs.pieces import piece_of
from imgvec.spark.tasks import RowTask, ddl, task_frame

NAMES = pa.schema([("id", pa.int64()), ("path", pa.string())])
PATHS = pa.schema([("path", pa.string()), ("kind", pa.string()), ("damaged", pa.string())])
PARTS = pa.schema([("id", pa.int64()), ("parts", pa.list_(pa.string()))])


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
class PathsTask(RowTask):
    """The paths of some of the output's parts (what is done) and their error kinds (the output's counts). A damaged
    part is a row that says so (`damaged`), not a failed task: the driver says it in one line."""

    RESULT: ClassVar[pa.Schema] = PATHS
    output: str

    def run(self, rows):
        where = FeatureDataset(self.output).where
        for row in rows:
            for name in row["parts"]:
                try:
                    table = read_part(where.child(name), ["path", "error"])
                except OutputError as exc:
                    yield pa.RecordBatch.from_pylist([{"path": None, "kind": None, "damaged": str(exc)}], schema=PATHS)
                    continue
                errors = table.column("error").combine_chunks()
                kinds = pc.list_element(pc.split_pattern(errors, ":", max_splits=1), 0)  # "kind: detail"
                yield pa.RecordBatch.from_arrays([table.column("path").combine_chunks(), kinds,
                                                  pa.nulls(len(errors), pa.string())], schema=PATHS)


def resumed_job(spark, plan, source, dataset: FeatureDataset, earlier: list[str], task, tasks: int):
    """The job of a resumed run: each piece's names left-joined, on Spark, with the paths already in the output,
    then each piece's task given what it still needs (todo) and how many it holds (total); and the output's counts
    (rows, error kinds) before this run. The output's paths are read once, kept on the executors' disks until the
    job is done (`read`, for the caller to unpersist). A damaged part is an OutputError first."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    read = task_frame(spark, plan_parts(earlier, tasks), PathsTask(dataset.location)).persist(StorageLevel.DISK_ONLY)
    tally = read.groupBy("kind", "damaged").count().collect()  # one job reads (and keeps) every part's paths
    damaged = next((row["damaged"] for row in tally if row["damaged"]), None)
    if damaged:  # said before any piece's task starts
        read.unpersist()
        raise OutputError(damaged)
    before = Counter({row["kind"]: row["count"] for row in tally})  # kind None: rows with features
    # both sides in `tasks` partitions by path: a shuffle hash join (sorting 10^7 paths that share their first
    # bytes was the slowest step), counted per piece before the pieces' rows move (partial aggregation)
    done = (read.where(F.col("damaged").isNull()).select("path").repartition(tasks, "path").dropDuplicates(["path"])
            .withColumn("done", F.lit(True)))
    names = task_frame(spark, plan, NamesTask(source), tasks).repartition(tasks, "path")
    todo = F.collect_list(F.when(F.col("done").isNull(), F.col("path"))).alias("todo")
    left = (names.join(done.hint("shuffle_hash"), "path", "left").groupBy("id").agg(F.count("*").alias("total"), todo)
            .repartition(tasks, "id"))  # one piece's todo in one task; a few pieces per slot
    job = left.join(F.broadcast(spark.createDataFrame(plan)), "id").mapInArrow(task, ddl(task.RESULT))
    return job, read, before
