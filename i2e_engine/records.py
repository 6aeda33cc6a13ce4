"""The records that flow between stages, and the one way to make a reject row.

A *pair* is what a reader yields; an *annotation* is a row of the ``annotations`` work
table (see ``schemas/v1/annotations.json``); a *reject* is a row of the ``rejects``
table minus ``run_id``, which the writer stamps.
"""
from __future__ import annotations

import hashlib
from typing import Optional, TypedDict


class Pair(TypedDict):
    """One image/alt-text pair as read. Readers never raise on bad rows: they fill what
    they could and say what went wrong in ``read_error``."""
    sample_id: str
    source: str
    source_shard: str
    row_in_shard: int
    url: Optional[str]
    image: Optional[bytes]
    text: Optional[str | bytes]     # bytes when the source gave bytes (may be invalid UTF-8)
    read_error: Optional[str]       # e.g. "missing_column:caption", "unreadable_shard: ..."


class Mention(TypedDict):
    text: str
    label: str      # spaCy NER label, or "ALIAS" for KB phrase-matcher hits
    start: int      # character offsets into the normalized alt-text
    end: int
    source: str     # "ner" or "alias"


class Candidate(TypedDict):
    """Another entity a mention could name; the annotations table keeps entity_id,
    link_score and image_entity_score (None until the scoring stage fills it)."""
    entity_id: str
    link_score: float
    link_prior: float
    link_context: float
    image_entity_score: Optional[float]


class Link(TypedDict):
    """A mention linked to one KB entity; keys match the annotations table's link struct."""
    mention: str
    mention_label: str
    mention_source: str
    mention_start: int
    mention_end: int
    entity_id: str
    link_score: float
    link_prior: float
    link_context: float
    runner_ups: list[Candidate]


def _as_bytes(value: Optional[str | bytes]) -> bytes:
    if value is None:
        return b""
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


def make_sample_id(image: Optional[bytes], text: Optional[str | bytes]) -> str:
    """Stable id of a pair: sha256 of the image bytes, a NUL, and the raw text bytes."""
    return hashlib.sha256(_as_bytes(image) + b"\x00" + _as_bytes(text)).hexdigest()


def make_reject(record: dict, stage: str, reason: str, detail: str = "", kind: str = "rejected",
                entity_id: Optional[str] = None, cluster_id: Optional[str] = None,
                survivor: Optional[tuple[str, int]] = None) -> dict:
    """A ``rejects`` row for ``record`` (a pair or an annotation) without ``run_id``;
    a dedup drop names its cluster and the ``survivor`` (source_shard, row_in_shard) kept
    in its place."""
    assert kind in ("rejected", "filtered"), kind
    return {
        "sample_id": record["sample_id"],
        "source_shard": record["source_shard"],
        "row_in_shard": record.get("row_in_shard"),
        "stage": stage,
        "kind": kind,
        "reason": reason,
        "entity_id": entity_id,
        "cluster_id": cluster_id,
        "survivor_shard": survivor[0] if survivor else None,
        "survivor_row": survivor[1] if survivor else None,
        "detail": detail[:1000],
    }
