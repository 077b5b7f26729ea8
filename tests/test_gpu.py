"""The GPU path: runs where CUDA exists, skipped elsewhere (the CPU path is tested everywhere)."""

import pytest
import torch

from helpers import max_relative_difference
from imgvec import ImageVectorizer, read_images
from imgvec.models.hardware import resolve_device

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def test_auto_device_is_the_cpu_without_cuda():
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu")


@needs_cuda
def test_gpu_features_match_the_cpu(example_bytes):
    photos = list(example_bytes.values())
    cpu, _ = ImageVectorizer("resnet18", weights="random", device="cpu").embed(photos)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    gpu, _ = ImageVectorizer("resnet18", weights="random", device="cuda").embed(photos)
    assert max_relative_difference(gpu, cpu) <= 1e-3
    half, _ = ImageVectorizer("resnet18", weights="random", device="cuda", precision="fp16").embed(photos)
    assert max_relative_difference(half, cpu) <= 2e-2


@needs_cuda
def test_auto_device_on_spark_uses_the_gpu(spark, image_dir):
    v = ImageVectorizer("resnet18", weights="random", device="auto")
    rows = v.process_images(read_images(spark, str(image_dir))).collect()
    assert sum(r.features is not None for r in rows) == len(rows) - 2
