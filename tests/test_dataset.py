"""Nothing destroyed, nothing misleading: what --overwrite may delete, outputs that overlap inputs,
damaged outputs, weights checked on the driver, and speed modes that would be slower here.

The command runs in this process (`cli.main`) where it must stop before Spark starts, and in a
subprocess where the output of the real console script matters.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchvision

from helpers import (
    EXAMPLES,
    SPARK,
    assert_usage_error,
    imgvec,
    imgvec_here,
    vectors_output,
)
from imgvec import ImageVectorizer
from imgvec.batch.embed import made_by
from imgvec.dataset import names
from imgvec.dataset.lock import LockError
from imgvec.dataset.output import FeatureDataset
from imgvec.dataset.rows import part_ids
from imgvec.dataset.searchable import parts_plan
from imgvec.dataset.writing import held_for_writing

# No Spark master listens here: a command that got as far as starting a job would fail differently.
NO_SPARK = ["--master", "spark://127.0.0.1:9"]
RANDOM = ["--model", "resnet18", "--weights", "random"]


def tree(folder) -> dict:
    """Every file under `folder` with its bytes: to prove a refused command touched nothing."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def small_output(folder, rows=3) -> FeatureDataset:
    """An imgvec output of resnet18 with random weights, written by imgvec's own writer without the model."""
    dataset = FeatureDataset(str(folder))
    identity = made_by(ImageVectorizer("resnet18", weights="random"))
    dim = identity["dim"]
    with held_for_writing(dataset, identity, resume=False, overwrite=False):
        dataset.write_part(pa.table({"path": [f"file:/p/{i}.jpg" for i in range(rows)],
                                     "features": [[float(i + j) for j in range(dim)] for i in range(rows)],
                                     "error": pa.nulls(rows, pa.string())}), "part-0000-000000.parquet")
    return dataset


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea.jpg", "rocket.jpg"):
        shutil.copy(EXAMPLES / name, folder / name)
    return folder


# --- --overwrite deletes only an imgvec output -----------------------------------------------


def test_overwrite_refuses_a_folder_imgvec_did_not_write(capsys, photos, tmp_path):
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "todo.txt").write_text("mine")
    (notes / "sub" / "x.txt").write_text("also mine")
    before = tree(notes)
    result = imgvec_here(capsys, "embed", photos, "-o", notes, "--overwrite", *RANDOM, *NO_SPARK)
    assert_usage_error(result, "is not an imgvec output")
    assert tree(notes) == before


def test_overwrite_refuses_an_imgvec_output_that_also_holds_foreign_files(capsys, photos, tmp_path):
    small_output(tmp_path / "o")
    (tmp_path / "o" / "report.csv").write_text("a,b")
    before = tree(tmp_path / "o")
    result = imgvec_here(capsys, "embed", photos, "-o", tmp_path / "o", "--overwrite", *RANDOM, *NO_SPARK)
    assert_usage_error(result, "also holds files imgvec did not write (report.csv)")
    assert tree(tmp_path / "o") == before


def test_overwrite_deletes_exactly_what_imgvec_wrote(tmp_path):
    dataset = small_output(tmp_path / "o")
    small = {"model": "resnet18", "weights": "random", "weights_sha256": None, "dim": 2, "format": "x"}
    with held_for_writing(dataset, small, resume=False, overwrite=True):
        assert sorted(os.listdir(tmp_path / "o")) == ["_imgvec.json", "_imgvec.lock"]
        assert dataset.read().num_rows == 0
    assert os.listdir(tmp_path / "o") == ["_imgvec.json"]  # the lock goes with the run


