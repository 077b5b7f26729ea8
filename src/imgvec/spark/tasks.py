"""One way to run work on Spark: a plan of rows, one task each, and the rows the tasks return, collected.

The driver sends each task its row of the plan (names only: a shard's images, an index segment's
parts, pairs of paths) and gets back what the task's RowTask returns: a few numbers or small rows
per task, never the images. Progress is reported meanwhile and Ctrl-C cancels the job. A plan too
small to start a session for runs the same task in this process (RowTask.here).

No pyspark at import: the commands that never start Spark import their tasks from here.
"""

from __future__ import annotations

import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from imgvec.spark import compat
from imgvec.spark.session import SparkWarning, is_connect


class RowTask:
    """A Spark task's code: a frozen dataclass (small, picklable) whose run() turns plan rows into RESULT rows.

    Each task gets one row of the plan (run_tasks plans them so); run() does its set-up once, then yields
    RecordBatches of RESULT.
    """

    RESULT: ClassVar[pa.Schema]

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:  # mapInArrow's function
        return self.run(row for batch in batches for row in batch.to_pylist())

    def run(self, rows: Iterator[dict]) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def here(self, plan: pa.Table) -> pa.Table:
        """The plan run in this process, without Spark: the same code as on a worker."""
        return pa.Table.from_batches(list(self(iter(plan.to_batches()))), self.RESULT)


def run_tasks(spark, plan: pa.Table, task: RowTask, report: Callable[[float], None] | None = None,
              then: Callable | None = None) -> pa.Table:
    """One Spark task per row of `plan`, each running `task`; their rows (after `then`, a further step on the
    DataFrame such as a shuffle) collected on the driver. report(share of tasks done) meanwhile."""
    frame = task_frame(spark, plan, task)
    return collect(spark, then(frame) if then else frame, report)


def task_frame(spark, plan: pa.Table, task: RowTask, partitions: int | None = None):
    """The DataFrame of `task`'s RESULT rows over `plan`, not run yet: one task per row, or per `partitions`
    consecutive slices of the plan."""
    return plan_frame(spark, plan, partitions).mapInArrow(task, ddl(task.RESULT))


def collect(spark, job, report=None) -> pa.Table:
    """The job's rows, with progress reported meanwhile; Ctrl-C cancels the job."""
    try:
        with progress(spark, report):
            return compat.to_arrow(job)
    except KeyboardInterrupt:
        cancel_all(spark)
        raise


def plan_frame(spark, plan: pa.Table, partitions: int | None = None):
    """The plan (its first column `id`: 0, 1, ...) as a DataFrame whose every partition holds one of its rows (a
    task's work), or `partitions` runs of consecutive rows.

    Names travel driver -> tasks only, each task carrying just its own rows.
    """
    from pyspark.sql import functions as F

    slices = max(1, min(partitions or plan.num_rows, plan.num_rows))
    if is_connect(spark):
        # The plan is a local relation on the Connect server's driver; broadcasting it costs no job, and the
        # join keeps range's partitioning: consecutive row numbers in each partition.
        numbers = spark.range(0, plan.num_rows, numPartitions=slices)
        return numbers.join(F.broadcast(compat.frame_of(spark, plan, ddl(plan.schema))), "id")
    # Classic Spark: n rows in n slices puts one row in each.
    rows = spark.sparkContext.parallelize([tuple(r.values()) for r in plan.to_pylist()], slices)
    return spark.createDataFrame(rows, ddl(plan.schema))


BATCH_ROWS = 8_192  # rows each_group's tasks send to the JVM at once


def each_group(frame, key: str, function: Callable[[pa.Table], list[dict]], schema: pa.Schema):
    """function(the rows of one `key`) -> rows (dicts) of `schema`, for every key of `frame`. Like
    groupBy(key).applyInArrow, but one Python call per partition, not per group, and the results sent to the JVM in
    batches of BATCH_ROWS: many small groups (a dupes run has millions) cost what their rows cost. A partition
    holds whole groups, sorted by key; one group at a time is in memory."""
    return frame.repartition(key).sortWithinPartitions(key).mapInArrow(_EachGroup(key, function, schema),
                                                                       ddl(schema))


