"""Shared fixtures. TORCH_HOME (and IMGVEC_CACHE) are set at import, before any JVM starts: Spark workers inherit it."""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import tempfile

import pytest

os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="imgvec-test-torch-home-")
atexit.register(shutil.rmtree, os.environ["TORCH_HOME"], ignore_errors=True)  # the seeded weights: GBs a suite
# The engines' exports inside it: hidden from the cluster's and Connect's workers with the weights.
os.environ["IMGVEC_CACHE"] = os.path.join(os.environ["TORCH_HOME"], "imgvec")

# Fixtures that start Spark (a session, a Spark Connect server, or the `imgvec` command's embed): their tests are Spark
# tests; tests that start Spark otherwise carry @pytest.mark.spark themselves.
STARTS_SPARK = {"spark", "cluster_session", "connect_url", "connect_session", "two_cpu_tasks", "embedded",
                "photos_output", "planted", "old_and_new", "copies_output", "gallery_collection"}
NO_SPARK_HOME = os.path.join(tempfile.gettempdir(), "imgvec-quick-tier-starts-no-spark")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if STARTS_SPARK & set(item.fixturenames):
            item.add_marker(pytest.mark.spark)
    if "slow" not in config.getoption("markexpr"):  # slow tests run only when asked for by name: -m slow
        slow = [item for item in items if item.get_closest_marker("slow")]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if not item.get_closest_marker("slow")]


def pytest_collection_finish(session):
    """A run without Spark tests (the quick tier, -m "not spark") cannot start Spark: pyspark finds no Spark there, so
    a test that starts it without the mark fails instead of making the quick tier slow."""
    if not any(item.get_closest_marker("spark") for item in session.items):
        os.environ["SPARK_HOME"] = NO_SPARK_HOME


from helpers import EXAMPLES, classic_session, clustered_vectors, seed_default_weights, vectors_output  # noqa: E402  (after TORCH_HOME)


@pytest.fixture(scope="session")
def resnet50_default():
    """The torch hub cache holds a 'pretrained' resnet50 file (deterministic, not ImageNet)."""
    return seed_default_weights("resnet50")


@pytest.fixture(scope="session")
def resnet18_default():
    return seed_default_weights("resnet18")


@pytest.fixture(scope="session")
def example_paths() -> list[pathlib.Path]:
    return sorted(EXAMPLES.iterdir())


@pytest.fixture(scope="session")
def example_bytes(example_paths) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in example_paths}


@pytest.fixture(scope="module")
def spark():
    session = classic_session("local[2]")
    yield session
    session.stop()


@pytest.fixture
def image_dir(tmp_path, example_bytes):
    """The example photos plus two broken files, in a nested folder."""
    (tmp_path / "nested").mkdir()
    for i, (name, data) in enumerate(sorted(example_bytes.items())):
        (tmp_path / ("nested" if i % 2 else "") / name).write_bytes(data)
    (tmp_path / "broken.jpg").write_bytes(example_bytes["chelsea.jpg"][:2000])
    (tmp_path / "nested" / "notes.txt").write_bytes(b"not an image")
    return tmp_path


@pytest.fixture(scope="session")
def generated(tmp_path_factory):
    """30,000 clustered 64-d vectors: past the size where imgvec stops being exact by default (dupes and index)."""
    from imgvec.kernels.similarity import normalise

    folder = tmp_path_factory.mktemp("generated") / "vectors"
    vectors = clustered_vectors(30_000, 64)
    vectors_output(folder, vectors)
    return folder, normalise(vectors)
