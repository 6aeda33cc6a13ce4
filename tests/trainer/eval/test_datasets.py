"""Reading evaluation sets in their shipped layouts, and the embedding cache's identity."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.eval.datasets import (ImageList, load_coco_captions, load_folder, load_gpr1200, load_label_file,
                                   load_labelled, read_domain_map)
from trainer.eval.embeddings import embed_images


def _image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), (shade, 255 - shade, 0)).save(path)


@pytest.fixture()
def folder_set(tmp_path: Path) -> Path:
    root = tmp_path / "set" / "images"
    for cls, n in (("car_side", 2), ("dalmatian", 3)):
        for i in range(n):
            _image(root / cls / f"image_{i:04d}.jpg", 40 * i)
    (root / "dalmatian" / "notes.txt").write_text("not an image")
    return root


def test_folder_layout(folder_set: Path) -> None:
    data = load_folder(folder_set)
    assert data.images.paths == ("car_side/image_0000.jpg", "car_side/image_0001.jpg",
                                 "dalmatian/image_0000.jpg", "dalmatian/image_0001.jpg", "dalmatian/image_0002.jpg")
    assert data.labels == ("car_side",) * 2 + ("dalmatian",) * 3
    assert data.class_names == ["car_side", "dalmatian"]
    images = list(data.images.iter_images())
    assert all(img.mode == "RGB" and img.size == (16, 12) for img in images)


def test_split_file_found_in_a_subfolder_like_caltech(folder_set: Path) -> None:
    split = folder_set.parent / "test.txt"  # beside images/, paths relative to images/
    split.write_text("dalmatian/image_0002.jpg\n\n# comment\ncar_side/image_0001.jpg\n")
    data = load_labelled(folder_set.parent, "test.txt")
    assert data.images.root == folder_set
    assert data.images.paths == ("dalmatian/image_0002.jpg", "car_side/image_0001.jpg")
    assert data.labels == ("dalmatian", "car_side")


def test_label_file_with_explicit_labels(folder_set: Path, tmp_path: Path) -> None:
    listing = tmp_path / "labels.txt"
    listing.write_text("car_side/image_0000.jpg vehicle\ndalmatian/image_0001.jpg dog\n")
    data = load_label_file(listing, image_root=folder_set)
    assert data.labels == ("vehicle", "dog")
    listing.write_text("car_side/image_0000.jpg vehicle\ndalmatian/missing.jpg dog\n")
    with pytest.raises(FileNotFoundError, match="1 listed images missing"):
        load_label_file(listing, image_root=folder_set)


def test_gpr1200_flat_layout_with_domains(tmp_path: Path) -> None:
    flat = tmp_path / "gpr1200" / "images"
    for name, shade in (("0_a.jpg", 0), ("0_b.jpg", 10), ("1_x_y.jpg", 20), ("200_q.jpg", 30)):
        _image(flat / name, shade)
    domain_file = tmp_path / "domains.txt"
    domain_file.write_text("0 landmarks\n1 landmarks\n200 faces\n")
    data = load_labelled(flat, domain_map=read_domain_map(domain_file))
    assert data.labels == ("0", "0", "1", "200")
    assert data.domains == ("landmarks", "landmarks", "landmarks", "faces")
    with pytest.raises(ValueError, match="no domain"):
        load_gpr1200(flat, {"0": "landmarks"})


def test_coco_captions(tmp_path: Path) -> None:
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        _image(tmp_path / "val2017" / name, 0)
    ann = tmp_path / "annotations" / "captions_val2017.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps({
        "images": [{"id": 10, "file_name": "1.jpg"}, {"id": 20, "file_name": "2.jpg"}, {"id": 30, "file_name": "3.jpg"}],
        "annotations": [{"image_id": 30, "caption": "a cat "}, {"image_id": 10, "caption": "a dog"},
                        {"image_id": 30, "caption": "a sleeping cat"}]}))
    captions = load_coco_captions(ann)
    assert captions.images.paths == ("1.jpg", "3.jpg")
    assert captions.captions == ("a dog", "a cat", "a sleeping cat")
    assert captions.caption_image == (0, 1, 1)
    assert len(load_coco_captions(ann, require_captions=False).images) == 3


class CountingEncoder:
    name = "fake:mean-colour"
    has_text_tower = False

    def __init__(self) -> None:
        self.calls = 0

    def encode_images(self, images):
        self.calls += 1
        x = np.stack([np.asarray(img, dtype=np.float32).mean(axis=(0, 1)) + 1.0 for img in images])
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def encode_texts(self, texts):  # pragma: no cover
        raise NotImplementedError


def test_cache_hit_and_invalidation(folder_set: Path, tmp_path: Path) -> None:
    data = load_folder(folder_set)
    encoder = CountingEncoder()
    first = embed_images(encoder, data.images, tmp_path / "cache", batch_size=2)
    assert encoder.calls == 3 and first.shape == (5, 3) and first.dtype == np.float32
    again = embed_images(encoder, data.images, tmp_path / "cache", batch_size=2)
    assert encoder.calls == 3 and np.array_equal(first, again)
    # rewriting one image changes the fingerprint, so the cache is not trusted
    target = folder_set / data.images.paths[0]
    _image(target, 200)
    os.utime(target, ns=(1, 1))
    changed = embed_images(encoder, data.images, tmp_path / "cache", batch_size=2)
    assert encoder.calls == 6 and not np.array_equal(first[0], changed[0])


def test_undecodable_image_names_its_path(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not a jpeg at all")
    images = ImageList(tmp_path, ("a/broken.jpg",))
    with pytest.raises(ValueError, match="broken.jpg"):
        list(images.iter_images())
