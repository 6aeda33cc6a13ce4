"""Alt-text normalization: from the raw text of a pair to the text that NER reads.

Web alt-texts carry HTML entities (often escaped twice), tags, invisible characters, URLs,
camera file names and stock-photo boilerplate. None of it names what is in the picture,
and all of it feeds false mentions to NER ("Getty Images" is an ORG, "IMG_2034" a
PRODUCT), so it goes before NER. The patterns are data (the tuples below): extend them
there. :func:`normalize_alt_text` is pure; it raises :class:`TextRejected` with a stable
reason code for text that cannot be used.
"""
from __future__ import annotations

import html
import re
import unicodedata
from typing import Optional

from i2e_engine.config import TextConfig

REJECT_REASONS = ("text_missing", "text_invalid_utf8", "text_too_long", "text_empty")

# Tags, comments and doctypes; in "5 < 6 > 4" nothing is a tag: "<" must precede a letter, "/" or "!".
HTML_TAG_PATTERN = r"</?[A-Za-z!][^<>]*>"

# URL and file-name patterns match one whole whitespace-separated token (less the brackets
# and punctuation around it), which keeps them linear on hostile input such as "a.a.a...".
URL_PATTERNS: tuple[str, ...] = (
    r"\S*(?:https?|ftp)://\S*",
    r"www\.\S*",
    r"(?:[\w-]+\.)+[a-z]{2,}/\S*",                       # example.com/path
    r"[\w.-]*\.(?:com|net|org|io|info|biz)",             # bare example.com
)

FILE_NAME_PATTERNS: tuple[str, ...] = (
    r"[\w.-]*\.(?:jpe?g|png|gif|webp|bmp|tiff?|heic|heif|avif|svg|dng|raw|cr2|nef|arw)",
    # camera and phone names: IMG_1234, DSC00012, DSCF0042, PXL_20230101_123456789, IMG-20200101-WA0001
    r"(?:IMG|DSC[FN]?|DCIM|PICT|PXL|MVIMG|VID|GOPR|DJI|SAM|WP)[_-]?\d{3,}[\w-]*",
    r"P\d{7}",                                            # Panasonic/Olympus P1010001
)

# Stock-site boilerplate, matched anywhere in the text, in this order.
BOILERPLATE_PATTERNS: tuple[str, ...] = (
    # marketplace tails: "Cute cat | Premium Vector", "Beach - Free Photo"
    r"[|\-–—]\s*(?:premium|free)\s+(?:vectors?|photos?|psd|icons?|images?|illustrations?)\s*$",
    # "a royalty-free stock photo of", "image of", "pictures of"
    r"\b(?:(?:a|an|the)\s+)?(?:royalty[\s-]*free\s+)?(?:stock\s+)?"
    r"(?:images?|photos?|pictures?|photographs?)\s+of\b",
    r"\b(?:royalty[\s-]*free\s+)?stock\s+(?:photos?|photographs?|photography|images?|pictures?"
    r"|illustrations?|vectors?|footage|videos?)\b",
    r"\broyalty[\s-]*free\b",
    r"\bfree\s+download\b",
    r"(?:©\s*)?\b(?:shutterstock|alamy|getty\s*images|istock(?:photo)?|dreamstime|depositphotos|123rf"
    r"|adobe\s+stock)(?:\.com)?\b",
)

_TAGS = re.compile(HTML_TAG_PATTERN)
_TOKEN_REMOVALS = re.compile("|".join(f"(?:{p})" for p in (*URL_PATTERNS, *FILE_NAME_PATTERNS)), re.IGNORECASE)
_TOKEN_EDGES = "()[]{}<>\"'“”‘’.,;:!?"
_BOILERPLATE = tuple(re.compile(pattern, re.IGNORECASE) for pattern in BOILERPLATE_PATTERNS)
_SEPARATORS = "|-–—:;,/·•"
# What removals leave behind: " - - " runs, "()" and "[]", a space before punctuation.
_SEPARATOR_RUN = re.compile(rf"(\s[{re.escape(_SEPARATORS)}])(?:\s+[{re.escape(_SEPARATORS)}])+(?=\s|$)")
_EMPTY_BRACKETS = re.compile(r"\(\s*\)|\[\s*\]|\{\s*\}")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([.,;:!?])")
_STRIP = " " + _SEPARATORS
_MAX_UNESCAPE_ROUNDS = 3


