"""Opt-in faster modes keep their measured agreement with the exact features (real ImageNet weights)."""

import numpy as np
import pytest
from PIL import Image

from corpus import encode
from helpers import EXAMPLES
from imgvec import ImageVectorizer
from imgvec.kernels.similarity import duplicate_groups, nearest


def cosines(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def photos():
    return [p.read_bytes() for p in sorted(EXAMPLES.iterdir())]


def test_bf16_on_the_cpu_agrees_with_fp32(photos):
    exact, _ = ImageVectorizer("efficientnet_lite0", device="cpu").embed(photos)
    fast, errors = ImageVectorizer("efficientnet_lite0", device="cpu", precision="bf16").embed(photos)
    assert errors == [None] * len(photos)
    assert cosines(exact, fast).min() >= 0.99
    # Retrieval keeps what matters: the same near-duplicate groups (the stereo pair), and each half of the
    # pair is the other's best match. (Unrelated photos are near-ties at ~0.3 and may swap places.)
    assert [[i for i, _ in g] for g in duplicate_groups(exact, 0.8)] == \
        [[i for i, _ in g] for g in duplicate_groups(fast, 0.8)]
    names = [p.name for p in sorted(EXAMPLES.iterdir())]
    left, right = names.index("motorcycle_left.jpg"), names.index("motorcycle_right.jpg")
    assert nearest(fast[left], fast, 1, exclude=left)[0][0] == right


def test_draft_decoding_of_large_photos_agrees_with_exact_decoding(photos):
    large = [encode(Image.open(EXAMPLES / n).convert("RGB").resize((4000, 3000)), "JPEG", quality=90)
             for n in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg")]
    exact, _ = ImageVectorizer("efficientnet_lite0").embed(large)
    draft, _ = ImageVectorizer("efficientnet_lite0", draft=True).embed(large)
    assert cosines(exact, draft).min() >= 0.995
    assert not np.array_equal(exact, draft)  # it is a different computation, opt-in


def test_fp16_needs_a_gpu_and_unknown_precisions_are_refused(photos):
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a GPU"):
            ImageVectorizer("resnet18", weights="random", device="cpu", precision="fp16").embed(photos[:1])
    with pytest.raises(ValueError, match="precision must be one of"):
        ImageVectorizer("resnet18", weights="random", precision="int4")