def test_overwrite_deletes_what_dupes_stored_and_refuses_a_foreign_file_among_it(capsys, photos, tmp_path):
    """`imgvec dupes` on Spark stores its result in OUTPUT/_imgvec_dupes/, embed its listings in _imgvec_inputs/:
    --overwrite deletes those files (by name), and refuses, deleting nothing, when someone put a file of their own
    there."""
    dataset = small_output(tmp_path / "o")
    dupes, inputs = tmp_path / "o" / "_imgvec_dupes", tmp_path / "o" / "_imgvec_inputs"
    for folder in ("members", "groups", "work-0123abcd/components/round-000"):
        (dupes / folder).mkdir(parents=True)
        (dupes / folder / "part-000000.parquet").write_bytes(b"stored")
    (dupes / "work-0123abcd" / "centroids.npz").write_bytes(b"stored")
    inputs.mkdir()
    for name in ("files.parquet", "manifest-0123456789abcdef.parquet", "inventory-0123456789abcdef.parquet"):
        (inputs / name).write_bytes(b"listed")
    for mine in (dupes / "members" / "mine.txt", inputs / "my-list.parquet"):
        mine.write_text("a note")
        before = tree(tmp_path / "o")
        result = imgvec_here(capsys, "embed", photos, "-o", tmp_path / "o", "--overwrite", *RANDOM, *NO_SPARK)
        relative = mine.relative_to(tmp_path / "o")
        assert_usage_error(result, f"also holds files imgvec did not write ({relative})")
        assert tree(tmp_path / "o") == before
        mine.unlink()
    small = {"model": "resnet18", "weights": "random", "weights_sha256": None, "dim": 2, "format": "x"}
    with held_for_writing(dataset, small, resume=False, overwrite=True):
        assert sorted(os.listdir(tmp_path / "o")) == ["_imgvec.json", "_imgvec.lock"]


def test_overwrite_deletes_many_parts_at_once_and_only_them(tmp_path, monkeypatch):
    """An output of 300 parts and a temporary a killed run left: deleted by several requests at once, every one of
    them a file imgvec named; the lock and the new metadata are all that is left."""
    import threading

    from imgvec.base.storage import Location

    dataset = vectors_output(tmp_path / "o", np.eye(300, 4, dtype=np.float32), part_rows=1)
    (tmp_path / "o" / ".tmp-part-0001-000000-0.parquet").write_bytes(b"half written")
    assert len(os.listdir(tmp_path / "o")) == 302
    threads, delete = set(), Location.delete

    def counted(where):  # the real delete, noting which thread asked for it
        threads.add(threading.current_thread().name)
        delete(where)

    small = {"model": "resnet18", "weights": "random", "weights_sha256": None, "dim": 4, "format": "x"}
    monkeypatch.setattr(Location, "delete", counted)
    with held_for_writing(dataset, small, resume=False, overwrite=True):
        assert sorted(os.listdir(tmp_path / "o")) == ["_imgvec.json", "_imgvec.lock"]
    assert len({t for t in threads if t.startswith("imgvec-delete")}) > 1  # the lock: by the run itself, at its end


@pytest.mark.parametrize("where", ["{photos}", "{photos}/vectors", "{photos}/../", "{glob_root}"])
def test_an_output_that_overlaps_an_input_is_refused(capsys, photos, tmp_path, where):
    output = where.format(photos=photos, glob_root=photos)
    inputs = [photos] if where != "{glob_root}" else [f"{photos}/*.jpg"]
    before = tree(tmp_path)
    result = imgvec_here(capsys, "embed", *inputs, "-o", output, "--overwrite", *RANDOM, *NO_SPARK)
    assert_usage_error(result, "overlaps input")
    assert tree(tmp_path) == before


# --- damaged outputs: one line, never a traceback ---------------------------------------------


def _truncated_part(folder):
    part = next(folder.glob("part-*.parquet"))
    part.write_bytes(part.read_bytes()[:40])


def _wrong_schema_part(folder):
    pq.write_table(pa.table({"path": ["x"], "vector": [1.0]}), folder / "part-00007.parquet")


def _no_metadata(folder):
    (folder / "_imgvec.json").unlink()


def _newer_metadata(folder):
    metadata = json.loads((folder / "_imgvec.json").read_text())
    (folder / "_imgvec.json").write_text(json.dumps({**metadata, "format": "imgvec-features/9"}))


def _not_json(folder):
    (folder / "_imgvec.json").write_text("{half")


DAMAGE = {"truncated part": (_truncated_part, "is damaged"), "wrong schema": (_wrong_schema_part, "is damaged"),
          "no metadata": (_no_metadata, "not an imgvec output"), "newer format": (_newer_metadata, "upgrade imgvec"),
          "not JSON": (_not_json, "not JSON")}


PART_DAMAGE = ("truncated part", "wrong schema")  # found by the task that reads the part (a resumed run: on Spark)


@pytest.mark.parametrize(("command", "damage"), [(c, d) for c in ("similar", "dupes", "info", "resume") for d in DAMAGE
                                                 if not (c == "resume" and d in PART_DAMAGE)])
def test_a_damaged_output_is_one_line_for_every_command(capsys, tmp_path, photos, damage, command):
    damage_it, fragment = DAMAGE[damage]
    output = tmp_path / "o"
    small_output(output)
    damage_it(output)
    args = {"similar": ["similar", output, "file:/p/1.jpg"], "dupes": ["dupes", output], "info": ["info", output],
            "resume": ["embed", photos, "-o", output, "--resume", *RANDOM, *NO_SPARK]}[command]
    assert_usage_error(imgvec_here(capsys, *args), fragment)


