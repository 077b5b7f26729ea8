"""imgvec.inputs: decoding (the bad-input corpus, EXIF orientation, huge images) and the sources' listing and
reading (real collection names, through read_images and process_images).
"""

import json
import os
import time
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from corpus import corpus, encode, photo, png_with_declared_size, with_orientation
from helpers import (
    EXAMPLES,
    SPARK,
    assert_usage_error,
    example_samples,
    huggingface_table,
    img2dataset_table,
    imgvec_here,
    max_relative_difference,
    webdataset_shards,
)
from imgvec import ImageVectorizer, read_images
from imgvec.base.storage import list_local_files, local_path, open_location
from imgvec.batch.embed import named_uniquely
from imgvec.inputs import pieces as pieces_module
from imgvec.inputs import sources, tables
from imgvec.inputs.decode import decode_image
from imgvec.inputs.pieces import LISTING_GROUP, Piece, expand_braces
from imgvec.inputs.readback import read_back
from imgvec.inputs.sources import ImageFiles
from imgvec.inputs.tables import Manifest, ParquetTable
from imgvec.inputs.tars import TarShards, looks_like_tars, tar_samples

CORPUS = corpus()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_item_decodes_or_names_its_problem(name):
    data, expected = CORPUS[name]
    started = time.monotonic()
    result = decode_image(data)
    assert time.monotonic() - started < 5
    if expected == "ok":
        assert isinstance(result, Image.Image), result
        assert result.mode == "RGB" and result.width >= 1 and result.height >= 1
    else:
        assert isinstance(result, str), f"{name} decoded to an image"
        kind = result.split(":")[0]
        if expected == "any_error":
            assert kind in {"truncated", "corrupt"}, result
        else:
            assert kind == expected, result
        assert len(result) < 200


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    original = photo(96, 64)
    decoded = decode_image(with_orientation(original, orientation))
    # What a viewer shows: the stored pixels transposed as the tag says.
    stored = Image.open(__import__("io").BytesIO(with_orientation(original, orientation)))
    expected = ImageOps.exif_transpose(stored).convert("RGB")
    assert decoded.size == expected.size == ((96, 64) if orientation < 5 else (64, 96))
    assert np.array_equal(np.asarray(decoded), np.asarray(expected))
    # and it is the original picture, turned: compare to the un-rotated JPEG within JPEG noise
    upright = np.asarray(decode_image(with_orientation(original, 1)), np.float64)
    turned = np.asarray(decoded, np.float64)
    undo = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
            5: lambda a: np.transpose(a, (1, 0, 2)), 6: lambda a: np.rot90(a, -1),
            7: lambda a: np.rot90(np.transpose(a, (1, 0, 2)), 2), 8: lambda a: np.rot90(a, 1)}[orientation]
    assert np.abs(undo(upright) - turned).mean() < 6


def test_first_frame_of_an_animation():
    for name in ("animated_gif", "animated_webp"):
        pixels = np.asarray(decode_image(CORPUS[name][0]))
        assert pixels[..., 0].mean() > 200 and pixels[..., 2].mean() < 50, name  # red, not blue


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    pixels = np.asarray(decode_image(encode(image, "PNG")))
    assert (pixels == 255).all()


def test_sixteen_bit_grey_keeps_its_range():
    grey16 = np.full((8, 8), 65535, np.uint16)
    grey16[:4] = 0
    decoded = np.asarray(decode_image(encode(Image.fromarray(grey16), "PNG")))
    assert decoded[:4].max() == 0 and decoded[4:].min() == 255


def test_cmyk_is_converted_to_rgb_colours():
    red = Image.new("RGB", (16, 16), (220, 20, 20))
    decoded = np.asarray(decode_image(encode(red.convert("CMYK"), "JPEG", quality=95)), np.int16)
    assert abs(decoded[..., 0].mean() - 220) < 12 and decoded[..., 1].mean() < 40


