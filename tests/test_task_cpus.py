"""Tasks of several CPUs (how a GPU task is given): torch threads follow the task, not the environment."""

import os

import pytest

from helpers import classic_session
from imgvec import ImageVectorizer

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
