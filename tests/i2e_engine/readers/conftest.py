"""Real photos for reader tests: scikit-image's bundled photos, encoded as JPEG once."""
from __future__ import annotations

import io
import os

import pytest
from PIL import Image
from skimage import data


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """JPEG bytes of three real photos, keyed by name (the cat, a coffee cup, Eileen Collins)."""
    encoded = {}
    for name in ("chelsea", "coffee", "astronaut"):
        buffer = io.BytesIO()
        Image.fromarray(getattr(data, name)()).save(buffer, format="JPEG", quality=85)
        encoded[name] = buffer.getvalue()
    return encoded


@pytest.fixture
def swap_keeping_size_and_mtime():
    """Replaces a file's bytes by others of the same length and gives it back its mtime, as
    ``cp -p`` of another version, or an archive extracted with fixed timestamps, would."""
    def swap(path) -> None:
        stat = path.stat()
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    return swap
