"""The same features on a standalone cluster (a master and three workers on 127.0.0.1) as in one process.

The workers run where the driver's TORCH_HOME is an empty tmpfs, so the
pretrained file can only reach them the way imgvec ships it. Their executors run this virtual environment's Python,
except where a test names the base Python, which has neither imgvec nor torch: then only --ship-env gets them there.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pyarrow.parquet as pq
import pyspark
import pytest

from deployments import hidden_torch_cache, needs_hiding, standalone_cluster
from helpers import (
    assert_same_features,
    assert_usage_error,
    classic_session,
    files_in,
    imgvec,
    reference_features,
    visible_on_workers,
)
from imgvec import ImageVectorizer, read_images

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def cluster_master(tmp_path_factory, resnet18_default):
    workdir = str(tmp_path_factory.mktemp("cluster"))
    # Three one-core workers: the module's session holds two (spark.cores.max), a command's own run the third.
    with standalone_cluster(workdir, workers=3, hidden=hidden_torch_cache()) as master:
        yield master


@pytest.fixture(scope="module")
def cluster_session(cluster_master):
    session = classic_session(cluster_master, **{"spark.executor.cores": "1", "spark.executor.memory": "1g",
                                                 "spark.cores.max": "2"})
    yield session
    session.stop()


@pytest.mark.spark35
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


def _other_python() -> str | None:
    """A Python 3 of another minor version than this one, where the machine has one."""
    found = glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3"))
    found += [shutil.which(f"python3.{minor}") for minor in range(8, 15)]
    for python in filter(None, found):
        ran = subprocess.run([python, "-c", "import sys; print(sys.version_info[1])"], capture_output=True, text=True)
        if ran.returncode == 0 and ran.stdout.strip() not in ("", str(sys.version_info.minor)):
            return python
    return None


BARE = sys._base_executable  # the Python this environment was made from: neither imgvec nor torch


def _bare_cluster(master):
    """The embed options that run resnet18 on one executor of the cluster, in the bare Python."""
    return ["--master", master, "--model", "resnet18", "--conf", "spark.cores.max=1",
            "--conf", "spark.driver.host=127.0.0.1", "--conf", f"spark.pyspark.python={BARE}"]


@pytest.mark.spark35
def test_executors_without_imgvec_stop_the_command_in_one_line(cluster_master, image_dir, tmp_path_factory):
    """The executors run the base Python: the command stops before any image with one line naming --ship-env, and
    writes nothing, so the same command can simply run again; another Python version is one line naming both."""
    tmp_path = tmp_path_factory.mktemp("refused")  # not image_dir's folder: an output may not lie in its input
    assert subprocess.run([BARE, "-c", "import torch"], capture_output=True).returncode != 0
    assert subprocess.run([BARE, "-c", "import imgvec"], capture_output=True).returncode != 0
    refused = imgvec("embed", image_dir, "-o", tmp_path / "refused", *_bare_cluster(cluster_master))
    assert_usage_error(refused, "has no imgvec and no torch: run with --ship-env")
    assert "at org.apache" not in refused.stderr
    assert not (tmp_path / "refused").exists()
    other = _other_python()
    if other:
        mismatch = imgvec("embed", image_dir, "-o", tmp_path / "refused", *_bare_cluster(cluster_master)[:-2],
                          "--conf", f"spark.pyspark.python={other}")
        assert_usage_error(mismatch, f"the driver Python 3.{sys.version_info.minor}")


SHIPPED = """
import glob, json, os, sys
from imgvec.spark.session import get_session
spark = get_session(sys.argv[1], conf={"spark.archives": sys.argv[2] + "#imgvec_env", "spark.cores.max": "1",
                                       "spark.driver.host": "127.0.0.1",
                                       "spark.executorEnv.PYTHONPATH": "imgvec_env/site-packages"})
jvm = spark.sparkContext._jvm
copies = glob.glob(os.path.join(jvm.System.getProperty("java.io.tmpdir"), "spark-*", os.path.basename(sys.argv[2])))
def imported(_):
    import shipped_marker
    yield shipped_marker.VALUE
print(json.dumps({"driver": os.listdir(jvm.org.apache.spark.SparkFiles.getRootDirectory()), "copies": copies,
                  "executor": spark.sparkContext.parallelize([0], 1).mapPartitions(imported).collect()}))
"""


@pytest.mark.spark35
def test_the_driver_keeps_no_copy_of_a_shipped_environment(cluster_master, tmp_path_factory):
    """Spark's driver fetches and unpacks spark.archives as the executors do (12 GB of a torch environment) and
    its Python never reads them: imgvec removes both copies, and the executors still import from theirs."""
    packed = tmp_path_factory.mktemp("archive") / "imgvec-env-test.zip"
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("site-packages/shipped_marker.py", "VALUE = 42\n")
    ran = subprocess.run([sys.executable, "-c", SHIPPED, cluster_master, str(packed)], capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert json.loads(ran.stdout.splitlines()[-1]) == {"driver": [], "copies": [], "executor": [42]}


@pytest.mark.spark35
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not pyspark.__version__.startswith("3."),
                    reason="the shipped environment (~5 GB through Spark) runs in the Spark 3.5 tier: once a CI")
def test_executors_without_imgvec_get_this_environment_by_ship_env(cluster_master, image_dir, resnet18_default,
                                                                   tmp_path_factory):
    """With --ship-env the executors of the bare Python write the single-process features: the archive is made,
    sent by Spark, unpacked by the executor, and imports torch and imgvec."""
    tmp_path = tmp_path_factory.mktemp("ship-env")
    cache = tmp_path / "cache"  # the archive (several GB), removed after the test
    # Each copy of the archive is GBs of disk: the driver's and the executor's, each fetched and unpacked. One
    # executor a worker here: Spark's fetch cache would only copy it once more.
    fetch = ["--conf", "spark.files.useFetchCache=false"]
    try:
        shipped = imgvec("embed", image_dir, "-o", tmp_path / "shipped", "--ship-env", *_bare_cluster(cluster_master),
                         *fetch, timeout=1700, env={**os.environ, "IMGVEC_CACHE": str(cache)})
        assert shipped.returncode == 0, shipped.stderr
        assert "packing this Python environment for the workers" in shipped.stderr
        [archive] = glob.glob(str(cache / "environments" / "*.zip"))
        rows = pq.read_table(tmp_path / "shipped").to_pylist()
        assert_same_features(rows, reference_features(ImageVectorizer("resnet18"), files_in(image_dir)),
                             cosine=0.9999)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        for unpacked in glob.glob(str(tmp_path_factory.getbasetemp() / "cluster*" / "worker*" / "app-*" / "*" /
                                      "imgvec_env")):  # the executor's (a standalone worker keeps an app's folder)
            shutil.rmtree(unpacked, ignore_errors=True)