@pytest.mark.spark
@pytest.mark.parametrize("damage", PART_DAMAGE)
def test_a_damaged_part_stops_a_resumed_run_before_any_image_is_embedded(tmp_path, photos, damage):
    output = tmp_path / "o"
    small_output(output)
    damage_it, fragment = DAMAGE[damage]
    damage_it(output)
    before = tree(output)
    result = imgvec("embed", photos, "-o", output, "--resume", *RANDOM, *SPARK)
    assert_usage_error(result, fragment)
    assert tree(output) == before  # the join stops before any piece's task: no new part


@pytest.mark.parametrize("command", ["similar", "dupes", "info"])
def test_an_empty_folder_is_not_an_output(capsys, tmp_path, command):
    args = [command, tmp_path] + (["file:/p/1.jpg"] if command == "similar" else [])
    assert_usage_error(imgvec_here(capsys, *args), "not an imgvec output")


def test_a_stray_file_next_to_the_parts_is_never_fatal(capsys, tmp_path):
    small_output(tmp_path / "o")
    (tmp_path / "o" / "README.txt").write_text("notes")
    (tmp_path / "o" / ".DS_Store").write_bytes(b"\0\1")
    assert imgvec_here(capsys, "info", tmp_path / "o").returncode == 0
    assert imgvec_here(capsys, "dupes", tmp_path / "o", "--threshold", "0.999").returncode == 0
    assert imgvec_here(capsys, "similar", tmp_path / "o", "file:/p/1.jpg", "-k", "1").returncode == 0


# --- one run at a time ------------------------------------------------------------------------


def test_a_live_run_holds_the_output_and_a_dead_one_does_not(capsys, tmp_path, photos):
    dataset = small_output(tmp_path / "o")
    identity = dataset.metadata()
    with held_for_writing(dataset, identity, resume=True, overwrite=False):  # a run of this process, alive
        assert_usage_error(imgvec_here(capsys, "embed", photos, "-o", tmp_path / "o", "--resume", *RANDOM, *NO_SPARK),
                           "is being written by another imgvec run")
        with pytest.raises(LockError, match="another imgvec run"), held_for_writing(dataset, identity, resume=False,
                                                                                     overwrite=True):
            pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = {"run": "gone", "host": os.uname().nodename, "pid": int(dead.stdout), "refreshed": 4e9, "started": "x"}
    (tmp_path / "o" / "_imgvec.lock").write_text(json.dumps(lock))
    with held_for_writing(dataset, identity, resume=True, overwrite=False):  # its process is gone: taken over
        pass
    assert not (tmp_path / "o" / "_imgvec.lock").exists()


# --- weights are checked on the driver, before Spark --------------------------------------------


@pytest.fixture(scope="module")
def bad_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.save(torchvision.models.resnet18(), folder / "pickled_module.pt")
    torch.save(torchvision.models.resnet18().state_dict(), folder / "resnet18_state.pt")
    torch.jit.save(torch.jit.script(torchvision.models.resnet18()), folder / "scripted.pt")
    (folder / "notes.txt").write_text("not weights")
    return folder


@pytest.mark.parametrize("model,weights,fragment", [
    ("resnet50", "pickled_module.pt", "is not a plain state_dict"),
    ("resnet50", "scripted.pt", "is a TorchScript archive, not a state_dict"),
    ("resnet50", "resnet18_state.pt", "does not fit model 'resnet50'"),
    ("resnet50", "notes.txt", "is not a PyTorch checkpoint"),
    ("torchscript:{folder}/notes.txt", "default", "is not a TorchScript archive"),
])
def test_weights_problems_are_one_line_before_spark_starts(capsys, bad_weights, photos, tmp_path, model, weights,
                                                           fragment):
    weights = weights if weights == "default" else bad_weights / weights
    result = imgvec_here(capsys, "embed", photos, "-o", tmp_path / "o", "--model", model.format(folder=bad_weights),
                 "--weights", weights, *NO_SPARK)
    assert_usage_error(result, fragment)
    assert not (tmp_path / "o").exists()


# --- speed modes say what they cost here ---------------------------------------------------------


