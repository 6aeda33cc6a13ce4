"""COCO captions reader, on the real coco-mini captions and on small hand-made files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from i2e_engine.readers import ReaderOptions, list_shards, read_shard
from i2e_engine.readers.coco import summarize_coco
from i2e_engine.records import make_sample_id


def _captions_by_file(captions_file: Path) -> dict[str, list[str]]:
    """The test's own reading of the JSON: captions per file name, in annotation-id order."""
    data = json.loads(captions_file.read_text())
    names = {image["id"]: image["file_name"] for image in data["images"]}
    by_file: dict[str, list[str]] = {}
    for annotation in sorted(data["annotations"], key=lambda a: a["id"]):
        by_file.setdefault(names[annotation["image_id"]], []).append(annotation["caption"].strip())
    return by_file


def test_coco_mini_root_lists_both_splits(coco_mini: Path) -> None:
    shards = list_shards([str(coco_mini)])
    annotations = coco_mini / "annotations"
    assert [s.shard_id for s in shards] == [f"coco:{annotations / 'captions_train2017.json'}[0:80]",
                                            f"coco:{annotations / 'captions_val2017.json'}[0:79]"]
    assert [Path(s.images_dir).name for s in shards] == ["train2017", "val2017"]


def test_val2017_gives_79_pairs_of_five_joined_captions(coco_mini: Path) -> None:
    captions_file = coco_mini / "annotations" / "captions_val2017.json"
    [shard] = list_shards([str(captions_file)])
    pairs = list(read_shard(shard))
    expected = _captions_by_file(captions_file)
    assert len(pairs) == 79 == len(expected)
    for pair in pairs:
        file_name = pair["url"].rsplit("/", 1)[1]
        assert pair["url"] == f"http://images.cocodataset.org/val2017/{file_name}"
        assert len(expected[file_name]) == 5
        assert pair["text"] == " ".join(expected[file_name])
        assert pair["image"] == (coco_mini / "val2017" / file_name).read_bytes()
        assert pair["read_error"] is None and pair["source"] == "coco"
    assert [p["url"] for p in pairs] == sorted(p["url"] for p in pairs)
    assert len({p["sample_id"] for p in pairs}) == 79
    assert [p["sample_id"] for p in pairs] == [p["sample_id"] for p in read_shard(shard)]


def test_first_caption_option(coco_mini: Path) -> None:
    captions_file = coco_mini / "annotations" / "captions_val2017.json"
    options = ReaderOptions(coco_captions="first")
    [shard] = list_shards([str(captions_file)], options=options)
    expected = _captions_by_file(captions_file)
    pairs = list(read_shard(shard, options))
    assert all(p["text"] == expected[p["url"].rsplit("/", 1)[1]][0] for p in pairs)
    with pytest.raises(ValueError, match="coco_captions"):
        ReaderOptions(coco_captions="all")


def test_slices_cover_each_captioned_image_once(coco_mini: Path) -> None:
    captions_file = str(coco_mini / "annotations" / "captions_val2017.json")
    shards = list_shards([captions_file], rows_per_shard=30)
    assert [s.shard_id for s in shards] == [f"coco:{captions_file}[{a}:{b}]"
                                           for a, b in ((0, 30), (30, 60), (60, 79))]
    sliced = [p["sample_id"] for s in shards for p in read_shard(s)]
    [whole] = list_shards([captions_file], rows_per_shard=1000)
    assert sliced == [p["sample_id"] for p in read_shard(whole)]


def test_summary_counts_pairs(coco_mini: Path) -> None:
    summary = summarize_coco(coco_mini / "annotations" / "captions_val2017.json")
    assert (summary.images, summary.images_with_captions, summary.images_without_captions,
            summary.captions, summary.captions_without_image) == (79, 79, 0, 395, 0)


def test_instances_file_is_not_a_captions_file(coco_mini: Path) -> None:
    with pytest.raises(ValueError, match="not a COCO captions file"):
        list_shards([str(coco_mini / "annotations" / "instances_val2017.json")])


