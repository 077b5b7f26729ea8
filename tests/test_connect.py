"""The same features on Spark Connect (a real server on 127.0.0.1) as in one process.

The server runs where the driver's TORCH_HOME is an empty tmpfs, so the
pretrained file can only reach it the way imgvec ships it.
"""

import json
import os

import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from deployments import connect_server, hidden_torch_cache, needs_hiding
from helpers import (
    assert_no_jvm_lines,
    assert_same_features,
    clustered_vectors,
    files_in,
    grouped_files,
    imgvec,
    reference_features,
    vectors_output,
    visible_on_workers,
)
from imgvec import ImageFeaturizer, ImageVectorizer, read_images

pytestmark = pytest.mark.spark

@pytest.fixture(scope="module")
def connect_url(tmp_path_factory, resnet18_default):
    with connect_server(str(tmp_path_factory.mktemp("connect")), hidden=hidden_torch_cache()) as url:
        yield url


@pytest.fixture(scope="module")
def connect_session(connect_url):
    classic = SparkSession.getActiveSession()
    if classic is not None:  # a remote session cannot start beside a classic one
        classic.stop()
    session = SparkSession.builder.remote(connect_url).getOrCreate()
    yield session
    session.stop()
    os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)  # pyspark's marker: later sessions in this process are classic


@needs_hiding
def test_spark_connect_with_an_empty_torch_cache(connect_session, image_dir, resnet18_default):
    spark = connect_session
    assert type(spark).__module__.startswith("pyspark.sql.connect")
    with pytest.raises(AttributeError):  # no SparkContext, no broadcast: the seed's fix cannot exist here
        _ = spark.sparkContext
    assert visible_on_workers(spark, resnet18_default) == {False}
    v = ImageVectorizer("resnet18")
    rows = v.process_images(read_images(spark, str(image_dir))).drop("content").collect()
    assert_same_features(rows, reference_features(v, files_in(image_dir)))
    engine = ImageVectorizer("resnet18", engine="openvino")  # its export travels as an artifact, like weights
    exported = engine.process_images(read_images(spark, str(image_dir))).drop("content").collect()
    assert_same_features(exported, reference_features(v, files_in(image_dir)), cosine=0.9999)


def test_image_featurizer_on_spark_connect(connect_session, image_dir):
    df = read_images(connect_session, str(image_dir))
    out = ImageFeaturizer(model="resnet18", weights="random", outputCol="vec").transform(df)
    rows = out.select("path", "vec", "error").collect()
    assert len(rows) == len(files_in(image_dir))
    assert sum(r.vec is not None for r in rows) == len(rows) - 2


def test_the_command_on_spark_connect(connect_url, image_dir, tmp_path_factory, resnet18_default):
    inputs = files_in(image_dir)
    output = tmp_path_factory.mktemp("connect-out") / "out"
    result = imgvec("embed", image_dir, "-o", output, "--master", connect_url, "--model", "resnet18",
                    "--shard-size", "4")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(output)
    assert sorted(table.column("path").to_pylist()) == sorted(f"file:{p}" for p in inputs)
    assert table.column("error").null_count == len(inputs) - 2
    assert f"succeeded {len(inputs) - 2}, failed 2" in result.stdout
    lost = sorted(output.glob("part-*.parquet"))[0]  # a part lost: --resume joins on the server, embeds it again
    missing = pq.read_table(lost).num_rows
    lost.unlink()
    resumed = imgvec("embed", image_dir, "-o", output, "--master", connect_url, "--model", "resnet18", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{missing} images in" in resumed.stdout and f"{len(inputs) - missing} already in" in resumed.stdout
    assert sorted(pq.read_table(output).column("path").to_pylist()) == sorted(f"file:{p}" for p in inputs)


def test_index_and_clustered_dupes_on_spark_connect(connect_url, tmp_path):
    output = tmp_path / "vectors"
    vectors_output(output, clustered_vectors(3_000, 16, seed=2))
    built = imgvec("index", output, "--index-type", "ivf-flat", "-q", "--master", connect_url)
    assert built.returncode == 0, built.stderr
    assert_no_jvm_lines(built.stderr)
    assert json.loads((output / "_imgvec_index" / "index.json").read_text())["recall_at_10"] >= 0.95
    similar = json.loads(imgvec("similar", output, "img/00000003.jpg", "--json").stdout)[0]
    assert similar["search"].startswith("ivf-flat index") and len(similar["matches"]) == 10
    exact = json.loads(imgvec("dupes", output, "--threshold", "0.9", "--json").stdout)
    clustered = imgvec("dupes", output, "--threshold", "0.9", "--clusters", "3", "--json", "-q",
                       "--master", connect_url)
    assert clustered.returncode == 0, clustered.stderr
    assert_no_jvm_lines(clustered.stderr)
    found = json.loads(clustered.stdout)
    assert found["search"].startswith("clustered: 3 k-means clusters") and exact["search"] == "exact"
    truth, files = grouped_files(exact), grouped_files(found)
    assert truth and files <= truth and len(files & truth) / len(truth) >= 0.95
