"""process_images, read_images and ImageFeaturizer on a real local[2] Spark session."""

import os
import pickle

import numpy as np
import pytest
from pyspark.errors import PySparkException
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import functions as F
from pyspark.sql.functions import udf
from pyspark.sql.types import ArrayType, FloatType

from corpus import corpus
from helpers import assert_same_features, files_in, reference_features
from imgvec import ImageFeaturizer, ImageVectorizer, read_images

pytestmark = pytest.mark.spark



def jobs_so_far(spark):
    return set(spark.sparkContext.statusTracker().getJobIdsForGroup())


def test_process_images_equals_the_single_process_result(spark, image_dir, resnet18_default):
    v = ImageVectorizer("resnet18")  # default weights: the pre-seeded torch hub file
    df = read_images(spark, str(image_dir)).withColumn("size_kb", F.col("length") / 1024)
    out = v.process_images(df)
    assert out.schema["features"].dataType == ArrayType(FloatType(), containsNull=False)
    assert set(df.columns) | {"features", "error"} == set(out.columns)
    rows = out.drop("content").collect()
    assert_same_features(rows, reference_features(v, files_in(image_dir)))
    errors = {os.path.basename(r.path): r.error for r in rows if r.error}
    assert set(errors) == {"broken.jpg", "notes.txt"}
    assert errors["broken.jpg"].startswith("truncated:") and errors["notes.txt"].startswith("unrecognised:")


def test_lazy_until_an_action(spark, image_dir):
    df = read_images(spark, str(image_dir))
    before = jobs_so_far(spark)
    out = ImageVectorizer("resnet18", weights="random").process_images(df)
    assert jobs_so_far(spark) == before
    assert out.count() == len(files_in(image_dir))


def test_the_jvm_imgvec_starts_skips_the_optimising_jit_compiler(spark):
    # The JVM only moves bytes: C2 would take CPU seconds from the model on every run.
    runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    assert "-XX:TieredStopAtLevel=1" in list(runtime.getInputArguments())


def test_the_model_is_built_once_per_python_worker(spark, example_bytes):
    images = [(f"img{i}", data) for i, data in enumerate(list(example_bytes.values()) * 3)]
    df = spark.createDataFrame(images, "name string, content binary").repartition(8)
    v = ImageVectorizer("resnet18", weights="random", batch_size=4)
    out = v.process_images(df)
    assert out.filter("error is null").count() == len(images)
    config, weights = v.config, v.weights_ref

    def report(batches):
        import pandas as pd

        from imgvec.features.featurize import model_loads

        for _ in batches:
            yield pd.DataFrame([model_loads(config, weights)])

    loads = spark.range(0, 8, numPartitions=8).mapInPandas(report, "pid long, loads long").collect()
    per_process = {r.pid: r.loads for r in loads}
    assert max(per_process.values()) == 1, per_process  # 8 tasks, each worker process built it once
    assert len(per_process) <= 2  # local[2]: the two Python workers were reused across the 8 tasks


def test_the_seeds_own_udf_pattern_works_with_our_class(spark, image_dir, resnet18_default):
    v = ImageVectorizer("resnet18")
    extract = udf(lambda b: v.extract_features(b), ArrayType(FloatType()))
    rows = read_images(spark, str(image_dir)).withColumn("features", extract("content")) \
        .withColumn("error", F.when(F.col("features").isNull(), "bad")).drop("content").collect()
    reference = reference_features(v, files_in(image_dir))
    assert_same_features(rows, reference)


class SeedImageVectorizer:
    """The seed article's class as written: it keeps the SparkSession on self."""

    def __init__(self, spark):
        self.spark = spark

    def extract_features(self, image_binary):
        return [0.0]

    def process_images(self, df):
        extract = udf(lambda x: self.extract_features(x), ArrayType(FloatType()))
        return df.withColumn("features", extract(df["content"]))


def test_the_seeds_original_pattern_fails_with_spark_5063(spark, image_dir):
    """Why imgvec exists: the closure drags the SparkSession to the workers."""
    df = read_images(spark, str(image_dir))
    with pytest.raises((pickle.PicklingError, PySparkException, Exception)) as error:
        SeedImageVectorizer(spark).process_images(df).collect()
    assert "CONTEXT_ONLY_VALID_ON_DRIVER" in str(error.value) or "SPARK-5063" in str(error.value)


