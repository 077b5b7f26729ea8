"""Decoded image -> the network's input: torchvision's resize and centre crop, written out, then normalisation.

Both the torch path (features.featurize) and the CPU engines' int8 calibration (models.engines) read
pixels through here, so the two can never prepare an image differently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from imgvec.base import defaults
from imgvec.inputs.decode import decode_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side, crop the centre, scale to [0, 1], normalise: torchvision's recipe.

    resize_mode "squash": resize to crop x crop whatever the aspect (SigLIP's and SSCD's recipe)."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"  # or "bicubic", "nearest"
    resize_mode: str = "shortest"  # or "squash"

    def __post_init__(self):
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"interpolation must be bilinear, bicubic or nearest, not {self.interpolation!r}")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode must be shortest or squash, not {self.resize_mode!r}")
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) must not be larger than resize ({self.resize})")


# An image longer than this many times its shorter side is first cropped to its centre:
# a 1x100000 strip must not be resized to 256x25600000.
_MAX_ASPECT = 4



def prepare(data, p: Preprocess, max_pixels: int = defaults.MAX_PIXELS, draft: bool = False) -> np.ndarray | str:
    """Bytes -> uint8 [crop, crop, 3], or an error string."""
    image = decode_image(data, max_pixels=max_pixels, draft=p.resize if draft else None)
    if isinstance(image, str):
        return image
    try:
        return preprocess_image(image, p)
    except Exception as exc:  # a resampling failure costs one row, not the batch
        return f"corrupt: cannot resize ({type(exc).__name__}: {exc})"[:160]


def normalised(batch: np.ndarray, p: Preprocess) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W], as ToTensor + Normalize (the CPU engines' input)."""
    x = batch.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess_image(image: Image.Image, p: Preprocess) -> np.ndarray:
    """RGB image -> uint8 [crop, crop, 3], exactly as torchvision's Resize + CenterCrop do it on PIL images.

    Their arithmetic, written out with PIL's own calls: importing torchvision costs 1.7 s per process
    (it imports torch._dynamo), on the driver and on every Python worker.
    """
    width, height = image.size
    shorter = min(width, height)
    if max(width, height) > _MAX_ASPECT * shorter:
        side = _MAX_ASPECT * shorter  # keep the centre; the crop would discard the rest anyway
        image = _center_crop(image, min(height, side), min(width, side))
        width, height = image.size
    resample = _RESAMPLE[p.interpolation]
    if p.resize_mode == "squash":  # the whole image to the square, aspect not kept
        return np.asarray(image.resize((p.crop, p.crop), resample), dtype=np.uint8)
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = p.resize, int(p.resize * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    image = image.resize(size, resample)
    return np.asarray(_center_crop(image, p.crop, p.crop), dtype=np.uint8)


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """torchvision's center_crop for a crop no larger than the image: its rounding of the offsets."""
    top = int(round((image.size[1] - height) / 2.0))
    left = int(round((image.size[0] - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


