"""Nothing lost, nothing trusted: a killed Python worker, very large images, the bad-input corpus
through the real command, and no shell anywhere."""

import functools
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest
from pyspark import cloudpickle
from torch import nn

from corpus import corpus
from helpers import SPARK, classic_session, imgvec
from imgvec import ImageVectorizer, ModelEntry, Preprocess

# The model below is defined in this test module, which Spark's Python workers cannot import.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class KillsItsWorkerOnce(nn.Module):
    """A small real network whose first forward pass anywhere SIGKILLs the process running it."""

    def __init__(self, flag: str):
        super().__init__()
        self.flag = flag
        self.conv = nn.Conv2d(3, 8, 3, stride=4)

    def forward(self, x):
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # exactly one process wins
        except FileExistsError:
            return self.conv(x).mean(dim=(2, 3))
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.spark
def test_a_python_worker_killed_mid_task_is_retried_and_nothing_is_lost_or_doubled(tmp_path, example_bytes):
    spark = classic_session("local[2,4]")  # local mode that retries a failed task up to 4 times
    try:
        flag = str(tmp_path / "killed-pid")
        entry = ModelEntry("kills-its-worker-once", 8, Preprocess(resize=64, crop=56),
                           build=functools.partial(KillsItsWorkerOnce, flag))
        rows = [(f"{i}-{name}", data) for i in range(3) for name, data in example_bytes.items()]
        df = spark.createDataFrame(rows, "name string, content binary").repartition(6)
        out = ImageVectorizer(entry, weights="random", batch_size=4).process_images(df)
        result = out.select("name", "features", "error").collect()

        killed = int(pathlib.Path(flag).read_text())
        assert killed != os.getpid()  # a Python worker died, not the driver
        names = [r.name for r in result]
        assert sorted(names) == sorted(name for name, _ in rows) and len(set(names)) == len(rows)
        assert all(r.error is None and len(r.features) == 8 for r in result)
        status = spark.sparkContext.statusTracker()
        failed = sum(status.getStageInfo(s).numFailedTasks for j in status.getJobIdsForGroup()
                     for s in status.getJobInfo(j).stageIds if status.getStageInfo(s))
        assert failed >= 1  # Spark saw the task fail and ran it again
    finally:
        spark.stop()


def test_memory_stays_bounded_with_a_batch_of_very_large_photos(tmp_path):
    """Each decode thread holds one full-size image at a time; the batch holds only small crops."""
    script = textwrap.dedent("""
        import io, resource
        import torch
        from PIL import Image
        from imgvec import ImageVectorizer
        def peak_mb():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        big = []
        for i in range(6):  # 6 photos of 7000x5000 = 35 megapixels each
            image = Image.linear_gradient("L").resize((7000, 5000)).convert("RGB").rotate(i)
            buffer = io.BytesIO(); image.save(buffer, "JPEG", quality=80); big.append(buffer.getvalue())
        del image, buffer
        torch.set_num_threads(2)  # so two decode threads
        v = ImageVectorizer("resnet18", weights="random", batch_size=6, device="cpu")
        small = io.BytesIO(); Image.new("RGB", (640, 480)).save(small, "JPEG")
        v.embed([small.getvalue()] * 6)
        baseline = peak_mb()
        features, errors = v.embed(big)
        assert errors == [None] * 6, errors
        rejected = ImageVectorizer("resnet18", weights="random", max_pixels=30_000_000).embed(big[:1])[1][0]
        print(baseline, peak_mb(), rejected)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    baseline, peak, rejected = result.stdout.split(maxsplit=2)
    one_image_mb = 7000 * 5000 * 3 / 2**20  # 100 MB of RGB pixels
    assert float(peak) - float(baseline) < 4 * one_image_mb, (baseline, peak)  # not 6 images at once
    assert rejected.strip() == "too_large: 7000x5000 pixels is over the limit of 30000000"


@pytest.mark.spark
def test_the_bad_input_corpus_through_the_real_command(tmp_path):

    items = corpus()
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name, (data, _) in items.items():
        (folder / f"{name}.jpg").write_bytes(data)  # every file claims to be a JPEG
    result = imgvec("embed", folder, "-o", tmp_path / "out", "--model", "resnet18", "--weights", "random",
                    "--shard-size", "16", "-q", *SPARK, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = {os.path.basename(r["path"])[:-4]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    assert len(rows) == pq.read_table(tmp_path / "out").num_rows == len(items)
    for name, (_, expected) in items.items():
        row = rows[name]
        if expected == "ok":
            assert row["error"] is None and len(row["features"]) == 512, (name, row["error"])
        else:
            kind = row["error"].split(":")[0]
            assert row["features"] is None and (kind == expected or expected == "any_error"), (name, row["error"])
    good = sum(expected == "ok" for _, expected in items.values())
    assert f"succeeded {good}, failed {len(items) - good}" in result.stdout


def test_no_shell_is_ever_built_from_inputs_or_arguments():
    source = pathlib.Path(__file__).resolve().parent.parent / "src" / "imgvec"
    risky = re.compile(r"shell=True|os\.system\(|os\.popen\(|(?<![.\w])(eval|exec)\(")
    # Processes only where no input or argument reaches them: the JDK's own java on Spark's own jars
    # (the class archive), and a pipe for the driver JVM's output.
    processes = {"jvm.py", "jobs.py"}
    for path in source.glob("*.py"):
        text = path.read_text()
        found = risky.search(text)
        assert found is None, f"{path.name} uses {found.group(0)}"
        assert path.name in processes or not re.search(r"\bsubprocess\b", text), f"{path.name} starts processes"