def test_a_table_with_a_binary_column(spark, tmp_path, example_bytes):
    table = str(tmp_path / "table")
    rows = [(name, data, len(data)) for name, data in sorted(example_bytes.items())]
    spark.createDataFrame(rows, "name string, img binary, n int").write.parquet(table)
    v = ImageVectorizer("resnet18", weights="random")
    out = v.process_images(spark.read.parquet(table), input_col="img", output_col="vec", error_col="why")
    got = {r.name: r for r in out.select("name", "vec", "why", "n").collect()}
    assert set(got) == set(example_bytes)
    for name, data in example_bytes.items():
        assert got[name].why is None and got[name].n == len(data)
        assert np.allclose(got[name].vec, v.extract_features(data), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mistake,message", [
    ({"input_col": "bytes"}, "input column 'bytes' is not in the DataFrame"),
    ({"input_col": "path"}, "input column 'path' is string, not binary"),
])
def test_column_mistakes_fail_on_the_driver_before_any_job(spark, image_dir, mistake, message):
    df = read_images(spark, str(image_dir))
    before = jobs_so_far(spark)
    with pytest.raises(ValueError, match=message):
        ImageVectorizer("resnet18", weights="random").process_images(df, **mistake)
    assert jobs_so_far(spark) == before


def test_model_and_weights_mistakes_fail_on_the_driver(spark, image_dir):
    df = read_images(spark, str(image_dir))
    with pytest.raises(ValueError, match="unknown model"):
        ImageFeaturizer(model="resnet-50", weights="random").transform(df)
    with pytest.raises(ValueError, match="does not exist"):
        ImageFeaturizer(model="resnet18", weights="/no/such/file.pt").transform(df)


def test_read_images_takes_files_directories_and_globs(spark, image_dir):
    everything = read_images(spark, str(image_dir)).count()
    assert everything == len(files_in(image_dir))
    assert read_images(spark, str(image_dir), glob="*.jpg").count() == sum(
        f.endswith(".jpg") for f in files_in(image_dir))
    assert read_images(spark, str(image_dir / "broken.jpg")).count() == 1
    assert read_images(spark, [str(image_dir / "nested" / "*.jpg"), str(image_dir / "broken.jpg")]).count() == \
        len([f for f in os.listdir(image_dir / "nested") if f.endswith(".jpg")]) + 1
    with pytest.raises(ValueError, match="does not exist"):
        read_images(spark, str(image_dir / "missing"))


def test_image_featurizer_in_a_pipeline_saved_and_loaded(spark, image_dir, tmp_path):
    df = read_images(spark, str(image_dir))
    featurizer = ImageFeaturizer(model="resnet18", weights="random", outputCol="vec", batchSize=4)
    model = Pipeline(stages=[featurizer]).fit(df)
    model.write().overwrite().save(str(tmp_path / "pipeline"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline"))
    stage = loaded.stages[0]
    assert isinstance(stage, ImageFeaturizer)
    params = (stage.getOutputCol(), stage.getOrDefault("batchSize"), stage.getOrDefault("model"))
    assert params == ("vec", 4, "resnet18")
    a = {r.path: r.vec for r in model.transform(df).select("path", "vec").collect()}
    b = {r.path: r.vec for r in loaded.transform(df).select("path", "vec").collect()}
    assert a == b and sum(v is not None for v in a.values()) == len(a) - 2


def test_every_corpus_input_gets_exactly_one_row_and_no_task_fails(spark):
    items = corpus()
    df = spark.createDataFrame([(name, data) for name, (data, _) in items.items()], "name string, content binary")
    rows = ImageVectorizer("resnet18", weights="random").process_images(df.repartition(3)).collect()
    assert sorted(r.name for r in rows) == sorted(items)
    for row in rows:
        if items[row.name][1] == "ok":
            assert row.error is None and len(row.features) == 512, row.name
        else:
            assert row.features is None and row.error, row.name
