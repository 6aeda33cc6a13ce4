"""Alt-text normalization: one table row per rule, plus the rejects and the length cut."""
from __future__ import annotations

import time

import pytest

from i2e_engine.config import TextConfig
from i2e_engine.text import REJECT_REASONS, TextRejected, normalize_alt_text

CONFIG = TextConfig()

KEPT = [
    # plain text and bytes pass unchanged
    ("Chelsea the cat", "Chelsea the cat"),
    ("Café crème ☕".encode(), "Café crème ☕"),
    # HTML: entities, twice-escaped entities, tags, comments; a lone "<" is not a tag
    ("Tom &amp; Jerry", "Tom & Jerry"),
    ("&amp;lt;b&amp;gt;Cat&amp;lt;/b&amp;gt;", "Cat"),
    ("<p>Golden Gate Bridge<br/>at dusk</p>", "Golden Gate Bridge at dusk"),
    ("Cat<!-- tracking -->Dog", "Cat Dog"),
    ("5 < 6 and 7 > 3", "5 < 6 and 7 > 3"),
    # Unicode NFKC, control and format characters
    ("Ｔｏｋｙｏ Ｔｏｗｅｒ ﬁreworks", "Tokyo Tower fireworks"),
    ("Zero\u200bwidth so\u00adft\ufeff", "Zerowidth soft"),
    ("line\nbreak\ttab\x00nul\x07bell", "line break tabnulbell"),   # whitespace -> space, others go
    # URLs
    ("https://x.com/a.jpg Dog", "Dog"),
    ("Visit www.example.com for more", "Visit for more"),
    ("Rally in Berlin, shutterstock.com/image-photo/123", "Rally in Berlin"),
    # file names and camera names
    ("Cat (IMG_1234.jpg).", "Cat."),
    ("DSC00012 Mount Fuji", "Mount Fuji"),
    ("PXL_20230101_123456789 sunset over Lisbon", "sunset over Lisbon"),
    ("beach photo.png", "beach"),
    # stock boilerplate and watermarks
    ("Eiffel Tower at night stock photo", "Eiffel Tower at night"),
    ("Stock Photo - Eiffel Tower", "Eiffel Tower"),
    ("Eiffel Tower - Stock Photo - Alamy", "Eiffel Tower"),
    ("Royalty-free stock image of the Colosseum in Rome", "the Colosseum in Rome"),
    ("An image of a dog on the beach", "a dog on the beach"),
    ("Picture of Big Ben, free download", "Big Ben"),
    ("Golden retriever © Getty Images", "Golden retriever"),
    ("Sunflowers shutterstock", "Sunflowers"),
    ("Cute cat cartoon | Premium Vector", "Cute cat cartoon"),
    ("ｓｔｏｃｋ ｐｈｏｔｏ of Ｐａｒｉｓ", "Paris"),
    # not boilerplate: dotted names and abbreviations survive
    ("Node.js logo on a U.S. flag, Dr. Smith", "Node.js logo on a U.S. flag, Dr. Smith"),
    # whitespace collapsed
    ("  lots   of \u00a0 space  ", "lots of space"),
]


@pytest.mark.parametrize("raw, expected", KEPT)
def test_normalized(raw: str | bytes, expected: str) -> None:
    assert normalize_alt_text(raw, CONFIG) == expected


REJECTED = [
    (None, "text_missing"),
    (b"Chat \xe0 Paris", "text_invalid_utf8"),          # latin-1 bytes
    ("lone \udcff surrogate", "text_invalid_utf8"),      # what surrogateescape decoding leaves
    ("IMG_2034.JPG", "text_empty"),
    ("stock photo", "text_empty"),
    ("<img src='a.png'>", "text_empty"),
    ("   \u200b\n", "text_empty"),
    ("a", "text_empty"),                                 # under min_chars
    ("x" * 20_001, "text_too_long"),
]


@pytest.mark.parametrize("raw, reason", REJECTED)
def test_rejected(raw: str | bytes | None, reason: str) -> None:
    with pytest.raises(TextRejected) as rejected:
        normalize_alt_text(raw, CONFIG)
    assert rejected.value.reason == reason
    assert reason in REJECT_REASONS


def test_raw_limit_is_checked_before_cleaning() -> None:
    config = TextConfig(max_raw_chars=30)
    assert normalize_alt_text("A cat " + "&amp;" * 4, config) == "A cat &&&&"     # 26 raw chars
    with pytest.raises(TextRejected, match="text_too_long"):
        normalize_alt_text("A cat " + "&amp;" * 5, config)                        # 31 raw chars


@pytest.mark.parametrize("raw, max_chars, expected", [
    ("Eiffel Tower at night in Paris", 16, "Eiffel Tower at"),     # would cut "night" mid-word
    ("Eiffel Tower at night", 12, "Eiffel Tower"),                 # cut lands on a boundary
    ("Supercalifragilistic", 5, "Super"),                          # one word fills the limit
    ("Paris - Eiffel Tower", 8, "Paris"),                          # no dangling separator
])
def test_cut_at_word_boundary(raw: str, max_chars: int, expected: str) -> None:
    assert normalize_alt_text(raw, TextConfig(max_chars=max_chars)) == expected


def test_min_chars_is_configurable() -> None:
    assert normalize_alt_text("ox", TextConfig(min_chars=2)) == "ox"
    with pytest.raises(TextRejected, match="text_empty"):
        normalize_alt_text("ox", TextConfig(min_chars=3))


@pytest.mark.parametrize("hostile", ["a." * 10_000, "a-" * 10_000, "<!--" * 5_000, "IMG_123" + "_a" * 6_000 + "@"])
def test_hostile_input_stays_fast(hostile: str) -> None:
    started = time.perf_counter()
    try:
        normalize_alt_text(hostile, CONFIG)
    except TextRejected:
        pass
    assert time.perf_counter() - started < 1.0
