"""`imgvec embed`, the batch job: one Spark task per shard, each writing its own part, only counts to the driver
(Spark's own event log says each task's result size); nothing lost, nothing trusted: a killed Python worker, very
large images, the bad-input corpus through the real command, and no shell anywhere.
"""

import functools
import glob
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from pyspark import cloudpickle
from torch import nn

from corpus import corpus
from helpers import (
    EXAMPLES,
    SPARK,
    classic_session,
    example_samples,
    huggingface_table,
    img2dataset_table,
    imgvec,
    imgvec_here,
    max_relative_difference,
    webdataset_shards,
)
from imgvec import ImageVectorizer, ModelEntry, Preprocess
from imgvec.batch.embed import embed

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
    logs = glob.glob(os.path.join(event_log_dir, "**", "*"), recursive=True)  # Spark 4: a folder per app; 3.5: a file
    for log in (path for path in logs if os.path.isfile(path) and not os.path.basename(path).startswith(".")):
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


@pytest.mark.spark35
@pytest.mark.spark
def test_one_task_per_piece_and_only_counts_reach_the_driver(tmp_path):
    spark = classic_session("local[2]", **event_log(tmp_path / "events"))
    try:
        small = embed([photos(tmp_path / "small", 1)], str(tmp_path / "o1"), model="resnet18", weights="random",
                      shard_size=2, quiet=True, spark=spark)  # 10 images of 512 floats in 5 shards
        large = embed([photos(tmp_path / "large", 6)], str(tmp_path / "o2"), model="resnet50", weights="random",
                      shard_size=12, quiet=True, spark=spark)  # 60 images of 2048 floats in 5 shards
    finally:
        spark.stop()
    assert (small.tasks, small.processed, large.tasks, large.processed) == (5, 10, 5, 60)
    assert sorted(os.listdir(tmp_path / "o2")) == ["_imgvec.json"] + [f"part-0000-{n:06d}-0000.parquet"
                                                                      for n in range(5)]
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


@pytest.mark.spark
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
        summary = embed([inputs], str(output), model=entry, weights="random", shard_size=20, quiet=True, spark=spark,
                        engine="torch")  # the workers' torch: an engine's export would trace it on the driver
    finally:
        spark.stop()
    failed = [t for t in imgvec_tasks(tmp_path / "events") if t["reason"] != "Success"]
    assert killed, "no worker was caught writing a part"
    assert failed, "Spark saw no task die"  # and so it ran the task again
    assert summary.processed == 40 and summary.failed == 0
    paths = pq.read_table(output).column("path").to_pylist()  # what any reader sees: whole parts only
    assert len(paths) == 40 and len(set(paths)) == 40
    assert sorted(n for n in os.listdir(output) if n.startswith("part-")) == [
        "part-0000-000000-0000.parquet", "part-0000-000001-0000.parquet"]


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
        # torch on the workers: an engine's export would run its first forward pass here, on the driver
        out = ImageVectorizer(entry, weights="random", batch_size=4, engine="torch").process_images(df)
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


# --- corpora as large collections come ------------------------------------------------------------------------------

RANDOM = ["--model", "resnet18", "--weights", "random"]


@functools.cache
def example_features() -> dict:
    """{caption (the example's file name): its features}, embedded as bytes in this process."""
    vectorizer = ImageVectorizer("resnet18", weights="random")
    return {caption: vectorizer.extract_features(data) for _, data, caption in example_samples()}


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def assert_like_the_files(rows, name_of) -> None:
    """Every row without an error has the features of the example file `name_of(row)` names (cosine >= 0.9999)."""
    reference = example_features()
    for row in rows:
        if row["error"] is None:
            assert cosine(row["features"], reference[name_of(row)]) >= 0.9999, row["path"]


