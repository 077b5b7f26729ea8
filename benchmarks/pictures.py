"""Distinct real pictures to measure with: the bundled photos, scikit-image's, and Debian's wallpapers.

`pictures(folder)` writes each picture once (one size of each wallpaper: the largest of at most 1920 pixels
wide, else the smallest), scaled to at most SIDE pixels on its longer side, as JPEG quality 92, and returns
the paths. Pictures that are copies of one another are left out: the right half of the bundled stereo pair,
scikit-image's copies of the bundled photos, the dark variants of a wallpaper, one image of each pair the
verifier links (the Ubuntu MATE logo set, the MATE stripes). Sources that are not installed are skipped:
`apt-get install plasma-workspace-wallpapers mate-backgrounds gnome-backgrounds ukui-wallpapers` and
`pip install scikit-image` bring them.
"""

from __future__ import annotations

import glob
import io
import os
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "images")
SIDE = 1_024
MIN_SIDE = 128  # smaller pictures are icons, not photos
# scikit-image's that are the bundled photos again, or no pictures (masks, tiny tests, charts)
SKIMAGE_SKIP = {"astronaut", "brick", "camera", "chelsea", "coffee", "hubble_deep_field", "motorcycle_left",
                "motorcycle_right", "retina", "rocket", "chessboard_GRAY", "phantom", "no_time_for_that_tiny",
                "logo", "multipage", "multipage_rgb", "clock_motion"}
BUNDLED_SKIP = {"motorcycle_right"}  # the other half of the stereo pair: a near-duplicate of the left
# Wallpapers that are another wallpaper in other colours, or with a different logo
WALLPAPER_SKIP = re.compile(r"(-d\.|_dark|Dark|Cold-no-logo|Radioactive-no-logo|Warm-no-logo|MATE-Stripes-Light|"
                            r"Elephants_\d)")


def sources() -> list[tuple[str, str]]:
    """(name, file) of every distinct picture installed, sorted by name."""
    found = {}
    for path in sorted(glob.glob(os.path.join(EXAMPLES, "*"))):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem not in BUNDLED_SKIP:
            found[f"bundled-{stem}"] = path
    try:
        import skimage

        folder = os.path.join(os.path.dirname(skimage.__file__), "data")
        for path in sorted(glob.glob(os.path.join(folder, "*.png")) + glob.glob(os.path.join(folder, "*.jpg"))):
            stem = os.path.splitext(os.path.basename(path))[0]
            if stem not in SKIMAGE_SKIP:
                found[f"skimage-{stem}"] = path
    except ImportError:
        pass
    for folder in sorted(glob.glob("/usr/share/wallpapers/*/contents/images")):  # KDE: one file per size
        sizes = []
        for path in glob.glob(os.path.join(folder, "*")):
            match = re.match(r"(\d+)x(\d+)\.(jpg|png)$", os.path.basename(path))
            if match:
                sizes.append((int(match[1]), path))
        if sizes:
            fitting = [s for s in sizes if s[0] <= 1920]
            found[f"kde-{folder.split('/')[-3]}"] = max(fitting)[1] if fitting else min(sizes)[1]
    for path in sorted(glob.glob("/usr/share/backgrounds/**/*", recursive=True)):
        name = os.path.basename(path)
        if os.path.isfile(path) and name.endswith((".jpg", ".png", ".webp")) and not WALLPAPER_SKIP.search(name):
            found[f"bg-{os.path.splitext(name)[0]}"] = path
    return sorted(found.items())


def pictures(folder: str) -> list[str]:
    """Each distinct picture as folder/NAME.jpg (made once; kept when already there). Blank pictures (a wallpaper
    that is all transparency) and pictures whose pixels another already has are left out."""
    os.makedirs(folder, exist_ok=True)
    paths, seen = [], set()
    for name, source in sources():
        path = os.path.join(folder, f"{name}.jpg")
        if not os.path.exists(path):
            with Image.open(source) as image:
                image = image.convert("RGB")
                if min(image.size) < MIN_SIDE:
                    continue
                image.thumbnail((SIDE, SIDE), Image.Resampling.LANCZOS)
                image.save(path, quality=92)
        pixels = np.asarray(Image.open(path).convert("L").resize((64, 64)))
        if pixels.std() < 4 or pixels.tobytes() in seen:
            continue
        seen.add(pixels.tobytes())
        paths.append(path)
    return paths


# Edits imgvec calibrate does not make: copies to measure a calibration (and the verifier) with
OTHER_EDITS = ("recrop", "grey", "blur", "squash", "noise", "hue", "posterize", "sharpen")


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


if __name__ == "__main__":
    import sys

    made = pictures(sys.argv[1] if len(sys.argv) > 1 else "/tmp/imgvec-pictures")
    print(f"{len(made)} pictures")
