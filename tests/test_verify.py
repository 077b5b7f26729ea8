"""The pixel verifier (imgvec.answers.verify): copies of real photos verify, different photos do not, each image is
decoded once per task, and pairs verified on Spark's workers get the verdicts this process gives.
"""

import io
import itertools
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFilter, ImageOps

from helpers import EXAMPLES, SPARK, assert_no_jvm_lines, imgvec, imgvec_here, in_browser, vectors_output
from imgvec.answers import verify
from imgvec.base.settings import RunOptions
from imgvec.inputs.edits import EDITS, make_copy

TEXTURED = ("astronaut", "chelsea", "coffee", "rocket")  # photos with local detail to match
DIFFERENT = ("astronaut", "brick", "camera", "chelsea", "coffee", "hubble_deep_field", "motorcycle_left", "retina",
             "rocket")  # the bundled photos but the stereo pair's other half, which is the same scene


def photo(name: str) -> Image.Image:
    path = next(EXAMPLES.glob(f"{name}.*"))
    return Image.open(path).convert("RGB")


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


@pytest.mark.parametrize("kind", list(EDITS))
def test_calibrates_edits_of_textured_photos_verify(kind):
    host = photo("camera")
    for n, name in enumerate(TEXTURED):
        original = photo(name)
        verdict = verify.verify(original, decoded(make_copy(original, kind, n, host)))
        assert verdict.verified and verdict.matches >= verify.MIN_INLIERS, (name, kind, verdict)
        assert verdict.transform.startswith("mirror+") == (kind == "mirror"), (name, kind, verdict)