@pytest.mark.spark35
@pytest.mark.spark
def test_webdataset_tars_embed_one_row_per_sample_as_their_files_do(tmp_path, capsys):
    samples = example_samples()
    broken = ("000000100", b"\xff\xd8\xff not a jpeg at all", "broken.jpg")
    twin = ("000000101", samples[0][1], samples[0][2])  # the same bytes again: dupes shows both, read from the tar
    tars = webdataset_shards(tmp_path / "shards", [*samples, broken, twin], per_tar=5)
    output = tmp_path / "out"
    shards = str(tmp_path / "shards" / "{00000..00002}.tar")
    result = imgvec_here(capsys, "embed", shards, "-o", output, *RANDOM, "--shard-size", "2", "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    assert "12 images in" in result.stdout and "failed 1 (corrupt 1)" in result.stdout, result.stdout
    rows = pq.read_table(output).to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(f"file:{tars[i // 5]}#{key}.jpg"
                                                     for i, (key, _, _) in enumerate([*samples, broken, twin]))
    assert {r["caption"] for r in rows} == {c for _, _, c in [*samples, broken]}  # captions carried
    assert all(json.loads(r["json"])["key"] in r["path"] for r in rows)
    assert [r["caption"] for r in rows if r["error"]] == ["broken.jpg"]
    assert_like_the_files(rows, lambda row: row["caption"])
    assert len(os.listdir(output)) == 1 + 7  # metadata, and parts of at most 2 samples: 5 + 5 + 2 in 3 + 3 + 1

    resumed = imgvec_here(capsys, "embed", shards, "-o", output, *RANDOM, "--resume", "-q", *SPARK)
    assert resumed.returncode == 0, resumed.stderr
    assert "0 images in" in resumed.stdout and "12 already in the output" in resumed.stdout

    page = tmp_path / "dupes.html"
    found = imgvec_here(capsys, "dupes", output, "--threshold", "0.999", "--html", page, "--json")
    assert found.returncode == 0, found.stderr
    assert [sorted(m["path"] for m in g["members"]) for g in json.loads(found.stdout)["groups"]] == [
        sorted([f"file:{tars[0]}#000000000.jpg", f"file:{tars[2]}#000000101.jpg"])]
    html = page.read_text()
    assert html.count("src='data:image/jpeg;base64,") == 2 and "class=missing" not in html  # thumbnails decoded
    assert_similar_page_reads_back(capsys, output, f"file:{tars[0]}#000000000.jpg", tmp_path / "similar.html")


def assert_similar_page_reads_back(capsys, output, query: str, page) -> None:
    """similar --html shows the query and its matches from where the output says their images are (a tar's member,
    a table's row): every thumbnail decoded."""
    found = imgvec_here(capsys, "similar", output, query, "-k", "3", "--html", page, "--json")
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)[0]["matches"]) == 3
    html = page.read_text()
    assert html.count("src='data:image/jpeg;base64,") == 4 and "class=missing" not in html, html[-2000:]


@pytest.mark.spark35
@pytest.mark.spark
def test_tables_and_manifests_embed_as_their_files_do(tmp_path, capsys):
    samples = example_samples()
    huggingface_table(tmp_path / "hf.parquet", samples)
    img2dataset_table(tmp_path / "img2dataset.parquet", samples)
    import gzip

    manifest = tmp_path / "manifest.txt.gz"  # gzipped, and naming two photos twice: each embedded once
    listed = [f"file:{EXAMPLES / c}" for _, _, c in samples] + [f"file:{tmp_path}/gone.jpg"]
    manifest.write_bytes(gzip.compress("".join(f"{p}\n" for p in [*listed, *listed[:2]]).encode()))
    outputs = {}
    for name, args in {"hf": [tmp_path / "hf.parquet"], "img2dataset": [tmp_path / "img2dataset.parquet"],
                       "manifest": ["--manifest", manifest]}.items():
        outputs[name] = tmp_path / name
        result = imgvec_here(capsys, "embed", *args, "-o", outputs[name], *RANDOM, "--shard-size", "4", "-q", *SPARK)
        assert result.returncode == 0, result.stderr
        if name == "manifest":
            assert "2 repeated entries of the manifest skipped" in result.stdout, result.stdout
    hf = pq.read_table(outputs["hf"]).to_pylist()
    assert sorted(r["path"] for r in hf) == sorted(c for _, _, c in samples)  # named by the struct's own paths
    assert all(r["input"].startswith(f"file:{tmp_path}/hf.parquet#row=") for r in hf)
    assert_like_the_files(hf, lambda row: row["path"])
    assert_similar_page_reads_back(capsys, outputs["hf"], samples[0][2], tmp_path / "similar.html")
    crawled = pq.read_table(outputs["img2dataset"]).to_pylist()
    assert sorted(r["path"] for r in crawled) == [f"{i:09d}" for i in range(len(samples) + 1)]  # named by key
    assert [r["error"] for r in crawled if r["error"]] == ["missing: not downloaded (failed_to_download)"]
    assert_like_the_files(crawled, lambda row: row["caption"])  # caption kept by default
    rows = pq.read_table(outputs["manifest"]).to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(listed)
    assert [r["error"].split(":")[0] for r in rows if r["error"]] == ["missing"]
    assert_like_the_files(rows, lambda row: row["path"].rsplit("/", 1)[1])
    assert sum(r["error"] is None for r in rows) == len(samples) == sum(r["error"] is None for r in hf)


