"""Inputs for a batch job: image files or a Parquet table, listed once, then loaded chunk by chunk.

Listing reads names only (Spark prunes the bytes); a chunk reads the bytes of its own inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from imgvec.spark import check_binary_column, hadoop_literal, is_local_path, read_images
from imgvec.storage import list_local_files


@dataclass(frozen=True)
class Item:
    path: str  # what the output row is keyed by
    source: str  # the file to read it from: the image itself, or the Parquet file holding it


class ImageFiles:
    """Files, directories (recursively) and globs of image files."""

    def __init__(self, inputs: list[str], glob: str | None = None):
        self.inputs, self.glob = inputs, glob

    def list(self, spark: SparkSession) -> list[Item]:
        if all(is_local_path(i) for i in self.inputs):
            paths = list_local_files(self.inputs, self.glob)  # Spark's listing skips zero-byte files
        else:
            paths = [r.path for r in read_images(spark, self.inputs, glob=self.glob).select("path").collect()]
        return [Item(p, p) for p in sorted(set(paths))]

    def load(self, spark: SparkSession, items: list[Item]) -> DataFrame:
        # Each path is a literal file, never a pattern: escape what Hadoop would glob.
        return spark.read.format("binaryFile").load([hadoop_literal(i.source) for i in items]).select("path", "content")


class ParquetTable:
    """A Parquet table with a binary column of image bytes and a column that names each image."""

    def __init__(self, location: str, binary_col: str = "content", path_col: str = "path"):
        self.location, self.binary_col, self.path_col = location, binary_col, path_col

    def list(self, spark: SparkSession) -> list[Item]:
        df = spark.read.parquet(self.location)
        if self.path_col not in df.columns:
            raise ValueError(f"the table has no column {self.path_col!r} (columns: {', '.join(df.columns)}); "
                             "name the column that identifies each image with --path-col")
        check_binary_column(df, self.binary_col)
        rows = df.select(F.col(self.path_col).cast("string").alias("p"), F.input_file_name().alias("f")).collect()
        return sorted((Item(r.p, r.f) for r in rows), key=lambda i: (i.source, i.path))

    def load(self, spark: SparkSession, items: list[Item]) -> DataFrame:
        files = sorted({i.source for i in items})
        df = spark.read.parquet(*[hadoop_literal(f) for f in files]).select(
            F.col(self.path_col).cast("string").alias("path"), F.col(self.binary_col).alias("content"))
        return df.filter(F.col("path").isin([i.path for i in items]))


def open_source(inputs: list[str], *, glob: str | None = None, binary_col: str = "content",
                path_col: str = "path", table: bool | None = None):
    """Image files, or a Parquet table when the single input is one (a .parquet file or a folder of them)."""
    if table is None:
        table = len(inputs) == 1 and _looks_like_parquet(inputs[0])
    if table:
        if len(inputs) != 1:
            raise ValueError("give one Parquet table at a time")
        return ParquetTable(inputs[0], binary_col, path_col)
    return ImageFiles(inputs, glob)


def chunks(items: list[Item], size: int) -> list[list[Item]]:
    """Consecutive runs of about `size` items that never split one source file between chunks."""
    out: list[list[Item]] = []
    current: list[Item] = []
    for item in items:
        if len(current) >= size and item.source != current[-1].source:
            out.append(current)
            current = []
        current.append(item)
    if current:
        out.append(current)
    return out


def _looks_like_parquet(path: str) -> bool:
    if path.endswith(".parquet"):
        return True
    if not os.path.isdir(path):
        return False
    names = [n for n in os.listdir(path) if not n.startswith((".", "_"))]
    return bool(names) and all(n.endswith(".parquet") or "=" in n for n in names)
