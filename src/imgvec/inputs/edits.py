"""Known copies of an image, made the ways real copies are made: the edits `imgvec calibrate` measures.

Each edit is seeded (the same copy every time) and returns JPEG bytes, which go through imgvec's own
decode path like any file. The set is fixed and documented (EDITS), so calibrations compare across runs.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

EDITS = {
    "crop": "a window of 50-80% of the area, anywhere in the image",
    "small": "a quarter of the size, JPEG quality 20 (a forwarded thumbnail)",
    "colour": "saturation x0.4-1.6, brightness x0.7-1.3, contrast x0.8-1.2",
    "mirror": "left-right",
    "text": "a dark banner across the bottom fifth with white text (a caption, a watermark, a sale)",
    "border": "a solid frame of 8-15% of the longer side on every side",
    "rotate": "3-8 degrees either way, the corners filled black",
    "inset": "shrunk to 40-60% of the width of another sampled image and pasted into it (picture-in-picture)",
}
WORDS = ("SALE", "50% OFF", "imgvec", "Holiday 2026", "COPYRIGHT", "new!", "photo by", "lorem ipsum")


def make_copy(image: Image.Image, kind: str, seed: int, host: Image.Image | None = None) -> bytes:
    """The `kind` copy of an RGB image (`host`: the image an inset goes into), as JPEG bytes."""
    rng = np.random.default_rng([seed, list(EDITS).index(kind) if kind in EDITS else 0])
    w, h = image.size
    quality = 85
    if kind == "crop":
        side = np.sqrt(rng.uniform(0.5, 0.8))
        cw, ch = max(1, int(w * side)), max(1, int(h * side))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        copy = image.crop((x, y, x + cw, y + ch))
    elif kind == "small":
        copy, quality = image.resize((max(8, w // 4), max(8, h // 4)), Image.Resampling.BILINEAR), 20
    elif kind == "colour":
        copy = ImageEnhance.Color(image).enhance(rng.uniform(0.4, 1.6))
        copy = ImageEnhance.Brightness(copy).enhance(rng.uniform(0.7, 1.3))
        copy = ImageEnhance.Contrast(copy).enhance(rng.uniform(0.8, 1.2))
    elif kind == "mirror":
        copy = ImageOps.mirror(image)
    elif kind == "text":
        copy = image.copy()
        draw = ImageDraw.Draw(copy, "RGBA")
        band = max(8, h // 5)
        draw.rectangle((0, h - band, w, h), fill=(0, 0, 0, 190))
        font = ImageFont.load_default(size=max(8, int(band * 0.6)))
        draw.text((max(2, w // 20), h - band + band // 6), " ".join(rng.choice(WORDS, 2)), fill="white", font=font)
    elif kind == "border":
        pad = max(1, int(max(w, h) * rng.uniform(0.08, 0.15)))
        copy = ImageOps.expand(image, border=pad, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    elif kind == "rotate":
        angle = rng.uniform(3, 8) * rng.choice([-1, 1])
        copy = image.rotate(angle, Image.Resampling.BILINEAR, expand=True, fillcolor=(0, 0, 0))
    elif kind == "inset":
        host = (host or Image.new("RGB", (w, h), (128, 128, 128))).resize((w, h))
        iw = max(1, int(w * rng.uniform(0.4, 0.6)))
        ih = max(1, int(h * iw / w))
        copy = host.copy()
        copy.paste(image.resize((iw, ih)), (int(rng.integers(0, w - iw + 1)), int(rng.integers(0, h - ih + 1))))
    else:
        raise ValueError(f"unknown edit {kind!r}; one of {', '.join(EDITS)}")
    buffer = io.BytesIO()
    copy.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
