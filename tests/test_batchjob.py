"""The batch job's shape: one Spark task per shard, each writing its own part, and only counts to the driver.

Proved with Spark's own event log (each task's "Result Size", the bytes it sent to the driver)
and by killing a Python worker while it writes its part.
"""

import glob
import json
import os
import shutil
import signal
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
from pyspark import cloudpickle
from torch import nn

from helpers import EXAMPLES, classic_session
from imgvec import ModelEntry, Preprocess
from imgvec.batch.embed import embed

pytestmark = pytest.mark.spark
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the model below travels to the workers by value


def photos(folder, copies: int):
    os.makedirs(folder, exist_ok=True)
    for i in range(copies):
        for path in EXAMPLES.iterdir():
            shutil.copy(path, os.path.join(folder, f"{i}-{path.name}"))
    return str(folder)


def imgvec_tasks(event_log_dir) -> list[dict]:
    """Every finished task of imgvec's runs (their job groups), from Spark's event log: job, reason, result size."""
    job_of_stage, tasks = {}, []
    for log in glob.glob(os.path.join(event_log_dir, "**", "events_*"), recursive=True):  # Spark 4: a folder per app
        for line in open(log):
            event = json.loads(line)
            if event["Event"] == "SparkListenerJobStart":
                group = (event.get("Properties") or {}).get("spark.jobGroup.id") or ""
                if group.startswith("imgvec-"):
                    job_of_stage.update(dict.fromkeys(event["Stage IDs"], event["Job ID"]))
            elif event["Event"] == "SparkListenerTaskEnd" and event["Stage ID"] in job_of_stage:
                tasks.append({"job": job_of_stage[event["Stage ID"]], "reason": event["Task End Reason"]["Reason"],
                              "result size": (event.get("Task Metrics") or {}).get("Result Size")})
    return tasks


def event_log(folder) -> dict:
    os.makedirs(folder, exist_ok=True)
    return {"spark.eventLog.enabled": "true", "spark.eventLog.dir": str(folder), "spark.eventLog.compress": "false"}


def test_one_task_per_shard_and_only_counts_reach_the_driver(tmp_path):
    spark = classic_session("local[2]", **event_log(tmp_path / "events"))
    try:
        small = embed([photos(tmp_path / "small", 1)], str(tmp_path / "o1"), model="resnet18", weights="random",
                      shard_size=2, quiet=True, spark=spark)  # 10 images of 512 floats in 5 shards
        large = embed([photos(tmp_path / "large", 6)], str(tmp_path / "o2"), model="resnet50", weights="random",
                      shard_size=12, quiet=True, spark=spark)  # 60 images of 2048 floats in 5 shards
    finally:
        spark.stop()
    assert (small.shards, small.processed, large.shards, large.processed) == (5, 10, 5, 60)
    assert sorted(os.listdir(tmp_path / "o2")) == ["_imgvec.json"] + [f"part-0000-{n:06d}.parquet" for n in range(5)]
    jobs = sorted({t["job"] for t in imgvec_tasks(tmp_path / "events")})
    runs = [[t["result size"] for t in imgvec_tasks(tmp_path / "events") if t["job"] == job] for job in jobs]
    assert [len(r) for r in runs] == [5, 5]  # one job per run, one task per shard, nothing else
    # A shard of the large run holds 12 x 2048 x 4 = 98 KB of features and 12 names; its task sent the
    # driver ~2 KB, as a task of the small run (2 images of 512 floats) did: the size follows neither
    # the images nor their dimension.
    assert all(size < 4096 for r in runs for size in r), runs
    assert abs(max(runs[0]) - max(runs[1])) < 128, runs


class Flat(nn.Module):
    """Every pixel as a feature: 150,528 floats per image, so writing a part takes a while."""

    def forward(self, x):
        return x.flatten(1)


def test_a_python_worker_killed_while_writing_its_part(tmp_path):
    inputs, output = photos(tmp_path / "in", 4), tmp_path / "out"
    killed = []

    def kill_a_writer():  # SIGKILL the first worker seen holding a part's temporary file open
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            for fd in glob.glob("/proc/[0-9]*/fd/*"):
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                pid = int(fd.split("/")[2])
                if target.startswith(f"{output}/.tmp-") and "-part-" in target and pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return

    watcher = threading.Thread(target=kill_a_writer, daemon=True)
    spark = classic_session("local[2,4]", **event_log(tmp_path / "events"))  # retries a failed task up to 4 times
    try:
        watcher.start()
        entry = ModelEntry("flat", 3 * 224 * 224, Preprocess(), build=Flat)
        summary = embed([inputs], str(output), model=entry, weights="random", shard_size=20, quiet=True, spark=spark)
    finally:
        spark.stop()
    failed = [t for t in imgvec_tasks(tmp_path / "events") if t["reason"] != "Success"]
    assert killed, "no worker was caught writing a part"
    assert failed, "Spark saw no task die"  # and so it ran the task again
    assert summary.processed == 40 and summary.failed == 0
    paths = pq.read_table(output).column("path").to_pylist()  # what any reader sees: whole parts only
    assert len(paths) == 40 and len(set(paths)) == 40
    assert sorted(n for n in os.listdir(output) if n.startswith("part-")) == [
        "part-0000-000000.parquet", "part-0000-000001.parquet"]
