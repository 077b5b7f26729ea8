"""Shared fixtures. TORCH_HOME (and IMGVEC_CACHE) are set at import, before any JVM starts: Spark workers inherit it."""

from __future__ import annotations

import os
import pathlib
import tempfile

import pytest

os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="imgvec-test-torch-home-")
# The engines' exports inside it: hidden from the cluster's and Connect's workers with the weights.
os.environ["IMGVEC_CACHE"] = os.path.join(os.environ["TORCH_HOME"], "imgvec")

from helpers import EXAMPLES, classic_session, seed_default_weights  # noqa: E402  (after TORCH_HOME)


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
