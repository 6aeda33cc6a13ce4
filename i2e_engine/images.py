"""Safe image decoding: size limits before decode (decompression bombs), full decode to
catch truncation, and one RGB conversion that every scorer and the trainer share."""
from __future__ import annotations

import hashlib
import io
import math
import re
import warnings
from dataclasses import dataclass
from typing import Optional

from PIL import Image, UnidentifiedImageError

# PIL's own bomb guard warns at MAX_IMAGE_PIXELS and raises at twice that; we check the
# header ourselves against the configured limit, and keep PIL's as a backstop.
Image.MAX_IMAGE_PIXELS = 200_000_000


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 50 * 1024 * 1024      # larger payloads are rejected unread
    max_pixels: int = 64_000_000           # width*height from the header; bombs stop here
    min_side: int = 8                      # smaller images carry no usable content


# Object reprs in library messages ("<_io.BytesIO object at 0x7f...>") differ per process;
# a reject's detail must not, or two runs of the same input would write different rows.
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


class ImageRejected(ValueError):
    """An image that cannot be used; ``reason`` is a stable machine-readable code."""

    def __init__(self, reason: str, detail: str = ""):
        detail = _OBJECT_REPR.sub("<image bytes>", detail)
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    width: int
    height: int
    image_format: str


def _open_checked(data: bytes | None, limits: ImageLimits) -> Image.Image:
    if data is None:
        raise ImageRejected("image_missing", "no image bytes in the input row")
    if len(data) == 0:
        raise ImageRejected("image_empty", "zero-byte image")
    if len(data) > limits.max_bytes:
        raise ImageRejected("image_too_many_bytes", f"{len(data)} bytes > limit {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        reason = "image_too_large" if "decompression bomb" in str(error).lower() else "image_undecodable"
        raise ImageRejected(reason, str(error)) from error
    except Exception as error:  # PIL raises many types on garbage headers
        raise ImageRejected("image_undecodable", f"{type(error).__name__}: {error}") from error
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageRejected("image_too_large",
                            f"{width}x{height} = {width * height} pixels > limit {limits.max_pixels}")
    if min(width, height) < limits.min_side:
        raise ImageRejected("image_too_small", f"{width}x{height} < {limits.min_side} px")
    return image


def _load(image: Image.Image) -> None:
    try:
        image.load()
    except Exception as error:  # truncated files raise OSError, broken streams others
        reason = "image_truncated" if "truncated" in str(error).lower() else "image_undecodable"
        raise ImageRejected(reason, f"{type(error).__name__}: {error}") from error


def inspect_image(data: bytes | None, limits: ImageLimits = ImageLimits()) -> ImageInfo:
    """Check that ``data`` is a whole, decodable, reasonably sized image; raise ImageRejected."""
    return inspect_and_preview(data, limits)[0]


PREVIEW_MIN_SIDE = 64   # a preview keeps at least this many pixels a side (a pHash reads 32)


def inspect_and_preview(data: bytes | None, limits: ImageLimits = ImageLimits()) -> tuple[ImageInfo, Image.Image]:
    """:func:`inspect_image` and the decoded image it checked: a JPEG decodes its whole
    stream at a reduced scale (down to 1/8, at least PREVIEW_MIN_SIDE pixels a side), which
    finds truncation at a fraction of a full decode's cost and is plenty for a perceptual hash."""
    image = _open_checked(data, limits)
    image_format = image.format or "unknown"
    width, height = image.size
    if image_format == "JPEG":
        image.draft("RGB", (min(width, max(width // 8, PREVIEW_MIN_SIDE)),
                            min(height, max(height // 8, PREVIEW_MIN_SIDE))))
    _load(image)
    return ImageInfo(hashlib.sha256(data).hexdigest(), width, height, image_format), image


def decode_rgb(data: bytes | None, limits: ImageLimits = ImageLimits(),
               min_side: Optional[int] = None) -> Image.Image:
    """Decode to an RGB PIL image under the same limits (transparent pixels onto white).

    ``min_side``: the caller shrinks the image to about this shorter side anyway (packing,
    training crops), so a JPEG is decoded at the smallest DCT scale (1/2 .. 1/8) that keeps
    its shorter side at least this long (PIL's draft mode), which skips most of a large
    photo's decoding. The image may still be larger than ``min_side``; never smaller than
    the file's own size allows."""
    image = _open_checked(data, limits)
    if min_side is not None and image.format == "JPEG":
        width, height = image.size
        scale = min_side / min(width, height)
        if scale < 1:
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    _load(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")
