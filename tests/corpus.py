"""Generated image bytes: unusual-but-valid images and broken ones, each with what must happen.

`corpus()` maps a name to (bytes, expected) where expected is "ok" or the error kind that
decode_image must report ("truncated", "corrupt", "unrecognised", "empty", "too_large").
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def photo(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """A smooth, asymmetric RGB image: orientation and crops are visible in it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 128 + 60 * np.sin(x / 7.0 + seed) * np.cos(y / 5.0)
    pixels = np.stack([r, g, b], axis=-1) + rng.normal(0, 4, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def bad_crc_png() -> bytes:
    data = bytearray(encode(photo(), "PNG"))
    crc_of_ihdr = 8 + 4 + 4 + 13  # signature, length, type, IHDR data
    data[crc_of_ihdr] ^= 0xFF
    return bytes(data)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def multipage_tiff() -> bytes:
    pages = [photo(seed=1), Image.new("RGB", (96, 64), (0, 0, 255))]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def corrupt_exif_jpeg() -> bytes:
    data = encode(photo(), "JPEG", quality=90, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff\x01\x12")
    return data


def garbage_after_header(fmt: str) -> bytes:
    good = encode(photo(), fmt)
    rng = np.random.default_rng(7)
    return good[:40] + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()


def corpus() -> dict[str, tuple[bytes, str]]:
    rng = np.random.default_rng(1)
    jpeg = encode(photo(), "JPEG", quality=90)
    png = encode(photo(), "PNG")
    grey16 = Image.fromarray(np.arange(64 * 96, dtype=np.uint16).reshape(64, 96) * 10)
    rgba = photo().convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((96, 64)))
    la = photo().convert("LA")
    palette = photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    items: dict[str, tuple[bytes, str]] = {
        # valid, some unusual
        "jpeg": (jpeg, "ok"),
        "png": (png, "ok"),
        "gif": (encode(photo().convert("P"), "GIF"), "ok"),
        "bmp": (encode(photo(), "BMP"), "ok"),
        "tiff": (encode(photo(), "TIFF"), "ok"),
        "webp": (encode(photo(), "WEBP", quality=90), "ok"),
        "grey_l": (encode(photo().convert("L"), "PNG"), "ok"),
        "bilevel_1": (encode(photo().convert("1"), "PNG"), "ok"),
        "palette_transparent": (encode(palette, "PNG", transparency=0), "ok"),
        "rgba": (encode(rgba, "PNG"), "ok"),
        "la": (encode(la, "PNG"), "ok"),
        "cmyk_jpeg": (encode(photo().convert("CMYK"), "JPEG"), "ok"),
        "grey16_png": (encode(grey16, "PNG"), "ok"),
        "one_pixel": (encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "ok"),
        "strip_1x100000": (encode(Image.new("L", (100000, 1), 90), "PNG"), "ok"),
        "animated_gif": (animated("GIF"), "ok"),
        "animated_webp": (animated("WEBP"), "ok"),
        "multipage_tiff": (multipage_tiff(), "ok"),
        "corrupt_exif": (corrupt_exif_jpeg(), "ok"),
        **{f"exif_orientation_{o}": (with_orientation(photo(), o), "ok") for o in range(1, 9)},
        # broken
        "zero_bytes": (b"", "empty"),
        "random_bytes": (rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "unrecognised"),
        "text_named_jpg": (b"just some text, not a picture\n" * 20, "unrecognised"),
        "html_named_jpg": (b"<!doctype html><html><body>404 Not Found</body></html>", "unrecognised"),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
                "unrecognised"),
        "pdf": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF", "unrecognised"),
        "heic_needs_a_plugin": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(range(256)) * 8,
                                "unrecognised"),
        "jpeg_xl_codestream": (b"\xff\x0a" + bytes(range(256)) * 4, "unrecognised"),
        "jpeg_garbage_after_header": (garbage_after_header("JPEG"), "any_error"),
        "png_bad_crc": (bad_crc_png(), "any_error"),
        "bomb_png": (png_with_declared_size(200_000, 200_000), "too_large"),
        **{f"jpeg_truncated_{f}": (jpeg[: int(len(jpeg) * f / 100)], "any_error") for f in (10, 50, 90)},
        **{f"png_truncated_{f}": (png[: int(len(png) * f / 100)], "any_error") for f in (10, 50, 90)},
        "jpeg_header_only": (jpeg[:2], "any_error"),
    }
    return items
