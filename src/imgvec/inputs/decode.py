"""Image bytes -> an RGB PIL image, or a short error string. Never raises for bad input.

Errors read "kind: detail"; the kind (before the colon) is what summaries count.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imgvec.base import defaults

ImageFile.LOAD_TRUNCATED_IMAGES = False  # half-decoded images must be errors, not grey pixels


def decode_image(data, *, max_pixels: int = defaults.MAX_PIXELS, draft: int | None = None) -> Image.Image | str:
    """Decode `data` (bytes-like) to an RGB image, or return an error string.

    - first frame of animations and multi-page files;
    - EXIF orientation applied;
    - transparency composited onto white; 16-bit and float images scaled to 8 bits;
    - `draft`: let JPEG decode at a reduced scale whose shorter side stays >= draft (faster,
      not bit-identical: opt-in).
    """
    if data is None:
        return "missing: no image bytes (null)"
    if len(data) == 0:
        return "empty: 0 bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about odd metadata; errors still raise
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                return f"too_large: {width}x{height} pixels is over the limit of {max_pixels}"
            if width == 0 or height == 0:
                return f"corrupt: image has no pixels ({width}x{height})"
            if draft and image.format == "JPEG":
                image.draft("RGB", _draft_size(width, height, draft))
            image.load()
            image = _upright(image)
            return _to_rgb(image)
    except Image.DecompressionBombError as exc:  # Pillow's own, stricter-than-ours limit
        return f"too_large: {_short(str(exc))}"
    except UnidentifiedImageError:
        claimed = _claimed_format(bytes(data[:16]))
        if claimed:
            return f"corrupt: starts like a {claimed} file but cannot be parsed"
        return "unrecognised: not an image format this decoder can read"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        message = str(exc)
        kind = "truncated" if "truncated" in message.lower() or isinstance(exc, EOFError) else "corrupt"
        return f"{kind}: {_short(message) or type(exc).__name__}"
    except Exception as exc:  # a decoder bug must cost one row, not the job
        return f"corrupt: {type(exc).__name__}: {_short(str(exc))}"


_ORIENTATION = 0x0112  # the EXIF tag

_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8": "JPEG", b"GIF8": "GIF", b"BM": "BMP",
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
}


def _claimed_format(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES.items() if head.startswith(magic)), None)


def _draft_size(width: int, height: int, shorter_side: int) -> tuple[int, int]:
    scale = shorter_side / min(width, height)
    return max(1, int(width * scale)), max(1, int(height * scale))


def _upright(image: Image.Image) -> Image.Image:
    try:
        if image.getexif().get(_ORIENTATION, 1) in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(image)  # otherwise it would copy the whole image
    except Exception:  # corrupt EXIF: the pixels are still good, keep them as stored
        pass
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (and 32-bit integer) grey: keep the top 8 bits of a 16-bit range.
        pixels = np.asarray(image, dtype=np.float64) / 257.0
        return _grey_array_to_rgb(pixels)
    if mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        if pixels.size and np.nanmax(pixels) <= 1.0:
            pixels = pixels * 255.0
        return _grey_array_to_rgb(np.nan_to_num(pixels))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode == "P":
        return image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _grey_array_to_rgb(pixels: np.ndarray) -> Image.Image:
    grey = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _short(message: str, limit: int = 120) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"