def test_a_flat_folder_listed_into_a_file_embeds_as_a_named_plan_does(spark, image_dir, tmp_path_factory,
                                                                      monkeypatch):
    """Past LISTED_MAX files the driver streams its listing into OUTPUT/_imgvec_inputs/files.parquet and the tasks
    read their row groups: the same rows as a plan that names the files; a resume lists again and adds nothing;
    --overwrite takes the listing for imgvec's own."""
    from imgvec.inputs import pieces, sources

    tmp_path = tmp_path_factory.mktemp("outputs")  # apart from the inputs (image_dir)
    named = embed([str(image_dir)], str(tmp_path / "named"), model="resnet18", weights="random", shard_size=2,
                  quiet=True, spark=spark)
    monkeypatch.setattr(sources, "LISTED_MAX", 3)
    monkeypatch.setattr(pieces, "LISTING_GROUP", 4)
    output = tmp_path / "listed"
    listed = embed([str(image_dir)], str(output), model="resnet18", weights="random", shard_size=2, quiet=True,
                   spark=spark)
    assert (output / "_imgvec_inputs" / "files.parquet").is_file()
    assert (named.tasks, listed.tasks) == (4, 3)  # six files here: named by twos, or listed in row groups of four
    expected = {r["path"]: r for r in pq.read_table(tmp_path / "named").to_pylist()}
    rows = pq.read_table(output).to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(expected) and len(rows) == 12
    for row in rows:
        assert row["error"] == expected[row["path"]]["error"]
        if row["features"] is not None:
            assert max_relative_difference(row["features"], expected[row["path"]]["features"]) <= 1e-5
    resumed = embed([str(image_dir)], str(output), model="resnet18", weights="random", resume=True, quiet=True,
                    spark=spark)
    assert resumed.processed == 0 and resumed.skipped == 12
    embed([str(image_dir)], str(output), model="resnet18", weights="random", overwrite=True, quiet=True, spark=spark)
    assert pq.read_table(output).num_rows == 12


