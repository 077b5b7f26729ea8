"""`imgvec calibrate`: known copies of the output's own images, embedded on Spark, measured per threshold;
the recommendation recorded and used by `dupes`. Checked against the same copies embedded in this process.
"""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import EXAMPLES, SPARK, assert_usage_error, clustered_vectors, imgvec, imgvec_here, vectors_output
from imgvec import ImageVectorizer
from imgvec.edits import EDITS, make_copy


@pytest.fixture(scope="module")
def photos_output(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for path in EXAMPLES.iterdir():
        shutil.copy(path, folder / path.name)
    output = tmp_path_factory.mktemp("out") / "vectors"
    result = imgvec("embed", folder, "-o", output, "--model", "efficientnet_lite0", "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    return folder, output


def test_calibrate_measures_each_threshold_and_dupes_uses_what_it_recommends(photos_output):
    folder, output = photos_output
    before = imgvec("dupes", output, "--json")  # not calibrated yet: the model's own default, and it says so
    assert "the default for efficientnet_lite0" in before.stderr and "imgvec calibrate" in before.stderr
    result = imgvec("calibrate", output, "--json", "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["originals"] == found["images"] == 10 and list(found["edits"]) == list(EDITS)
    table = found["table"]
    assert [r["threshold"] for r in table] == [round(0.5 + 0.01 * i, 2) for i in range(50)]
    # the same copies embedded in this process: every recall in the table
    vectorizer = ImageVectorizer("efficientnet_lite0", device="cpu")
    paths = sorted(folder.iterdir())
    originals = {f"file:{p}": Image.open(p).convert("RGB") for p in paths}
    from imgvec.searchable import open_searchable

    sample = [r["path"] for r in open_searchable(str(output)).rows(open_searchable(str(output)).sample(10)[0])
              .to_pylist()]
    cosines = []
    for position, path in enumerate(sample):
        host = originals[sample[(position + 1) % len(sample)]]
        data = (folder / path.rsplit("/", 1)[1]).read_bytes()
        copies = [make_copy(originals[path], kind, position, host) for kind in EDITS]
        vectors, _ = vectorizer.embed([data, *copies])
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        cosines.append(vectors[1:] @ vectors[0])
    cosines = np.array(cosines)
    for row in table:
        for k, kind in enumerate(EDITS):
            assert abs(row["recall_by_edit"][kind] - (cosines[:, k] >= row["threshold"]).mean()) <= 0.1 + 1e-9
        assert abs(row["recall"] - (cosines >= row["threshold"]).mean()) <= 0.02
    recalls = [r["recall"] for r in table]
    assert recalls == sorted(recalls, reverse=True) and recalls[0] > 0.8 > recalls[-1]
    assert found["table"][0]["false_pairs_in_sample"] >= 1  # the stereo pair: a real near-duplicate counts as false
    chosen = max((r for r in table if r["precision"] >= 0.99), key=lambda r: r["recall"])
    assert found["threshold"] == chosen["threshold"] and found["recall"] == chosen["recall"]
    recorded = json.loads((output / "_imgvec.json").read_text())["calibration"]
    assert recorded["threshold"] == found["threshold"] and recorded["weights_sha256"]
    after = imgvec("dupes", output, "--json")
    assert json.loads(after.stdout)["threshold"] == found["threshold"]
    assert f"threshold {found['threshold']}: calibrated on this output" in after.stderr
    from imgvec.cli import calibration_text

    text = calibration_text(found)  # what calibrate prints without --json, from the same result
    assert "<- recommended" in text and "recall  false pairs  precision" in text
    assert f"threshold {found['threshold']}:" in text.splitlines()[-1]


def test_an_original_that_is_gone_is_one_line(photos_output, tmp_path):
    folder, output = photos_output
    moved = tmp_path / "photos"
    shutil.copytree(folder, moved)
    copy = tmp_path / "vectors"
    assert imgvec("embed", moved, "-o", copy, "--model", "efficientnet_lite0", "-q", *SPARK).returncode == 0
    (moved / "coffee.jpg").unlink()
    assert_usage_error(imgvec("calibrate", copy, "-q", *SPARK), f"{moved / 'coffee.jpg'}")


def test_a_sample_too_small_for_the_precision_says_what_it_can_estimate(tmp_path, capsys, monkeypatch):
    import imgvec.calibrate

    output = tmp_path / "vectors"
    vectors_output(output, clustered_vectors(60_000, 4))
    monkeypatch.setattr(imgvec.calibrate, "PAIRS_SAMPLE", 50)  # 1,225 pairs for 1.8x10^9 at 60,000 images
    result = imgvec_here(capsys, "calibrate", output, "--sample", "50")
    assert_usage_error(result, "cannot vouch for precision 0.99 at 60000 images")
    assert "it can estimate precision up to 0.0" in result.stderr and "--sample" in result.stderr
    assert_usage_error(imgvec_here(capsys, "calibrate", output, "--precision", "2"), "--precision is a share")
