"""list_shards: detection, clear errors, determinism, unique ids, every row exactly once."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from i2e_engine.readers import ShardRef, declared_rows, list_shards, read_shard


def _parquet(path: Path, images: list[bytes], prefix: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"jpg": pa.array(images, pa.binary()),
                             "caption": [f"{prefix} {i}" for i in range(len(images))]}), path)


def _tar(path: Path, image: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, payload in (("k.jpg", image), ("k.txt", b"a cat")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


def _missing(tmp: Path) -> Path:
    return tmp / "nope"


def _csv_file(tmp: Path) -> Path:
    (tmp / "table.csv").write_text("a,b")
    return tmp / "table.csv"


def _empty_folder(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


@pytest.mark.parametrize("make, message", [(_missing, "does not exist"), (_csv_file, "cannot read"),
                                           (_empty_folder, "cannot read")])
def test_unreadable_inputs_are_clear_value_errors(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        list_shards([str(make(tmp_path))])


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="input_format"):
        list_shards([str(tmp_path)], input_format="csv")
    with pytest.raises(ValueError, match="rows_per_shard"):
        list_shards([str(tmp_path)], rows_per_shard=0)
    with pytest.raises(ValueError, match="no inputs"):
        list_shards([])
    with pytest.raises(ValueError, match="unknown shard kind"):
        read_shard(ShardRef("csv", str(tmp_path), 0, None, "x"))


def test_img2dataset_webdataset_output_reads_the_tars_not_the_metadata_parquet(
        tmp_path: Path, photos: dict[str, bytes]) -> None:
    _tar(tmp_path / "out" / "00000.tar", photos["chelsea"])
    pq.write_table(pa.table({"key": ["k"], "url": ["u"]}), tmp_path / "out" / "00000.parquet")
    (tmp_path / "out" / "00000_stats.json").write_text("{}")
    shards = list_shards([str(tmp_path / "out")])
    assert [(s.kind, s.shard_id) for s in shards] == [("webdataset", str(tmp_path / "out" / "00000.tar"))]
    forced = list_shards([str(tmp_path / "out")], input_format="parquet")
    assert [(s.kind, s.shard_id) for s in forced] == [("parquet", str(tmp_path / "out" / "00000.parquet"))]


def test_parquet_folder_skips_markers_and_hidden_files(tmp_path: Path, photos: dict[str, bytes]) -> None:
    for name in ("part-1.parquet", "part-0.parquet", ".part-2.parquet", "_tmp/part-3.parquet"):
        _parquet(tmp_path / "ds" / name, [photos["coffee"]], name)
    (tmp_path / "ds" / "_SUCCESS").write_text("")
    shards = list_shards([str(tmp_path / "ds")])
    assert [s.shard_id for s in shards] == [str(tmp_path / "ds" / n) for n in ("part-0.parquet", "part-1.parquet")]


def test_listing_is_deterministic_deduplicated_and_ids_unique(tmp_path: Path, photos: dict[str, bytes]) -> None:
    _parquet(tmp_path / "a" / "b" / "00000.parquet", [photos["chelsea"]], "ab")
    _parquet(tmp_path / "c" / "b" / "00000.parquet", [photos["coffee"]], "cb")
    _parquet(tmp_path / "c" / "00001.parquet", [photos["astronaut"]], "c")
    inputs = [str(tmp_path / "a"), str(tmp_path / "c"), str(tmp_path / "c" / "00001.parquet")]
    shards = list_shards(inputs)
    assert shards == list_shards(list(reversed(inputs)))
    assert [s.shard_id for s in shards] == [str(tmp_path / p) for p in
                                            ("a/b/00000.parquet", "c/00001.parquet", "c/b/00000.parquet")]
    assert all(s.identity for s in shards) and len({s.identity for s in shards}) == 3


def test_mixed_inputs_cover_every_row_exactly_once(tmp_path: Path, photos: dict[str, bytes]) -> None:
    _parquet(tmp_path / "pq" / "00000.parquet", [photos["chelsea"], photos["coffee"], photos["astronaut"]], "pq")
    images = tmp_path / "imgs"
    images.mkdir()
    for index, (name, data) in enumerate(sorted(photos.items()) * 2):
        (images / f"{index}_{name}.jpg").write_bytes(data)
        (images / f"{index}_{name}.txt").write_text(f"{name} number {index}")
    shards = list_shards([str(images), str(tmp_path / "pq")], rows_per_shard=4)
    assert [(s.kind, s.shard_id) for s in shards] == [
        ("folder", f"folder:{images}[0:4]"), ("folder", f"folder:{images}[4:6]"),
        ("parquet", str(tmp_path / "pq" / "00000.parquet"))]
    pairs = [p for s in shards for p in read_shard(s)]
    assert len(pairs) == 9
    assert len({(p["source_shard"], p["row_in_shard"]) for p in pairs}) == 9
    assert len({p["sample_id"] for p in pairs}) == 9
    assert all(p["read_error"] is None for p in pairs)


def test_a_file_of_the_same_name_elsewhere_is_another_shard(tmp_path: Path, photos: dict[str, bytes]) -> None:
    """img2dataset names the first shard of every crawl 00000.parquet: ids must not collide."""
    _parquet(tmp_path / "a" / "00000.parquet", [photos["chelsea"]], "a")
    _parquet(tmp_path / "b" / "00000.parquet", [photos["coffee"]], "b")
    [a], [b] = list_shards([str(tmp_path / "a")]), list_shards([str(tmp_path / "b")])
    assert a.shard_id != b.shard_id


def test_identity_changes_with_the_content(tmp_path: Path, photos: dict[str, bytes]) -> None:
    path = tmp_path / "00000.parquet"
    _parquet(path, [photos["chelsea"]], "a")
    [before] = list_shards([str(path)])
    _parquet(path, [photos["coffee"], photos["chelsea"]], "b")
    [after] = list_shards([str(path)])
    assert before.shard_id == after.shard_id and before.identity != after.identity
    assert declared_rows(after) == 2
