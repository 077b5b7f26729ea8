"""Tasks of several CPUs (how a GPU task is given): torch threads and the split of each chunk."""

import os

import pytest

from conftest import classic_session, files_in
from imgvec import ImageVectorizer
from imgvec.embed import chunk_settings, embed
from imgvec.sources import ImageFiles

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def two_cpu_tasks():
    spark = classic_session("local[2]", **{"spark.task.cpus": "2", "spark.executorEnv.OMP_NUM_THREADS": "7"})
    yield spark
    spark.stop()


def test_torch_threads_follow_the_tasks_cpus_not_the_environment(two_cpu_tasks, example_bytes):
    spark = two_cpu_tasks
    df = spark.createDataFrame([(n, b) for n, b in example_bytes.items()], "name string, content binary")
    assert ImageVectorizer("resnet18", weights="random").process_images(df).filter("error is null").count() == 10

    def threads(batches):
        import pandas as pd
        import torch

        for _ in batches:
            yield pd.DataFrame({"threads": [torch.get_num_threads()], "omp": [os.environ.get("OMP_NUM_THREADS")]})

    rows = spark.range(0, 1, numPartitions=1).mapInPandas(threads, "threads int, omp string").collect()
    assert (rows[0].threads, rows[0].omp) == (2, "7")  # the worker's environment said 7; the task has 2


def test_a_chunk_is_one_task_per_slot_not_per_core(two_cpu_tasks, image_dir, tmp_path_factory):
    spark = two_cpu_tasks
    assert chunk_settings(spark)["spark.sql.files.minPartitionNum"] == "1"  # 2 cores / 2 CPUs per task
    summary = embed([str(image_dir)], str(tmp_path_factory.mktemp("out")), model="resnet18", weights="random",
                    quiet=True, spark=spark)
    assert summary.processed == len(files_in(image_dir))
    source = ImageFiles([str(image_dir)])
    assert source.load(spark, source.list(spark)).rdd.getNumPartitions() == 1
