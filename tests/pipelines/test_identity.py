"""An input is known by its content: a photo replaced by another of the same size and
modification time (``cp -p``, an archive extracted with fixed timestamps) is annotated again,
and only its shard."""
from __future__ import annotations

import io
import os

import pytest
from PIL import Image, ImageOps

from i2e_engine.config import BuildConfig
from i2e_engine.demo import DEMO_PAIRS, skimage_data_dir
from i2e_engine.workdir import WorkDir
from pipelines.run import run_build

pytestmark = pytest.mark.e2e


def _stored_png(image: Image.Image) -> bytes:
    """An uncompressed PNG: its size depends on the pixel count only, not on the pixels."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def test_photo_swapped_under_the_same_size_and_mtime_is_annotated_again(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    images = {}
    for name, text in DEMO_PAIRS[:4]:
        stem = name.split(".")[0]
        images[stem] = Image.open(skimage_data_dir() / name).convert("RGB").resize((96, 96))
        (photos / f"{stem}.png").write_bytes(_stored_png(images[stem]))
        (photos / f"{stem}.txt").write_text(text)
    config = BuildConfig(inputs=[str(photos)], output=str(tmp_path / "out"), rows_per_shard=2)
    run_build(config, "local", progress=lambda _: None)
    first = WorkDir(config.output).markers()
    assert len(first) == 2

    last = sorted(images)[-1]   # in the second shard
    swapped = photos / f"{last}.png"
    stat = swapped.stat()
    swapped.write_bytes(_stored_png(ImageOps.mirror(images[last])))
    os.utime(swapped, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (swapped.stat().st_size, swapped.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    messages = []
    run_build(config, "local", progress=messages.append)
    assert "1 already annotated, 1 to annotate (1 changed since annotated)" in messages[0]
    second = WorkDir(config.output).markers()
    [kept, redone] = sorted(first)   # shard ids sort as the slices do
    assert second[kept].run_id == first[kept].run_id
    assert second[redone].run_id != first[redone].run_id
    assert second[redone].identity != first[redone].identity
