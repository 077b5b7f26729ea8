"""Search and de-duplication: `imgvec index`, `similar` by index or exactly, `dupes` exact and clustered on
Spark, byte-identical files from the recorded sha256, measured against the exact answer on the same data.

Real photos with planted near-duplicates (crops, resizes, re-encodes, colour changes, byte-identical
copies) embedded by a real model; generated clustered vectors where scale matters.
"""

import hashlib
import io
import itertools
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageEnhance

from helpers import (
    EXAMPLES,
    SPARK,
    assert_usage_error,
    clustered_vectors,
    grouped_files,
    imgvec,
    imgvec_here,
    vectors_output,
)
from imgvec.dataset.output import FeatureDataset
from imgvec.dataset.writing import held_for_writing
from imgvec.kernels.similarity import duplicate_groups, groups, linked, normalise

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
    result = imgvec("embed", folder, "-o", output, "--model", "efficientnet_lite0", "--shard-size", "16", "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    return folder, output


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """30,000 clustered 64-d vectors: past the size where imgvec stops being exact by default."""
    folder = tmp_path_factory.mktemp("generated") / "vectors"
    vectors = clustered_vectors(30_000, 64)
    vectors_output(folder, vectors)
    return folder, normalise(vectors)


def features_by_path(output) -> dict:
    table = pq.read_table(output, columns=["path", "features"])
    return {p: np.asarray(f, np.float32) for p, f in zip(table.column("path").to_pylist(),
                                                         table.column("features").to_pylist(), strict=True) if f}


# --- the exact algorithm, alone ------------------------------------------------------------------


def brute_force_groups(x: np.ndarray, threshold: float) -> list[list[int]]:
    similarities = normalise(x) @ normalise(x).T
    np.fill_diagonal(similarities, -1)
    label = list(range(len(x)))
    for i, j in zip(*np.nonzero(similarities >= threshold), strict=True):
        old, new = max(label[i], label[j]), min(label[i], label[j])
        label = [new if v == old else v for v in label]
    members = {}
    for i in np.flatnonzero(similarities.max(axis=1) >= threshold):
        members.setdefault(label[i], []).append(int(i))
    return sorted(members.values(), key=lambda g: (-len(g), g[0]))


def test_blockwise_linking_finds_exactly_the_groups_of_all_pairs():
    x = clustered_vectors(1_500, 16, per_cluster=30, seed=3)
    x[700:720] = x[5]  # a block of identical vectors: many pairs, held as links only
    expected = brute_force_groups(x, 0.9)
    found = duplicate_groups(x, 0.9)
    assert [[i for i, _ in g] for g in found] == expected and len(expected) > 10
    similarities = normalise(x) @ normalise(x).T
    np.fill_diagonal(similarities, -1)
    for group in found:  # each member's similarity is its best real pair
        for i, s in group:
            assert abs(s - similarities[i].max()) < 1e-5 and s >= 0.9
    # the same from two blocks compared apart, as Spark's groups are
    n = normalise(x)
    ids = np.arange(len(x), dtype=np.int64)
    halves = [linked(n[:800], ids[:800], n[:800], ids[:800], 0.9, same=True),
              linked(n[800:], ids[800:], n[800:], ids[800:], 0.9, same=True),
              linked(n[:800], ids[:800], n[800:], ids[800:], 0.9, same=False)]
    joined = groups(*[np.concatenate(parts) for parts in zip(*halves, strict=True)])
    assert [[i for i, _ in g] for g in joined] == expected


# --- byte-identical files ---------------------------------------------------------------------


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


# --- near-duplicates: clustered on Spark against exact ------------------------------------------


def test_clustered_dupes_on_spark_find_what_exact_finds_on_real_photos(planted):
    _, output = planted
    exact = json.loads(imgvec("dupes", output, "--threshold", THRESHOLD, "--json").stdout)
    assert exact["search"] == "exact"
    result = imgvec("dupes", output, "--threshold", THRESHOLD, "--clusters", "4", "--json", "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    clustered = json.loads(result.stdout)
    assert clustered["search"].startswith("clustered: 4 k-means clusters")
    truth, found = grouped_files(exact), grouped_files(clustered)
    assert len(truth) >= 30  # the planted variants are found at this threshold
    assert len(truth & found) / len(truth) >= 0.95  # recall of the files that have a near-duplicate
    assert found <= truth  # nothing that exact search would not group
    features = features_by_path(output)
    for group in clustered["groups"]:  # each member's similarity is a real pair inside its group
        vectors = normalise(np.stack([features[m["path"]] for m in group["members"]]))
        similarities = vectors @ vectors.T
        np.fill_diagonal(similarities, -1)
        for member, row in zip(group["members"], similarities, strict=True):
            assert member["similarity"] >= THRESHOLD - 1e-6
            if group["kind"] == "near":
                assert abs(row.max() - member["similarity"]) < 1e-4


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


def test_groups_form_around_kept_files_and_a_lone_kept_file_joins_its_nearest_group():
    from imgvec.kernels.witness import around_kept, witnesses

    x = normalise(chain()[:3])  # A~B~C: A kept, B joins A, C (not near A) kept with nobody to witness
    leader, _ = witnesses(x, 0.75)
    assert leader.tolist() == [0, 0, 2]
    assert around_kept(x, leader) == [[0, 1, 2]]  # C is shown, kept, with the group of B, its nearest
    assert around_kept(x, np.arange(3)) == [[0, 1, 2]]  # nobody witnesses anybody: one group to look at
    leader, _ = witnesses(x, 0.75, refused={(0, 1)})  # B's pixels do not verify against A: B is kept
    assert leader.tolist() == [0, 1, 1]  # and C joins B


def test_witnesses_keep_order_and_forced_files():
    from imgvec.kernels.witness import keep_order, weakest_pair, witnesses

    x = normalise(chain())
    leader, similarity = witnesses(x, 0.75)
    assert leader.tolist() == [0, 0, 2, 2] and np.allclose(similarity, [1, 0.8, 1, 0.8], atol=1e-5)
    leader, _ = witnesses(x, 0.75, forced=[False, True, False, False])  # B must be kept (another output's)
    assert leader.tolist() == [0, 1, 1, 3]  # C joins B, the most similar kept file; D, near C only, is kept
    assert weakest_pair(x)[:2] == (0, 3)
    rows = [{"path": "b", "bytes": 10, "source": 0}, {"path": "a", "bytes": 5, "source": 0},
            {"path": "c", "bytes": 99, "source": 1}]
    assert keep_order(rows, "first") == [2, 1, 0] and keep_order(rows, "largest") == [2, 0, 1]


# --- the index ---------------------------------------------------------------------------------


def test_index_on_spark_then_similar_uses_it_with_recall_against_exact(generated):
    output, vectors = generated
    built = imgvec("index", output, "-q", *SPARK)
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith("imgvec index: ivf-flat index of 30000 vectors")  # auto: 30,000 > EXACT_MAX
    description = json.loads((output / "_imgvec_index" / "index.json").read_text())
    assert description["recall_at_10"] >= 0.95 and description["queries"] == 1000
    assert len(description["segments"]) == 2  # one per task slot of local[2]
    queries = [f"img/{i:08d}.jpg" for i in range(0, 30_000, 600)]
    by_index = json.loads(imgvec("similar", output, *queries, "-k", "10", "--json").stdout)
    exact = json.loads(imgvec("similar", output, *queries, "-k", "10", "--json", "--exact").stdout)
    assert by_index[0]["search"].startswith("ivf-flat index") and exact[0]["search"] == "exact search"
    hits = sum(len({m["path"] for m in a["matches"]} & {m["path"] for m in b["matches"]})
               for a, b in zip(by_index, exact, strict=True))
    assert hits / (10 * len(queries)) >= 0.95  # recall@10
    for result in by_index:  # the similarity reported is the real cosine
        q = vectors[int(result["query"][4:12])]
        for m in result["matches"]:
            assert abs(m["similarity"] - float(vectors[int(m["path"][4:12])] @ q)) < 1e-4
    text = imgvec("similar", output, queries[0], "-k", "2").stdout
    assert text.startswith("search: ivf-flat index of 30000 vectors") and "recall@10" in text


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf-pq"])
def test_every_index_type_builds_and_measures_its_recall(tmp_path, capsys, kind):
    output = tmp_path / "vectors"
    vectors_output(output, clustered_vectors(3_000, 32, seed=1))
    assert imgvec_here(capsys, "index", output, "--index-type", kind, "-q", *SPARK).returncode == 0
    description = json.loads((output / "_imgvec_index" / "index.json").read_text())
    assert description["type"] == kind
    assert description["recall_at_10"] >= {"flat": 1.0, "hnsw": 0.95, "ivf-pq": 0.3}[kind]
    result = imgvec_here(capsys, "similar", output, "img/00000007.jpg", "-k", "3", "--json")
    assert result.returncode == 0
    matches = json.loads(result.stdout)[0]["matches"]
    assert len(matches) == 3 and "img/00000007.jpg" not in [m["path"] for m in matches]


def test_an_index_larger_than_memory_is_segmented_and_searched_in_runs(tmp_path, capsys, monkeypatch):
    import imgvec.answers.index
    from imgvec.answers.index import NeighbourIndex

    output = tmp_path / "vectors"
    vectors = clustered_vectors(3_000, 32, seed=4)
    vectors_output(output, vectors, part_rows=100)
    # 3,000 x (32 floats + an id) = 408,000 bytes, in segments of at most 64 KiB: 7 segments
    assert imgvec_here(capsys, "index", output, "--index-type", "ivf-flat", "--memory", "64K", "-q",
                       *SPARK).returncode == 0
    assert len(json.loads((output / "_imgvec_index" / "index.json").read_text())["segments"]) == 7
    queries = normalise(vectors[:20])
    held = NeighbourIndex.open(FeatureDataset(str(output)))
    in_memory = held.search(queries, 5)
    monkeypatch.setattr(imgvec.answers.index, "_free_memory", lambda: 0)  # as on a machine too small to hold them all
    streamed = NeighbourIndex.open(FeatureDataset(str(output)))
    one_by_one = streamed.search(queries, 5)
    assert held._loaded is not None and streamed._loaded is None
    np.testing.assert_array_equal(in_memory[1], one_by_one[1])
    np.testing.assert_allclose(in_memory[0], one_by_one[0], atol=1e-6)


def test_a_rebuilt_index_replaces_the_old_files_and_overwrite_removes_it(tmp_path, capsys):
    output = tmp_path / "vectors"
    vectors_output(output, clustered_vectors(500, 8))
    for _ in range(2):
        assert imgvec_here(capsys, "index", output, "--rebuild", "-q").returncode == 0  # flat: in this process
    files = sorted(os.listdir(output / "_imgvec_index"))
    build = json.loads((output / "_imgvec_index" / "index.json").read_text())["build"]
    assert files == sorted(["index.json", f"trained-{build}.faiss", f"queries-{build}.npz", f"truth-{build}-0.npz",
                            f"segment-{build}-0.faiss"])
    with held_for_writing(FeatureDataset(str(output)), {"model": "x", "dim": 8}, resume=False, overwrite=True):
        assert not os.path.exists(output / "_imgvec_index")


def _damaged_segment(output):
    segment = next((output / "_imgvec_index").glob("segment-*"))
    segment.write_bytes(segment.read_bytes()[:100])


def _garbage_description(output):
    (output / "_imgvec_index" / "index.json").write_text("{not json")


def _other_model(output):
    path = output / "_imgvec_index" / "index.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "model": "resnet50", "dim": 2048}))


def _new_part(output):
    dataset = FeatureDataset(str(output))
    dataset.write_part(pa.table({"path": ["img/new.jpg"], "features": [[0.5] * 8], "error": pa.nulls(1, pa.string())}),
                       "part-0001-000000.parquet")


@pytest.mark.parametrize("damage,fragment", [
    (_damaged_segment, "is damaged or missing"), (_garbage_description, "is damaged or of another version"),
    (_other_model, "built from other features (resnet50, 2048-d)"), (_new_part, "older than its features")])
def test_an_index_that_cannot_be_used_is_one_line(tmp_path, capsys, damage, fragment):
    output = tmp_path / "vectors"
    vectors_output(output, clustered_vectors(300, 8))
    assert imgvec_here(capsys, "index", output, "-q").returncode == 0
    damage(output)
    assert_usage_error(imgvec_here(capsys, "similar", output, "img/00000001.jpg"), fragment)
    assert imgvec_here(capsys, "similar", output, "img/00000001.jpg", "--exact").returncode == 0


def test_an_output_without_features_cannot_be_indexed(tmp_path, capsys):
    output = tmp_path / "vectors"
    vectors_output(output, np.empty((0, 8), np.float32))
    assert_usage_error(imgvec_here(capsys, "index", output), "holds no features")
    assert_usage_error(imgvec_here(capsys, "dupes", output), "holds no features")


# --- outputs written before the sha256 --------------------------------------------------------


def test_an_output_of_format_1_is_read_and_resuming_it_marks_format_2(tmp_path, capsys):
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
    assert json.loads((output / "_imgvec.json").read_text())["format"] == "imgvec-features/2"
    assert FeatureDataset(str(output)).read(["path", "sha256"]).column("sha256").null_count == 3


# --- an index that follows its output ---------------------------------------------------------


def add_parts(output, vectors: np.ndarray, run: int, part_rows: int = 500) -> None:
    """What `embed --resume` does to an output: parts of a new run, paths after the old ones, counts updated."""
    from imgvec.dataset.lock import now

    dataset = FeatureDataset(str(output))
    first = dataset.metadata()["total"]
    for start in range(0, len(vectors), part_rows):
        rows = vectors[start : start + part_rows]
        dataset.write_part(pa.table({"path": [f"img/{first + start + i:08d}.jpg" for i in range(len(rows))],
                                     "features": pa.array(list(rows), pa.list_(pa.float32())),
                                     "error": pa.nulls(len(rows), pa.string())}),
                           f"part-{run:04d}-{start // part_rows:06d}.parquet")
    dataset.update_metadata({**dataset.counts(), "updated": now()})


def test_index_adds_new_parts_without_retraining_and_says_when_to_rebuild(tmp_path, capsys):
    output = tmp_path / "vectors"
    vectors = clustered_vectors(6_000, 32, seed=6)
    vectors_output(output, vectors[:4_000], part_rows=500)
    folder = output / "_imgvec_index"
    assert imgvec_here(capsys, "index", output, "--index-type", "ivf-flat", "-q", *SPARK).returncode == 0
    before = json.loads((folder / "index.json").read_text())
    trained = folder / f"trained-{before['build']}.faiss"
    stamps = {name: (folder / name).stat().st_mtime_ns for name in [trained.name, *before["segments"]]}
    add_parts(output, vectors[4_000:], run=1)
    assert_usage_error(imgvec_here(capsys, "similar", output, "img/00004001.jpg"), "run imgvec index again")
    result = imgvec_here(capsys, "index", output, "-q", *SPARK)
    assert result.returncode == 0
    after = json.loads((folder / "index.json").read_text())
    assert "updated: 2000 vectors added without retraining" in result.stdout
    assert after["build"] == before["build"] and after["count"] == 6_000 and after["trained_on"] == 4_000
    assert after["segments"][: len(before["segments"])] == before["segments"] and len(after["segments"]) > len(
        before["segments"])
    assert {name: (folder / name).stat().st_mtime_ns for name in stamps} == stamps  # nothing rewritten
    assert after["recall_at_10"] >= 0.95 and after["advice"] is None  # re-measured on the held-out queries
    queries = [f"img/{i:08d}.jpg" for i in range(4_000, 6_000, 100)]
    by_index = json.loads(imgvec_here(capsys, "similar", output, *queries, "--json").stdout)
    exact = json.loads(imgvec_here(capsys, "similar", output, *queries, "--json", "--exact").stdout)
    hits = sum(len({m["path"] for m in a["matches"]} & {m["path"] for m in b["matches"]})
               for a, b in zip(by_index, exact, strict=True))
    assert hits / (10 * len(queries)) >= 0.95 and by_index[0]["search"].startswith("ivf-flat index of 6000")
    add_parts(output, clustered_vectors(5_000, 32, seed=7), run=2)  # more new than trained on: time to rebuild
    result = imgvec_here(capsys, "index", output, "-q", *SPARK)
    assert "run imgvec index --rebuild" in result.stdout
    result = imgvec_here(capsys, "index", output, "--rebuild", "-q", *SPARK)
    rebuilt = json.loads((folder / "index.json").read_text())
    assert rebuilt["build"] != before["build"] and rebuilt["trained_on"] == 11_000 and "built" in result.stdout
    assert not trained.exists()  # the replaced build's files are gone


def test_a_torchscript_model_records_its_dimension_and_every_command_works(tmp_path, capsys):
    """The documented way to bring one's own model: its output knows its dimension (it once recorded null)."""
    import torch
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()
    scripted = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(net.eval()), str(scripted))
    output = tmp_path / "vectors"
    result = imgvec("embed", EXAMPLES, "-o", output, "--model", f"torchscript:{scripted}", "-q", *SPARK)
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


# --- new images against what one already has ------------------------------------------------------


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


def test_against_an_output_of_another_model_is_one_line(old_and_new, tmp_path, capsys):
    old, new, old_vectors, _ = old_and_new
    vectors_output(tmp_path / "other", old_vectors[:100], model="resnet18")
    assert_usage_error(imgvec_here(capsys, "dupes", new, "--against", tmp_path / "other"), "another model")
    vectors_output(tmp_path / "wider", np.ones((10, 64), np.float32))
    assert_usage_error(imgvec_here(capsys, "dupes", new, "--against", tmp_path / "wider"), "64-d")
    itself = f"file://{new}/"  # another spelling of the same place
    assert_usage_error(imgvec_here(capsys, "dupes", new, "--against", itself), "is OUTPUT itself")