@pytest.fixture
def small_coco(tmp_path: Path, photos: dict[str, bytes]) -> Path:
    root = tmp_path / "mycoco"
    (root / "annotations").mkdir(parents=True)
    (root / "pics").mkdir()
    (root / "pics" / "1.jpg").write_bytes(photos["chelsea"])
    (root / "pics" / "3.jpg").write_bytes(photos["astronaut"])
    data = {
        "images": [{"id": 1, "file_name": "1.jpg", "flickr_url": "http://flickr/1"},
                   {"id": 2, "file_name": "2.jpg", "coco_url": "http://coco/2"},     # listed, file absent
                   {"id": 3, "file_name": "3.jpg", "coco_url": "http://coco/3"}],    # no caption
        "annotations": [{"id": 12, "image_id": 1, "caption": " second "},
                        {"id": 11, "image_id": 1, "caption": "first\n"},
                        {"id": 20, "image_id": 2, "caption": "lost photo"},
                        {"id": 99, "image_id": 42, "caption": "orphan"}],
    }
    (root / "annotations" / "captions_mini.json").write_text(json.dumps(data))
    return root


def test_uncaptioned_images_are_skipped_and_counted(small_coco: Path, photos: dict[str, bytes]) -> None:
    captions_file = small_coco / "annotations" / "captions_mini.json"
    options = ReaderOptions(coco_images_dir=str(small_coco / "pics"))
    [shard] = list_shards([str(small_coco)], options=options)
    pairs = list(read_shard(shard, options))
    assert [(p["url"], p["text"]) for p in pairs] == [("http://flickr/1", "first second"),
                                                      ("http://coco/2", "lost photo")]
    assert pairs[0]["image"] == photos["chelsea"] and pairs[0]["read_error"] is None
    assert pairs[1]["image"] is None and pairs[1]["read_error"] == "missing_image:2.jpg"
    assert pairs[1]["sample_id"] == make_sample_id(None, "lost photo")
    summary = summarize_coco(captions_file)
    assert (summary.images_with_captions, summary.images_without_captions, summary.captions_without_image) == (2, 1, 1)


def test_missing_default_image_folder_is_a_clear_error(small_coco: Path) -> None:
    with pytest.raises(ValueError, match=r"image folder .*mini.* not found"):
        list_shards([str(small_coco)])


def test_captions_file_damaged_after_listing(small_coco: Path) -> None:
    options = ReaderOptions(coco_images_dir=str(small_coco / "pics"))
    [shard] = list_shards([str(small_coco)], options=options)
    (small_coco / "annotations" / "captions_mini.json").write_text('{"images": [')
    pairs = list(read_shard(shard, options))
    assert len(pairs) == shard.stop - shard.start   # one reject for every listed row
    assert all(p["read_error"].startswith("unreadable_shard: JSONDecodeError") for p in pairs)


def test_shard_identity_covers_the_photos_of_its_slice(small_coco: Path, photos: dict[str, bytes],
                                                       swap_keeping_size_and_mtime) -> None:
    options = ReaderOptions(coco_images_dir=str(small_coco / "pics"))
    before = list_shards([str(small_coco)], rows_per_shard=1, options=options)   # 1.jpg, then 2.jpg (absent)
    swap_keeping_size_and_mtime(small_coco / "pics" / "1.jpg")
    after = list_shards([str(small_coco)], rows_per_shard=1, options=options)
    assert after[0].identity != before[0].identity and after[1].identity == before[1].identity
    (small_coco / "pics" / "2.jpg").write_bytes(photos["coffee"])   # the absent photo appears
    assert list_shards([str(small_coco)], rows_per_shard=1, options=options)[1].identity != after[1].identity


def test_photo_over_the_byte_limit_is_rejected_unread(small_coco: Path, photos: dict[str, bytes],
                                                      monkeypatch) -> None:
    limit = len(photos["chelsea"]) - 1
    options = ReaderOptions(coco_images_dir=str(small_coco / "pics"), max_image_bytes=limit)
    read = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or real(self))
    [shard] = list_shards([str(small_coco)], options=options)
    pairs = list(read_shard(shard, options))
    assert [(p["row_in_shard"], p["text"], p["image"]) for p in pairs] == [(0, "first second", None),
                                                                          (1, "lost photo", None)]
    assert [p["read_error"] for p in pairs] == [
        f"image_too_many_bytes: 1.jpg is {len(photos['chelsea'])} bytes > limit {limit} (not read)",
        "missing_image:2.jpg"]
    assert "1.jpg" not in read
