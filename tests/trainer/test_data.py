"""The streaming loader over packed shards: exact resume, rank split, decoding, object
storage, and the contrastive text (template, sampled / balanced entity) — no Ray."""
from __future__ import annotations

import dataclasses
import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from i2e_engine.images import ImageLimits, ImageRejected
from tests.trainer.packed_fixtures import (jpeg, sample, synthetic_entities, synthetic_shards, write_packed)
from trainer.configs import apply_overrides, check_config, get_config
from trainer.data import Loader, choose_entity, decode_image, render_text, sample_rng, template_fields
from trainer.packed import PackedError, Position, RankStream, open_packed

SHARD_ROWS = [30, 41, 25, 37, 33, 29]   # 195 rows, uneven shards


@pytest.fixture(scope="module", params=["webdataset", "parquet"])
def packed(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "packed"
    return write_packed(out, synthetic_shards(SHARD_ROWS, 7), synthetic_entities(7), request.param)


def _keys(stream, n):
    out = []
    for batch, position in stream:
        out.append(([s["key"] for s in batch], position))
        if len(out) == n:
            return out
    return out


def test_resume_equals_unbroken_across_epoch_boundary(packed):
    ds = open_packed(packed)
    kw = dict(seed=3, world=2, batch_size=8, buffer_size=20)
    unbroken = _keys(RankStream(ds, rank=1, **kw), 40)
    epochs = [p.epoch for _, p in unbroken]
    assert epochs[0] == 0 and epochs[-1] >= 2  # the run crosses at least two epoch boundaries
    boundary = epochs.index(1) - 1              # the last batch of epoch 0
    for cut in (0, 3, boundary - 1, boundary, boundary + 1, 30):
        saved = json.loads(json.dumps(unbroken[cut][1].to_dict()))   # what a checkpoint stores
        resumed = _keys(RankStream(ds, rank=1, position=Position.from_dict(saved), **kw), 40 - cut - 1)
        assert [k for k, _ in resumed] == [k for k, _ in unbroken[cut + 1:]], cut


def test_two_ranks_disjoint_and_cover_the_epoch(packed):
    ds = open_packed(packed)
    shard_of = {}  # key -> shard, from the synthetic keys' ranges (independent of the loader)
    start = 0
    for s, n in enumerate(SHARD_ROWS):
        for i in range(start, start + n):
            shard_of[f"s{i:09d}"] = s
        start += n
    for epoch in (0, 1):
        seen = {}
        for rank in range(2):
            stream = RankStream(ds, seed=5, rank=rank, world=2, batch_size=8, buffer_size=16,
                                position=Position(epoch=epoch))
            keys = []
            for batch, position in stream:
                if position.epoch != epoch:
                    break
                keys.extend(s["key"] for s in batch)
            seen[rank] = keys
        assert len(seen[0]) == len(seen[1])                                # same number of batches
        assert not set(seen[0]) & set(seen[1])                            # disjoint
        shards = [{shard_of[k] for k in seen[r]} for r in range(2)]
        assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(len(SHARD_ROWS)))
        rows = [sum(SHARD_ROWS[s] for s in shards[r]) for r in range(2)]
        assert len(seen[0]) == min(rows) // 8 * 8                         # every full batch, tail dropped
        assert len(set(seen[0])) == len(seen[0])                          # nothing twice in an epoch
    other = _keys(RankStream(ds, seed=5, rank=0, world=2, batch_size=8, buffer_size=16, position=Position(epoch=1)), 3)
    first = _keys(RankStream(ds, seed=5, rank=0, world=2, batch_size=8, buffer_size=16), 3)
    assert [k for k, _ in other] != [k for k, _ in first]                 # each epoch its own order


def test_shuffle_buffer_mixes_within_its_window(packed):
    ds = open_packed(packed)
    plain = [k for b, _ in _keys(RankStream(ds, seed=0, rank=0, world=1, batch_size=5, buffer_size=1), 6) for k in b]
    mixed = [k for b, _ in _keys(RankStream(ds, seed=0, rank=0, world=1, batch_size=5, buffer_size=25), 6) for k in b]

    def runs(keys):  # consecutive samples that follow each other in their shard
        return sum(int(b[1:]) == int(a[1:]) + 1 for a, b in zip(keys, keys[1:]))
    assert runs(plain) >= len(plain) - 3      # buffer 1: shard order, broken only at shard ends
    assert runs(mixed) < len(mixed) // 3      # buffer 25: mixed
    assert len(set(mixed)) == len(mixed)


