"""Features on Spark: a DataFrame of image bytes in, feature and error columns out.

The UDF closes over two small frozen dataclasses (FeatureConfig, WeightsRef) and nothing
else: no SparkSession, SparkContext, DataFrame or nn.Module, so SPARK-5063 cannot happen
and the same code runs on classic Spark and on Spark Connect.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import replace

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    FloatType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from imgvec.base.storage import is_local, list_local_files
from imgvec.features.featurize import FeatureConfig, get_featurizer
from imgvec.inputs.sources import check_inputs_exist
from imgvec.models.hardware import use_task_cpus
from imgvec.models.weights import WeightsRef
from imgvec.spark.files import ship_file

RESULT_TYPE = StructType([
    StructField("features", ArrayType(FloatType(), containsNull=False)),
    StructField("error", StringType()),
])


def read_images(spark: SparkSession, paths: str | Iterable[str], *, glob: str | None = None,
                recursive: bool = True) -> DataFrame:
    """Files, directories (recursively) and globs -> DataFrame[path, modificationTime, length, content].

    Spark's binaryFile source reads the bytes on the executors; nothing passes through the driver.
    Local folders are listed by imgvec (hidden names skipped, links followed, link loops not), since
    Spark's own listing never ends in a folder that links to its parent.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise ValueError("no input paths given; pass files, directories or globs")
    check_inputs_exist([p for p in paths if is_local(p)])  # Spark reads the others, with its own credentials
    reader = spark.read.format("binaryFile")
    if recursive and all(is_local(p) for p in paths):
        files = list_local_files(paths, glob)
        return reader.load([hadoop_literal(f) for f in files]) if files else spark.createDataFrame([], BINARY_FILE)
    if recursive:
        reader = reader.option("recursiveFileLookup", "true")
    if glob:
        reader = reader.option("pathGlobFilter", glob)
    return reader.load(paths)


BINARY_FILE = StructType([StructField("path", StringType()), StructField("modificationTime", TimestampType()),
                          StructField("length", LongType()), StructField("content", BinaryType())])


def hadoop_literal(path: str) -> str:
    """`path` for Spark's readers as one literal file, never a pattern: escape what Hadoop would glob."""
    return re.sub(r"([\\*?\[\]{}])", r"\\\1", path)


def featurize_dataframe(df: DataFrame, config: FeatureConfig, weights: WeightsRef, input_col: str = "content",
                        output_col: str = "features", error_col: str = "error") -> DataFrame:
    """`df` with `output_col` (array<float>, null for bad images) and `error_col` (string, null when good).

    Lazy: nothing runs until an action. Configuration mistakes raise here, on the driver.
    """
    check_binary_column(df, input_col)
    spark = df.sparkSession
    shipped = ship_weights(spark, weights)
    # One Arrow batch feeds one forward pass: bounded memory, no waiting to fill huge batches.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(config.batch_size))
    result = "__imgvec_result"
    return (
        df.withColumn(result, features_column(F.col(_quoted(input_col)), config, shipped))
        .withColumn(output_col, F.col(f"{result}.features"))
        .withColumn(error_col, F.col(f"{result}.error"))
        .drop(result)
    )


def check_binary_column(df: DataFrame, column: str) -> None:
    fields = {f.name: f.dataType for f in df.schema.fields}
    if column not in fields:
        raise ValueError(f"input column {column!r} is not in the DataFrame (columns: {', '.join(fields)}); "
                         "pass input_col= the column that holds the image bytes")
    if not isinstance(fields[column], BinaryType):
        raise ValueError(f"input column {column!r} is {fields[column].simpleString()}, not binary; "
                         "image bytes must be a binary column (spark.read.format('binaryFile') gives one)")


def features_column(image_bytes: Column, config: FeatureConfig, weights: WeightsRef) -> Column:
    """A struct<features, error> column. `weights` must already be shipped (see ship_weights)."""

    @pandas_udf(RESULT_TYPE)
    def imgvec_features(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        use_task_cpus()
        featurizer = get_featurizer(config, weights)
        for images in batches:
            features, errors = featurizer.vectors(images.tolist())
            yield pd.DataFrame({
                "features": [None if error else row for row, error in zip(features, errors, strict=True)],
                "error": errors,
            })

    # Nondeterministic: the optimiser must never evaluate it twice (once per struct field).
    return imgvec_features.asNondeterministic()(image_bytes)


# --- weights to the executors --------------------------------------------------------------


def ship_weights(spark: SparkSession, weights: WeightsRef) -> WeightsRef:
    """The weights file sent with the session's jobs (spark.files): executors need neither the driver's disk nor
    the internet, and read it by its shipped name."""
    if weights.kind != "file" or weights.shipped_name:
        return weights
    return replace(weights, shipped_name=ship_file(spark, weights.path, weights.sha256))


def ship_with_active_session(weights: WeightsRef) -> WeightsRef:
    """`weights` shipped with the session this driver is using, if there is one.

    For an ImageVectorizer pickled into a user's own UDF (the seed's `udf(lambda b: v.extract_features(b))`):
    its workers then read the shipped copy, as with process_images.
    """
    spark = SparkSession.getActiveSession()  # the Spark Connect one too; None on an executor
    return weights if spark is None else ship_weights(spark, weights)


def _quoted(column: str) -> str:
    return f"`{column.replace('`', '``')}`"