@pytest.mark.spark
def test_compressed_and_repeating_manifests_embed_each_path_once(tmp_path, capsys):
    """A gzipped CSV manifest is converted once into a Parquet listing (gzipped text: the test above); a path listed
    twice is embedded once, whether the repeats fall in one piece or in several (a Parquet manifest's row groups),
    and the summary says how many; a resumed run adds nothing and converts nothing again."""
    import gzip

    import pyarrow as pa

    paths = [f"file:{p}" for p in sorted(EXAMPLES.iterdir())[:5]]
    listed = [*paths, paths[0], paths[3], paths[0]]  # 5 paths, 3 entries repeating them
    (tmp_path / "list.csv.gz").write_bytes(gzip.compress(("uri,n\n" + "".join(f"{p},{i}\n" for i, p in enumerate(
        listed))).encode()))
    pq.write_table(pa.table({"uri": listed}), tmp_path / "list.parquet", row_group_size=3)  # repeats across groups
    for manifest, more in (("list.parquet", ["--path-col", "uri"]), ("list.csv.gz", ["--path-col", "uri"])):
        output = tmp_path / manifest.replace(".", "-")
        result = imgvec_here(capsys, "embed", "--manifest", tmp_path / manifest, *more, "-o", output, *RANDOM, "-q",
                             *SPARK)
        assert result.returncode == 0, result.stderr
        assert "5 images in" in result.stdout and "3 repeated entries of the manifest skipped" in result.stdout, (
            manifest, result.stdout)
        rows = pq.read_table(output).to_pylist()
        assert sorted(r["path"] for r in rows) == sorted(paths) and all(r["error"] is None for r in rows), manifest
    converted = list((output / "_imgvec_inputs").iterdir())  # the CSV.gz, streamed into a Parquet listing
    assert len(converted) == 1 and pq.read_table(converted[0]).column("path").to_pylist() == listed
    written = converted[0].stat().st_mtime_ns
    resumed = imgvec_here(capsys, "embed", "--manifest", tmp_path / "list.csv.gz", "--path-col", "uri", "-o", output,
                          *RANDOM, "--resume", "-q", *SPARK)
    assert resumed.returncode == 0, resumed.stderr
    assert "0 images in" in resumed.stdout and "5 already in the output" in resumed.stdout, resumed.stdout
    assert pq.read_table(output).num_rows == 5
    assert list((output / "_imgvec_inputs").iterdir()) == converted and converted[0].stat().st_mtime_ns == written


@pytest.mark.spark
def test_an_s3_inventory_of_csv_gz_files_embeds_from_the_listing_they_become(tmp_path, capsys):
    """An S3 Inventory's CSV.gz files are streamed once into OUTPUT/_imgvec_inputs/inventory-<key>.parquet, planned
    by row group (here the objects of a copy of the bucket, by --prefix): every object once, features as its file's;
    a resumed run adds nothing and converts nothing again."""
    import gzip

    config = tmp_path / "inventory" / "photos" / "daily"
    (config / "data").mkdir(parents=True)
    (config / "2026-12-07T00-00Z").mkdir()
    names = sorted(p.name for p in EXAMPLES.iterdir())
    rows = [f'"photos","{name}","1"' for name in names]
    for number, part in enumerate((rows[:6], rows[6:])):
        (config / "data" / f"{number}.csv.gz").write_bytes(gzip.compress(("\n".join(part) + "\n").encode()))
    manifest = config / "2026-12-07T00-00Z" / "manifest.json"
    manifest.write_text(json.dumps({"sourceBucket": "photos", "destinationBucket": "arn:aws:s3:::inventory",
                                    "fileFormat": "CSV", "fileSchema": "Bucket, Key, Size",
                                    "files": [{"key": f"inventory/photos/daily/data/{n}.csv.gz"} for n in (0, 1)]}))
    output = tmp_path / "out"
    args = ("embed", "--manifest", manifest, "--prefix", f"{EXAMPLES}/", "-o", output, *RANDOM, "-q", *SPARK)
    result = imgvec_here(capsys, *args)
    assert result.returncode == 0, result.stderr
    assert f"{len(names)} images in" in result.stdout, result.stdout
    table = pq.read_table(output).to_pylist()
    assert sorted(r["path"] for r in table) == [f"{EXAMPLES}/{n}" for n in names]
    assert_like_the_files(table, lambda row: row["path"].rsplit("/", 1)[1])
    [converted] = (output / "_imgvec_inputs").iterdir()
    assert converted.name.startswith("inventory-") and pq.read_table(converted).num_rows == len(names)
    written = converted.stat().st_mtime_ns
    resumed = imgvec_here(capsys, *args, "--resume")
    assert resumed.returncode == 0 and f"{len(names)} already in the output" in resumed.stdout, resumed.stdout
    assert pq.read_table(output).num_rows == len(names) and converted.stat().st_mtime_ns == written
