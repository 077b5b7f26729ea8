"""The registry, weights resolution and safe loading, with real torchvision networks."""

import os
import pickle
import re

import pytest
import torch
import torchvision
from torch import nn

import imgvec
from corpus import encode, photo
from imgvec.features.featurize import FeatureConfig, get_featurizer, model_loads
from imgvec.inputs.preprocess import Preprocess
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
        imgvec.ImageVectorizer("resnet51", weights="random")


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
        imgvec.ImageVectorizer("convnext_tiny")
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
        imgvec.ImageVectorizer("resnet18", weights="/nonexistent/w.pt")


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_register_your_own_model():
    imgvec.register_model("tiny-test", TinyNet, dim=8, preprocess=Preprocess(resize=64, crop=56), replace=True)
    assert "tiny-test" in [e.name for e in list_models()]
    v = imgvec.ImageVectorizer("tiny-test", weights="random")
    assert len(v.extract_features(encode(photo(), "PNG"))) == 8
    with pytest.raises(ValueError, match="already registered"):
        imgvec.register_model("tiny-test", TinyNet, dim=8)


def test_a_torchscript_file_is_loaded_only_when_asked_for(tmp_path):
    path = tmp_path / "tiny.ts"
    torch.jit.script(TinyNet().eval()).save(str(path))
    v = imgvec.ImageVectorizer(f"torchscript:{path}")
    features = v.extract_features(encode(photo(), "PNG"))
    assert len(features) == 8
    assert len(pickle.dumps(v)) < 2000
    with pytest.raises(WeightsUnavailable, match="TorchScript archive"):  # code, not tensors
        imgvec.ImageVectorizer("resnet18", weights=str(path)).extract_features(encode(photo(), "PNG"))


def test_the_network_is_built_once_per_model_weights_and_device(tmp_path):
    config = FeatureConfig("resnet18", device="cpu")
    ref = resolve_weights(config.entry, "random")
    assert get_featurizer(config, ref) is get_featurizer(FeatureConfig("resnet18", device="cpu"), ref)
    # Decoding settings, batch size and precision share the network: no second copy in memory.
    other = FeatureConfig("resnet18", device="cpu", batch_size=3, draft=True, max_pixels=10**6, precision="bf16")
    assert get_featurizer(other, ref).net is get_featurizer(config, ref).net
    assert model_loads(other, ref)["loads"] == 1
    torch.save(get_featurizer(config, ref).net.state_dict(), tmp_path / "copy.pt")
    from_file = resolve_weights(config.entry, str(tmp_path / "copy.pt"))
    assert get_featurizer(config, from_file).net is not get_featurizer(config, ref).net
