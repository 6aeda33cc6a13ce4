"""The exported-encoder format's checks, without torch: a card must be this format and name
its weight files by plain names inside the export's folder."""
from __future__ import annotations

import json

import pytest

from i2e_engine.encoder.export_format import (CARD, FORMAT, FORMAT_VERSION, check_file_name, parse_card,
                                              read_card, weight_files)


def _card(**files) -> str:
    return json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "name": "x", "text": {"kind": "bytes"},
                       "files": {"image": "image_tower.pt", "text": "text_tower.pt", **files}})


@pytest.mark.parametrize("name", ["image_tower.pt", "weights-v2.pt", "..pt", "a..b"])
def test_plain_file_names_pass(name):
    assert check_file_name(name, "here") == name


@pytest.mark.parametrize("name", ["", ".", "..", "../outside.pt", "sub/image.pt", "/etc/passwd", "C:\\x.pt",
                                  "..\\outside.pt", "a\0b", 7, None, ["image.pt"]])
def test_names_that_leave_the_folder_are_refused(name):
    with pytest.raises(ValueError, match="plain names inside the export's folder"):
        check_file_name(name, "here")


@pytest.mark.parametrize("files", [{"image": "../../escape.pt"}, {"text": "/abs/text.pt"}, {"text": "a/b.pt"}])
def test_a_card_naming_a_path_is_refused(files):
    with pytest.raises(ValueError, match="plain names"):
        parse_card(_card(**files), "'s3://bucket/enc'")


def test_a_card_is_checked_for_format_and_an_image_file(tmp_path):
    assert weight_files(parse_card(_card(), "x")) == ["image_tower.pt", "text_tower.pt"]
    assert weight_files(parse_card(_card(text=None), "x")) == ["image_tower.pt"]
    with pytest.raises(ValueError, match="names no image tower file"):
        parse_card(_card(image=None), "x")
    with pytest.raises(ValueError, match="expected 'mofi-encoder' v1"):
        parse_card(json.dumps({"format": "other", "format_version": 1}), "x")
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_card("{", "x")
    with pytest.raises(FileNotFoundError, match=f"no {CARD}"):
        read_card(tmp_path)
    (tmp_path / CARD).write_text(_card(image="../x.pt"))
    with pytest.raises(ValueError, match="plain names"):
        read_card(tmp_path)
