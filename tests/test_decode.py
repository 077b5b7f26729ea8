"""decode_image: every format and mode to RGB, EXIF applied, broken input -> a short error."""

import time

import numpy as np
import pytest
from PIL import Image, ImageOps

from corpus import corpus, encode, photo, png_with_declared_size, with_orientation
from imgvec.inputs.decode import decode_image

CORPUS = corpus()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_item_decodes_or_names_its_problem(name):
    data, expected = CORPUS[name]
    started = time.monotonic()
    result = decode_image(data)
    assert time.monotonic() - started < 5
    if expected == "ok":
        assert isinstance(result, Image.Image), result
        assert result.mode == "RGB" and result.width >= 1 and result.height >= 1
    else:
        assert isinstance(result, str), f"{name} decoded to an image"
        kind = result.split(":")[0]
        if expected == "any_error":
            assert kind in {"truncated", "corrupt"}, result
        else:
            assert kind == expected, result
        assert len(result) < 200


def test_corpus_is_broad():
    assert len(CORPUS) >= 25
    assert sum(expected != "ok" for _, expected in CORPUS.values()) >= 12


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    original = photo(96, 64)
    decoded = decode_image(with_orientation(original, orientation))
    # What a viewer shows: the stored pixels transposed as the tag says.
    stored = Image.open(__import__("io").BytesIO(with_orientation(original, orientation)))
    expected = ImageOps.exif_transpose(stored).convert("RGB")
    assert decoded.size == expected.size == ((96, 64) if orientation < 5 else (64, 96))
    assert np.array_equal(np.asarray(decoded), np.asarray(expected))
    # and it is the original picture, turned: compare to the un-rotated JPEG within JPEG noise
    upright = np.asarray(decode_image(with_orientation(original, 1)), np.float64)
    turned = np.asarray(decoded, np.float64)
    undo = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
            5: lambda a: np.transpose(a, (1, 0, 2)), 6: lambda a: np.rot90(a, -1),
            7: lambda a: np.rot90(np.transpose(a, (1, 0, 2)), 2), 8: lambda a: np.rot90(a, 1)}[orientation]
    assert np.abs(undo(upright) - turned).mean() < 6


def test_first_frame_of_an_animation():
    for name in ("animated_gif", "animated_webp"):
        pixels = np.asarray(decode_image(CORPUS[name][0]))
        assert pixels[..., 0].mean() > 200 and pixels[..., 2].mean() < 50, name  # red, not blue


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    pixels = np.asarray(decode_image(encode(image, "PNG")))
    assert (pixels == 255).all()


def test_sixteen_bit_grey_keeps_its_range():
    grey16 = np.full((8, 8), 65535, np.uint16)
    grey16[:4] = 0
    decoded = np.asarray(decode_image(encode(Image.fromarray(grey16), "PNG")))
    assert decoded[:4].max() == 0 and decoded[4:].min() == 255


def test_cmyk_is_converted_to_rgb_colours():
    red = Image.new("RGB", (16, 16), (220, 20, 20))
    decoded = np.asarray(decode_image(encode(red.convert("CMYK"), "JPEG", quality=95)), np.int16)
    assert abs(decoded[..., 0].mean() - 220) < 12 and decoded[..., 1].mean() < 40


def test_truncation_never_gives_pixels():
    data = encode(photo(300, 200), "JPEG", quality=90)
    for cut in range(100, len(data) - 2, max(1, len(data) // 25)):
        result = decode_image(data[:cut])
        assert isinstance(result, str), f"cut at {cut} of {len(data)} decoded"


def test_pixel_limit_is_configurable_and_checked_before_decoding():
    data = encode(photo(200, 100), "PNG")
    assert isinstance(decode_image(data, max_pixels=20_000), Image.Image)
    assert decode_image(data, max_pixels=19_999) == "too_large: 200x100 pixels is over the limit of 19999"
    started = time.monotonic()
    assert decode_image(png_with_declared_size(60_000, 1_000), max_pixels=1_000_000).startswith("too_large:")
    assert time.monotonic() - started < 1


def test_null_and_memoryview_inputs():
    assert decode_image(None).startswith("missing:")
    assert isinstance(decode_image(memoryview(encode(photo(), "PNG"))), Image.Image)


def test_draft_decoding_shrinks_large_jpegs_only_as_far_as_asked():
    data = encode(photo(2000, 1500), "JPEG", quality=90)
    small = decode_image(data, draft=256)
    assert min(small.size) >= 256 and small.size[0] < 2000
    assert decode_image(data).size == (2000, 1500)
