"""The GPU path: runs where CUDA exists, skipped elsewhere (the CPU path is tested everywhere)."""

import pyarrow as pa
import pytest
import torch

from helpers import max_relative_difference
from imgvec import ImageVectorizer, read_images
from imgvec.models.hardware import resolve_device

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


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
@pytest.mark.spark
def test_auto_device_on_spark_runs_each_task_on_a_gpu_and_gives_the_gpus_features(spark, image_dir, example_bytes):
    v = ImageVectorizer("resnet18", weights="random", device="auto")
    rows = v.process_images(read_images(spark, str(image_dir))).collect()
    assert sum(r.features is not None for r in rows) == len(rows) - 2
    on_gpu, _ = ImageVectorizer("resnet18", weights="random", device="cuda").embed([example_bytes["chelsea.jpg"]])
    spark_row = next(r for r in rows if r.path.endswith("chelsea.jpg"))
    assert max_relative_difference(spark_row.features, on_gpu[0]) <= 1e-4

    def devices(batches):  # what "auto" is on each task: the worker's own view
        for batch in batches:
            yield pa.RecordBatch.from_pylist([{"device": str(resolve_device("auto"))}] * batch.num_rows)

    seen = {r.device for r in spark.range(4).mapInArrow(devices, "device string").collect()}
    assert seen and all(d.startswith("cuda:") for d in seen)