@dataclass(frozen=True)
class _EachGroup:
    key: str
    function: Callable[[pa.Table], list[dict]]
    schema: pa.Schema

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pending: list[pa.RecordBatch] = []  # the rows of the group being read
        done: list[dict] = []  # results not sent yet
        for batch in filter(len, batches):
            keys = batch.column(self.key).to_numpy(zero_copy_only=False)
            starts = [0, *(np.flatnonzero(keys[1:] != keys[:-1]) + 1).tolist(), len(keys)]
            for start, end in zip(starts[:-1], starts[1:], strict=True):
                if pending and pending[-1].column(self.key)[0].as_py() != keys[start]:
                    done += self.function(pa.Table.from_batches(pending))
                    pending = []
                    if len(done) >= BATCH_ROWS:
                        yield pa.RecordBatch.from_pylist(done, schema=self.schema)
                        done = []
                pending.append(batch.slice(start, end - start))
        if pending:
            done += self.function(pa.Table.from_batches(pending))
        if done:
            yield pa.RecordBatch.from_pylist(done, schema=self.schema)


_DDL = {pa.int64(): "long", pa.int32(): "int", pa.float32(): "float", pa.float64(): "double", pa.bool_(): "boolean",
        pa.string(): "string", pa.binary(): "binary", pa.list_(pa.string()): "array<string>",
        pa.list_(pa.int64()): "array<long>", pa.list_(pa.float32()): "array<float>",
        pa.list_(pa.bool_()): "array<boolean>"}


def ddl(schema: pa.Schema) -> str:
    """Spark's DDL for an Arrow schema of the simple types imgvec's tasks exchange."""
    return ", ".join(f"{f.name} {_DDL[f.type]}" for f in schema)


def cancel_all(spark) -> None:
    try:
        if is_connect(spark):
            spark.interruptAll()
        else:
            spark.sparkContext.cancelAllJobs()
    except Exception:  # already stopping
        pass


@contextmanager
def progress(spark, report):
    """Calls report(share of finished tasks) while the block (in this thread) runs its Spark job."""
    if is_connect(spark) and not compat.reports_progress(spark):
        if report is not None:
            _say_once(compat.NO_CONNECT_PROGRESS)
        yield
        return
    report = report or (lambda share: None)
    if is_connect(spark):
        def handler(stages=None, **_):
            report(_fraction((s.num_completed_tasks, s.num_tasks) for s in stages or []))

        spark.registerProgressHandler(handler)
        try:
            yield
        finally:
            spark.removeProgressHandler(handler)
        return
    context = spark.sparkContext
    job_tag = f"imgvec-{uuid.uuid4().hex[:12]}"
    context.setJobGroup(job_tag, "imgvec", interruptOnCancel=True)  # Spark's "job group": a tag on its jobs
    stop = threading.Event()
    poller = threading.Thread(target=_poll, args=(context.statusTracker(), job_tag, stop, report), daemon=True)
    poller.start()
    try:
        yield
    finally:
        stop.set()
        poller.join()
        context.setLocalProperty("spark.jobGroup.id", None)


_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        warnings.warn(message, SparkWarning, stacklevel=3)


def _poll(status, job_tag: str, stop: threading.Event, report) -> None:
    while not stop.wait(0.5):
        try:
            jobs = sorted(status.getJobIdsForGroup(job_tag))
            job = status.getJobInfo(jobs[-1]) if jobs else None
            stages = [status.getStageInfo(s) for s in job.stageIds] if job else []
            report(_fraction((s.numCompletedTasks, s.numTasks) for s in stages if s))
        except Exception:  # progress is best effort; the job is what matters
            pass


def _fraction(pairs) -> float:
    done = total = 0
    for completed, tasks in pairs:
        done, total = done + completed, total + tasks
    return done / total if total else 0.0
