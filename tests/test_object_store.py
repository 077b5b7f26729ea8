"""A real object store (SeaweedFS's S3 API on 127.0.0.1): images in a bucket -> `imgvec embed` -> an output in
a bucket, on local Spark and on a standalone cluster, read back by `similar`, `dupes` and `info`.

Every process finds the store the way a user's would: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... in its environment.
"""

import json
import os
import shutil

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from deployments import free_port, hidden_torch_cache, object_store, standalone_cluster
from helpers import (
    EXAMPLES,
    SPARK,
    assert_usage_error,
    classic_session,
    co_member_pairs,
    example_samples,
    imgvec,
    imgvec_here,
    max_relative_difference,
    webdataset_shards,
)
from imgvec import ImageVectorizer

pytestmark = pytest.mark.spark
RANDOM = ["--model", "resnet18", "--weights", "random"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with object_store(str(tmp_path_factory.mktemp("s3"))) as env:
        yield env


@pytest.fixture(scope="module")
def bucket_fs(store):
    """The test's own client: puts photos into buckets and reads outputs back, without imgvec."""
    fs = pafs.S3FileSystem(access_key=store["AWS_ACCESS_KEY_ID"], secret_key=store["AWS_SECRET_ACCESS_KEY"],
                           endpoint_override=store["AWS_ENDPOINT_URL"].split("://")[1], scheme="http",
                           region="us-east-1", allow_bucket_creation=True)
    fs.create_dir("vectors")
    return fs


def put(fs, key: str, data: bytes) -> None:
    fs.create_dir(key.split("/", 1)[0])
    with fs.open_output_stream(key) as f:
        f.write(data)


def read_output(fs, prefix: str):
    parts = [i.path for i in fs.get_file_info(pafs.FileSelector(prefix)) if i.base_name.startswith("part-")]
    return pq.read_table(parts, filesystem=fs).to_pylist()


@pytest.fixture(scope="module")
def reference():
    v = ImageVectorizer("resnet18", weights="random")
    return {p.name: v.extract_features(p.read_bytes()) for p in EXAMPLES.iterdir()}


def assert_equal_to_local(rows, reference, prefix):
    assert sorted(r["path"] for r in rows) == sorted(prefix + name for name in reference)
    for row in rows:
        expected = reference[row["path"].rsplit("/", 1)[1]]
        assert row["error"] is None and max_relative_difference(row["features"], expected) <= 1e-4, row["path"]


@pytest.fixture
def in_store(store, monkeypatch):
    """This process finds the store as the command's would: the search commands run here (imgvec_here), without the
    ~15 s of a new interpreter each."""
    for name, value in store.items():
        monkeypatch.setenv(name, value)


def test_a_bucket_to_a_bucket_on_local_spark_then_search_and_resume(store, bucket_fs, reference, in_store, capsys):
    env = {**os.environ, **store}
    for path in EXAMPLES.iterdir():
        put(bucket_fs, f"photos/set one/{path.name}", path.read_bytes())
    put(bucket_fs, "photos/set one/.hidden/skip.jpg", b"not listed")
    result = imgvec("embed", "s3://photos/set one", "-o", "s3://vectors/run", *RANDOM, "--shard-size", "4", "-q",
                    *SPARK, env=env)
    assert result.returncode == 0, result.stderr
    assert "10 images in" in result.stdout
    assert_equal_to_local(read_output(bucket_fs, "vectors/run"), reference, "s3://photos/set one/")

    similar = imgvec_here(capsys, "similar", "s3://vectors/run", "s3://photos/set one/motorcycle_left.jpg", "-k", "2",
                          "--json")
    assert similar.returncode == 0, similar.stderr
    assert len(json.loads(similar.stdout)[0]["matches"]) == 2
    assert imgvec_here(capsys, "dupes", "s3://vectors/run", "--threshold", "0.999").returncode == 0
    info = json.loads(imgvec_here(capsys, "info", "s3://vectors/run", "--json").stdout)
    assert (info["total"], info["parts"], info["model"]) == (10, 3, "resnet18")

    for name in ("chelsea.jpg", "rocket.jpg"):  # new images since the last run
        put(bucket_fs, f"photos/set one/new/{name}", (EXAMPLES / name).read_bytes())
    resumed = imgvec("embed", "s3://photos/set one", "-o", "s3://vectors/run", *RANDOM, "--resume", "-q", *SPARK,
                     env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 images in" in resumed.stdout and "10 already in the output" in resumed.stdout
    paths = [r["path"] for r in read_output(bucket_fs, "vectors/run")]
    assert len(paths) == 12 and len(set(paths)) == 12


def test_a_flat_prefix_is_listed_a_page_at_a_time_into_the_plan(bucket_fs, in_store, tmp_path, monkeypatch):
    """S3 lists 1,000 keys a request: the driver streams those pages (boto3) into its listing file, never one list
    of the prefix; the same names, folders and hidden keys as pyarrow's whole listing."""
    from concurrent.futures import ThreadPoolExecutor

    from imgvec.base.storage import open_location
    from imgvec.inputs import sources

    keys = [f"flat/photos/{i:05d}.jpg" for i in range(1_203)] + ["flat/photos/sub/x.jpg", "flat/photos/_hidden.jpg"]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: put(bucket_fs, key, b"x"), keys))
    prefix = open_location("s3://flat/photos")
    assert sorted(prefix.stream()) == sorted((e.base_name, e.type == pafs.FileType.Directory) for e in prefix.entries())
    monkeypatch.setattr(sources, "LISTED_MAX", 500)
    source = sources.ImageFiles(("s3://flat/photos",))
    pieces = source.pieces(lambda n: 2, lambda key: open_location(str(tmp_path / f"{key}.parquet")))
    assert [(p.source.rsplit("/", 1)[1], p.part) for p in pieces] == [("files.parquet", 0), ("sub", -1)]
    assert sorted(n for p in pieces for n in source.names(p).to_pylist()) == [f"s3://{k}" for k in keys
                                                                               if "_hidden" not in k]


