"""The pack core on small hand-made tables: resizing, the order of the pair filters, and the
accounting of images that cannot be packed (undecodable, no entity left, pairs without an
image row), which the engine's own tables never contain."""
from __future__ import annotations

import hashlib
import io
import json

import pandas as pd
import pytest
from PIL import Image

import schemas
from i2e_engine import images, pack
from i2e_engine.pack import PackConfig, PackError
from pipelines.pack import run_pack

TABLES = {table: table for table in ("images", "image_entities", "entities")}   # tables written in place


def _jpeg(width: int, height: int, color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_resize_makes_the_shorter_side_the_target_and_never_upscales():
    data, width, height = pack.resize_image(_jpeg(1200, 800), 256, 90)
    assert (width, height) == (384, 256) == Image.open(io.BytesIO(data)).size
    data, width, height = pack.resize_image(_jpeg(100, 300), 256, 90)
    assert (width, height) == (100, 300) and Image.open(io.BytesIO(data)).format == "JPEG"


def test_resize_puts_transparent_pixels_on_white():
    buffer = io.BytesIO()
    Image.new("RGBA", (600, 400), (0, 0, 0, 0)).save(buffer, "PNG")
    data, width, height = pack.resize_image(buffer.getvalue(), 200, 95)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and (width, height) == (300, 200)
    assert min(image.convert("RGB").getpixel((150, 100))) > 245


def test_resize_rejects_garbage_and_truncated_images():
    with pytest.raises(images.ImageRejected):
        pack.resize_image(b"not an image", 256, 90)
    with pytest.raises(images.ImageRejected):
        pack.resize_image(_jpeg(1200, 800)[:2000], 256, 90)


def test_config_refuses_a_threshold_with_a_fraction_and_bad_values():
    with pytest.raises(ValueError, match="not both"):
        PackConfig("t", "o", min_image_entity_score=0.2, keep_top_fraction=0.5)
    with pytest.raises(ValueError, match="shard_format"):
        PackConfig("t", "o", shard_format="zip")
    with pytest.raises(ValueError, match="image_size"):
        PackConfig("t", "o", image_size=0)


def _pair(row: int, entity: str, score: float, rank: int) -> dict:
    return {"image_id": f"img{row}", "entity_id": entity, "image_entity_score": score, "rank": rank,
            "source_shard": "s", "row_in_shard": row}


def test_each_dropped_pair_gets_one_reason_in_order():
    pairs = [_pair(0, "a", 0.9, 1), _pair(0, "a", 0.8, 2), _pair(0, "b", 0.1, 3), _pair(0, "c", 0.7, 4),
             _pair(0, "d", 0.6, 5), _pair(1, "rare", 0.9, 1)]
    config = PackConfig("t", "o", min_image_entity_score=0.5, min_images_per_entity=1, max_labels=2)
    decisions = pack.with_counts(pack.score_decision(config, None), {"a": 1, "c": 1, "d": 1})
    labels, dropped = pack.label_images(pairs, config, decisions)
    assert labels == {("s", 0): [("a", 0.9), ("c", 0.7)]}
    assert dropped == {"duplicate_entity": 1, "score_below_threshold": 1, "beyond_max_labels": 1,
                       "entity_below_min_images": 1}


def _write(rows: list[dict], table: str, path) -> None:
    """Tables as an engine of schema v4 wrote them (the last version before `pack`): still packed."""
    schemas.write_table(schemas.from_records(rows, table, version=4), path, table, version=4)


@pytest.fixture()
def odd_tables(tmp_path):
    """Four image rows: one good, one undecodable, one whose only pair scores too low; plus a
    pair whose image row is missing."""
    image_bytes = [_jpeg(640, 480), b"\xff\xd8 broken", _jpeg(320, 320, (0, 0, 200)), _jpeg(300, 500)]
    rows = [{"image_id": hashlib.sha256(data).hexdigest(), "sample_id": f"x{i}", "source": "test",
             "source_shard": "s", "row_in_shard": i, "url": None, "width": 1, "height": 1, "image_format": "JPEG",
             "alt_text_raw": f"text {i}", "alt_text": f"text {i}", "alt_texts_of_copies": [], "image": data,
             "run_id": "r"} for i, data in enumerate(image_bytes)]
    pair_rows = [(0, "Q1", 0.9), (0, "Q2", 0.8), (1, "Q1", 0.9), (2, "Q2", 0.1), (3, "Q2", 0.7), (9, "Q1", 0.9)]
    pairs = [{"image_id": rows[min(i, 3)]["image_id"], "sample_id": f"x{i}", "source_shard": "s", "row_in_shard": i,
              "mention": "m", "mention_label": "ALIAS", "mention_source": "alias", "mention_start": 0,
              "mention_end": 1, "entity_id": entity, "link_score": 1.0, "link_prior": 1.0, "link_context": 1.0,
              "runner_ups": [], "image_entity_score": score, "rank": 1 if entity == "Q1" or i in (2, 3) else 2,
              "scorer": "test", "kb_version": "k", "run_id": "r"} for i, entity, score in pair_rows]
    entities = [{"entity_id": e, "name": f"name {e}", "description": f"about {e}", "aliases": [], "source": "test",
                 "qid": None, "wiki_title": None, "image_count": 1, "kb_version": "k"} for e in ("Q1", "Q2")]
    _write(rows, "images", tmp_path / "images" / "part-a.parquet")
    _write(pairs, "image_entities", tmp_path / "image_entities" / "part-a.parquet")
    _write(entities, "entities", tmp_path / "entities" / "part-0.parquet")
    (tmp_path / "manifest.json").write_text(json.dumps({"rows": {"images": 4, "image_entities": 6}, "tables": TABLES}))
    return tmp_path


def test_undecodable_images_and_orphan_pairs_are_counted(odd_tables, tmp_path):
    out = tmp_path / "packed"
    index = run_pack(PackConfig(str(odd_tables), str(out), min_image_entity_score=0.5, shard_rows=1))
    counts = index["counts"]
    assert counts["input_images"] == 4 and counts["input_pairs"] == 6
    assert counts["kept_images"] == 2 and counts["kept_pairs"] == 3
    assert counts["dropped_images"] == {"no_entity_left": 1, "undecodable_image": 1}
    assert counts["dropped_pairs"] == {"image_not_in_tables": 1, "score_below_threshold": 1, "undecodable_image": 1}
    vocab = pd.read_parquet(out / "vocab.parquet")
    # Q1 was on the undecodable image too: image_count is what was packed, not what was planned
    assert vocab.to_dict("list") == {"class_id": [0, 1], "entity_id": ["Q1", "Q2"], "name": ["name Q1", "name Q2"],
                                     "description": ["about Q1", "about Q2"], "image_count": [1, 2]}
    # shards were planned for the 4 images with a label left (undecodable and orphan ones
    # are only found while staging): a shard may come out empty, and says so
    assert len(index["shards"]) == 4 and index["rows"] == 2 == sum(s["rows"] for s in index["shards"])
    assert all((out / s["path"]).exists() for s in index["shards"])


def test_tables_that_do_not_match_their_manifest_are_refused(odd_tables, tmp_path):
    (odd_tables / "manifest.json").write_text(json.dumps({"rows": {"images": 5, "image_entities": 6}, "tables": TABLES}))
    with pytest.raises(PackError, match="does not add up"):
        run_pack(PackConfig(str(odd_tables), str(tmp_path / "packed")))
    assert not (tmp_path / "packed" / "index.json").exists()
