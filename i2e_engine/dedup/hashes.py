"""64-bit perceptual hashes of an image, computed under the engine's decode limits.

Each image gets two pHashes (DCT hash, imagehash's reference implementation): one of the
whole image and one of its central 90%. A copy cropped by about 5% per side (a common web
thumbnail) is far from its original by the whole-image hash alone (11 bits on average, up to
24, measured on Caltech-101: BENCHMARKS.md), but its whole-image hash is within a few bits of
the original's central hash. Two images are near duplicates when their whole-image hashes,
or one's whole-image hash and the other's central hash, are within the radius.

Hashes are stored as signed 64-bit integers (the bit pattern of the unsigned hash) because
parquet, Spark and Beam coders all carry int64.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from i2e_engine.images import ImageInfo, ImageLimits, inspect_and_preview

CENTER_FRACTION = 0.9
_SIGN = 1 << 63


def to_signed(value: int) -> int:
    return value - (1 << 64) if value & _SIGN else value


def to_unsigned(value: int) -> int:
    return value & 0xFFFFFFFFFFFFFFFF


def hamming(a: int, b: int) -> int:
    return (to_unsigned(a) ^ to_unsigned(b)).bit_count()


def _phash(image: Image.Image) -> int:
    import imagehash

    bits = imagehash.phash(image).hash.flatten()
    return to_signed(int("".join("1" if b else "0" for b in bits), 2))


def center(image: Image.Image, fraction: float = CENTER_FRACTION) -> Image.Image:
    width, height = image.size
    dx, dy = round(width * (1 - fraction) / 2), round(height * (1 - fraction) / 2)
    return image.crop((dx, dy, width - dx, height - dy))


@dataclass(frozen=True)
class PerceptualHashes:
    phash: int          # the whole image
    phash_center: int   # its central CENTER_FRACTION


def perceptual_hashes(image: Image.Image) -> PerceptualHashes:
    """Both hashes of a decoded image (any mode; pHash works on luminance)."""
    gray = image.convert("L")
    return PerceptualHashes(_phash(gray), _phash(center(gray)))


def near_distance(a: PerceptualHashes, b: PerceptualHashes) -> int:
    """Bits between two images: whole to whole, or one's whole to the other's centre."""
    return min(hamming(a.phash, b.phash), hamming(a.phash, b.phash_center), hamming(a.phash_center, b.phash))


def popcount64(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy's bitwise_count where present)."""
    values = values.view(np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values).astype(np.int64)
    bytes_ = values.view(np.uint8).reshape(*values.shape, 8)
    return np.unpackbits(bytes_, axis=-1).sum(axis=-1).astype(np.int64)


def hash_image_bytes(data: bytes | None, limits: ImageLimits) -> tuple[ImageInfo, PerceptualHashes]:
    """Check an encoded image under ``limits`` and hash it; raises ``ImageRejected`` like
    :func:`i2e_engine.images.inspect_image`."""
    info, preview = inspect_and_preview(data, limits)
    return info, perceptual_hashes(preview)
