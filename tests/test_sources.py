"""Listing inputs and planning shards, and file names from real photo collections through the whole job."""

import os
import unicodedata

import pyarrow.parquet as pq
import pytest

from helpers import EXAMPLES, SPARK, imgvec, max_relative_difference
from imgvec import ImageVectorizer, read_images
from imgvec.base.storage import list_local_files
from imgvec.inputs.sources import Item, shards


def test_local_listing_is_recursive_skips_hidden_files_and_keeps_empty_ones(tmp_path):
    (tmp_path / "sub" / ".git").mkdir(parents=True)
    for name in ("a.jpg", "b.PNG", "c.png", "sub/d.jpg", "sub/.hidden.jpg", "_meta.jpg", "sub/.git/x.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty.jpg").write_bytes(b"")
    names = lambda paths: sorted(p.rsplit("/", 1)[-1] for p in paths)  # noqa: E731
    listed = list_local_files([str(tmp_path)], None)
    assert names(listed) == ["a.jpg", "b.PNG", "c.png", "d.jpg", "empty.jpg"]
    assert all(p.startswith("file:/") for p in listed)
    assert names(list_local_files([str(tmp_path)], "*.{jpg,png}")) == ["a.jpg", "c.png", "d.jpg", "empty.jpg"]
    assert names(list_local_files([str(tmp_path / "*.jpg"), str(tmp_path / "sub")], None)) == [  # globs as a shell
        "_meta.jpg", "a.jpg", "d.jpg", "empty.jpg"]


def test_shards_never_split_a_row_group():
    items = [Item(f"p{i}", f"file{i // 8}", i // 4 % 2) for i in range(16)]  # 2 row groups of 4 rows per file
    sizes = [len(c) for c in shards(items, 3)]
    assert sizes == [4, 4, 4, 4] and sum(sizes) == 16
    assert [len(c) for c in shards([Item(str(i), str(i)) for i in range(7)], 3)] == [3, 3, 1]


NAMES = ["a b.jpg", "a#b.jpg", "100%.jpg", "a%20b.jpg", "what?.jpg", "star*.jpg", "[x].jpg", "{y}.jpg", "c,d.jpg",
         "e;f.jpg", "it's.jpg", 'say "hi".jpg', "-dash.jpg", unicodedata.normalize("NFC", "café.jpg"),
         unicodedata.normalize("NFD", "café.jpg"), "é" * 110 + ".jpg", "日本語 写真.jpg"]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Real photo-collection names; returns the folder and every path that must get exactly one row."""
    root = tmp_path_factory.mktemp("collection")
    photo = (EXAMPLES / "chelsea.jpg").read_bytes()
    expected = []
    for name in NAMES:
        (root / name).write_bytes(photo)
        expected.append(root / name)
    deep = root.joinpath(*[f"level {i}" for i in range(40)])
    deep.mkdir(parents=True)
    (deep / "deep.jpg").write_bytes(photo)
    (root / "real").mkdir()
    (root / "real" / "r.jpg").write_bytes(photo)
    (root / "real" / "up").symlink_to(root)  # a loop: root/real/up/real/up/...
    (root / "linked folder").symlink_to(root / "real")
    (root / "linked.jpg").symlink_to(root / "a b.jpg")
    expected += [deep / "deep.jpg", root / "real" / "r.jpg", root / "linked folder" / "r.jpg", root / "linked.jpg"]
    for hidden in (".hidden.jpg", "_underscore.jpg"):
        (root / hidden).write_bytes(photo)
    (root / ".thumbnails").mkdir()
    (root / ".thumbnails" / "t.jpg").write_bytes(photo)
    assert len(NAMES[-2].encode()) > 200 and NAMES[13] != NAMES[14]
    return root, sorted(f"file:{p}" for p in expected)


def test_collection_names_are_listed_once_each(collection):
    root, expected = collection
    assert list_local_files([str(root)]) == expected


def test_collection_names_through_read_images_and_process_images(spark, collection):
    root, expected = collection
    v = ImageVectorizer("resnet18", weights="random")
    rows = v.process_images(read_images(spark, str(root))).select("path", "features", "error").collect()
    assert sorted(r.path for r in rows) == expected
    reference = v.extract_features((EXAMPLES / "chelsea.jpg").read_bytes())
    assert all(r.error is None and max_relative_difference(r.features, reference) <= 1e-4 for r in rows)


def test_collection_names_through_the_command(collection, tmp_path):
    root, expected = collection
    result = imgvec("embed", root, "-o", tmp_path / "o", "--model", "resnet18", "--weights", "random", "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "o")
    assert sorted(table.column("path").to_pylist()) == expected
    assert table.column("error").null_count == len(expected)
    resumed = imgvec("embed", root, "-o", tmp_path / "o", "--resume", "--model", "resnet18", "--weights", "random",
                     "-q", *SPARK)
    assert resumed.returncode == 0 and f"{len(expected)} already in the output" in resumed.stdout
    assert pq.read_table(tmp_path / "o").num_rows == len(expected)
    assert os.path.isfile(str(root / NAMES[14]))  # the NFD name is still there, untouched
