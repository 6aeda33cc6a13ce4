import io
import zlib
import struct

import pytest
from PIL import Image
from skimage import data

from i2e_engine.images import ImageLimits, ImageRejected, decode_rgb, inspect_image


def _jpeg(array=None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(data.chelsea() if array is None else array).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size in its header: a decompression bomb's first bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def test_real_photo_is_inspected():
    info = inspect_image(_jpeg())
    assert (info.width, info.height, info.image_format) == (451, 300, "JPEG")
    assert len(info.sha256) == 64


@pytest.mark.parametrize("payload, reason", [
    (None, "image_missing"),
    (b"", "image_empty"),
    (b"this is not an image at all", "image_undecodable"),
])
def test_bad_payloads(payload, reason):
    with pytest.raises(ImageRejected) as error:
        inspect_image(payload)
    assert error.value.reason == reason


def test_truncated_jpeg_is_rejected():
    payload = _jpeg()
    with pytest.raises(ImageRejected) as error:
        inspect_image(payload[: len(payload) // 2])
    assert error.value.reason == "image_truncated"


def test_decompression_bomb_is_rejected_before_decoding():
    with pytest.raises(ImageRejected) as error:
        inspect_image(_png_header_only(100_000, 100_000))
    assert error.value.reason == "image_too_large"


def test_limits_are_configurable():
    with pytest.raises(ImageRejected) as error:
        inspect_image(_jpeg(), ImageLimits(max_bytes=100))
    assert error.value.reason == "image_too_many_bytes"
    with pytest.raises(ImageRejected) as error:
        inspect_image(_jpeg(), ImageLimits(max_pixels=1000))
    assert error.value.reason == "image_too_large"


def test_decode_rgb_flattens_alpha_onto_white():
    buffer = io.BytesIO()
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(buffer, "PNG")
    image = decode_rgb(buffer.getvalue())
    assert image.mode == "RGB" and image.getpixel((3, 3)) == (255, 255, 255)


def test_reject_detail_is_the_same_in_every_process():
    """PIL names the BytesIO object by its address; a reject's detail must not carry it."""
    details = set()
    for _ in range(3):
        with pytest.raises(ImageRejected) as error:
            inspect_image(b"<html>not an image</html>")
        details.add(error.value.detail)
    assert len(details) == 1 and "0x" not in details.pop()


@pytest.mark.parametrize("min_side, expected_short", [(50, 64), (100, 128), (300, 512), (1000, 512)])
def test_min_side_decodes_a_jpeg_at_the_smallest_scale_that_keeps_it(min_side, expected_short):
    """A 512x768 JPEG decodes at 1/8, 1/4, 1/2 or full scale (PIL's DCT scales): the smallest
    whose shorter side is still at least ``min_side``; never below it, never upscaled."""
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((512, 768)).save(buffer, "JPEG", quality=90)
    image = decode_rgb(buffer.getvalue(), min_side=min_side)
    assert image.mode == "RGB"
    assert min(image.size) == expected_short
    assert image.size[1] / image.size[0] == pytest.approx(1.5)


def test_min_side_keeps_every_limit():
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, "JPEG")
    with pytest.raises(ImageRejected) as error:
        decode_rgb(buffer.getvalue()[:5000], min_side=64)
    assert error.value.reason == "image_truncated"
    with pytest.raises(ImageRejected) as error:
        decode_rgb(buffer.getvalue(), ImageLimits(max_pixels=1000), min_side=64)
    assert error.value.reason == "image_too_large"
