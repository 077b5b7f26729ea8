"""`imgvec dupes`: byte-identical files from the recorded sha256, near-duplicates exact and clustered on Spark measured
against the exact answer on the same data, what --keep lists, and new images --against old outputs.

Real photos with planted near-duplicates (crops, resizes, re-encodes, colour changes, byte-identical copies)
embedded by a real model; generated clustered vectors where scale matters.
"""

import hashlib
import io
import itertools
import json
import os
import re

import numpy as np
import pyarrow.parquet as pq
import pyspark
import pytest
from PIL import Image, ImageEnhance

from helpers import (
    EXAMPLES,
    SPARK,
    assert_no_jvm_lines,
    assert_usage_error,
    clustered_vectors,
    grouped_files,
    imgvec,
    imgvec_here,
    vectors_output,
)
from imgvec.answers.pairs import UNIT, _blocks, _expected
from imgvec.kernels.similarity import normalise

THRESHOLD = 0.8


def variants(image: Image.Image) -> dict[str, bytes]:
    """Near-duplicates of one photo, as a user's collection has them."""
    w, h = image.size

    def jpeg(im, quality=90):
        buffer = io.BytesIO()
        im.convert("RGB").save(buffer, "JPEG", quality=quality)
        return buffer.getvalue()

    return {"crop": jpeg(image.crop((w // 12, h // 12, w - w // 12, h - h // 12))),
            "half": jpeg(image.resize((w // 2, h // 2))),
            "q30": jpeg(image, quality=30),
            "warm": jpeg(ImageEnhance.Color(image.convert("RGB")).enhance(1.3)),
            "bright": jpeg(ImageEnhance.Brightness(image.convert("RGB")).enhance(1.1))}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The examples, five near-duplicates of each, and byte-identical copies of two, embedded for real."""
    folder = tmp_path_factory.mktemp("planted")
    for path in EXAMPLES.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
        for kind, data in variants(Image.open(path)).items():
            (folder / f"{path.stem}_{kind}.jpg").write_bytes(data)
    for copy in ("rocket_copy.jpg", "rocket_copy2.jpg"):
        (folder / copy).write_bytes((EXAMPLES / "rocket.jpg").read_bytes())
    (folder / "coffee_copy.jpg").write_bytes((EXAMPLES / "coffee.jpg").read_bytes())
    output = tmp_path_factory.mktemp("out") / "vectors"
    result = imgvec_here(None, "embed", folder, "-o", output, "--model", "efficientnet_lite0", "--shard-size", "16",
                         "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    return folder, output


def features_by_path(output) -> dict:
    table = pq.read_table(output, columns=["path", "features"])
    return {p: np.asarray(f, np.float32) for p, f in zip(table.column("path").to_pylist(),
                                                         table.column("features").to_pylist(), strict=True) if f}


def test_embed_records_each_files_length_and_sha256(planted):
    folder, output = planted
    rows = pq.read_table(output, columns=["path", "bytes", "sha256"]).to_pylist()
    assert len(rows) == len(os.listdir(folder))
    for row in rows:
        data = (folder / os.path.basename(row["path"])).read_bytes()
        assert (row["bytes"], row["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


def test_dupes_reports_byte_identical_files_as_their_own_groups(planted):
    _, output = planted
    result = imgvec("dupes", output, "--threshold", THRESHOLD, "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    names = [(g["kind"], sorted(os.path.basename(m["path"]) for m in g["members"])) for g in found["groups"]]
    identical = sorted(members for kind, members in names if kind == "identical")
    assert identical == [["coffee.jpg", "coffee_copy.jpg"], ["rocket.jpg", "rocket_copy.jpg", "rocket_copy2.jpg"]]
    # the copies are listed once, in their identical group; the near group shows the one kept
    rocket = next(members for kind, members in names if kind == "near" and "rocket_crop.jpg" in members)
    assert "rocket.jpg" in rocket and not any("copy" in name for name in rocket)


@pytest.mark.spark
def test_dupes_as_spark_stages_give_the_driver_answer_exactly(planted, tmp_path):
    """One k-means cluster compares every pair, as --exact does: the groups found, labelled and ranked by Spark's
    tasks and stored under the output are the in-process answer exactly (kept files, witnesses and their pixel
    verdicts, similarities, what --keep lists, --out), read back a file at a time; the stages leave no work files."""
    _, output = planted
    args = ["--threshold", THRESHOLD, "--keep", "first", "--verify", "--json"]
    exact = imgvec("dupes", output, *args, "--out", tmp_path / "exact.parquet")
    staged = imgvec("dupes", output, *args, "--clusters", "1", "--out", tmp_path / "staged.parquet", "-q", *SPARK)
    assert exact.returncode == staged.returncode == 0, staged.stderr
    assert_no_jvm_lines(staged.stderr)
    exact, staged_found = json.loads(exact.stdout), json.loads(staged.stdout)
    assert exact.pop("search") == "exact" and staged_found.pop("search").startswith("clustered: 1 k-means cluster")
    assert [g["kind"] for g in exact["groups"]].count("identical") == 2 and len(exact["delete"]) >= 30
    assert staged_found == exact
    assert pq.read_table(tmp_path / "staged.parquet").equals(pq.read_table(tmp_path / "exact.parquet"))
    stored = output / "_imgvec_dupes"
    assert sorted(p.name for p in stored.iterdir()) == ["delete", "groups", "members", "unverified"]
    members = pq.read_table(stored / "members")
    assert sorted(members.column("path").to_pylist()) == sorted(m["path"] for g in exact["groups"]
                                                                 for m in g["members"])


@pytest.mark.spark
def test_a_component_larger_than_a_task_takes_is_labelled_in_pieces(tmp_path, capsys, monkeypatch):
    """A component past PIECE members is cut into pieces labelled on their own: every file is still grouped, and
    every file --keep lists has a kept file of its own (smaller) group at the threshold."""
    import imgvec.answers.dedup_spark as stages

    rng = np.random.default_rng(5)
    giant = rng.standard_normal(16).astype(np.float32) + 0.1 * rng.standard_normal((700, 16)).astype(np.float32)
    output = tmp_path / "vectors"
    vectors_output(output, np.concatenate([giant, clustered_vectors(300, 16, seed=6)]))
    args = ["dupes", output, "--threshold", "0.9", "--keep", "first", "--json"]
    whole = imgvec_here(capsys, *args)  # in this process: what the stages give for components within PIECE
    monkeypatch.setattr(stages, "PIECE", 200)
    cut = imgvec_here(capsys, *args, "--clusters", "1", *SPARK)
    assert whole.returncode == cut.returncode == 0, cut.stderr
    whole, cut = json.loads(whole.stdout), json.loads(cut.stdout)
    assert max(len(g["members"]) for g in whole["groups"]) >= 700  # one component: one labelling kept one file
    assert max(len(g["members"]) for g in cut["groups"]) <= 300 and len(cut["groups"]) >= len(whole["groups"]) + 3
    assert {m["path"] for g in cut["groups"] for m in g["members"]} == {m["path"] for g in whole["groups"]
                                                                         for m in g["members"]}
    for group in cut["groups"]:
        kept = {m["path"] for m in group["members"] if m["kept_file"] == m["path"]}
        assert all(m["kept_file"] in kept and m["kept_similarity"] >= 0.9 - 1e-6 for m in group["members"])
    assert len(cut["delete"]) == len(whole["delete"]) - 3  # each piece of the giant keeps a file of its own


def test_dupes_at_scale_on_an_output_it_cannot_write_is_one_line_before_spark(tmp_path, capsys):
    """The stages store their result under the output: one that cannot be written there (here immutable, which
    binds root too) is refused in one line before any job, and nothing is written."""
    import shutil
    import subprocess

    output = tmp_path / "vectors"
    vectors_output(output, clustered_vectors(300, 8))
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", output]).returncode:
        pytest.skip("this filesystem cannot make a folder immutable (chattr +i)")
    try:
        before = sorted(p.name for p in output.iterdir())
        result = imgvec_here(capsys, "dupes", output, "--threshold", "0.9", "--clusters", "2",
                             "--master", "spark://127.0.0.1:9")  # no Spark is reached
        assert_usage_error(result, "_imgvec_dupes, which cannot be written")
        assert sorted(p.name for p in output.iterdir()) == before
    finally:
        subprocess.run(["chattr", "-i", output])


@pytest.mark.spark35
@pytest.mark.spark
@pytest.mark.skipif(not pyspark.__version__.startswith("3."), reason="the Spark 3.5 tier runs it; on 4.x, the "
                    "clustered dupes of Spark Connect and of the bucket cluster are measured against exact alike")
def test_clustered_dupes_at_scale_against_exact_on_generated_vectors(generated):
    output, _ = generated
    exact = json.loads(imgvec("dupes", output, "--threshold", "0.9", "--exact", "--json").stdout)
    result = imgvec("dupes", output, "--threshold", "0.9", "--json", "-q", *SPARK)  # 30,000 > EXACT_MAX: clustered
    assert result.returncode == 0, result.stderr
    clustered = json.loads(result.stdout)
    assert clustered["search"].startswith("clustered: 15 k-means clusters")
    truth, found = grouped_files(exact), grouped_files(clustered)
    assert len(truth) > 5_000 and found <= truth
    assert len(truth & found) / len(truth) >= 0.95


@pytest.mark.spark
def test_more_clusters_than_a_bounded_sample_trains_are_made_in_two_levels_by_tasks(generated, capsys, monkeypatch):
    """Past what TRAINING_BYTES trains on the driver (40 rows a centroid), the driver trains fewer, coarse clusters
    and tasks cut each into finer ones on rows they draw themselves: as many clusters as asked for, and the files
    found are the exact answer's, as with one level."""
    from imgvec.base import defaults

    output, _ = generated
    exact = json.loads(imgvec_here(capsys, "dupes", output, "--threshold", "0.9", "--exact", "--json").stdout)
    monkeypatch.setattr(defaults, "TRAINING_BYTES", 4 * 64 * 40 * 4)  # 4 centroids of 64-d
    result = imgvec_here(capsys, "dupes", output, "--threshold", "0.9", "--json", *SPARK)  # 30,000: 15 clusters
    assert result.returncode == 0, result.stderr
    clustered = json.loads(result.stdout)
    assert re.match(r"clustered: 1[3-7] k-means clusters in two levels \(4, each cut by a task\)", clustered["search"])
    truth, found = grouped_files(exact), grouped_files(clustered)
    assert len(truth) > 5_000 and found <= truth
    assert len(truth & found) / len(truth) >= 0.95


@pytest.mark.parametrize("threshold", [THRESHOLD, 0.6])
def test_every_file_keep_lists_has_a_kept_file_of_its_group_at_the_threshold(planted, tmp_path, threshold):
    """A chain A~B~C may be one group to look at, but never makes a file deletable on its own."""
    folder, output = planted
    out = tmp_path / "groups.parquet"
    listed = imgvec("dupes", output, "--threshold", threshold, "--keep", "largest", "--out", out)
    assert listed.returncode == 0, listed.stderr
    table = pq.read_table(out)
    assert table.column_names == ["path", "group", "kind", "representative", "similarity", "kept_file",
                                  "kept_similarity"]
    delete = listed.stdout.splitlines()
    rows = table.to_pylist()
    members = {(r["group"], r["path"]): r for r in rows}  # a file kept for its identical copies is in two groups
    features = {p: v / np.linalg.norm(v) for p, v in features_by_path(output).items()}
    assert delete == sorted(delete) and set(delete) == {r["path"] for r in rows if r["kept_file"] != r["path"]}
    for row in (r for r in rows if r["path"] in delete):
        path = row["path"]
        kept = members[row["group"], row["kept_file"]]  # in the same group ...
        assert kept["kept_file"] == kept["path"] and kept["path"] not in delete  # ... and kept
        if row["kind"] == "identical":
            def content(p):
                return (folder / os.path.basename(p)).read_bytes()

            assert content(path) == content(kept["path"])
        else:
            cosine = float(features[path] @ features[kept["path"]])
            assert cosine >= threshold - 1e-5 and abs(cosine - row["kept_similarity"]) < 1e-4
    for group in {r["group"] for r in rows}:  # --keep largest: the largest file of a group is kept
        members = [r for r in rows if r["group"] == group]
        largest = max(members, key=lambda r: (os.path.getsize(folder / os.path.basename(r["path"])), r["path"]))
        sizes = {os.path.getsize(folder / os.path.basename(r["path"])) for r in members if r["path"] == r["kept_file"]}
        assert os.path.getsize(folder / os.path.basename(largest["path"])) in sizes
    found = json.loads(imgvec("dupes", output, "--threshold", threshold, "--keep", "largest", "--json").stdout)
    assert found["delete"] == delete and found["threshold_source"] == "given"
    for group in found["groups"]:  # each group reports its weakest pair: the least similar of its members
        if group["kind"] == "near":
            vectors = np.stack([features[m["path"]] for m in group["members"]])
            assert abs(group["weakest"]["similarity"] - (vectors @ vectors.T).min()) < 1e-4
    assert "files to delete, each with a kept file of its group at cosine >=" in listed.stderr
    assert_usage_error(imgvec("dupes", output, "--out", out), "already exists")  # never over a file
    assert_usage_error(imgvec("dupes", output, "--exact", "--clusters", "3"), "cannot go with --exact")


def chain(dim: int = 16) -> np.ndarray:
    """Vectors A, B, C, D, each at cosine ~0.8 to the next: A~B~C~D is one group, but A and D are far apart."""
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0][:4].astype(np.float32)
    angle = np.arccos(0.8)
    return np.stack([np.cos(k * angle) * basis[0] + np.sin(k * angle) * basis[1] for k in range(4)])


def test_a_chain_never_makes_a_file_deletable_nor_joins_two_pictures_in_one_group(tmp_path, capsys):
    output = tmp_path / "vectors"
    x = chain()
    strangers = np.random.default_rng(9).standard_normal((50, 16)).astype(np.float32)
    vectors_output(output, np.concatenate([x, strangers]))
    result = imgvec_here(capsys, "dupes", output, "--threshold", "0.75", "--keep", "first", "--json")
    found = json.loads(result.stdout)
    paths = [f"img/{i:08d}.jpg" for i in range(4)]
    # A is kept (first path); B joins A; C is not near A (cosine 0.28): kept; D joins C. Groups form around kept
    # files: {A, B} and {C, D}, though B~C links them into one chain
    assert sorted([m["path"] for m in g["members"]] for g in found["groups"]) == [paths[:2], paths[2:]]
    kept = {m["path"]: m["kept_file"] for g in found["groups"] for m in g["members"]}
    assert kept == {paths[0]: paths[0], paths[1]: paths[0], paths[2]: paths[2], paths[3]: paths[2]}
    assert sorted(g["kept"] for g in found["groups"]) == [[paths[0]], [paths[2]]]
    assert found["delete"] == [paths[1], paths[3]]
    for group in found["groups"]:  # each member's similarity is its best pair inside its group
        assert all(abs(m["similarity"] - 0.8) < 1e-4 for m in group["members"])
        assert abs(group["weakest"]["similarity"] - 0.8) < 1e-4






@pytest.fixture(scope="module")
def old_and_new(tmp_path_factory):
    """OLD: 3,000 clustered vectors. NEW: 300, of which 60 near copies of OLD rows, 20 byte-identical to OLD
    files, 20 near copies of other NEW rows, the rest new."""
    folder = tmp_path_factory.mktemp("against")
    rng = np.random.default_rng(11)
    old = clustered_vectors(3_000, 32, seed=10, spread=0.6)
    new = rng.standard_normal((300, 32)).astype(np.float32) * 3
    new[:60] = old[rng.choice(3_000, 60, replace=False)] + 0.05 * rng.standard_normal((60, 32))
    identical = rng.choice(3_000, 20, replace=False)
    new[60:80] = old[identical]
    new[80:100] = new[200:220] + 0.05 * rng.standard_normal((20, 32))
    old_hashes = [f"old{i}" for i in range(3_000)]
    new_hashes = [f"new{i}" for i in range(300)]
    for k, i in enumerate(identical):
        new_hashes[60 + k] = old_hashes[i]
    vectors_output(folder / "old", old, sha256=old_hashes)
    vectors_output(folder / "new", new, prefix="new", sha256=new_hashes)
    return folder / "old", folder / "new", normalise(old), normalise(new)


def against_pairs(found: dict) -> set:
    return {(a["path"], b["path"]) for g in found["groups"] for a, b in itertools.product(g["members"], repeat=2)
            if a["path"].startswith("new/") and b["path"].startswith("img/")}


@pytest.mark.spark35
@pytest.mark.parametrize("indexed", [False, True])
def test_new_images_against_old_ones_never_list_an_old_file(old_and_new, capsys, indexed):
    old, new, old_vectors, new_vectors = old_and_new
    if indexed:
        assert imgvec_here(capsys, "index", old, "--index-type", "ivf-flat", "-q", *SPARK).returncode == 0
    result = imgvec_here(capsys, "dupes", new, "--against", old, "--threshold", "0.9", "--keep", "first", "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert ("by its ivf-flat index" if indexed else f"{old} exactly") in found["search"]
    assert all(any(m["path"].startswith("new/") for m in g["members"]) for g in found["groups"])  # NEW in each
    assert found["delete"] and not any(p.startswith("img/") for p in found["delete"])  # OLD files are kept
    similarities = new_vectors @ old_vectors.T
    truth = {(f"new/{i:08d}.jpg", f"img/{j:08d}.jpg") for i, j in zip(*np.nonzero(similarities >= 0.9), strict=True)}
    assert len(truth) >= 70 and len(against_pairs(found) & truth) / len(truth) >= 0.95  # pair recall vs exact
    identical = [g for g in found["groups"] if g["kind"] == "identical"]
    assert len(identical) == 20 and all(g["kept"][0].startswith("img/") for g in identical)
    for group in found["groups"]:  # every deletable NEW file has a kept file of its group at the threshold
        for member in group["members"]:
            if member["kept_file"] != member["path"]:
                assert member["path"].startswith("new/") and member["kept_similarity"] >= 0.9 - 1e-6
    own = [g for g in found["groups"] if all(m["path"].startswith("new/") for m in g["members"])]
    assert len(own) == 20  # NEW's own near copies, among themselves
    # as Spark stages (what NEW beyond EXACT_MAX gets): OLD searched by tasks, by its index or by NEW's clusters
    staged = imgvec_here(capsys, "dupes", new, "--against", old, "--threshold", "0.9", "--keep", "first", "--json",
                         "--clusters", "4", *SPARK)
    assert staged.returncode == 0, staged.stderr
    staged = json.loads(staged.stdout)
    assert staged["search"].startswith("clustered") and ("by its ivf-flat index" if indexed else
                                                         "by the same clusters") in staged["search"]
    assert staged["groups"] == found["groups"] and staged["delete"] == found["delete"]


def test_against_an_output_of_another_model_is_one_line(old_and_new, tmp_path, capsys):
    old, new, old_vectors, _ = old_and_new
    vectors_output(tmp_path / "other", old_vectors[:100], model="resnet18")
    assert_usage_error(imgvec_here(capsys, "dupes", new, "--against", tmp_path / "other"), "another model")
    vectors_output(tmp_path / "wider", np.ones((10, 64), np.float32))
    assert_usage_error(imgvec_here(capsys, "dupes", new, "--against", tmp_path / "wider"), "64-d")
    itself = f"file://{new}/"  # another spelling of the same place
    assert_usage_error(imgvec_here(capsys, "dupes", new, "--against", itself), "is OUTPUT itself")


def test_clusters_are_cut_into_blocks_by_the_rows_expected_in_each():
    # a sample of 40 rows: 30 nearest the first centroid, 10 the second; the whole output 4 blocks' worth of rows
    centroids = np.eye(2, dtype=np.float32)
    sample = np.array([[1, 0.1]] * 30 + [[0.1, 1]] * 10, np.float32)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    expected, second = _expected(sample, centroids, margin=0.05, count=4 * UNIT)
    blocks = _blocks(expected)
    assert blocks.tolist() == [3, 1] and second == 0.0
    expected, second = _expected(sample, centroids, margin=1.0, count=4 * UNIT)  # every row near both: in both
    blocks = _blocks(expected)
    assert blocks.tolist() == [4, 4] and second == 1.0
    assert _blocks(_expected(sample, centroids, margin=0.05, count=10)[0]).tolist() == [1, 1]  # at least one each
    one, _ = _expected(sample[:5], centroids[:1], margin=0.05, count=5)  # one cluster: no second
    assert _blocks(one).tolist() == [1]