def test_too_few_shards_and_wrong_row_counts(tmp_path):
    p = write_packed(tmp_path / "p", synthetic_shards([10, 10], 3), synthetic_entities(3))
    with pytest.raises(PackedError, match="2 shards cannot be split over 3 ranks"):
        RankStream(open_packed(p), seed=0, rank=0, world=3, batch_size=2, buffer_size=4)
    index = json.loads((p / "index.json").read_text())
    index["shards"][0]["rows"] = 12
    (p / "index.json").write_text(json.dumps(index))
    with pytest.raises(PackedError, match="holds 10 rows, index.json says 12"):
        for _ in RankStream(open_packed(p), seed=0, rank=0, world=1, batch_size=2, buffer_size=4):
            pass
    (p / "index.json").unlink()
    with pytest.raises(PackedError, match="no index.json"):
        open_packed(p)


def test_loader_batches_masks_bad_images_and_resumes(caltech_packed):
    cfg = get_config("smoke_mofi").data
    ds = open_packed(caltech_packed)
    corrupt = {k for s in range(4) for k in _corrupt_keys(caltech_packed, s)}
    assert len(corrupt) == 1
    batches = []
    for batch in Loader(ds, cfg, seed=0, rank=0, world=2, threads=2):
        batches.append(batch)
        if len(batches) == 8:
            break
    bad = 0
    for batch in batches:
        assert batch["pixels"].shape == (cfg.batch_size, cfg.image_size, cfg.image_size, 3)
        invalid = batch["valid"] == 0
        assert batch["pixels"][invalid].sum() == 0 and batch["pixels"][~invalid].float().std() > 5
        assert {k for k, v in zip(batch["keys"], batch["valid"].tolist()) if not v} <= corrupt
        bad += int(invalid.sum())
        assert sum(k in corrupt for k in batch["keys"]) == int(invalid.sum())
        for labels, chosen in zip(batch["labels"].tolist(), batch["text_class"].tolist()):
            assert chosen in labels and labels[0] >= 0
    resumed = Loader(ds, cfg, seed=0, rank=0, world=2, threads=1, position=batches[4]["position"])
    for expected, got in zip(batches[5:], resumed):
        assert got["keys"] == expected["keys"] and got["texts"] == expected["texts"]
        assert (got["pixels"] == expected["pixels"]).all() and (got["labels"] == expected["labels"]).all()
        if got["position"] == batches[-1]["position"]:
            break


def _corrupt_keys(packed, shard):
    import tarfile
    with tarfile.open(packed / "shards" / f"{shard:05d}.tar") as tar:
        metas = {m.name[:9]: json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")}
    return [m["key"] for m in metas.values() if m["source_shard"] == "corrupt"]


def test_packed_shards_on_object_storage(packed, s3):
    local = open_packed(packed)
    for path in sorted(packed.rglob("*")):
        if path.is_file():
            s3.put(str(path), f"outputs/packed/{path.relative_to(packed)}")
    remote = open_packed("s3://outputs/packed")
    assert remote.shard_uris[0].startswith("s3://outputs/packed/shards/")
    assert remote.entity_ids == local.entity_ids and remote.rows == sum(SHARD_ROWS)
    kw = dict(seed=1, rank=0, world=2, batch_size=8, buffer_size=10)
    a, b = _keys(RankStream(local, **kw), 15), _keys(RankStream(remote, **kw), 15)
    assert [k for k, _ in a] == [k for k, _ in b]
    resumed = _keys(RankStream(remote, position=b[9][1], **kw), 5)
    assert [k for k, _ in resumed] == [k for k, _ in b[10:]]
    cfg = dataclasses.replace(get_config("smoke_mofi").data, batch_size=8)
    batch = next(iter(Loader(remote, cfg, seed=1, rank=0, world=2)))
    assert batch["valid"].all() and batch["pixels"].float().std() > 5


# ------------------------------------------------------------------------------ decoding


def test_draft_decode_reduces_and_keeps_limits(monkeypatch):
    rng = np.random.default_rng(0)
    big = jpeg(Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)))
    image = decode_image(big, 64)
    assert image.mode == "RGB" and image.size == (100, 75)   # 1/8 scale: the smallest keeping both >= 64
    assert decode_image(big, 300).size == (400, 300)          # 1/2 scale
    assert decode_image(big, 500).size == (800, 600)          # no reduction possible
    png = io.BytesIO()
    Image.new("RGBA", (40, 30), (10, 20, 30, 0)).save(png, "PNG")
    assert decode_image(png.getvalue(), 16).getpixel((0, 0)) == (255, 255, 255)  # not JPEG: full decode onto white
    monkeypatch.setattr("trainer.data._LIMITS", ImageLimits(max_pixels=100_000))
    with pytest.raises(ImageRejected, match="image_too_large"):
        decode_image(big, 64)                                 # limits checked before the draft decode
    with pytest.raises(ImageRejected, match="undecodable"):
        decode_image(b"\xff\xd8\xff\xe0 garbage", 64)

