"""Does a calibrated threshold find more real copies than 0.9, at the precision it promises?

One run, as a user would: a collection of distinct real pictures (3x3 tiles of the bundled photos), embedded;
`imgvec calibrate` on it; then copies of some of them made with edits calibrate does NOT make (other
crops and re-encodes, grey, blur, squash, noise, hue, posterize, sharpen), added with `embed --resume`;
`imgvec dupes` at the calibrated threshold and at 0.9. Prints copies found and precision for each.
A measurement, never pass/fail. `python benchmarks/threshold.py [--model efficientnet_lite0]`.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "images")
# Textures and star fields cut into tiles look alike (brick tiles at cosine 0.9 to each other), and the right
# half of the stereo pair is a real near-duplicate of the left: left out, so the pictures are distinct.
LOOK_ALIKE = ("brick", "hubble_deep_field", "retina", "motorcycle_right")
OTHER_EDITS = ("recrop", "grey", "blur", "squash", "noise", "hue", "posterize", "sharpen")


def tiles(folder: str, grid: int = 3, side: int = 672, extra: str | None = None) -> list[str]:
    """Distinct pictures: each bundled photo (and each of `extra`, a folder of more) scaled to `side` px on its
    shorter side, cut into grid x grid tiles (grid 1: whole)."""
    paths, seen = [], set()
    sources = [os.path.join(EXAMPLES, n) for n in sorted(os.listdir(EXAMPLES))]
    sources += [os.path.join(extra, n) for n in sorted(os.listdir(extra or "."))] if extra else []
    for source in sources:
        name = os.path.basename(source)
        stem = os.path.splitext(name)[0]
        if name.startswith(LOOK_ALIKE) or stem in seen or not name.endswith((".jpg", ".png")):
            continue
        seen.add(stem)
        image = Image.open(source).convert("RGB")
        if min(image.size) < 128:
            continue
        scale = side / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
        w, h = image.width // grid, image.height // grid
        for row, col in itertools.product(range(grid), range(grid)):
            path = os.path.join(folder, f"{stem}_{row}{col}.jpg")
            image.crop((col * w, row * h, col * w + w, row * h + h)).save(path, quality=92)
            paths.append(path)
    return paths


def other_copy(image: Image.Image, kind: str, seed: int) -> bytes:
    """A copy made in a way imgvec calibrate does not make its own."""
    rng = np.random.default_rng(seed)
    w, h = image.size
    quality = 75
    if kind == "recrop":  # a centred crop of 85%, re-encoded at 50
        copy, quality = image.crop((int(w * 0.075), int(h * 0.075), int(w * 0.925), int(h * 0.925))), 50
    elif kind == "grey":
        copy = ImageOps.grayscale(image).convert("RGB")
    elif kind == "blur":
        copy = image.filter(ImageFilter.GaussianBlur(2))
    elif kind == "squash":  # the aspect ratio changed
        copy = image.resize((int(w * 0.75), h))
    elif kind == "noise":
        pixels = np.asarray(image, np.float32) + rng.normal(0, 12, (h, w, 3))
        copy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    elif kind == "hue":
        hsv = np.asarray(image.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(int) + 25) % 256
        copy = Image.fromarray(hsv, "HSV").convert("RGB")
    elif kind == "posterize":
        copy = ImageOps.posterize(image, 4)
    else:  # sharpen and brighten a little
        copy = ImageEnhance.Brightness(image.filter(ImageFilter.SHARPEN)).enhance(0.9)
    buffer = io.BytesIO()
    copy.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def imgvec(*args) -> str:
    done = subprocess.run(["imgvec", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"imgvec {' '.join(map(str, args))} failed: {done.stderr[-1500:]}")
    return done.stdout


def score(found: dict, truth: set) -> dict:
    """Copies found (a copy co-grouped with its original) and precision of every co-member pair."""
    pairs = {tuple(sorted((os.path.basename(a["path"]), os.path.basename(b["path"])))) for g in found["groups"]
             if g["kind"] == "near" for a, b in itertools.combinations(g["members"], 2)}
    right = pairs & truth
    return {"threshold": found["threshold"], "copies_found": len(right), "copies": len(truth),
            "pairs_reported": len(pairs), "precision": round(len(right) / len(pairs), 4) if pairs else 1.0}


def run(model: str, planted: int, grid: int, extra: str | None, master: str) -> dict:
    work = tempfile.mkdtemp(prefix="imgvec-threshold-")
    photos, output = os.path.join(work, "photos"), os.path.join(work, "vectors")
    os.makedirs(photos)
    originals = tiles(photos, grid, extra=extra)
    imgvec("embed", photos, "-o", output, "--model", model, "-q", "--master", master)
    calibration = json.loads(imgvec("calibrate", output, "--json", "-q", "--master", master))
    rng = np.random.default_rng(0)
    truth = set()
    for n, index in enumerate(sorted(rng.choice(len(originals), min(planted, len(originals)), replace=False))):
        kind = OTHER_EDITS[n % len(OTHER_EDITS)]
        name = os.path.basename(originals[index])
        copy = f"{os.path.splitext(name)[0]}_copy_{kind}.jpg"
        with open(os.path.join(photos, copy), "wb") as f:
            f.write(other_copy(Image.open(originals[index]).convert("RGB"), kind, n))
        truth.add(tuple(sorted((name, copy))))
    imgvec("embed", photos, "-o", output, "--model", model, "-q", "--resume", "--master", master)
    calibrated = score(json.loads(imgvec("dupes", output, "--json")), truth)  # no --threshold: the calibrated one
    fixed = score(json.loads(imgvec("dupes", output, "--threshold", "0.9", "--json")), truth)
    return {"model": model, "pictures": len(originals), "planted_copies": planted, "calibration": {
        k: calibration[k] for k in ("threshold", "recall", "expected_precision", "originals", "images")},
        "calibrated": calibrated, "at_0.9": fixed,
        "ratio": round(calibrated["copies_found"] / max(1, fixed["copies_found"]), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--planted", type=int, default=24, help="pictures that get one copy each")
    parser.add_argument("--grid", type=int, default=3, help="tiles per side of each photo")
    parser.add_argument("--extra", help="a folder of more distinct photos (e.g. scikit-image's skimage/data)")
    parser.add_argument("--master", default="local[2]")
    print(json.dumps(run(**vars(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
