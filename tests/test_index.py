"""`imgvec index` and `similar` by its index: every index type built on Spark with its recall measured against exact
search, segmented past its memory, updated without retraining, and one line for an index that cannot be used.
"""

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from helpers import (
    SPARK,
    assert_no_jvm_lines,
    assert_usage_error,
    clustered_vectors,
    imgvec,
    imgvec_here,
    vectors_output,
)
from imgvec.answers.index import _pq_bytes, _training_size, index_for, inverted_lists, segments_needed
from imgvec.dataset.output import FeatureDataset
from imgvec.dataset.writing import held_for_writing
from imgvec.kernels.similarity import normalise


@pytest.mark.spark35
@pytest.mark.spark
def test_index_on_spark_then_similar_uses_it_with_recall_against_exact(generated):
    output, vectors = generated
    built = imgvec("index", output, "-q", *SPARK)
    assert built.returncode == 0, built.stderr
    assert_no_jvm_lines(built.stderr)
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


@pytest.mark.spark
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


@pytest.mark.spark
def test_an_index_larger_than_memory_is_segmented_and_searched_one_mapped_segment_at_a_time(tmp_path, capsys):
    """Segments searched one at a time, memory-mapped, their top k merged: what one index of them all finds, at the
    setting the build measured on Spark (its recall as the merged index's own)."""
    import faiss

    from imgvec.answers.index import RECALL_AT, NeighbourIndex, _set_search_setting
    from imgvec.base.storage import read_npz

    output = tmp_path / "vectors"
    vectors = clustered_vectors(3_000, 32, seed=4)
    vectors_output(output, vectors, part_rows=100)
    # 3,000 x (32 floats + an id) = 408,000 bytes, in segments of at most 64 KiB: 7 segments
    assert imgvec_here(capsys, "index", output, "--index-type", "ivf-flat", "--memory", "64K", "-q",
                       *SPARK).returncode == 0
    folder = output / "_imgvec_index"
    description = json.loads((folder / "index.json").read_text())
    assert len(description["segments"]) == 7
    whole = faiss.read_index(str(folder / description["segments"][0]))
    for name in description["segments"][1:]:
        whole.merge_from(faiss.read_index(str(folder / name)), 0)
    _set_search_setting(whole, "nprobe", description["nprobe"], faiss)
    queries = normalise(vectors[:20])
    similarities, ids = NeighbourIndex.open(FeatureDataset(str(output))).search(queries, 5)
    expected_similarities, expected_ids = whole.search(queries, 5)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-6)
    held = read_npz(folder / f"queries-{description['build']}.npz")
    truth = read_npz(folder / f"truth-{description['build']}-0.npz")["ids"]
    _, found = whole.search(held["vectors"], RECALL_AT + 1)
    hits = sum(len(set(f[f != own][:RECALL_AT].tolist()) & set(t[t >= 0].tolist()))
               for own, f, t in zip(held["ids"], found, truth, strict=True))
    assert description["recall_at_10"] == round(hits / (truth >= 0).sum(), 4)


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


@pytest.mark.spark
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


def test_the_index_type_follows_the_size():
    assert index_for("auto", 20_000, 512) == ("flat", "IDMap,Flat")
    assert index_for("auto", 20_001, 512) == ("ivf-flat", "IVF128,Flat")
    assert index_for("auto", 10**6, 512, memory=8 * 2**30) == ("ivf-flat", "IVF1024,Flat")
    assert index_for("auto", 10**8, 512, memory=8 * 2**30) == ("ivf-pq", "IVF2048,PQ64")  # a bounded sample trains
    assert index_for("hnsw", 10, 8)[0] == "hnsw"
    assert index_for("ivf-pq", 1_000, 32)[1] == "IVF25,PQ4x4"  # few to train on


def test_inverted_lists_and_codes():
    assert inverted_lists(10**6, 128) == 1024 and inverted_lists(10**8, 128) == 8192
    assert inverted_lists(100, 128) == 2
    # as many as a bounded sample trains: 256 MB of vectors, 50 each, whatever their number
    assert inverted_lists(10**12, 128) == 8192 and inverted_lists(10**12, 512) == 2048
    assert inverted_lists(10**12, 2048) == 512 and _training_size("ivf-flat", 10**12, 2048) * 2048 * 4 <= 2**28
    assert _pq_bytes(2048) == 256 and _pq_bytes(512) == 64 and _pq_bytes(1000) == 125 and _pq_bytes(7) == 1
    assert _training_size("flat", 10**6, 128) == 0 and _training_size("ivf-flat", 10**6, 128) == 50 * 1024
    assert _training_size("ivf-pq", 30_000, 128) == 256 * 40  # 39 per code of each sub-quantizer at least


def test_segments_fit_the_memory_given():
    assert segments_needed("ivf-flat", 3_000, 32, 64 * 2**10) == 7  # 3,000 x 136 bytes in 64 KiB pieces
    assert segments_needed("ivf-pq", 10**8, 512, 8 * 2**30) == 1  # 72 bytes each: 7.2 GB
    assert segments_needed("flat", 0, 8, 1) == 1
