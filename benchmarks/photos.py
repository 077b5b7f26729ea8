"""Benchmark inputs made from the bundled real photos: 512x512 crops and 4000x3000 enlargements."""

from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples" / "images"


def make_photos(folder: str, count: int, size: tuple[int, int] = (512, 512), seed: int = 0) -> list[str]:
    """`count` JPEGs of `size`: random crops (scale, position, mirror) of the real example photos."""
    os.makedirs(folder, exist_ok=True)
    sources = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.iterdir())]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"photo_{size[0]}x{size[1]}_{i:05d}.jpg")
        paths.append(path)
        if os.path.exists(path):
            continue
        source = sources[i % len(sources)]
        w, h = source.size
        side = int(min(w, h) * rng.uniform(0.5, 1.0))
        left, top = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
        crop = source.crop((left, top, left + side, top + side * size[1] // size[0]))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
    return paths
