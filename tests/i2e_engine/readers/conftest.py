"""Real photos for reader tests: scikit-image's bundled photos, encoded as JPEG once."""
from __future__ import annotations

import io

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
