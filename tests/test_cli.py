"""The `imgvec` command, run for real (subprocesses, local Spark, real photos and real weights)."""

import argparse
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import (
    EXAMPLES,
    IMGVEC,
    SPARK,
    assert_no_jvm_lines,
    assert_usage_error,
    clustered_vectors,
    imgvec,
    imgvec_here,
    vectors_output,
)
from imgvec.base.progress import Progress
from imgvec.cli.parser import _size
from imgvec.dataset.lock import LockError
from imgvec.dataset.output import FeatureDataset
from imgvec.dataset.writing import held_for_writing


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The examples, a smaller re-encoded copy of one of them, and a broken file."""
    folder = tmp_path_factory.mktemp("photos")
    for path in EXAMPLES.iterdir():
        shutil.copy(path, folder / path.name)
    copy = Image.open(EXAMPLES / "chelsea.jpg").resize((300, 200))
    copy.save(folder / "chelsea_small_copy.jpg", quality=70)
    (folder / "broken.jpg").write_bytes((EXAMPLES / "coffee.jpg").read_bytes()[:3000])
    return folder


@pytest.fixture(scope="module")
def embedded(photos, tmp_path_factory):
    """One real run with the offline pretrained model, shared by the read-only tests below."""
    output = tmp_path_factory.mktemp("out") / "vectors"
    result = imgvec("embed", photos, "-o", output, "--model", "efficientnet_lite0", *SPARK)
    assert result.returncode == 0, result.stderr
    assert_no_jvm_lines(result.stderr)
    return output, result


def test_embed_writes_the_dataset_and_a_summary(embedded, photos):
    output, result = embedded
    table = pq.read_table(output)  # a plain Parquet dataset: any reader works
    assert table.schema.field("path").type == pa.string()
    assert table.schema.field("features").type == pa.list_(pa.float32())
    assert table.schema.field("error").type == pa.string()
    assert sorted(os.path.basename(p) for p in table.column("path").to_pylist()) == sorted(os.listdir(photos))
    rows = {os.path.basename(r["path"]): r for r in table.to_pylist()}
    assert rows["broken.jpg"]["features"] is None and rows["broken.jpg"]["error"].startswith("truncated:")
    assert all(len(r["features"]) == 1280 and r["error"] is None for n, r in rows.items() if n != "broken.jpg")
    metadata = json.loads((output / "_imgvec.json").read_text())
    assert metadata["model"] == "efficientnet_lite0" and metadata["dim"] == 1280
    assert len(metadata["weights_sha256"]) == 64 and metadata["imgvec_version"]
    assert (metadata["total"], metadata["succeeded"], metadata["failed"]) == (12, 11, 1)
    assert metadata["error_kinds"] == {"truncated": 1}
    assert "12 images in" in result.stdout and "succeeded 11, failed 1 (truncated 1)" in result.stdout
    assert str(output) in result.stdout
    spent = re.search(r"time in (\d+) tasks?: reading ([\d.]+) s, decoding and the network ([\d.]+) s, writing "
                      r"([\d.]+) s", result.stdout)  # where the time went, summed over the tasks
    assert spent and int(spent[1]) >= 1 and float(spent[3]) > 0, result.stdout  # writing two small parts: ~0.0 s
    assert "12/12 images" in result.stderr  # progress: plain lines, stderr is not a terminal


def test_similar_finds_the_other_half_of_the_stereo_pair(embedded, photos):
    output, _ = embedded
    result = imgvec("similar", output, photos / "motorcycle_left.jpg", "-k", "3", "--json")  # a path in OUTPUT
    assert result.returncode == 0, result.stderr
    matches = json.loads(result.stdout)[0]["matches"]
    assert matches[0]["path"].endswith("motorcycle_right.jpg") and matches[0]["similarity"] > 0.8
    assert matches[1]["similarity"] < 0.5 and len(matches) == 3
    assert not any(m["path"].endswith("motorcycle_left.jpg") for m in matches)  # the query itself


def test_similar_embeds_a_query_image_that_is_not_in_the_output(embedded, tmp_path):
    output, _ = embedded
    query = tmp_path / "cat_query.png"
    Image.open(EXAMPLES / "chelsea.jpg").rotate(8).crop((30, 30, 420, 280)).save(query)
    result = imgvec("similar", output, query, "-k", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["search: exact search", f"query: {query}"]  # no index was built
    assert {line.split()[-1].rsplit("/", 1)[-1] for line in lines[2:4]} == {"chelsea.jpg", "chelsea_small_copy.jpg"}


def test_dupes_groups_the_really_alike_photos(embedded):
    output, _ = embedded
    result = imgvec("dupes", output, "--threshold", "0.85", "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    groups = [sorted(os.path.basename(m["path"]) for m in g["members"]) for g in found["groups"]]
    expected = [["chelsea.jpg", "chelsea_small_copy.jpg"], ["motorcycle_left.jpg", "motorcycle_right.jpg"]]
    assert sorted(groups) == expected and {g["kind"] for g in found["groups"]} == {"near"}
    assert (found["images"], found["search"]) == (11, "exact")
    text = imgvec("dupes", output, "--threshold", "0.85")
    assert text.stdout.startswith("2 groups among 11 images (cosine >= 0.85; exact;")
    assert "0 of byte-identical files, 2 of near-duplicates" in text.stdout.splitlines()[0]


@pytest.mark.parametrize("args", [["dupes", "{out}", "--threshold", "-1", "--keep", "first"],
                                  ["dupes", "{out}", "--threshold", "0.85", "--json"],
                                  ["similar", "{out}", "{photos}/motorcycle_left.jpg", "--json"],
                                  ["models"], ["info", "{out}"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(embedded, photos, args):
    """As coreutils do: no traceback, nothing more written, and 141 (128 + SIGPIPE) as the shell reports for them."""
    output, _ = embedded
    command = [IMGVEC, *(a.format(out=output, photos=photos) for a in args)]
    if "--keep" in args:  # as a user types it (whether head closes before the last write depends on timing)
        shell = subprocess.run(["bash", "-c", "set -o pipefail; " + " ".join(map(shlex.quote, command)) + " | head -1"],
                               capture_output=True, text=True, timeout=120)
        assert len(shell.stdout.splitlines()) == 1 and shell.returncode in (0, 141), shell
        assert "Traceback" not in shell.stderr and "Error" not in shell.stderr, shell.stderr
    # the pipe closed before the first line: the write always finds no reader
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "Error" not in stderr and "Exception ignored" not in stderr, stderr


def test_info_and_models(embedded):
    output, _ = embedded
    info = json.loads(imgvec("info", output, "--json").stdout)
    assert (info["total"], info["failed"], info["model"], info["parts"]) == (12, 1, "efficientnet_lite0", 2)  # 2 shards
    models = imgvec("models")
    assert models.returncode == 0
    lines = {line.split()[0]: line for line in models.stdout.splitlines()[1:]}
    assert set(lines) >= {"resnet50", "resnet18", "efficientnet_b0", "convnext_tiny", "efficientnet_lite0"}
    assert " 1280  yes" in lines["efficientnet_lite0"] and "  768  no " in lines["convnext_tiny"]


@pytest.mark.parametrize("args,fragment", [
    (["embed", "/no/such/folder", "-o", "{tmp}/o", "--model", "resnet18", "--weights", "random"],
     "does not exist"),
    (["embed", "{photos}", "-o", "{tmp}/o", "--model", "resnet-50"], "unknown model 'resnet-50'"),
    (["embed", "{photos}", "-o", "{tmp}/o", "--model", "convnext_tiny"], "not in the torch hub cache"),
    (["embed", "{photos}", "-o", "{tmp}/o", "--weights", "/no/w.pt"], "does not exist"),
    (["embed", "{photos}", "-o", "{existing}", "--model", "efficientnet_lite0"],
     "already exists; pass --resume"),
    (["embed", "{photos}", "-o", "{existing}", "--resume", "--model", "resnet18", "--weights", "random"],
     "would mix two models"),
    (["embed", "{photos}", "-o", "{tmp}/o", "--max-error-rate", "5"], "--max-error-rate is a share"),
    (["embed", "{photos}"], "the following arguments are required: -o/--output"),
    (["embed", "{photos}", "-o", "{tmp}/o", "--batch-size", "0"], "batch_size must be a positive int"),
    (["similar", "{existing}", "/no/such.jpg"], "neither an image file nor a path"),
    (["info", "{tmp}"], "is not an imgvec output"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_usage_and_configuration_errors_exit_2_in_one_line(embedded, photos, tmp_path, args, fragment):
    existing, _ = embedded
    args = [a.format(tmp=tmp_path, photos=photos, existing=existing) for a in args]
    started = time.monotonic()
    assert_usage_error(imgvec(*args, *(SPARK if args[0] == "embed" else [])), fragment)
    assert time.monotonic() - started < 60


@pytest.mark.spark
def test_max_error_rate_exceeded_exits_3_after_writing_everything(photos, tmp_path, capsys):
    result = imgvec_here(capsys, "embed", photos, "-o", tmp_path / "o", "--model", "resnet18", "--weights", "random",
                         "--max-error-rate", "0.01", "-q", *SPARK)
    assert result.returncode == 3, result.stderr
    assert "above --max-error-rate" in result.stderr and "[" not in result.stderr.replace("[2]", "")
    assert pq.read_table(tmp_path / "o").num_rows == 12


def test_overwrite_replaces(embedded, photos, tmp_path, capsys):
    output = tmp_path / "o"
    shutil.copytree(embedded[0], output)
    result = imgvec_here(capsys, "embed", EXAMPLES / "rocket.jpg", "-o", output, "--overwrite", "--model", "resnet18",
                         "--weights", "random", "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(output)
    assert table.num_rows == 1 and len(table.column("features")[0]) == 512


@pytest.mark.spark35
@pytest.mark.spark
def test_killed_run_resumes_with_every_input_exactly_once(tmp_path, example_bytes):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        for name, data in example_bytes.items():
            (inputs / f"{i}_{name}").write_bytes(data)
    output = tmp_path / "o"
    args = ["embed", inputs, "-o", output, "--model", "resnet18", "--weights", "random", "--shard-size", "3", *SPARK]
    process = subprocess.Popen([IMGVEC, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 240
    while not list(output.glob("part-*.parquet")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    metadata = json.loads((output / "_imgvec.json").read_text())
    second = held_for_writing(FeatureDataset(str(output)), metadata, resume=True, overwrite=False)  # a run meanwhile
    with pytest.raises(LockError, match="being written by another imgvec run"), second:
        pass
    assert process.poll() is None
    while len(list(output.glob("part-*.parquet"))) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the driver, its JVM and its Python workers, mid-run
    process.wait()
    done = pq.read_table(output).column("path").to_pylist()  # readable right after the kill
    assert 6 <= len(done) < 30 and len(done) == len(set(done))
    # a task already running may still finish its part as the JVM goes (on a busy machine, measured in CI): whole
    # parts only, which the resume counts; wait until none comes
    parts, quiet_since = set(output.glob("part-*.parquet")), time.monotonic()
    while time.monotonic() - quiet_since < 5 and time.monotonic() < deadline:
        time.sleep(0.5)
        if set(output.glob("part-*.parquet")) != parts:
            parts, quiet_since = set(output.glob("part-*.parquet")), time.monotonic()
    done = pq.read_table(output).column("path").to_pylist()
    assert len(done) < 30 and len(done) == len(set(done))

    assert (output / "_imgvec.lock").exists()  # left by the killed run, whose process is gone
    result = imgvec(*args[:-2], "--resume", *SPARK)
    assert result.returncode == 0, result.stderr
    assert f"{len(done)} already in the output (resumed)" in result.stdout
    paths = pq.read_table(output).column("path").to_pylist()
    assert len(paths) == 30 and len(set(paths)) == 30
    assert not list(output.glob(".tmp-*")) and not (output / "_imgvec.lock").exists()
    assert json.loads((output / "_imgvec.json").read_text())["total"] == 30


@pytest.mark.spark
def test_a_parquet_table_with_named_columns(tmp_path, example_bytes, capsys):
    table = pa.table({"name": list(example_bytes), "img": list(example_bytes.values())})
    pq.write_table(table, tmp_path / "images.parquet")
    result = imgvec_here(capsys, "embed", tmp_path / "images.parquet", "-o", tmp_path / "o", "--path-col", "name",
                         "--binary-col", "img", "--model", "resnet18", "--weights", "random", "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    out = pq.read_table(tmp_path / "o")
    assert sorted(out.column("path").to_pylist()) == sorted(example_bytes)
    assert out.column("error").null_count == len(example_bytes)
    wrong = imgvec_here(capsys, "embed", tmp_path / "images.parquet", "-o", tmp_path / "o2", "--binary-col", "nope",
                        "--model", "resnet18", "--weights", "random", *SPARK)
    assert_usage_error(wrong, "input column 'nope' is not in the table")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_redraws_one_line_on_a_terminal():
    stream = _Terminal()
    progress = Progress(10, stream=stream, interval=0)
    for done in range(1, 11):
        progress.update(done)
    progress.close()
    text = stream.getvalue()
    assert text.count("\r") >= 10 and text.count("\n") == 1 and "10/10 images 100%" in text
    quiet = _Terminal()
    Progress(10, stream=quiet, quiet=True).update(5, force=True)
    assert quiet.getvalue() == ""


def test_vectors_in_the_output_equal_the_library(embedded):
    from imgvec import ImageVectorizer

    output, _ = embedded
    table = pq.read_table(output).to_pylist()
    v = ImageVectorizer("efficientnet_lite0")
    for row in table[:3]:
        if row["features"] is not None:
            expected = v.extract_features(open(row["path"].removeprefix("file:"), "rb").read())
            assert np.allclose(row["features"], expected, rtol=1e-4, atol=1e-5)


def test_info_dupes_and_similar_by_path_import_neither_torch_nor_pyspark(embedded, photos):
    """These answer from the output alone: a JVM or torch would cost seconds (README, start-up)."""
    output, _ = embedded
    commands = [["info", str(output)], ["dupes", str(output)], ["dupes", str(output), "--keep", "first"],
                ["similar", str(output), str(photos / "motorcycle_left.jpg")]]
    probe = ("import sys, contextlib, io\nfrom imgvec.cli.main import main\n"
             "with contextlib.redirect_stdout(io.StringIO()): rc = main(sys.argv[1:])\n"
             "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision', 'pyspark'})\n"
             "print(rc, ' '.join(heavy) or '-')")
    for command in commands:
        result = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, timeout=60)
        assert result.stdout.split() == ["0", "-"], (command, result.stdout, result.stderr)


def test_options_and_positionals_mix_in_every_command(tmp_path, capsys):
    from imgvec.cli.parser import parse_args

    assert parse_args(["similar", "out", "-k", "3", "a.jpg", "b.jpg"]).queries == ["a.jpg", "b.jpg"]
    assert parse_args(["embed", "a", "-o", "x", "b", "--resume"]).inputs == ["a", "b"]
    assert parse_args(["dupes", "--keep", "first", "out", "--verify"]).output == "out"
    assert parse_args(["calibrate", "--json", "out"]).output == "out"
    assert parse_args(["index", "--rebuild", "out"]).output == "out"
    assert parse_args(["info", "--json", "out"]).output == "out"
    output = tmp_path / "vectors"
    vectors_output(output, clustered_vectors(40, 8))
    found = imgvec_here(capsys, "similar", output, "-k", "3", "img/00000001.jpg", "--json")  # as a user types it
    assert found.returncode == 0, found.stderr
    assert [len(r["matches"]) for r in json.loads(found.stdout)] == [3]


@pytest.mark.spark
def test_a_torchscript_model_records_its_dimension_and_every_command_works(tmp_path, capsys):
    """The documented way to bring one's own model: its output knows its dimension (it once recorded null)."""
    import torch
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()
    scripted = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(net.eval()), str(scripted))
    output = tmp_path / "vectors"
    result = imgvec_here(capsys, "embed", EXAMPLES, "-o", output, "--model", f"torchscript:{scripted}", "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    metadata = json.loads((output / "_imgvec.json").read_text())
    assert metadata["dim"] == 512
    for recorded in (512, None):  # an output made before the fix recorded null: read from a part
        (output / "_imgvec.json").write_text(json.dumps({**metadata, "dim": recorded}))
        assert json.loads(imgvec_here(capsys, "info", output, "--json").stdout)["dim"] == 512
        assert imgvec_here(capsys, "index", output, "--rebuild", "-q").returncode == 0
        query = str(EXAMPLES / "motorcycle_left.jpg")
        found = json.loads(imgvec_here(capsys, "similar", output, f"file:{query}", "-k", "2", "--json").stdout)
        assert found[0]["search"].startswith("flat index") and len(found[0]["matches"]) == 2
        assert imgvec_here(capsys, "dupes", output, "--threshold", "0.99", "--json").returncode == 0


@pytest.mark.parametrize("text,value", [("16G", 16 * 2**30), ("64K", 65536), ("1.5M", 1572864), ("100", 100),
                                        ("8gb", 8 * 2**30)])
def test_sizes(text, value):
    assert _size(text) == value


@pytest.mark.parametrize("text", ["0", "-1G", "lots"])
def test_bad_sizes(text):
    with pytest.raises(argparse.ArgumentTypeError):
        _size(text)
