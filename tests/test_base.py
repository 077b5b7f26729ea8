"""imgvec.base: name globs as Spark reads them, places that overlap, one-line text, and the settings objects."""

import argparse

import pytest

from imgvec.base import defaults
from imgvec.base.paths import fixed_prefix, overlaps
from imgvec.base.settings import FeatureSettings, RunOptions
from imgvec.base.storage import name_matches
from imgvec.base.text import LIMIT, one_line


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


def test_one_line_is_one_line_of_at_most_its_limit():
    error = OSError("connection reset\n  by peer\tafter   3 tries " + "x" * 500)
    assert one_line(error) == "connection reset by peer after 3 tries " + "x" * (LIMIT - 39)
    assert len(one_line(error)) == LIMIT and "\n" not in one_line(error) and one_line("a\nb", 2) == "a "


def test_the_settings_objects_hold_the_defaults_and_read_a_command_lines_arguments():
    d = defaults
    assert FeatureSettings() == FeatureSettings(d.MODEL, d.WEIGHTS, d.DEVICE, d.BATCH_SIZE, d.PRECISION, d.MAX_PIXELS,
                                                d.DRAFT, d.ENGINE)
    args = argparse.Namespace(**{**vars(FeatureSettings()), "model": "resnet18", "batch_size": 4, "inputs": ["x"]})
    assert FeatureSettings.of(args) == FeatureSettings(model="resnet18", batch_size=4)
    assert RunOptions().master == defaults.MASTER and RunOptions().conf == {} and not RunOptions().quiet
    assert RunOptions(conf={"a": "1"}, spark=object()) == RunOptions(conf={"a": "1"})  # a session is no setting
