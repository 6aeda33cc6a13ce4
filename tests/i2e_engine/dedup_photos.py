"""Real-photo copies for the dedup tests: the four edits issue 9 names, made by the test."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

EXCLUDED_CATEGORIES = ("BACKGROUND_Google", "Faces_easy")   # Faces_easy re-crops the Faces photos


def distinct_photos(caltech101: Path, per_category: int = 2) -> list[Path]:
    """The first photos of every Caltech-101 category (about 200 distinct photos)."""
    root = caltech101 / "101_ObjectCategories"
    return [path for category in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in EXCLUDED_CATEGORIES)
            for path in sorted(category.glob("*.jpg"))[:per_category]]


def _encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def copies(data: bytes) -> dict[str, bytes]:
    """JPEG quality 30, half size, 5% cropped off each side, grayscale."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    dx, dy = int(width * 0.05), int(height * 0.05)
    return {
        "jpeg_q30": _encode(image, "JPEG", quality=30),
        "half_size": _encode(image.resize((width // 2, height // 2))),
        "cropped": _encode(image.crop((dx, dy, width - dx, height - dy))),
        "grayscale": _encode(ImageOps.grayscale(image)),
    }