def test_edits_calibrate_does_not_make_verify_too():
    for name in TEXTURED:
        original = photo(name)
        w, h = original.size
        for copy in (ImageOps.grayscale(original).convert("RGB"), original.filter(ImageFilter.GaussianBlur(2)),
                     original.resize((int(w * 0.7), h)), original.resize((w // 8, h // 8))):  # a 64-pixel thumbnail
            verdict = verify.verify(original, copy)
            assert verdict.verified, (name, copy.size, verdict)


def test_different_photos_do_not_verify():
    images = {name: photo(name) for name in DIFFERENT}
    features = {name: verify.features_of(image) for name, image in images.items()}
    for a, b in itertools.combinations(DIFFERENT, 2):
        verdict = verify.compare(features[a], features[b])
        assert not verdict.verified and verdict.matches < verify.MIN_INLIERS, (a, b, verdict)


def test_a_shared_caption_banner_does_not_make_two_photos_one():
    """Two different photos with the same text banner share matching points, but only over a sliver of each."""
    copies = [decoded(make_copy(photo(name), "text", 3)) for name in ("astronaut", "rocket")]
    assert not verify.verify(*copies).verified


def test_each_image_is_decoded_once_and_an_unreadable_one_is_a_verdict(tmp_path, monkeypatch):
    import imgvec.inputs.readback

    paths = []
    for name in ("chelsea", "rocket"):
        image = photo(name)
        for kind in ("crop", "colour"):
            path = tmp_path / f"{name}_{kind}.jpg"
            path.write_bytes(make_copy(image, kind, 1))
            paths.append(str(path))
    reads = []
    real_read = imgvec.inputs.readback.read_file
    monkeypatch.setattr(imgvec.inputs.readback, "read_file", lambda uri: reads.append(uri) or real_read(uri))
    checker = verify.PairVerifier()
    pairs = [(a, b) for a, b in itertools.combinations(paths, 2)]
    verdicts = {pair: checker(*pair) for pair in pairs}
    assert sorted(reads) == sorted(paths)  # six pairs, four images, four reads
    assert [pair for pair, v in verdicts.items() if v.verified] == [(paths[0], paths[1]), (paths[2], paths[3])]
    gone = checker(paths[0], str(tmp_path / "gone.jpg"))
    assert not gone.verified and gone.error.endswith("missing: the file is gone")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8not a jpeg")
    assert "corrupt" in checker(paths[0], str(tmp_path / "broken.jpg")).error


@pytest.mark.spark
def test_pairs_verified_on_spark_workers_agree_with_this_process(tmp_path, spark):
    paths = []
    for n, name in enumerate(TEXTURED[:3]):
        image = photo(name)
        original = tmp_path / f"{name}.jpg"
        image.save(original, quality=92)
        paths.append(str(original))
        for kind in ("crop", "mirror", "small"):
            path = tmp_path / f"{name}_{kind}.jpg"
            path.write_bytes(make_copy(image, kind, n))
            paths.append(str(path))
    pairs = list(itertools.combinations(paths, 2))  # 66 pairs: 18 copies of one photo, 48 of different photos
    on_spark = verify.verify_pairs(pairs, RunOptions(spark=spark))
    here = verify.PairVerifier()
    assert on_spark == {pair: here(*pair) for pair in pairs}
    assert sum(v.verified for v in on_spark.values()) == 18
    assert all(v.verified == (a.split("/")[-1].split("_")[0].split(".")[0] == b.split("/")[-1].split("_")[0]
                              .split(".")[0]) for (a, b), v in on_spark.items())


# --- dupes --verify, through the real command ------------------------------------------------------------------


def picture_of(path: str) -> str:
    return path.rsplit("/", 1)[-1].split("_copy_")[0].rsplit(".", 1)[0]


@pytest.fixture(scope="module")
def copies_output(tmp_path_factory):
    """The bundled photos (but the stereo pair's other half) and four copies of each textured one, made in ways
    calibrate does not make; embedded with real ImageNet weights."""
    folder = tmp_path_factory.mktemp("photos")
    for path in EXAMPLES.iterdir():
        if not path.name.startswith("motorcycle_right"):
            (folder / path.name).write_bytes(path.read_bytes())
    for name in TEXTURED:
        image = photo(name)
        w, h = image.size
        copies = {"recrop": image.crop((w // 8, h // 10, w - w // 10, h - h // 8)),
                  "grey": ImageOps.grayscale(image).convert("RGB"),
                  "blur": image.filter(ImageFilter.GaussianBlur(2)), "squash": image.resize((int(w * 0.75), h))}
        for kind, copy in copies.items():
            copy.save(folder / f"{name}_copy_{kind}.jpg", quality=70)
    output = tmp_path_factory.mktemp("out") / "vectors"
    result = imgvec_here(None, "embed", folder, "-o", output, "--model", "efficientnet_lite0", "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    return folder, output


@pytest.mark.spark
def test_dupes_verify_lists_no_file_whose_witness_is_another_picture(copies_output, tmp_path):
    folder, output = copies_output
    low = "0.3"  # so low that groups chain across pictures: without --verify, files are listed against others
    plain = json.loads(imgvec("dupes", output, "--threshold", low, "--keep", "first", "--json").stdout)
    witness = {m["path"]: m["kept_file"] for g in plain["groups"] for m in g["members"]}
    assert any(picture_of(p) != picture_of(witness[p]) for p in plain["delete"])
    out, page = tmp_path / "groups.parquet", tmp_path / "dupes.html"
    result = imgvec("dupes", output, "--threshold", low, "--keep", "first", "--verify", "--json", "--out", out,
                    "--html", page, "--show", "20", *SPARK)
    assert result.returncode == 0, result.stderr
    assert_no_jvm_lines(result.stderr)
    found = json.loads(result.stdout)
    members = {m["path"]: m for g in found["groups"] for m in g["members"]}
    assert all(picture_of(p) == picture_of(members[p]["kept_file"]) for p in found["delete"])
    copies = [p for p in members if "_copy_" in p]
    assert len([p for p in found["delete"] if "_copy_" in p]) >= 0.75 * len(TEXTURED) * 4
    assert set(found["delete"]) <= set(copies) and found["unverified"]  # the others were kept, and counted
    assert found["unreadable"] == []  # every image could be read: kept for their pixels
    for path in found["delete"]:
        assert members[path]["verified"] is True and members[path]["matches"] >= 15
    for path in found["unverified"]:
        assert members[path]["kept_file"] == path and members[path]["verified"] is False
    table = pq.read_table(out)
    assert table.column_names == ["path", "group", "kind", "representative", "similarity", "kept_file",
                                  "kept_similarity", "verified", "matches", "verify_error"]
    assert table.column("verify_error").null_count == table.num_rows
    rows = {r["path"]: r for r in table.to_pylist()}
    assert {p for p, r in rows.items() if r["verified"] and r["kept_file"] != p} == set(found["delete"])
    assert all(r["verified"] is None for r in rows.values() if r["kept_file"] == r["path"] and
               r["path"] not in found["unverified"])
    opened = in_browser(page, "dupes-verify.png")
    assert opened["broken"] == 0
    assert opened["text"].count("verified: ") >= len(found["delete"]) and "not verified" in opened["text"]
    assert "whose pixels verify it" in opened["text"] and "kept unverified" in opened["text"]


@pytest.mark.spark
def test_dupes_without_verify_keeps_its_columns(copies_output, tmp_path):
    folder, output = copies_output
    out = tmp_path / "groups.parquet"
    result = imgvec("dupes", output, "--threshold", "0.8", "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    assert pq.read_table(out).column_names == ["path", "group", "kind", "representative", "similarity", "kept_file",
                                               "kept_similarity"]
    assert "verified" not in result.stdout and "unverified" not in json.loads(result.stdout)


def test_dupes_verify_says_a_file_is_gone_and_counts_it_apart(tmp_path, capsys):
    """A copy whose file is gone is kept (safe), and the listing says why: gone, not "0 matching points"."""
    shutil.copy(EXAMPLES / "chelsea.jpg", tmp_path / "00000000.jpg")
    Image.open(EXAMPLES / "chelsea.jpg").resize((300, 200)).save(tmp_path / "00000001.jpg", quality=70)
    shutil.copy(EXAMPLES / "coffee.jpg", tmp_path / "00000002.jpg")
    vectors = np.array([[1, 0, 0], [0.99, 0.1, 0], [0, 0, 1]], np.float32)
    vectors_output(tmp_path / "out", vectors, prefix=str(tmp_path))
    args = ["dupes", tmp_path / "out", "--threshold", "0.9", "--keep", "first", "--verify"]
    present = json.loads(imgvec_here(capsys, *args, "--json").stdout)
    assert present["delete"] == [f"{tmp_path}/00000001.jpg"] and present["unreadable"] == []  # its pixels verify it
    (tmp_path / "00000001.jpg").unlink()
    gone = f"{tmp_path}/00000001.jpg"
    found = json.loads(imgvec_here(capsys, *args, "--json").stdout)
    assert found["delete"] == [] and found["unverified"] == found["unreadable"] == [gone]
    member = next(m for g in found["groups"] for m in g["members"] if m["path"] == gone)
    assert member["verified"] is False and "missing: the file is gone" in member["verify_error"]
    listing = imgvec_here(capsys, *args[:-3], "--verify")  # the groups as text, without --keep
    assert listing.returncode == 0
    assert "1 file kept unverified (1 of them because an image is gone or unreadable)" in listing.stdout
    line = next(line for line in listing.stdout.splitlines() if line.strip().endswith(")") and gone in line)
    assert "the file is gone; restore it or embed again without it" in line and "matching points" not in line
