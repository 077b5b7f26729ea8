"""A DataFrame kept between stages as Parquet files that its tasks write, and read again by tasks.

Tasks write through pyarrow (base.storage), as they write an output's parts: any filesystem imgvec
reads works, an object store too, without Spark's Hadoop connectors, and on Spark Connect alike.
Each partition is one file named by its number, so a sorted DataFrame's files are in its order and a
retried task replaces its own file instead of adding one. The driver gets one small row per file.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from imgvec.base.storage import Location, open_location
from imgvec.spark.tasks import RowTask, collect, ddl, task_frame

WRITTEN = pa.schema([("file", pa.string()), ("rows", pa.int64())])
FILES = pa.schema([("id", pa.int64()), ("file", pa.string())])
READ_ROWS = 65_536  # rows read back at once in this process


def file_name(partition: int) -> str:
    return f"part-{partition:06d}.parquet"


@dataclass(frozen=True)
class _Write:
    """mapInArrow's function: a partition's rows -> one Parquet file in `folder` -> (its name, its rows)."""

    folder: str
    schema: pa.Schema

    def __call__(self, batches):
        from pyspark import TaskContext

        batches = (b for b in batches if b.num_rows)
        first = next(batches, None)
        if first is None:
            return
        rows = 0

        def write(path, fs):  # a batch at a time: a task holds one batch, not its partition
            nonlocal rows
            with pq.ParquetWriter(path, self.schema, filesystem=fs) as writer:
                for batch in itertools.chain([first], batches):
                    writer.write_table(pa.Table.from_batches([batch]).select(self.schema.names).cast(self.schema))
                    rows += batch.num_rows

        name = file_name(TaskContext.get().partitionId())
        open_location(self.folder).child(name).write_with(write)
        yield pa.RecordBatch.from_pylist([{"file": name, "rows": rows}], schema=WRITTEN)


def store(spark, frame, folder: Location, schema: pa.Schema, report=None) -> pa.Table:
    """Every partition of `frame` (columns as `schema`) written by its task into `folder`; (file, rows) per file
    written, in file order (empty partitions write none)."""
    folder.make_folder()
    written = collect(spark, frame.mapInArrow(_Write(folder.uri, schema), ddl(WRITTEN)), report)
    return written.sort_by("file")


@dataclass(frozen=True)
class ReadTask(RowTask):
    """One stored file's rows."""

    folder: str
    schema: pa.Schema

    @property
    def RESULT(self) -> pa.Schema:  # noqa: N802 (RowTask's name; here it is the stored rows')
        return self.schema

    def run(self, rows):
        folder = open_location(self.folder)
        for row in rows:
            yield from read_file(folder, row["file"], self.schema).to_batches()


def stored(spark, folder: Location, written: pa.Table, schema: pa.Schema):
    """The DataFrame of files `store` wrote (its result `written`), one task a file."""
    files = written.column("file").to_pylist()
    plan = pa.table({"id": list(range(len(files))), "file": files}, schema=FILES)
    return task_frame(spark, plan, ReadTask(folder.uri, schema))


def read_stored(folder: Location, written: pa.Table, schema: pa.Schema, columns=None):
    """The stored rows as Arrow tables of at most READ_ROWS rows, file after file, in order: in this process, with
    one such table in memory."""
    for name in written.column("file").to_pylist():
        with folder.fs.open_input_file(folder.child(name).path) as f:
            for batch in pq.ParquetFile(f).iter_batches(READ_ROWS, columns=columns):
                yield pa.Table.from_batches([batch]).cast(schema if columns is None else
                                                          pa.schema([schema.field(c) for c in columns]))


def read_file(folder: Location, name: str, schema: pa.Schema, columns=None) -> pa.Table:
    with folder.fs.open_input_file(folder.child(name).path) as f:
        return pq.read_table(f, schema=schema, columns=columns)
