"""The pure functions under the commands, alone: index choice and sizes, file names, places, plans."""

import argparse

import pytest

from imgvec.answers.index import _pq_bytes, _training_size, index_for, inverted_lists, segments_needed
from imgvec.base.paths import fixed_prefix, overlaps
from imgvec.base.storage import name_matches
from imgvec.cli.parser import _size
from imgvec.dataset import names
from imgvec.dataset.searchable import parts_plan


def test_the_index_type_follows_the_size():
    assert index_for("auto", 20_000, 512) == ("flat", "IDMap,Flat")
    assert index_for("auto", 20_001, 512) == ("ivf-flat", "IVF128,Flat")
    assert index_for("auto", 10**6, 512, memory=8 * 2**30) == ("ivf-flat", "IVF1024,Flat")
    assert index_for("auto", 10**8, 512, memory=8 * 2**30) == ("ivf-pq", "IVF8192,PQ64")
    assert index_for("hnsw", 10, 8)[0] == "hnsw" and index_for("ivf-pq", 1_000, 32)[1] == "IVF25,PQ4x4"  # few to train on


def test_inverted_lists_and_codes():
    assert inverted_lists(10**6) == 1024 and inverted_lists(10**8) == 8192 and inverted_lists(100) == 2
    assert inverted_lists(10**12) == 65536  # capped
    assert _pq_bytes(2048) == 256 and _pq_bytes(512) == 64 and _pq_bytes(1000) == 125 and _pq_bytes(7) == 1
    assert _training_size("flat", 10**6) == 0 and _training_size("ivf-flat", 10**6) == 50 * 1024
    assert _training_size("ivf-pq", 30_000) == 256 * 40  # 39 per code of each sub-quantizer at least


def test_segments_fit_the_memory_given():
    assert segments_needed("ivf-flat", 3_000, 32, 64 * 2**10) == 7  # 3,000 x 136 bytes in 64 KiB pieces
    assert segments_needed("ivf-pq", 10**8, 512, 8 * 2**30) == 1  # 72 bytes each: 7.2 GB
    assert segments_needed("flat", 0, 8, 1) == 1


@pytest.mark.parametrize("text,value", [("16G", 16 * 2**30), ("64K", 65536), ("1.5M", 1572864), ("100", 100),
                                        ("8gb", 8 * 2**30)])
def test_sizes(text, value):
    assert _size(text) == value


@pytest.mark.parametrize("text", ["0", "-1G", "lots"])
def test_bad_sizes(text):
    with pytest.raises(argparse.ArgumentTypeError):
        _size(text)


def test_every_file_name_of_an_output_is_built_and_parsed_in_one_place():
    assert names.part(3, 17) == "part-0003-000017.parquet" and names.part_run(names.part(3, 17)) == 3
    assert names.is_part("part-00000.parquet") and names.part_run("part-00000.parquet") is None  # format /1
    assert not names.is_part("part-1-2.parquet.tmp") and not names.is_part("_imgvec.json")
    assert names.is_temporary(".tmp-1a2b3c4d-part-0000-000000.parquet")
    build = "0123abcd"
    for name in (names.trained(build), names.queries(build), names.truth(build, 2), names.segment(build, 5),
                 f"shard-{build}-1.faiss", names.INDEX_DESCRIPTION):  # shard-: indexes of imgvec-index/1
        assert names.is_index_file(name), name
    assert not names.is_index_file("notes.txt") and not names.is_index_file("segment-XYZ-1.faiss")


@pytest.mark.parametrize("name,pattern,matches", [
    ("a.jpg", "*.jpg", True), ("a.JPG", "*.jpg", False), ("a.png", "*.{jpg,png}", True),
    ("a.gif", "*.{jpg,png}", False), ("photo1.jpg", "photo?.jpg", True), ("x.jpeg", "*.jp*g", True)])
def test_name_globs_as_spark_reads_them(name, pattern, matches):
    assert name_matches(name, pattern) is matches


def test_places_that_overlap(tmp_path):
    (tmp_path / "photos" / "2024").mkdir(parents=True)
    photos = str(tmp_path / "photos")
    assert overlaps(photos, photos) and overlaps(f"{photos}/vectors", photos) and overlaps(photos, f"{photos}/2024")
    assert overlaps(f"file://{photos}/out", photos) and overlaps(f"{photos}/out", f"{photos}/*/x?.jpg")
    assert not overlaps(str(tmp_path / "vectors"), photos) and not overlaps(f"{photos}-vectors", photos)
    assert overlaps("s3a://bucket/photos/", "s3://bucket/photos/out") and not overlaps("s3://a/x", "gs://a/x")
    assert fixed_prefix("photos/*/x?.jpg") == "photos" and fixed_prefix("*.jpg") == "."


def test_a_plan_of_parts_keeps_their_numbers():
    plan = parts_plan([f"p{i}" for i in range(5)], 2).to_pylist()
    assert [r["parts"] for r in plan] == [["p0", "p1", "p2"], ["p3", "p4"]] and plan[1]["numbers"] == [3, 4]
    update = parts_plan(["p5", "p6"], 4, numbers=[5, 6]).to_pylist()  # an index update: only the new parts
    assert [r["numbers"] for r in update] == [[5], [6]]
