"""Listing and chunking inputs (no Spark needed for local listing)."""

from imgvec.sources import Item, _list_local, chunks


def test_local_listing_is_recursive_skips_hidden_files_and_keeps_empty_ones(tmp_path):
    (tmp_path / "sub" / ".git").mkdir(parents=True)
    for name in ("a.jpg", "b.PNG", "c.png", "sub/d.jpg", "sub/.hidden.jpg", "_meta.jpg", "sub/.git/x.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty.jpg").write_bytes(b"")
    names = lambda paths: sorted(p.rsplit("/", 1)[-1] for p in paths)  # noqa: E731
    listed = _list_local([str(tmp_path)], None)
    assert names(listed) == ["a.jpg", "b.PNG", "c.png", "d.jpg", "empty.jpg"]
    assert all(p.startswith("file:/") for p in listed)
    assert names(_list_local([str(tmp_path)], "*.{jpg,png}")) == ["a.jpg", "c.png", "d.jpg", "empty.jpg"]
    assert names(_list_local([str(tmp_path / "*.jpg"), str(tmp_path / "sub")], None)) == [  # globs as a shell
        "_meta.jpg", "a.jpg", "d.jpg", "empty.jpg"]


def test_chunks_never_split_a_source_file():
    items = [Item(f"p{i}", f"file{i // 4}") for i in range(10)]  # 4 rows per table file
    sizes = [len(c) for c in chunks(items, 3)]
    assert sizes == [4, 4, 2] and sum(sizes) == 10
    assert [len(c) for c in chunks([Item(str(i), str(i)) for i in range(7)], 3)] == [3, 3, 1]