def test_truncation_never_gives_pixels():
    data = encode(photo(300, 200), "JPEG", quality=90)
    for cut in range(100, len(data) - 2, max(1, len(data) // 25)):
        result = decode_image(data[:cut])
        assert isinstance(result, str), f"cut at {cut} of {len(data)} decoded"


def test_pixel_limit_is_configurable_and_checked_before_decoding():
    data = encode(photo(200, 100), "PNG")
    assert isinstance(decode_image(data, max_pixels=20_000), Image.Image)
    assert decode_image(data, max_pixels=19_999) == "too_large: 200x100 pixels is over the limit of 19999"
    started = time.monotonic()
    assert decode_image(png_with_declared_size(60_000, 1_000), max_pixels=1_000_000).startswith("too_large:")
    assert time.monotonic() - started < 1


def test_null_and_memoryview_inputs():
    assert decode_image(None).startswith("missing:")
    assert isinstance(decode_image(memoryview(encode(photo(), "PNG"))), Image.Image)


def test_draft_decoding_shrinks_large_jpegs_only_as_far_as_asked():
    data = encode(photo(2000, 1500), "JPEG", quality=90)
    small = decode_image(data, draft=256)
    assert min(small.size) >= 256 and small.size[0] < 2000
    assert decode_image(data).size == (2000, 1500)


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


def test_files_here_are_planned_by_name_and_folders_below_are_listed_by_their_worker(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg", "sub1/x.jpg", "sub2/deeper/y.jpg", "_hidden/z.jpg", ".h.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    source = ImageFiles((str(tmp_path),))
    pieces = source.pieces(lambda n: -(-n // 2))  # 3 files spread over 2 pieces
    assert [[os.path.basename(n) for n in p.names] for p in pieces] == [["a.jpg", "b.jpg"], ["c.jpg"], [], []]
    assert [p.source for p in pieces[2:]] == [str(tmp_path / "sub1"), str(tmp_path / "sub2")]
    assert [source.names(p).to_pylist() for p in pieces[2:]] == [[f"file:{tmp_path}/sub1/x.jpg"],
                                                     [f"file:{tmp_path}/sub2/deeper/y.jpg"]]
    listed = sorted(n for p in pieces for n in source.names(p).to_pylist())
    assert listed == list_local_files([str(tmp_path)])  # the same images as one listing, each once


def test_brace_ranges_expand_as_webdataset_writes_shard_names():
    assert expand_braces(["s3://b/{00008..00011}.tar"]) == [f"s3://b/{n:05d}.tar" for n in range(8, 12)]
    assert expand_braces(["x/{a,b}/{1..2}.tar"]) == ["x/a/1.tar", "x/a/2.tar", "x/b/1.tar", "x/b/2.tar"]
    assert expand_braces(["plain/photos"]) == ["plain/photos"]
    with pytest.raises(ValueError, match="empty"):
        expand_braces(["{5..3}.tar"])


def test_a_text_manifest_is_read_in_slices_each_line_once(tmp_path, monkeypatch):
    lines = [f"s3://bucket/images/{i:07d}{'x' * (i % 13)}.jpg" for i in range(500)]
    manifest = tmp_path / "list.txt"
    manifest.write_text("\n".join(lines) + "\n\n")
    monkeypatch.setattr(tables, "TEXT_SLICE", 997)  # slices end mid-line, and some exactly at a line's end
    source = Manifest(str(manifest)).checked()
    pieces = source.pieces()
    assert len(pieces) == -(-manifest.stat().st_size // 997) > 10
    assert [n for p in pieces for n in source.names(p).to_pylist()] == lines


def test_a_csv_manifest_is_read_in_slices_under_its_header_each_row_once(tmp_path, monkeypatch):
    """Many pieces, as a text manifest: a task per slice, not one task for every image the CSV lists."""
    keys = [f"images/{i:07d}{'x' * (i % 13)}, a comma.jpg" for i in range(500)]
    manifest = tmp_path / "inventory.csv"
    manifest.write_text("bucket,key,size\n" + "".join(f'b,"{k}",{i}\n' for i, k in enumerate(keys)))
    monkeypatch.setattr(tables, "TEXT_SLICE", 997)
    source = Manifest(str(manifest), "key", "s3://b/").checked()
    pieces = source.pieces()
    assert len(pieces) == -(-manifest.stat().st_size // 997) > 10
    assert [n for p in pieces for n in source.names(p).to_pylist()] == [f"s3://b/{k}" for k in keys]


def test_an_s3_inventory_report_is_read_as_s3_writes_it(tmp_path, example_bytes, monkeypatch):
    """manifest.json naming header-less CSV.gz files (URL-encoded keys) or Parquet files (plain keys) under
    DESTINATION-PREFIX/SOURCE-BUCKET/CONFIG/data/, wherever the report was copied; each object once, a "folder"
    object left out; --prefix reads the objects from a copy of the bucket."""
    import gzip
    import urllib.parse

    from imgvec.inputs.sources import open_source

    config = tmp_path / "inventory" / "photos-bucket" / "daily"
    (config / "data").mkdir(parents=True)
    (config / "2026-12-05T00-00Z").mkdir()
    keys = ["photos/a b.jpg", "photos/a+b.jpg", "photos/café.jpg", "photos/", "photos/deep/x,y.jpg"]
    schema = "Bucket, Key, Size, LastModifiedDate"
    rows = [f'"photos-bucket","{urllib.parse.quote_plus(k, safe="/")}","12","2026-12-05T00:00:00.000Z"' for k in keys]
    for name, part in (("1.csv.gz", rows[:2]), ("2.csv.gz", rows[2:])):
        (config / "data" / name).write_bytes(gzip.compress(("\n".join(part) + "\n").encode()))
    report = {"sourceBucket": "photos-bucket", "destinationBucket": "arn:aws:s3:::inventory-bucket",
              "fileFormat": "CSV", "fileSchema": schema,
              "files": [{"key": f"inventory/photos-bucket/daily/data/{n}", "size": 1, "MD5checksum": "0"}
                        for n in ("1.csv.gz", "2.csv.gz")]}
    manifest = config / "2026-12-05T00-00Z" / "manifest.json"
    manifest.write_text(json.dumps(report))
    source = open_source([], manifest=str(manifest)).checked()
    pieces = source.pieces()  # without a listing (no output): a piece a file
    assert [p.source for p in pieces] == [f"{config}/data/1.csv.gz", f"{config}/data/2.csv.gz"]
    wanted = [f"s3://photos-bucket/{k}" for k in keys if not k.endswith("/")]
    assert [n for p in pieces for n in source.names(p).to_pylist()] == wanted
    # embed's plan: the CSV.gz files streamed once into a listing, a piece per row group; the same report reuses it
    monkeypatch.setattr(pieces_module, "LISTING_GROUP", 3)
    listing = listing_in(tmp_path / "inputs")
    (tmp_path / "inputs").mkdir()
    planned = source.pieces(None, listing)
    assert [(p.source.rsplit("/", 1)[1].split("-")[0], p.part) for p in planned] == [("inventory", 0), ("inventory", 1)]
    assert [n for p in planned for n in source.names(p).to_pylist()] == wanted
    assert source.planned_images(planned) == len(wanted)
    written = os.stat(local_path(planned[0].source)).st_mtime_ns
    assert source.pieces(None, listing) == planned and os.stat(local_path(planned[0].source)).st_mtime_ns == written
    # Parquet: keys as they are, a piece per row group.
    pq.write_table(pa.table({"bucket": ["photos-bucket"] * 4, "key": [k for k in keys if k != "photos/"]}),
                   config / "data" / "3.parquet", row_group_size=2)
    manifest.write_text(json.dumps({**report, "fileFormat": "Parquet", "fileSchema": "message s3.inventory {}",
                                    "files": [{"key": "inventory/photos-bucket/daily/data/3.parquet"}]}))
    source = open_source([], manifest=str(manifest)).checked()
    assert [n for p in source.pieces() for n in source.names(p).to_pylist()] == wanted
    assert len(source.pieces()) == 2
    # A copy of the bucket: --prefix, and the images are read from there.
    copy = tmp_path / "copy"
    for key, data in zip(wanted, example_bytes.values(), strict=False):
        (copy / key.removeprefix("s3://photos-bucket/")).parent.mkdir(parents=True, exist_ok=True)
        (copy / key.removeprefix("s3://photos-bucket/")).write_bytes(data)
    source = open_source([], manifest=str(manifest), prefix=f"{copy}/").checked()
    samples = [s for p in source.pieces() for s in source.samples(p)]
    assert [s.path for s in samples] == [f"{copy}/{k.removeprefix('s3://photos-bucket/')}" for k in wanted]
    assert all(s.data and not s.error for s in samples)
    manifest.write_text(json.dumps({**report, "fileFormat": "ORC"}))
    with pytest.raises(ValueError, match="an S3 Inventory in 'ORC'; imgvec reads CSV and Parquet inventories"):
        open_source([], manifest=str(manifest)).checked()


def test_tar_samples_are_grouped_by_key_with_captions_and_errors(tmp_path):
    import webdataset as wds

    good = encode(photo(seed=0), "JPEG")
    tar = tmp_path / "00000.tar"
    with wds.TarWriter(str(tar)) as sink:
        sink.write({"__key__": "000000001", "jpg": good, "txt": "a cat", "json": '{"w": 1}'})
        sink.write({"__key__": "000000002", "jpg": b"not a jpeg", "txt": "broken"})
        sink.write({"__key__": "000000003", "txt": "no image"})
        sink.write({"__key__": "dir/000000004", "png": encode(photo(seed=1), "PNG")})
    uri = f"file:{tar}"
    samples = list(tar_samples(uri))
    assert [s.path for s in samples] == [f"{uri}#000000001.jpg", f"{uri}#000000002.jpg", f"{uri}#000000003",
                                         f"{uri}#dir/000000004.png"]
    assert samples[0].data == good and samples[0].extra == {"caption": "a cat", "json": '{"w": 1}'}
    assert samples[1].data == b"not a jpeg" and samples[1].error is None  # decoding says it is broken
    assert samples[2].error.startswith("missing: sample 000000003 has no image")
    assert looks_like_tars([str(tar)]) and looks_like_tars([str(tmp_path)])
    assert TarShards((str(tmp_path / "{00000..00000}.tar"),)).pieces() == [Piece(uri)]

    cut = tmp_path / "cut.tar"
    cut.write_bytes(tar.read_bytes()[: len(good) + 1536])  # inside the first sample's image
    assert [(s.path, s.error.split(":")[0]) for s in tar_samples(f"file:{cut}")] == [
        (f"file:{cut}#000000001.jpg", "unreadable")]
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is no tar" * 100)
    assert [(s.path, s.error) for s in tar_samples(f"file:{junk}")] == [(f"file:{junk}", s.error)
                                                                        for s in tar_samples(f"file:{junk}")]
    assert list(tar_samples(f"file:{junk}"))[0].error.startswith("unreadable: not a tar")
    assert list(tar_samples(f"file:{tmp_path}/gone.tar"))[0].error.startswith("missing")


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


@pytest.mark.spark
def test_collection_names_through_the_command(collection, tmp_path, capsys):
    root, expected = collection
    result = imgvec_here(capsys, "embed", root, "-o", tmp_path / "o", "--model", "resnet18", "--weights", "random",
                         "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "o")
    assert sorted(table.column("path").to_pylist()) == expected
    assert table.column("error").null_count == len(expected)
    resumed = imgvec_here(capsys, "embed", root, "-o", tmp_path / "o", "--resume", "--model", "resnet18", "--weights",
                          "random", "-q", *SPARK)
    assert resumed.returncode == 0 and f"{len(expected)} already in the output" in resumed.stdout
    assert pq.read_table(tmp_path / "o").num_rows == len(expected)
    assert os.path.isfile(str(root / NAMES[14]))  # the NFD name is still there, untouched


def test_tables_are_recognised_as_the_ecosystem_writes_them(tmp_path):
    samples = example_samples()[:3]
    huggingface_table(tmp_path / "hf.parquet", samples)
    hf = ParquetTable(str(tmp_path / "hf.parquet")).checked()
    assert (hf.binary_col, hf.naming) == ("image", "struct")
    assert named_uniquely(None, hf, hf.pieces(), 1) is hf  # every row has its own path
    huggingface_table(tmp_path / "same.parquet", [(k, d, "same.jpg") for k, d, _ in samples])
    same = ParquetTable(str(tmp_path / "same.parquet")).checked()
    by_row = named_uniquely(None, same, same.pieces(), 1)
    uri = f"file:{tmp_path}/same.parquet"
    assert by_row.naming == "row" and by_row.names(by_row.pieces()[0]).to_pylist() == [f"{uri}#{i}" for i in range(3)]
    read = list(by_row.samples(by_row.pieces()[0]))
    assert [s.data for s in read] == [d for _, d, _ in samples]
    assert read_back([s.input for s in read]) == {s.input: d for s, (_, d, _) in zip(read, samples, strict=True)}

    img2dataset_table(tmp_path / "crawl.parquet", samples)
    crawl = ParquetTable(str(tmp_path / "crawl.parquet"), keep_columns=()).checked()
    assert (crawl.binary_col, crawl.path_col, crawl.keep_columns) == ("jpg", "key", ("caption",))
    kept = ParquetTable(str(tmp_path / "crawl.parquet"), keep_columns=("url", "width")).checked()
    assert kept.columns.names == ["url", "width"]
    for keep, fragment in [(("nope",), "has no column 'nope'"), (("sha256",), "a column imgvec writes itself")]:
        with pytest.raises(ValueError, match=fragment):
            ParquetTable(str(tmp_path / "crawl.parquet"), keep_columns=keep).checked()
    with pytest.raises(ValueError, match="not binary"):
        ParquetTable(str(tmp_path / "crawl.parquet"), binary_col="caption").checked()


def test_a_csv_manifest_names_its_column_after_a_prefix(tmp_path):
    (tmp_path / "inventory.csv").write_text("bucket,key,size\nb,photos/a.jpg,1\nb,photos/b c.jpg,2\nb,,3\n")
    source = Manifest(str(tmp_path / "inventory.csv"), "key", "s3://b/").checked()
    assert [n for p in source.pieces() for n in source.names(p).to_pylist()] == ["s3://b/photos/a.jpg",
                                                                               "s3://b/photos/b c.jpg"]
    with pytest.raises(ValueError, match="--path-col 'path' is not a column"):
        Manifest(str(tmp_path / "inventory.csv"), "path").checked()
    with pytest.raises(ValueError, match="name its column of paths with --path-col"):
        Manifest(str(tmp_path / "inventory.csv")).checked()


def listing_in(folder):
    """Where embed puts a source's listing files (its output's _imgvec_inputs/)."""
    return lambda key: open_location(str(folder / f"{key}.parquet"))


def test_a_compressed_manifest_is_converted_once_into_a_listing_planned_by_row_group(tmp_path):
    """No byte slices of a compressed stream: it is streamed once into a Parquet listing, a piece per row group of
    LISTING_GROUP names; the same file again reuses it, a changed one makes a new one."""
    import bz2
    import gzip

    lines = [f"file:{tmp_path}/{i % 12_000}.jpg" for i in range(LISTING_GROUP + 5_000)]  # repeats: not there
    (tmp_path / "list.txt.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    (tmp_path / "list.csv.bz2").write_bytes(bz2.compress(("uri\n" + "\n".join(lines) + "\n").encode()))
    (tmp_path / "inputs").mkdir()
    for source in (Manifest(str(tmp_path / "list.txt.gz")).checked(),
                   Manifest(str(tmp_path / "list.csv.bz2"), "uri").checked()):
        pieces = source.pieces(None, listing_in(tmp_path / "inputs"))
        assert len(pieces) == 2 and {p.source for p in pieces} != {source.file}
        assert [n for p in pieces for n in source.names(p).to_pylist()] == lines  # every entry: the job counts repeats
        assert source.planned_images(pieces) == len(lines)
        samples = list(source.samples(pieces[0]))
        assert [s.path for s in samples] == lines[:LISTING_GROUP]  # each once in a piece: the first 10,000 differ
        listing = pieces[0].source
        written = os.stat(listing.removeprefix("file:")).st_mtime_ns
        assert source.pieces(None, listing_in(tmp_path / "inputs")) == pieces  # converted once
        assert os.stat(listing.removeprefix("file:")).st_mtime_ns == written
    assert len(os.listdir(tmp_path / "inputs")) == 2
    (tmp_path / "list.txt.gz").write_bytes(gzip.compress(b"file:/elsewhere/one.jpg\n"))
    source = Manifest(str(tmp_path / "list.txt.gz"))
    changed = source.pieces(None, listing_in(tmp_path / "inputs"))
    assert [source.names(p).to_pylist() for p in changed] == [["file:/elsewhere/one.jpg"]]
    (tmp_path / "list.parquet.gz").write_bytes(gzip.compress(b"PAR1"))
    with pytest.raises(ValueError, match="compressed inside already; give it uncompressed"):
        Manifest(str(tmp_path / "list.parquet.gz"), "uri").checked()


def test_a_flat_folder_past_the_plans_size_is_streamed_into_a_listing(tmp_path, monkeypatch):
    """Past LISTED_MAX files the driver's listing streams into a file, a piece per row group: the same images, each
    once, as the plan that names them; folders below are still listed by their workers."""
    monkeypatch.setattr(sources, "LISTED_MAX", 4)
    for name in [f"{i:02d}.jpg" for i in range(11)] + ["sub/x.jpg", "_hidden.jpg", "notes.txt"]:
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"x")
    (tmp_path / "inputs").mkdir()
    source = ImageFiles((str(tmp_path / "in"),), glob="*.jpg")
    pieces = source.pieces(lambda n: 2, listing_in(tmp_path / "inputs"))
    assert [p.part for p in pieces] == [0, -1] and pieces[0].source.endswith("files.parquet")
    assert source.planned_images(pieces) is None  # sub/ is listed by its worker
    assert source.planned_images(pieces[:1]) == 11
    listed = sorted(n for p in pieces for n in source.names(p).to_pylist())
    assert listed == list_local_files([str(tmp_path / "in")], "*.jpg")
    held = source.pieces(lambda n: 2)  # no listing file: the plan names them all, as below LISTED_MAX
    assert sorted(n for p in held for n in source.names(p).to_pylist()) == listed and len(held) == 7


def test_keep_columns_with_tars_is_refused_in_one_line(capsys, tmp_path):
    webdataset_shards(tmp_path / "shards", example_samples()[:2], per_tar=2)
    result = imgvec_here(capsys, "embed", tmp_path / "shards", "-o", tmp_path / "out", "--keep-columns", "url",
                         "--model", "resnet18", "--weights", "random", "--master", "spark://127.0.0.1:9")  # none there
    assert_usage_error(result, "a tar's captions (KEY.txt) and JSON (KEY.json) are always kept")
    assert not (tmp_path / "out").exists()


def test_tar_members_are_read_back_each_tar_streamed_once(tmp_path):
    samples = example_samples()[:4]
    tar = webdataset_shards(tmp_path, samples, per_tar=4)[0]
    places = [f"file:{tar}#{k}.jpg" for k, _, _ in samples] + [f"file:{tar}#nope.jpg", f"file:{tmp_path}/gone.jpg"]
    read = read_back(places)
    assert [read[p] for p in places[:4]] == [d for _, d, _ in samples]
    assert read[places[4]].startswith("missing") and read[places[5]].startswith("missing")
