"""Folder reader: sidecar texts, sorted slices that cover every image once, changed folders."""
from __future__ import annotations

from pathlib import Path

import pytest

from i2e_engine.readers import ReaderOptions, list_shards, read_shard
from i2e_engine.records import make_sample_id


@pytest.fixture
def photo_folder(tmp_path: Path, photos: dict[str, bytes]) -> Path:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "b_chelsea.jpg").write_bytes(photos["chelsea"])
    (root / "b_chelsea.txt").write_bytes(b"Chelsea the cat")
    (root / "a_coffee.JPEG").write_bytes(photos["coffee"])
    (root / "a_coffee.txt").write_bytes("Caf\xe9".encode("latin-1"))      # invalid UTF-8, passed through
    (root / "sub" / "astronaut.jpg").write_bytes(photos["astronaut"])     # no sidecar
    (root / ".hidden.jpg").write_bytes(photos["chelsea"])
    (root / "notes.json").write_bytes(b"{}")
    return root


def _read_all(shards: list) -> list[dict]:
    return [pair for shard in shards for pair in read_shard(shard)]


def test_sidecars_and_sorted_order(photo_folder: Path, photos: dict[str, bytes]) -> None:
    [shard] = list_shards([str(photo_folder)])
    assert shard.kind == "folder" and shard.shard_id == f"folder:{photo_folder}[0:3]"
    pairs = list(read_shard(shard))
    assert [p["image"] for p in pairs] == [photos["coffee"], photos["chelsea"], photos["astronaut"]]
    assert [p["text"] for p in pairs] == [b"Caf\xe9", b"Chelsea the cat", None]
    assert [p["read_error"] for p in pairs] == [None, None, "missing_text"]
    assert pairs[2]["url"] == (photo_folder / "sub" / "astronaut.jpg").as_uri()
    assert [p["sample_id"] for p in pairs] == [make_sample_id(p["image"], p["text"]) for p in pairs]


def test_slices_cover_every_image_exactly_once(photo_folder: Path) -> None:
    shards = list_shards([str(photo_folder)], rows_per_shard=2)
    first, second = f"folder:{photo_folder}[0:2]", f"folder:{photo_folder}[2:3]"
    assert [s.shard_id for s in shards] == [first, second]
    sliced = _read_all(shards)
    [whole] = list_shards([str(photo_folder)], rows_per_shard=1000)
    assert [p["sample_id"] for p in sliced] == [p["sample_id"] for p in read_shard(whole)]
    assert [(p["source_shard"], p["row_in_shard"]) for p in sliced] == [
        (first, 0), (first, 1), (second, 0)]
    assert [p["sample_id"] for p in sliced] == [p["sample_id"] for p in _read_all(shards)]


def test_folder_that_lost_files_after_listing_says_so(photo_folder: Path) -> None:
    [shard] = list_shards([str(photo_folder)])
    (photo_folder / "sub" / "astronaut.jpg").unlink()
    pairs = list(read_shard(shard))
    assert len(pairs) == 3 and pairs[2]["row_in_shard"] == 2
    assert pairs[2]["read_error"].startswith("unreadable_shard: FileNotFoundError")


def test_folder_gone_after_listing(photo_folder: Path) -> None:
    [shard] = list_shards([str(photo_folder)])
    photo_folder.rename(photo_folder.with_name("elsewhere"))
    pairs = list(read_shard(shard))
    assert [p["row_in_shard"] for p in pairs] == [0, 1, 2]   # one reject for every listed row
    assert all(p["read_error"].startswith("unreadable_shard: FileNotFoundError") for p in pairs)
    assert len({p["sample_id"] for p in pairs}) == 3


def test_slice_identity_follows_content_not_size_and_mtime(photo_folder: Path, swap_keeping_size_and_mtime) -> None:
    before = list_shards([str(photo_folder)], rows_per_shard=2)
    swap_keeping_size_and_mtime(photo_folder / "b_chelsea.jpg")    # in the first slice
    after = list_shards([str(photo_folder)], rows_per_shard=2)
    assert [s.shard_id for s in after] == [s.shard_id for s in before]
    assert after[0].identity != before[0].identity and after[1].identity == before[1].identity
    swap_keeping_size_and_mtime(photo_folder / "b_chelsea.txt")    # a sidecar counts as well
    assert list_shards([str(photo_folder)], rows_per_shard=2)[0].identity != after[0].identity


def test_image_over_the_byte_limit_is_rejected_unread(photo_folder: Path, photos: dict[str, bytes],
                                                      monkeypatch) -> None:
    limit = len(photos["chelsea"])
    assert len(photos["coffee"]) > limit and len(photos["astronaut"]) > limit
    read = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or real(self))
    [shard] = list_shards([str(photo_folder)])
    pairs = list(read_shard(shard, ReaderOptions(max_image_bytes=limit)))
    assert [p["row_in_shard"] for p in pairs] == [0, 1, 2]
    assert [p["read_error"] for p in pairs] == [
        f"image_too_many_bytes: a_coffee.JPEG is {len(photos['coffee'])} bytes > limit {limit} (not read)",
        None,
        f"image_too_many_bytes: astronaut.jpg is {len(photos['astronaut'])} bytes > limit {limit} (not read)"]
    assert pairs[1]["image"] == photos["chelsea"] and pairs[1]["text"] == b"Chelsea the cat"
    assert "a_coffee.JPEG" not in read and "astronaut.jpg" not in read
    assert len({p["sample_id"] for p in pairs}) == 3
