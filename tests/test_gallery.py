"""Pages a person decides from: `dupes --html` and `similar --html`, opened in a real browser (headless Chromium).

Every thumbnail must decode; kept files are marked; an image gone since it was embedded shows its path
and why; a large result says how many more groups are in --out. Screenshots land in test-artifacts/.
"""

import shutil

import pytest
from PIL import Image, ImageEnhance

from helpers import EXAMPLES, SPARK, assert_usage_error, imgvec, imgvec_here, in_browser


@pytest.fixture(scope="module")
def gallery_collection(tmp_path_factory):
    """The examples, two edited copies of three of them, a byte-identical copy; embedded; then one copy deleted."""
    folder = tmp_path_factory.mktemp("gallery")
    for path in EXAMPLES.iterdir():
        shutil.copy(path, folder / path.name)
    for name in ("chelsea", "rocket", "coffee"):
        image = Image.open(EXAMPLES / f"{name}.jpg").convert("RGB")
        w, h = image.size
        image.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(folder / f"{name}_crop.jpg", quality=85)
        ImageEnhance.Brightness(image).enhance(1.15).resize((w // 2, h // 2)).save(folder / f"{name}_small.jpg")
    shutil.copy(EXAMPLES / "rocket.jpg", folder / "rocket_copy.jpg")
    output = tmp_path_factory.mktemp("out") / "vectors"
    result = imgvec_here(None, "embed", folder, "-o", output, "--model", "efficientnet_lite0", "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    (folder / "coffee_small.jpg").unlink()  # gone since: its card must say so
    return folder, output


def test_the_dupes_page_shows_each_group_with_its_kept_file(gallery_collection, tmp_path):
    folder, output = gallery_collection
    page, out = tmp_path / "dupes.html", tmp_path / "groups.parquet"
    result = imgvec("dupes", output, "--threshold", "0.8", "--keep", "largest", "--html", page, "--out", out,
                    "--show", "3")
    assert result.returncode == 0, result.stderr
    html = page.read_text()
    assert "<script" not in html and "http" not in html.replace("file:", "")  # self-contained, no network
    opened = in_browser(page, "dupes.png")
    cards = html.count("class='card ")
    assert opened["broken"] == 0 and opened["images"] == cards - html.count("class=missing") > 0
    assert html.count("Group ") == 3 and "more are in" in html and str(out) in html  # the largest 3 of 4
    assert "cannot be shown: missing" in html and "coffee_small.jpg" in html
    deleted = set(result.stdout.split())
    cards = {card.split("<div class=path>")[1].split("</div>")[0]: card.split("'")[0]
             for card in html.split("<div class='card ")[1:]}
    assert {path for path, kind in cards.items() if kind == "copy"} == deleted & set(cards) != set()
    assert "KEEP" in opened["text"] and "px" in opened["text"] and "KB" in opened["text"]
    assert "copy, cosine 0." in opened["text"]  # each copy's card names its kept file and the cosine to it


def test_a_group_larger_than_a_page_shows_its_kept_files_and_counts_the_rest(gallery_collection, tmp_path, capsys,
                                                                            monkeypatch):
    import imgvec.answers.gallery

    _, output = gallery_collection
    monkeypatch.setattr(imgvec.answers.gallery, "PAGE_MEMBERS", 2)  # as for a group of 10^5 near-identical images
    page = tmp_path / "dupes.html"
    result = imgvec_here(capsys, "dupes", output, "--threshold", "0.8", "--html", page, "--show", "1")
    assert result.returncode == 0, result.stderr
    html = page.read_text()
    size = int(html.split("Group 1: ")[1].split(", ")[1].split(" images")[0])
    assert size >= 3 and html.count("class='card keep'") >= 1  # the kept file is among the cards shown
    assert html.count("<div class='card ") == 3 and f"and {size - 2} more: <code>--out FILE</code>" in html
    opened = in_browser(page, "dupes-more.png")
    assert opened["broken"] == 0 and f"and {size - 2} more" in opened["text"]


def test_the_similar_page_shows_each_query_with_its_matches(gallery_collection, tmp_path):
    folder, output = gallery_collection
    page = tmp_path / "similar.html"
    result = imgvec("similar", output, folder / "chelsea.jpg", folder / "rocket.jpg", "-k", "4", "--html", page)
    assert result.returncode == 0, result.stderr
    opened = in_browser(page, "similar.png")
    assert opened["images"] == 2 * 5 and opened["broken"] == 0  # each query and its 4 matches
    assert "QUERY" in opened["text"] and "#1, cosine" in opened["text"]
    assert_usage_error(imgvec("similar", output, folder / "chelsea.jpg", "--html", page), "already exists")


def test_thumbnails_are_made_on_spark_workers_when_there_are_many(gallery_collection, tmp_path, capsys, monkeypatch):
    import imgvec.answers.gallery

    _, output = gallery_collection
    monkeypatch.setattr(imgvec.answers.gallery, "IN_PROCESS", 1)  # as for a page of thousands of images
    page = tmp_path / "dupes.html"
    assert imgvec_here(capsys, "dupes", output, "--threshold", "0.8", "--html", page, *SPARK).returncode == 0
    opened = in_browser(page)
    assert opened["broken"] == 0 and opened["images"] >= 8