# ------------------------------------------------------------------------------ text


def test_text_template_render_and_validation():
    values = {"name": "Leopard", "description": "large cat", "alt_text": "a leopard in a tree"}
    assert render_text("{name}, {description}. {alt_text}", values) == "Leopard, large cat. a leopard in a tree"
    assert render_text("{name}, {description}. {alt_text}", {**values, "description": ""}) == \
        "Leopard. a leopard in a tree"
    assert render_text("{name}, {description}. {alt_text}", {**values, "alt_text": ""}) == "Leopard, large cat"
    assert render_text("a photo of {name}", values) == "a photo of Leopard"
    assert render_text("{alt_text}. {name}", {**values, "alt_text": ""}) == "Leopard"
    assert template_fields("{name}") == ["name"]
    for bad in ("{name} {price}", "{name!r}", "{name:>10}", "no fields", "{0}", "{name"):
        with pytest.raises(ValueError, match="text_template"):
            template_fields(bad)
    with pytest.raises(ValueError, match="text_template"):
        check_config(apply_overrides(get_config("smoke_mofi"), ["data.text_template={name.__class__}"]))
    with pytest.raises(ValueError, match="text_entity"):
        check_config(apply_overrides(get_config("smoke_mofi"), ["data.text_entity=random"]))


def test_sampled_entity_is_uniform_reproducible_and_first_is_first():
    labels = [4, 1, 6]
    draws = [choose_entity(labels, sample_rng(0, 0, f"k{i}", 1), "sampled") for i in range(6000)]
    freq = Counter(draws)
    assert set(freq) == set(labels)
    for c in labels:  # 1/3 each; 4.5 sigma of a binomial(6000, 1/3) is ~0.027
        assert abs(freq[c] / 6000 - 1 / 3) < 0.027
    again = [choose_entity(labels, sample_rng(0, 0, f"k{i}", 1), "sampled") for i in range(6000)]
    assert draws == again
    other_epoch = [choose_entity(labels, sample_rng(0, 1, f"k{i}", 1), "sampled") for i in range(6000)]
    assert draws != other_epoch
    assert {choose_entity(labels, sample_rng(0, 0, f"k{i}", 1), "first") for i in range(50)} == {4}


def test_entity_balanced_sampling_evens_out_entities(tmp_path):
    # every image carries the common entity 0 (in all 400 images) and one rare entity 1..4 (100 images each)
    entities = synthetic_entities(5)
    pic = jpeg(Image.new("RGB", (16, 16), (90, 10, 10)))
    rows = [sample(f"k{i}", pic, [0, 1 + i % 4], "", i) for i in range(400)]
    p = write_packed(tmp_path / "p", [rows[:200], rows[200:]], entities)
    ds = open_packed(p)
    assert ds.image_count.tolist() == [400, 100, 100, 100, 100]
    counts = {}
    for balanced in (False, True):
        cfg = apply_overrides(get_config("smoke_mofi"), [f"data.entity_balanced={str(balanced).lower()}",
                                                         "data.batch_size=50", "data.image_size=8"]).data
        chosen = []
        for batch in Loader(ds, cfg, seed=0, rank=0, world=1):
            chosen.extend(batch["text_class"].tolist())
            if batch["position"]["step"] == 8:
                break
        counts[balanced] = Counter(chosen)
    # uniform: entity 0 in half the draws; balanced: p(0) = (1/400) / (1/400 + 1/100) = 0.2
    assert abs(counts[False][0] / 400 - 0.5) < 0.1
    assert abs(counts[True][0] / 400 - 0.2) < 0.08
    # balanced: every entity's text is seen about equally often (80 each of 400)
    assert all(abs(counts[True][c] / 400 - 0.2) < 0.08 for c in range(5))
