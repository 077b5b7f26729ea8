"""ImageVectorizer: equal to plain torchvision, deterministic, and pickles to its configuration."""

import io
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from corpus import corpus
from helpers import max_relative_difference
from imgvec import ImageVectorizer


def torchvision_reference(image_bytes_list, model_name="resnet50"):
    """What a user would write with torchvision alone: the weights' own transforms, fc removed."""
    weights = {"resnet50": torchvision.models.ResNet50_Weights, "resnet18": torchvision.models.ResNet18_Weights}[
        model_name].DEFAULT
    net = getattr(torchvision.models, model_name)(weights=weights)  # reads the torch hub cache
    net.fc = torch.nn.Identity()
    net.eval()
    transform = weights.transforms()
    batch = torch.stack([transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in image_bytes_list])
    with torch.no_grad():
        return net(batch).numpy()


def test_features_equal_torchvision_with_the_same_weights(resnet50_default, example_bytes):
    photos = [example_bytes[n] for n in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg", "retina.jpg")]
    v = ImageVectorizer(device="cpu", batch_size=2)  # batches of 2, 2 and 1: batching must not matter
    features, errors = v.embed(photos)
    assert errors == [None] * 5
    assert features.shape == (5, 2048) and features.dtype == np.float32
    assert max_relative_difference(features, torchvision_reference(photos)) <= 1e-4
    assert features.std() > 0


def test_features_are_deterministic(example_bytes):
    v = ImageVectorizer("resnet18", weights="random")
    image = example_bytes["coffee.jpg"]
    assert v.extract_features(image) == v.extract_features(image)


def test_batch_form_keeps_order_and_puts_none_for_bad_images(example_bytes):
    v = ImageVectorizer("resnet18", weights="random", batch_size=3)
    images = [example_bytes["chelsea.jpg"], b"not an image", None, example_bytes["coffee.jpg"], b""]
    out = v.extract_features_batch(images)
    assert [x is None for x in out] == [False, True, True, False, True]
    assert out[0] == v.extract_features(example_bytes["chelsea.jpg"])
    assert out[3] == v.extract_features(example_bytes["coffee.jpg"])
    _, errors = v.embed(images)
    assert errors[1].startswith("unrecognised:") and errors[2].startswith("missing:") and errors[4] == "empty: 0 bytes"


def test_every_valid_corpus_image_gets_finite_features():
    v = ImageVectorizer("resnet18", weights="random")
    items = corpus()
    names = sorted(items)
    features, errors = v.embed([items[n][0] for n in names])
    for name, row, error in zip(names, features, errors, strict=True):
        if items[name][1] == "ok":
            assert error is None and np.isfinite(row).all(), name
        else:
            assert error is not None and np.isnan(row).all(), name


def test_pickles_to_its_configuration_only(resnet50_default, example_bytes):
    v = ImageVectorizer()
    v.extract_features(example_bytes["chelsea.jpg"])  # the network is now built in this process
    data = pickle.dumps(v)
    assert len(data) < 2048
    for marker in (b"_rebuild_tensor", b"torch.nn", b"torchvision", b"pyspark", b"SparkSession"):
        assert marker not in data
    copy = pickle.loads(data)
    assert copy.config == v.config and copy.weights_ref == v.weights_ref


def test_unpickled_in_a_fresh_process_builds_the_model_once_and_agrees(resnet50_default, example_bytes, tmp_path):
    v = ImageVectorizer(device="cpu")
    image = example_bytes["rocket.jpg"]
    expected = np.array(v.extract_features(image), np.float32)
    (tmp_path / "v.pkl").write_bytes(pickle.dumps(v))
    (tmp_path / "img").write_bytes(image)
    script = f"""
import pickle, sys, numpy as np
from imgvec.features.featurize import model_loads
v = pickle.load(open({str(tmp_path / 'v.pkl')!r}, 'rb'))
assert model_loads()['loads'] == 0, 'built before first use'
image = open({str(tmp_path / 'img')!r}, 'rb').read()
a = v.extract_features(image); b = v.extract_features(image)
assert model_loads()['loads'] == 1, model_loads()
np.save({str(tmp_path / 'out.npy')!r}, np.array(a, np.float32))
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    got = np.load(tmp_path / "out.npy")
    assert max_relative_difference(got, expected) <= 1e-5


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"device": "tpu"}, {"max_pixels": -1}])
def test_bad_configuration_is_refused_early(bad):
    with pytest.raises(ValueError):
        ImageVectorizer("resnet18", weights="random", **bad)
