"""imgvec.features: ImageVectorizer equal to plain torchvision, deterministic and picklable; the seed article's
own test; the opt-in faster modes' agreement; process_images, read_images and ImageFeaturizer on a real local[2]
Spark session.
"""

import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from pyspark.errors import PySparkException
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import functions as F
from pyspark.sql.functions import udf
from pyspark.sql.types import ArrayType, FloatType

from corpus import corpus, encode
from helpers import EXAMPLES, assert_same_features, files_in, max_relative_difference, reference_features
from imgvec import ImageFeaturizer, ImageVectorizer, read_images
from imgvec.kernels.similarity import duplicate_groups, nearest


def torchvision_reference(image_bytes_list, model_name="resnet50"):
    """What a user would write with torchvision alone: the weights' own transforms, fc removed."""
    weights = {"resnet50": torchvision.models.ResNet50_Weights, "resnet18": torchvision.models.ResNet18_Weights}[
        model_name].DEFAULT
    net = getattr(torchvision.models, model_name)(weights=weights)  # reads the torch hub cache
    net.fc = torch.nn.Identity()
    net.eval()
    transform = weights.transforms()
    batch = torch.stack([transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in image_bytes_list])
    with torch.no_grad():
        return net(batch).numpy()


def test_features_equal_torchvision_with_the_same_weights(resnet50_default, example_bytes):
    photos = [example_bytes[n] for n in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg", "retina.jpg")]
    v = ImageVectorizer(device="cpu", batch_size=2)  # batches of 2, 2 and 1: batching must not matter
    features, errors = v.embed(photos)
    assert errors == [None] * 5
    assert features.shape == (5, 2048) and features.dtype == np.float32
    assert max_relative_difference(features, torchvision_reference(photos)) <= 1e-4
    assert features.std() > 0


def test_random_weights_give_the_same_features_in_every_process(example_bytes, tmp_path):
    # what lets every Spark worker build the same untrained network: a fresh process's features equal this one's
    image = tmp_path / "coffee.jpg"
    image.write_bytes(example_bytes["coffee.jpg"])
    probe = ("import sys, numpy; from imgvec import ImageVectorizer\n"
             "v = ImageVectorizer('resnet18', weights='random', device='cpu')\n"
             "numpy.save(sys.argv[2], v.embed([open(sys.argv[1], 'rb').read()])[0])")
    subprocess.run([sys.executable, "-c", probe, str(image), str(tmp_path / "there.npy")], check=True)
    here, _ = ImageVectorizer("resnet18", weights="random", device="cpu").embed([image.read_bytes()])
    there = np.load(tmp_path / "there.npy")
    assert here.std() > 0 and np.array_equal(here, there)


def test_batch_form_keeps_order_and_puts_none_for_bad_images(example_bytes):
    v = ImageVectorizer("resnet18", weights="random", batch_size=3)
    images = [example_bytes["chelsea.jpg"], b"not an image", None, example_bytes["coffee.jpg"], b""]
    out = v.extract_features_batch(images)
    assert [x is None for x in out] == [False, True, True, False, True]
    assert out[0] == v.extract_features(example_bytes["chelsea.jpg"])
    assert out[3] == v.extract_features(example_bytes["coffee.jpg"])
    _, errors = v.embed(images)
    assert errors[1].startswith("unrecognised:") and errors[2].startswith("missing:") and errors[4] == "empty: 0 bytes"


def test_every_valid_corpus_image_gets_finite_features():
    v = ImageVectorizer("resnet18", weights="random")
    items = corpus()
    names = sorted(items)
    features, errors = v.embed([items[n][0] for n in names])
    for name, row, error in zip(names, features, errors, strict=True):
        if items[name][1] == "ok":
            assert error is None and np.isfinite(row).all(), name
        else:
            assert error is not None and np.isnan(row).all(), name


def test_pickles_to_its_configuration_only(resnet50_default, example_bytes):
    v = ImageVectorizer()
    v.extract_features(example_bytes["chelsea.jpg"])  # the network is now built in this process
    data = pickle.dumps(v)
    assert len(data) < 2048
    for marker in (b"_rebuild_tensor", b"torch.nn", b"torchvision", b"pyspark", b"SparkSession"):
        assert marker not in data
    copy = pickle.loads(data)
    assert copy.config == v.config and copy.weights_ref == v.weights_ref


def test_unpickled_in_a_fresh_process_builds_the_model_once_and_agrees(resnet50_default, example_bytes, tmp_path):
    v = ImageVectorizer(device="cpu")
    image = example_bytes["rocket.jpg"]
    expected = np.array(v.extract_features(image), np.float32)
    (tmp_path / "v.pkl").write_bytes(pickle.dumps(v))
    (tmp_path / "img").write_bytes(image)
    script = f"""
import pickle, sys, numpy as np
from imgvec.features.featurize import model_loads
v = pickle.load(open({str(tmp_path / 'v.pkl')!r}, 'rb'))
assert model_loads()['loads'] == 0, 'built before first use'
image = open({str(tmp_path / 'img')!r}, 'rb').read()
a = v.extract_features(image); b = v.extract_features(image)
assert model_loads()['loads'] == 1, model_loads()
np.save({str(tmp_path / 'out.npy')!r}, np.array(a, np.float32))
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    got = np.load(tmp_path / "out.npy")
    assert max_relative_difference(got, expected) <= 1e-5


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"device": "tpu"}, {"max_pixels": -1}])
def test_bad_configuration_is_refused_early(bad):
    with pytest.raises(ValueError):
        ImageVectorizer("resnet18", weights="random", **bad)


def test_extract_features(resnet50_default):
    vectorizer = ImageVectorizer()
    with open(EXAMPLES / "chelsea.jpg", "rb") as f:
        image_binary = f.read()
    features = vectorizer.extract_features(image_binary)
    assert isinstance(features, list)
    assert len(features) == 2048
    assert all(isinstance(x, float) for x in features)


def cosines(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def photos():
    return [p.read_bytes() for p in sorted(EXAMPLES.iterdir())]


def test_bf16_on_the_cpu_agrees_with_fp32(photos):
    exact, _ = ImageVectorizer("efficientnet_lite0", device="cpu").embed(photos)
    fast, errors = ImageVectorizer("efficientnet_lite0", device="cpu", precision="bf16").embed(photos)
    assert errors == [None] * len(photos)
    assert cosines(exact, fast).min() >= 0.99
    # Retrieval keeps what matters: the same near-duplicate groups (the stereo pair), and each half of the
    # pair is the other's best match. (Unrelated photos are near-ties at ~0.3 and may swap places.)
    assert [[i for i, _ in g] for g in duplicate_groups(exact, 0.8)] == \
        [[i for i, _ in g] for g in duplicate_groups(fast, 0.8)]
    names = [p.name for p in sorted(EXAMPLES.iterdir())]
    left, right = names.index("motorcycle_left.jpg"), names.index("motorcycle_right.jpg")
    assert nearest(fast[left], fast, 1, exclude=left)[0][0] == right


def test_draft_decoding_of_large_photos_agrees_with_exact_decoding(photos):
    large = [encode(Image.open(EXAMPLES / n).convert("RGB").resize((4000, 3000)), "JPEG", quality=90)
             for n in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg")]
    exact, _ = ImageVectorizer("efficientnet_lite0").embed(large)
    draft, _ = ImageVectorizer("efficientnet_lite0", draft=True).embed(large)
    assert cosines(exact, draft).min() >= 0.995
    assert not np.array_equal(exact, draft)  # it is a different computation, opt-in


def test_fp16_needs_a_gpu_and_unknown_precisions_are_refused(photos):
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a GPU"):
            ImageVectorizer("resnet18", weights="random", device="cpu", precision="fp16").embed(photos[:1])
    with pytest.raises(ValueError, match="precision must be one of"):
        ImageVectorizer("resnet18", weights="random", precision="int4")


def jobs_so_far(spark):
    return set(spark.sparkContext.statusTracker().getJobIdsForGroup())


@pytest.mark.spark
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


@pytest.mark.spark
def test_lazy_until_an_action(spark, image_dir):
    df = read_images(spark, str(image_dir))
    before = jobs_so_far(spark)
    out = ImageVectorizer("resnet18", weights="random").process_images(df)
    assert jobs_so_far(spark) == before
    assert out.count() == len(files_in(image_dir))


@pytest.mark.spark
def test_the_jvm_imgvec_starts_skips_the_optimising_jit_compiler(spark):
    # The JVM only moves bytes: C2 would take CPU seconds from the model on every run.
    runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    assert "-XX:TieredStopAtLevel=1" in list(runtime.getInputArguments())


@pytest.mark.spark
def test_the_model_is_built_once_per_python_worker(spark, example_bytes):
    images = [(f"img{i}", data) for i, data in enumerate(list(example_bytes.values()) * 3)]
    df = spark.createDataFrame(images, "name string, content binary").repartition(8)
    # torch's network, whose random weights travel by name (an engine's export once per process: test_models)
    v = ImageVectorizer("resnet18", weights="random", batch_size=4, engine="torch")
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


@pytest.mark.spark
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


@pytest.mark.spark
def test_the_seeds_original_pattern_fails_with_spark_5063(spark, image_dir):
    """Why imgvec exists: the closure drags the SparkSession to the workers."""
    df = read_images(spark, str(image_dir))
    with pytest.raises((pickle.PicklingError, PySparkException, Exception)) as error:
        SeedImageVectorizer(spark).process_images(df).collect()
    assert "CONTEXT_ONLY_VALID_ON_DRIVER" in str(error.value) or "SPARK-5063" in str(error.value)


@pytest.mark.spark
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


@pytest.mark.spark
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


@pytest.mark.spark
def test_model_and_weights_mistakes_fail_on_the_driver(spark, image_dir):
    df = read_images(spark, str(image_dir))
    with pytest.raises(ValueError, match="unknown model"):
        ImageFeaturizer(model="resnet-50", weights="random").transform(df)
    with pytest.raises(ValueError, match="does not exist"):
        ImageFeaturizer(model="resnet18", weights="/no/such/file.pt").transform(df)


@pytest.mark.spark
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


@pytest.mark.spark
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


@pytest.mark.spark
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
