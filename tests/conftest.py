"""Shared fixtures. TORCH_HOME is set at import, before any JVM starts: Spark workers inherit it."""

from __future__ import annotations

import os
import pathlib
import tempfile

import pytest

os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="imgvec-test-torch-home-")

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples" / "images"


def seed_default_weights(model_name: str, seed: int = 1234) -> str:
    """Put a deterministic state_dict where torchvision's hub cache expects its pretrained file."""
    import torch
    import torchvision.models as tvm

    from imgvec.weights import hub_checkpoint_path

    enum = {"resnet50": tvm.ResNet50_Weights, "resnet18": tvm.ResNet18_Weights}[model_name]
    path = hub_checkpoint_path(enum.DEFAULT.url)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = getattr(tvm, model_name)(weights=None)
        torch.save(net.state_dict(), path + ".tmp")
        os.replace(path + ".tmp", path)
    return path


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


def max_relative_difference(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