def test_bf16_on_a_cpu_without_native_bf16_is_named_in_one_line_before_any_job(tmp_path, photos):
    small_output(tmp_path / "o")  # exists: the command stops with exit 2 right after its checks
    args = ["embed", photos, "-o", tmp_path / "o", "--precision", "bf16", "--device", "cpu", *RANDOM, *NO_SPARK]
    avx2 = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # as on an AVX2-only CPU
    capped = imgvec(*args, env=avx2)
    warning = [line for line in capped.stderr.splitlines() if line.startswith("imgvec: warning:")]
    assert len(warning) == 1 and "has no native bf16" in warning[0] and "0.18x the speed of fp32" in warning[0]
    assert_usage_error(capped, "already exists")
    probe = "from imgvec.models.hardware import native_bf16; print(native_bf16())"
    native = subprocess.run([sys.executable, "-c", probe],
                            capture_output=True, text=True, check=True).stdout.strip() == "True"
    as_is = imgvec(*args)
    assert ("imgvec: warning:" in as_is.stderr) is not native
    fp32 = imgvec(*[a if a != "bf16" else "fp32" for a in args], env=avx2)
    assert "warning" not in fp32.stderr


def test_an_output_of_format_1_is_read_and_resuming_it_marks_the_current_format(tmp_path, capsys):
    output = tmp_path / "old"
    output.mkdir()
    old = pa.schema([("path", pa.string()), ("features", pa.list_(pa.float32())), ("error", pa.string())])
    pq.write_table(pa.table({"path": ["a.jpg", "b.jpg", "c.jpg"], "features": [[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]],
                             "error": [None, None, None]}, schema=old), output / "part-00000.parquet")
    identity = {"model": "resnet18", "weights": "random", "weights_sha256": None, "dim": 2}
    (output / "_imgvec.json").write_text(json.dumps({**identity, "format": "imgvec-features/1"}))
    assert imgvec_here(capsys, "info", output).returncode == 0
    result = imgvec_here(capsys, "dupes", output, "--threshold", "0.9", "--json")
    found = json.loads(result.stdout)
    assert [sorted(m["path"] for m in g["members"]) for g in found["groups"]] == [["a.jpg", "b.jpg"]]
    with held_for_writing(FeatureDataset(str(output)), identity, resume=True, overwrite=False):
        pass
    assert json.loads((output / "_imgvec.json").read_text())["format"] == "imgvec-features/3"
    assert FeatureDataset(str(output)).read(["path", "sha256", "input"]).column("sha256").null_count == 3


def test_every_file_name_of_an_output_is_built_and_parsed_in_one_place():
    assert names.part(3, 17, 2) == "part-0003-000017-0002.parquet" and names.part_run(names.part(3, 17, 2)) == 3
    assert names.is_part("part-0003-000017.parquet") and names.part_run("part-0003-000017.parquet") == 3  # /2
    assert names.is_part("part-00000.parquet") and names.part_run("part-00000.parquet") is None  # format /1
    assert not names.is_part("part-1-2.parquet.tmp") and not names.is_part("_imgvec.json")
    assert names.is_temporary(".tmp-1a2b3c4d-part-0000-000000.parquet")
    build = "0123abcd"
    for name in (names.trained(build), names.queries(build), names.truth(build, 2), names.segment(build, 5),
                 f"shard-{build}-1.faiss", names.INDEX_DESCRIPTION):  # shard-: indexes of imgvec-index/1
        assert names.is_index_file(name), name
    assert not names.is_index_file("notes.txt") and not names.is_index_file("segment-XYZ-1.faiss")


def test_a_plan_of_parts_keeps_their_numbers():
    plan = parts_plan([f"p{i}" for i in range(5)], 2).to_pylist()
    assert [r["parts"] for r in plan] == [["p0", "p1", "p2"], ["p3", "p4"]] and plan[1]["numbers"] == [3, 4]
    update = parts_plan(["p5", "p6"], 4, numbers=[5, 6]).to_pylist()  # an index update: only the new parts
    assert [r["numbers"] for r in update] == [[5], [6]]


def test_row_ids_carry_their_part_number_and_row_and_never_collide():
    ids = part_ids(3, [0, 5, 2**32 - 1])
    assert ids.dtype == np.int64 and (ids >> 32).tolist() == [3, 3, 3]
    assert (ids & (2**32 - 1)).tolist() == [0, 5, 2**32 - 1]
    assert part_ids(4, [0])[0] == ids[-1] + 1  # the next part's first row follows the last possible row of this one
    assert part_ids(2**24 - 1, [7])[0] < 2**56  # parts fit below dupes' output number (SOURCE_SHIFT)
