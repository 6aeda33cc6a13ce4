"""WebDataset reader: grouping by key, bytes passed through, missing parts, damaged tars."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from i2e_engine.config import TextConfig
from i2e_engine.readers import ReaderOptions, list_shards, read_shard
from i2e_engine.records import make_sample_id
from i2e_engine.stages import CheckStage, run_stage
from i2e_engine.text import TextRejected, normalize_alt_text


def _write_tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> None:
    with tarfile.open(path, mode) as archive:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


def _meta(url: str, **extra: str) -> bytes:
    return json.dumps({"url": url, **extra}).encode()


def _read(path: Path) -> list[dict]:
    [shard] = list_shards([str(path)])
    return list(read_shard(shard))


@pytest.fixture
def members(photos: dict[str, bytes]) -> list[tuple[str, bytes]]:
    return [
        ("000000000.jpg", photos["chelsea"]), ("000000000.txt", b"Chelsea the cat"),
        ("000000000.json", _meta("https://e.org/cat.jpg")),
        ("000000001.jpg", photos["coffee"]), ("000000001.txt", "Café crème ☕".encode()),
        ("000000001.json", _meta("https://e.org/coffee.jpg")),
        ("000000002.jpeg", photos["astronaut"]), ("000000002.txt", b"Eileen Collins"),
    ]


def test_samples_grouped_by_key_with_text_as_bytes(tmp_path: Path, members: list, photos: dict) -> None:
    path = tmp_path / "00000.tar"
    _write_tar(path, members)
    pairs = _read(path)
    assert [p["image"] for p in pairs] == [photos["chelsea"], photos["coffee"], photos["astronaut"]]
    assert [p["text"] for p in pairs] == [b"Chelsea the cat", "Café crème ☕".encode(), b"Eileen Collins"]
    assert [p["url"] for p in pairs] == ["https://e.org/cat.jpg", "https://e.org/coffee.jpg", None]
    assert [p["row_in_shard"] for p in pairs] == [0, 1, 2]
    assert all(p["source"] == "webdataset" and p["source_shard"] == str(path) for p in pairs)
    assert all(p["read_error"] is None for p in pairs)
    assert [p["sample_id"] for p in pairs] == [make_sample_id(p["image"], p["text"]) for p in pairs]
    assert [p["sample_id"] for p in pairs] == [p["sample_id"] for p in _read(path)]


def test_gzipped_tar_reads_the_same(tmp_path: Path, members: list) -> None:
    _write_tar(tmp_path / "plain.tar", members)
    _write_tar(tmp_path / "packed.tar.gz", members, mode="w:gz")
    plain, packed = _read(tmp_path / "plain.tar"), _read(tmp_path / "packed.tar.gz")
    assert [p["sample_id"] for p in plain] == [p["sample_id"] for p in packed]


def test_missing_parts_and_json_caption_fallback(tmp_path: Path, photos: dict[str, bytes]) -> None:
    path = tmp_path / "gaps.tar"
    _write_tar(path, [
        ("a/k1.jpg", photos["chelsea"]), ("a/k1.json", _meta("https://e.org/1", caption="A cat from json")),
        ("a/k2.png", photos["coffee"]), ("a/k2.json", _meta("https://e.org/2")),
        ("a/k3.txt", b"text without image"),
        ("a/k4.jpg", photos["astronaut"]), ("a/k4.txt", b"bad json"), ("a/k4.json", b"{not json"),
    ])
    pairs = _read(path)
    assert len(pairs) == 4
    assert (pairs[0]["text"], pairs[0]["read_error"]) == ("A cat from json", None)
    assert (pairs[1]["image"], pairs[1]["text"], pairs[1]["read_error"]) == (photos["coffee"], None, "missing_text")
    assert pairs[1]["url"] == "https://e.org/2"
    assert (pairs[2]["image"], pairs[2]["read_error"]) == (None, "missing_image")
    assert pairs[3]["image"] == photos["astronaut"] and pairs[3]["read_error"].startswith("bad_json: ")


def test_invalid_utf8_text_passes_through_for_the_text_stage(tmp_path: Path, photos: dict[str, bytes]) -> None:
    path = tmp_path / "latin1.tar"
    _write_tar(path, [("x.jpg", photos["chelsea"]), ("x.txt", "Chat noir à Paris".encode("latin-1"))])
    [pair] = _read(path)
    assert pair["text"] == "Chat noir à Paris".encode("latin-1") and pair["read_error"] is None
    with pytest.raises(TextRejected) as rejected:
        normalize_alt_text(pair["text"], TextConfig())
    assert rejected.value.reason == "text_invalid_utf8"


def test_truncated_tar_yields_complete_samples_then_one_error(tmp_path: Path, members: list) -> None:
    path = tmp_path / "cut.tar"
    _write_tar(path, members)
    with tarfile.open(path) as archive:
        third_image = next(m for m in archive.getmembers() if m.name == "000000002.jpeg")
    path.write_bytes(path.read_bytes()[: third_image.offset_data + 100])
    pairs = _read(path)
    assert [p["row_in_shard"] for p in pairs] == [0, 1, 2]
    assert [p["text"] for p in pairs[:2]] == [b"Chelsea the cat", "Café crème ☕".encode()]
    assert all(p["read_error"] is None for p in pairs[:2])
    assert pairs[2]["read_error"].startswith("unreadable_shard: ")
    assert "'000000002' incomplete" in pairs[2]["read_error"]
    assert pairs[2]["sample_id"] == make_sample_id(None, f"{path}#2")


def test_file_that_is_not_a_tar(tmp_path: Path) -> None:
    path = tmp_path / "fake.tar"
    path.write_bytes(b"this is not a tar archive at all" * 40)
    [pair] = _read(path)
    assert pair["row_in_shard"] == 0 and pair["read_error"].startswith("unreadable_shard: ")


def test_member_over_the_byte_limit_is_rejected_unread_and_counted(tmp_path: Path, members: list,
                                                                   photos: dict, monkeypatch) -> None:
    from i2e_engine.config import BuildConfig
    from i2e_engine.images import ImageLimits
    from i2e_engine.shard import hash_shard
    from i2e_engine.workdir import WorkDir

    path = tmp_path / "00000.tar"
    _write_tar(path, members)
    limit = max(len(photos["chelsea"]), len(photos["astronaut"]))
    assert len(photos["coffee"]) > limit
    extracted = []
    real = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile",
                        lambda self, member: extracted.append(member.name) or real(self, member))
    [shard] = list_shards([str(path)])
    pairs = list(read_shard(shard, ReaderOptions(max_image_bytes=limit)))
    assert [p["row_in_shard"] for p in pairs] == [0, 1, 2]
    assert [p["image"] for p in pairs] == [photos["chelsea"], None, photos["astronaut"]]
    assert pairs[1]["read_error"] == \
        f"image_too_many_bytes: 000000001.jpg is {len(photos['coffee'])} bytes > limit {limit} (not read)"
    assert "000000001.jpg" not in extracted and "000000002.jpeg" in extracted

    # a build's hash pass reads with its image limit: the row is a read reject, and counted
    config = BuildConfig(image=ImageLimits(max_bytes=limit))
    marker = hash_shard(shard, CheckStage(config), WorkDir(str(tmp_path / "out")), "fp", "run")
    assert (marker.pairs_read, marker.annotations, marker.rejects) == (3, 2, 1)
    result = run_stage(CheckStage(config), pairs)
    assert [(r["row_in_shard"], r["stage"], r["reason"]) for r in result.rejects] == \
        [(1, "read", "image_too_many_bytes")]
    assert [r["row_in_shard"] for r in result.kept] == [0, 2]


def test_text_member_over_the_limit_is_rejected_and_unused_members_never_read(tmp_path: Path, photos: dict,
                                                                              monkeypatch) -> None:
    limit = len(photos["chelsea"])
    path = tmp_path / "long.tar"
    _write_tar(path, [("k.jpg", photos["chelsea"]), ("k.cls", b"7" * (limit + 1)),
                      ("m.jpg", photos["chelsea"]), ("m.txt", b"x" * (limit + 1))])
    extracted = []
    real = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile",
                        lambda self, member: extracted.append(member.name) or real(self, member))
    [shard] = list_shards([str(path)])
    first, second = read_shard(shard, ReaderOptions(max_image_bytes=limit))
    assert first["image"] == photos["chelsea"] and first["read_error"] == "missing_text"
    assert second["read_error"] == f"member_too_many_bytes: m.txt is {limit + 1} bytes > limit {limit} (not read)"
    assert extracted == ["k.jpg", "m.jpg"]
