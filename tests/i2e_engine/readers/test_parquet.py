"""Parquet reader: img2dataset and HF layouts, column overrides, missing columns, corrupt files."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from i2e_engine.readers import ReaderOptions, list_shards, read_shard
from i2e_engine.records import make_sample_id

CAPTIONS = ["Chelsea the cat on a rug", "A cup of coffee on a saucer", "Astronaut Eileen Collins",
            "Chelsea the cat again", "Coffee, second cup"]


def _img2dataset_table(photos: dict[str, bytes]) -> pa.Table:
    images = [photos["chelsea"], photos["coffee"], photos["astronaut"], photos["chelsea"], photos["coffee"]]
    return pa.table({"key": [f"{i:09d}" for i in range(5)], "jpg": pa.array(images, pa.binary()),
                     "caption": CAPTIONS, "url": [f"https://example.org/{i}.jpg" for i in range(5)],
                     "width": [1] * 5})


def _read(path: Path, options: ReaderOptions = ReaderOptions()) -> list[dict]:
    [shard] = list_shards([str(path)], options=options)
    return list(read_shard(shard, options))


def test_img2dataset_file_over_several_row_groups(tmp_path: Path, photos: dict[str, bytes]) -> None:
    path = tmp_path / "00000.parquet"
    table = _img2dataset_table(photos)
    pq.write_table(table, path, row_group_size=2)
    assert pq.ParquetFile(path).num_row_groups == 3
    pairs = _read(path)
    assert [p["row_in_shard"] for p in pairs] == [0, 1, 2, 3, 4]
    assert [p["text"] for p in pairs] == CAPTIONS
    assert [p["image"] for p in pairs] == table.column("jpg").to_pylist()
    assert [p["url"] for p in pairs] == [f"https://example.org/{i}.jpg" for i in range(5)]
    assert all(p["source"] == "parquet" and p["source_shard"] == str(path) for p in pairs)
    assert all(p["read_error"] is None for p in pairs)
    assert [p["sample_id"] for p in pairs] == [make_sample_id(p["image"], p["text"]) for p in pairs]


def test_sample_ids_stable_across_reads(tmp_path: Path, photos: dict[str, bytes]) -> None:
    path = tmp_path / "00000.parquet"
    pq.write_table(_img2dataset_table(photos), path)
    first, second = _read(path), _read(path)
    assert [p["sample_id"] for p in first] == [p["sample_id"] for p in second]
    assert len({p["sample_id"] for p in first}) == 5


def test_hf_image_struct_and_binary_text_passed_as_bytes(tmp_path: Path, photos: dict[str, bytes]) -> None:
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": photos["chelsea"], "path": "cat.jpg"}, None], image_type)
    texts = pa.array([b"Chelsea \xff the cat", b"no image here"], pa.binary())
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"image": images, "text": texts}), path)
    pairs = _read(path)
    assert pairs[0]["image"] == photos["chelsea"]
    assert pairs[0]["text"] == b"Chelsea \xff the cat"     # invalid UTF-8 kept for the text stage
    assert pairs[1]["image"] is None and pairs[1]["text"] == b"no image here"
    assert all(p["url"] is None and p["read_error"] is None for p in pairs)


def test_column_names_can_be_overridden(tmp_path: Path, photos: dict[str, bytes]) -> None:
    path = tmp_path / "custom.parquet"
    pq.write_table(pa.table({"picture": [photos["coffee"]], "alt": ["Coffee"], "link": ["https://c.org/x"],
                             "caption": ["not this one"]}), path)
    options = ReaderOptions(image_column="picture", text_column="alt", url_column="link")
    [pair] = _read(path, options)
    assert (pair["image"], pair["text"], pair["url"]) == (photos["coffee"], "Coffee", "https://c.org/x")


def test_missing_caption_column_marks_every_row(tmp_path: Path, photos: dict[str, bytes]) -> None:
    path = tmp_path / "nocaption.parquet"
    pq.write_table(_img2dataset_table(photos).drop_columns(["caption"]), path, row_group_size=2)
    pairs = _read(path)
    assert len(pairs) == 5
    assert {p["read_error"] for p in pairs} == {"missing_column:caption|txt|alt_text|text"}
    assert all(p["text"] is None and p["image"] is not None for p in pairs)
    assert [p["sample_id"] for p in pairs] == [make_sample_id(p["image"], None) for p in pairs]
    [pair, *_] = _read(path, ReaderOptions(text_column="alt"))
    assert pair["read_error"] == "missing_column:alt"


def test_rows_with_nothing_readable_still_get_distinct_ids(tmp_path: Path) -> None:
    path = tmp_path / "meta_only.parquet"
    pq.write_table(pa.table({"key": ["a", "b", "c"]}), path)
    pairs = _read(path)
    assert len(pairs) == 3
    assert all(p["read_error"].startswith("missing_column:jpg|image") for p in pairs)
    assert "missing_column:caption" in pairs[0]["read_error"]
    assert len({p["sample_id"] for p in pairs}) == 3


def test_wrong_column_type_is_reported_not_raised(tmp_path: Path, photos: dict[str, bytes]) -> None:
    path = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"jpg": [photos["chelsea"]], "caption": [42]}), path)
    [pair] = _read(path)
    assert pair["read_error"] == "unsupported_column_type:caption:int64"
    assert pair["image"] == photos["chelsea"] and pair["text"] is None


def test_corrupt_file_yields_one_unreadable_shard_pair(tmp_path: Path, photos: dict[str, bytes]) -> None:
    path = tmp_path / "broken.parquet"
    pq.write_table(_img2dataset_table(photos), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])   # footer gone
    [pair] = _read(path)
    assert pair["read_error"].startswith("unreadable_shard: ")
    assert pair["sample_id"] == make_sample_id(None, f"{path}#0")
    assert (pair["row_in_shard"], pair["source_shard"], pair["image"]) == (0, str(path), None)


def test_corrupt_row_group_keeps_the_rows_before_it(tmp_path: Path, photos: dict[str, bytes]) -> None:
    path = tmp_path / "halfbroken.parquet"
    pq.write_table(_img2dataset_table(photos), path, row_group_size=2)
    offset = pq.ParquetFile(path).metadata.row_group(1).column(1).data_page_offset   # "jpg" of rows 2-3
    damaged = bytearray(path.read_bytes())
    damaged[offset:offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(damaged))
    pairs = _read(path)
    assert [p["text"] for p in pairs[:2]] == CAPTIONS[:2]
    assert all(p["read_error"] is None for p in pairs[:2])
    # the footer declares every row: each one not delivered is reported, none vanishes
    assert [p["row_in_shard"] for p in pairs] == list(range(len(CAPTIONS)))
    assert all(p["read_error"].startswith("unreadable_shard: ") for p in pairs[2:])


def test_transient_errors_are_retried_without_losing_or_repeating_rows(tmp_path: Path, photos: dict[str, bytes],
                                                                       monkeypatch) -> None:
    from i2e_engine import storage
    from i2e_engine.readers import parquet

    path = tmp_path / "flaky.parquet"
    pq.write_table(_img2dataset_table(photos), path, row_group_size=3)
    clean = _read(path)
    monkeypatch.setattr(storage, "RETRY_BASE_SECONDS", 0.0)
    monkeypatch.setattr(parquet, "BATCH_ROWS", 2)
    real = pq.ParquetFile.iter_batches
    failures = {"left": 2}

    def flaky(self, *args, **kwargs):
        for index, batch in enumerate(real(self, *args, **kwargs)):
            if index == 1 and failures["left"]:
                failures["left"] -= 1
                raise ConnectionResetError("connection reset by peer")
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", flaky)
    retries = storage.retry_count()
    pairs = _read(path)
    assert failures["left"] == 0 and storage.retry_count() - retries == 2
    assert [(p["row_in_shard"], p["sample_id"], p["read_error"]) for p in pairs] == \
        [(p["row_in_shard"], p["sample_id"], p["read_error"]) for p in clean]

    failures["left"] = 100   # a storage that never recovers: the unread rows are reported
    pairs = _read(path)
    assert [p["row_in_shard"] for p in pairs] == list(range(5))
    assert pairs[2]["read_error"].startswith("unreadable_shard: ConnectionResetError")