class TextRejected(ValueError):
    """Text that cannot be used; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _decode(raw: str | bytes) -> str:
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8", errors="strict")
        except UnicodeDecodeError as error:
            raise TextRejected("text_invalid_utf8", f"byte {error.start}: {error.reason}") from error
    try:
        raw.encode("utf-8")  # lone surrogates (from surrogateescape decoding) cannot be written
    except UnicodeEncodeError as error:
        raise TextRejected("text_invalid_utf8", f"char {error.start}: {error.reason}") from error
    return raw


def _unescape(text: str) -> str:
    """Unescape until stable: "&amp;lt;b&amp;gt;" is common in scraped alt-texts."""
    for _ in range(_MAX_UNESCAPE_ROUNDS):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    return text


def _visible(text: str) -> str:
    """Whitespace of every kind becomes a space; other control, format (zero-width, BOM,
    bidi marks) and private-use characters go."""
    return "".join(" " if ch.isspace() else ch for ch in text
                   if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf", "Co"))


def _without_urls_and_file_names(text: str) -> str:
    """Drop each token whose core is a URL or a file name, keeping its surrounding
    punctuation: "Cat (IMG_1234.jpg)." -> "Cat ()." (tidied later to "Cat.")."""
    tokens = []
    for token in text.split():
        core = token.strip(_TOKEN_EDGES)
        if core and _TOKEN_REMOVALS.fullmatch(core):
            left = token.index(core)
            token = token[:left] + token[left + len(core):]
        tokens.append(token)
    return " ".join(tokens)


def _tidy(text: str) -> str:
    text = " ".join(text.split())
    text = _EMPTY_BRACKETS.sub(" ", text)
    text = " ".join(text.split())
    text = _SEPARATOR_RUN.sub(r"\1", text)
    text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)
    return text.strip(_STRIP)


def _cut(text: str, max_chars: int) -> str:
    """At most ``max_chars``, ending at a word boundary unless one word fills the limit."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    if not text[max_chars].isspace():
        space = cut.rfind(" ")
        if space > 0:
            cut = cut[:space]
    return cut.strip(_STRIP)


def normalize_alt_text(raw: Optional[str | bytes], config: TextConfig = TextConfig()) -> str:
    """The usable text of a raw alt-text, or TextRejected.

    Order matters: decode, unescape and strip tags first so later patterns see characters,
    NFKC so fullwidth "ｓｔｏｃｋ ｐｈｏｔｏ" matches, drop URL and file-name tokens before
    the boilerplate phrases (so "shutterstock.com/..." goes whole), then tidy the seams
    the removals left and cut at a word boundary.
    """
    if raw is None:
        raise TextRejected("text_missing", "no text in the input row")
    text = _decode(raw)
    if len(text) > config.max_raw_chars:
        raise TextRejected("text_too_long", f"{len(text)} chars > limit {config.max_raw_chars}")
    text = _TAGS.sub(" ", _unescape(text))
    text = _visible(unicodedata.normalize("NFKC", text))
    text = _without_urls_and_file_names(text)
    for pattern in _BOILERPLATE:
        text = pattern.sub(" ", text)
    text = _cut(_tidy(text), config.max_chars)
    if len(text) < max(config.min_chars, 1):
        raise TextRejected("text_empty", f"{len(text)} chars left after normalization "
                                         f"(minimum {config.min_chars}): {text!r}")
    return text