def test_a_bucket_on_a_cluster_whose_workers_see_nothing_of_the_driver(store, bucket_fs, reference, tmp_path,
                                                                       resnet18_default, in_store, capsys):
    """The commands run here, on one application of the cluster (as in a notebook: they take the session that is
    active), so its executors start once; tests/test_cluster.py runs the command's own process on a cluster."""
    for path in EXAMPLES.iterdir():
        put(bucket_fs, f"cluster-in/{path.name}", path.read_bytes())
    with standalone_cluster(str(tmp_path), workers=2, hidden=hidden_torch_cache(), worker_env=store) as master:
        spark = classic_session(master, **{"spark.cores.max": "2", "spark.executor.memory": "1g"})
        try:
            cluster = ["--master", master, "-q"]
            result = imgvec_here(capsys, "embed", "s3a://cluster-in/", "-o", "s3://vectors/cluster", "--model",
                                 "resnet18", "--shard-size", "3", *cluster)
            assert result.returncode == 0, result.stderr
            # the search commands on the same cluster, reading and writing the bucket
            built = imgvec_here(capsys, "index", "s3://vectors/cluster", "--index-type", "ivf-flat", *cluster)
            assert built.returncode == 0, built.stderr
            clustered = imgvec_here(capsys, "dupes", "s3://vectors/cluster", "--threshold", "0.998", "--clusters",
                                    "2", "--json", "--out", "s3://vectors/groups.parquet", *cluster)
            assert clustered.returncode == 0, clustered.stderr
            # WebDataset tars in the bucket, streamed by the cluster's workers
            samples = example_samples()
            for tar in webdataset_shards(tmp_path / "tars", [*samples, ("000000100", samples[0][1], "twin")],
                                         per_tar=6):
                put(bucket_fs, f"cluster-tars/{tar.name}", tar.read_bytes())
            tars = imgvec_here(capsys, "embed", "s3://cluster-tars/{00000..00001}.tar", "-o", "s3://vectors/tars",
                               "--model", "resnet18", "--shard-size", "4", *cluster)
            assert tars.returncode == 0, tars.stderr
        finally:
            spark.stop()
    v = ImageVectorizer("resnet18")  # the 'default' (seeded) weights, which only the driver's cache holds
    expected = {p.name: v.extract_features(p.read_bytes()) for p in EXAMPLES.iterdir()}
    assert_equal_to_local(read_output(bucket_fs, "vectors/cluster"), expected, "s3a://cluster-in/")
    similar = json.loads(imgvec_here(capsys, "similar", "s3://vectors/cluster", "s3a://cluster-in/chelsea.jpg",
                                     "--json").stdout)[0]
    assert similar["search"].startswith("ivf-flat index of 10 vectors") and len(similar["matches"]) == 9
    exact = json.loads(imgvec_here(capsys, "dupes", "s3://vectors/cluster", "--threshold", "0.998", "--json").stdout)
    found = json.loads(clustered.stdout)
    assert found["search"].startswith("clustered") and exact["search"] == "exact"
    assert co_member_pairs(exact) and co_member_pairs(found) == co_member_pairs(exact)
    written = pq.read_table("vectors/groups.parquet", filesystem=bucket_fs)
    assert written.num_rows == sum(len(g["members"]) for g in found["groups"])

    rows = read_output(bucket_fs, "vectors/tars")
    assert sorted(r["path"] for r in rows) == sorted([f"s3://cluster-tars/{i // 6:05d}.tar#{i:09d}.jpg"
                                                      for i in range(len(samples))]
                                                     + ["s3://cluster-tars/00001.tar#000000100.jpg"])
    for row in rows:  # the same features as the same photos as files
        name = row["caption"] if row["caption"] != "twin" else samples[0][2]
        assert row["error"] is None and max_relative_difference(row["features"], expected[name]) <= 1e-4
    page = tmp_path / "tars.html"  # thumbnails read back from the tars in the bucket
    twins = imgvec_here(capsys, "dupes", "s3://vectors/tars", "--threshold", "0.999", "--html", page)
    assert twins.returncode == 0, twins.stderr
    html = page.read_text()  # the twins' group (the stereo pair may be another at 0.999 with these weights)
    assert "class=missing" not in html and html.count("src='data:image/jpeg;base64,") >= 2
    assert "s3://cluster-tars/00000.tar#000000000.jpg" in html and "s3://cluster-tars/00001.tar#000000100.jpg" in html


