"""Spark 3.5 and 4.x from one package: the few calls whose API differs, in one place.

Everything else imgvec uses (mapInArrow, pandas UDFs, addArtifacts, interruptAll) is the same in both.
"""

from __future__ import annotations

import pyarrow as pa

NO_CONNECT_PROGRESS = "Spark Connect 3.5 reports no progress to its clients (4.0 does): the job runs without it"


def to_arrow(job) -> pa.Table:
    """A DataFrame's rows as an Arrow table: DataFrame.toArrow on Spark 4; on 3.5, what its own collect uses."""
    if hasattr(job, "toArrow"):
        return job.toArrow()
    if hasattr(job, "_collect_as_arrow"):  # classic 3.5
        from pyspark.sql.pandas.types import to_arrow_schema

        return pa.Table.from_batches(job._collect_as_arrow(), to_arrow_schema(job.schema))
    client = job._session.client  # Spark Connect 3.5
    table, _ = client.to_table(job._plan.to_proto(client))
    return table


def reports_progress(spark) -> bool:
    """Whether a Spark Connect client hears of its job's progress (registerProgressHandler: Spark 4.0)."""
    return hasattr(spark, "registerProgressHandler")


def frame_of(spark, table: pa.Table, schema: str):
    """A small Arrow table (a plan) as a DataFrame: directly on Spark 4; on 3.5, which takes no Arrow table, as rows."""
    import pyspark

    if not table.num_rows:  # nothing to infer a schema from (Spark Connect asks)
        return spark.createDataFrame([], schema)
    if int(pyspark.__version__.split(".")[0]) >= 4:
        return spark.createDataFrame(table)
    return spark.createDataFrame(table.to_pylist(), schema)


def apply_in_arrow(grouped, function, schema: str):
    """groupBy(...).applyInArrow(function, schema) on Spark 4; on 3.5, which has only applyInPandas, the same
    function with each group's table passed through pandas (slower, the same rows)."""
    if hasattr(grouped, "applyInArrow"):
        return grouped.applyInArrow(function, schema)

    def through_pandas(frame):
        return function(pa.Table.from_pandas(frame, preserve_index=False)).to_pandas()

    return grouped.applyInPandas(through_pandas, schema)
