"""Image-aware disambiguation through the real stages: the offline scorer scores every
remaining candidate of a mention, the image overturns the text's choice where the text
cannot tell, the runner-ups keep both scores, and an image that agrees with no candidate
makes the mention NIL."""
from __future__ import annotations

import dataclasses

import pytest

import schemas
from i2e_engine.config import BuildConfig, LinkConfig
from i2e_engine.demo import skimage_data_dir
from i2e_engine.records import make_sample_id
from i2e_engine.stages import Annotator

# One surface form, two entities with equal priors: only the image can choose.
KB = [("custom:jaguar-cat", "Jaguar", "large wild cat of the Americas, a spotted feline"),
      ("custom:jaguar-motorcycle", "Jaguar", "a motorcycle brand, motorbikes with engines and wheels")]


@pytest.fixture(scope="module")
def kb_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("kb") / "jaguar.parquet"
    schemas.write_table(schemas.from_records(
        [{"entity_id": e, "name": n, "description": d, "aliases": [], "source": "custom", "popularity": 1.0,
          "qid": None, "wiki_title": None, "kind": "thing"} for e, n, d in KB], "kb"), path, "kb")
    return str(path)


def _pair(row: int, image_file: str, text: str) -> dict:
    image = (skimage_data_dir() / image_file).read_bytes()
    return {"sample_id": make_sample_id(image, text), "source": "test", "source_shard": "mem://jaguar",
            "row_in_shard": row, "url": None, "image": image, "text": text, "read_error": None}


PAIRS = [_pair(0, "chelsea.png", "Jaguar"), _pair(1, "motorcycle_left.png", "Jaguar")]


def _annotate(kb_path: str, link: LinkConfig):
    # An even split of two candidates is under the link model's NIL threshold on the text
    # alone; these tests hand the choice to the image (nil_threshold 0), below the score
    # at which the text is sure (text_certain_score).
    config = dataclasses.replace(BuildConfig(), link=dataclasses.replace(link, nil_threshold=0.0))
    return Annotator(config, kb_path).setup().process(PAIRS)


def test_the_image_chooses_between_equal_text_candidates(kb_path):
    result = _annotate(kb_path, LinkConfig(image_nil_score=-1.0))
    assert not result.rejects
    chosen = {row["row_in_shard"]: row["links"][0] for row in result.kept}
    assert chosen[0]["entity_id"] == "custom:jaguar-cat"
    assert chosen[1]["entity_id"] == "custom:jaguar-motorcycle"
    for link in chosen.values():
        [other] = link["runner_ups"]
        assert set(other) == {"entity_id", "link_score", "image_entity_score"}
        assert other["link_score"] == pytest.approx(link["link_score"])          # the text could not tell
        assert other["image_entity_score"] < link["image_entity_score"]          # the image could


def test_without_image_weight_the_text_tie_break_stands(kb_path):
    result = _annotate(kb_path, LinkConfig(image_weight=0.0, image_nil_score=-1.0))
    assert {row["links"][0]["entity_id"] for row in result.kept} == {"custom:jaguar-cat"}   # by entity_id


def test_the_text_alone_leaves_an_even_split_unlinked(kb_path):
    result = Annotator(BuildConfig(), kb_path).setup().process(PAIRS)
    assert not result.kept and {r["reason"] for r in result.rejects} == {"no_entity_linked"}


def test_an_image_that_agrees_with_no_candidate_is_nil(kb_path):
    result = _annotate(kb_path, LinkConfig(image_nil_score=0.99))
    assert not result.kept
    assert [(r["stage"], r["kind"], r["reason"]) for r in result.rejects] == [("score", "filtered", "image_nil")] * 2
    assert "Jaguar" in result.rejects[0]["detail"]