@pytest.mark.parametrize("args,fragment", [
    (["embed", "{photos}", "-o", "foo://bucket/x"], "does not know the foo:// scheme"),
    (["embed", "{photos}", "-o", "s3://no-such-bucket/x"], "bucket 'no-such-bucket' does not exist"),
    (["embed", "s3://no-such-bucket/in", "-o", "{tmp}/o"], "bucket 'no-such-bucket' does not exist"),
    (["info", "s3://no-such-bucket/x"], "bucket 'no-such-bucket' does not exist"),
    (["embed", "{photos}", "-o", "s3://vectors/x", "--unreachable"], "cannot be reached"),
    (["embed", "s3a://vectors/", "-o", "s3://vectors/x"], "overlaps input s3a://vectors/"),
])
def test_store_mistakes_are_one_line_before_spark(store, bucket_fs, tmp_path, capsys, monkeypatch, args, fragment):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(EXAMPLES / "rocket.jpg", photos)
    for key, value in store.items():
        monkeypatch.setenv(key, value)
    if "--unreachable" in args:
        args.remove("--unreachable")
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    args = [a.format(photos=photos, tmp=tmp_path) for a in args]
    extra = [*RANDOM, "--master", "spark://127.0.0.1:9"] if args[0] == "embed" else []  # no master listens there
    assert_usage_error(imgvec_here(capsys, *args, *extra), fragment)
