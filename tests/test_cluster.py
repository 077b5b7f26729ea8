"""The same features on a standalone cluster (a master and two workers on 127.0.0.1) as in one process.

The workers run where the driver's TORCH_HOME is an empty tmpfs, so the
pretrained file can only reach them the way imgvec ships it.
"""

import pytest

from deployments import hidden_torch_cache, needs_hiding, standalone_cluster
from helpers import (
    assert_same_features,
    classic_session,
    files_in,
    reference_features,
    visible_on_workers,
)
from imgvec import ImageVectorizer, read_images

pytestmark = pytest.mark.spark

@pytest.fixture(scope="module")
def cluster_session(tmp_path_factory, resnet18_default):
    workdir = str(tmp_path_factory.mktemp("cluster"))
    with standalone_cluster(workdir, workers=2, hidden=hidden_torch_cache()) as master:
        session = classic_session(master, **{"spark.executor.cores": "1", "spark.executor.memory": "1g",
                                             "spark.cores.max": "2"})
        yield session
        session.stop()


@needs_hiding
def test_standalone_cluster_with_an_empty_torch_cache(cluster_session, image_dir, resnet18_default):
    spark = cluster_session
    assert spark.sparkContext.master.startswith("spark://127.0.0.1:")
    assert visible_on_workers(spark, resnet18_default) == {False}
    v = ImageVectorizer("resnet18")  # 'default' weights, resolved from the driver's cache
    rows = v.process_images(read_images(spark, str(image_dir))).drop("content").collect()
    assert_same_features(rows, reference_features(v, files_in(image_dir)))
    executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
    assert executors == 2  # two worker JVMs, each with its own Python workers
    # A CPU engine: its export, made on the driver, is shipped like the weights.
    engine = ImageVectorizer("resnet18", engine="onnxruntime")
    assert visible_on_workers(spark, engine.runtime_ref.path) == {False}
    exported = engine.process_images(read_images(spark, str(image_dir))).drop("content").collect()
    assert_same_features(exported, reference_features(v, files_in(image_dir)), cosine=0.9999)




@needs_hiding
def test_the_seeds_lambda_pattern_on_the_cluster(cluster_session, image_dir, resnet18_default):
    """`udf(lambda b: v.extract_features(b))`: the vectorizer is pickled into the UDF, and its weights go along."""
    from pyspark.sql import functions as F
    from pyspark.sql.functions import udf
    from pyspark.sql.types import ArrayType, FloatType

    spark = cluster_session
    assert visible_on_workers(spark, resnet18_default) == {False}
    v = ImageVectorizer("resnet18")
    extract = udf(lambda b: v.extract_features(b), ArrayType(FloatType()))
    rows = read_images(spark, str(image_dir)).withColumn("features", extract("content")) \
        .withColumn("error", F.when(F.col("features").isNull(), "bad")).drop("content").collect()
    assert_same_features(rows, reference_features(v, files_in(image_dir)))


@pytest.mark.slow  # 47 s; the cluster test above ships weights to workers that cannot see them, test_models holds
# each library to its own pipeline
@needs_hiding
def test_timm_and_open_clip_models_on_the_cluster(cluster_session, image_dir):
    """Their weights files live where the workers see nothing (the hidden cache): only shipping gets them there,
    and the workers never reach a hub."""
    import os

    import open_clip
    import timm
    import torch

    spark = cluster_session
    folder = os.path.join(os.environ["TORCH_HOME"], "library-weights")
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(0)
    files = {"timm:resnet18": timm.create_model("resnet18"), "open_clip:ViT-S-32": open_clip.create_model("ViT-S-32")}
    for model, net in files.items():
        path = os.path.join(folder, model.replace(":", "-") + ".pt")
        torch.save(net.state_dict(), path)
        assert visible_on_workers(spark, path) == {False}
        v = ImageVectorizer(model, weights=path)
        rows = v.process_images(read_images(spark, str(image_dir))).drop("content").collect()
        assert_same_features(rows, reference_features(v, files_in(image_dir)))
