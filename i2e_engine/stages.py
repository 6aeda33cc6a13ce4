"""Record-level stage functions: what each pipeline stage does to one record or one batch.

Engine wrappers (``pipelines/beam``, later Spark) call exactly these, so every engine
produces the same rows. Each function returns the new record or a reject row, never
raises on bad input.
"""
from __future__ import annotations

from typing import Optional, Sequence

from i2e_engine.config import BuildConfig
from i2e_engine.images import ImageLimits, ImageRejected, decode_rgb, inspect_image
from i2e_engine.records import Mention, Pair, make_reject
from i2e_engine.text import TextRejected, normalize_alt_text

# Transient keys a record carries between stages; they never reach a table.
ENTITY_TEXTS = "_entity_texts"

def check_pair(pair: Pair, config: BuildConfig) -> tuple[Optional[dict], Optional[dict]]:
    """Read errors, image checks and alt-text normalization: (record, None) or (None, reject)."""
    if pair.get("read_error"):
        return None, make_reject(pair, "read", pair["read_error"].split(":")[0], pair["read_error"])
    try:
        info = inspect_image(pair["image"], config.image)
    except ImageRejected as error:
        return None, make_reject(pair, "image", error.reason, error.detail)
    try:
        text = normalize_alt_text(pair["text"], config.text)
    except TextRejected as error:
        return None, make_reject(pair, "text", error.reason, error.detail)
    raw = pair["text"].decode("utf-8") if isinstance(pair["text"], bytes) else pair["text"]
    record = {key: pair[key] for key in ("sample_id", "source", "source_shard", "row_in_shard", "url")}
    record.update(sha256=info.sha256, width=info.width, height=info.height,
                  image_format=info.image_format, image=pair["image"],
                  alt_text_raw=raw[:config.text.max_raw_chars], alt_text=text)
    return record, None

def link_record(record: dict, mentions: Sequence[Mention], linker, entity_text_mode: str
                ) -> tuple[Optional[dict], Optional[dict]]:
    """Link a record's mentions; a record with no linked entity is filtered out here."""
    from i2e_engine.scorers.base import entity_text

    if not mentions:
        return None, make_reject(record, "ner", "no_mentions", "no entity mention found in the alt-text",
                                 kind="filtered")
    links = linker.link(record["alt_text"], list(mentions))
    if not links:
        found = ", ".join(sorted({m["text"] for m in mentions}))[:300]
        return None, make_reject(record, "link", "no_entity_linked",
                                 f"no mention linked above the NIL threshold: {found}", kind="filtered")
    entities = [linker.alias_index.entity(link["entity_id"]) for link in links]
    texts = [entity_text(e["name"], e["description"], entity_text_mode) for e in entities]
    return {**record, "links": links, ENTITY_TEXTS: texts}, None

def score_batch(records: Sequence[dict], scorer, limits: ImageLimits) -> list[tuple[Optional[dict], Optional[dict]]]:
    """Score every (image, linked entity) of a batch with one image forward and one text
    forward; returns (annotation, None) or (None, reject) per record, in order."""
    decoded: list[tuple[dict, object, Optional[dict]]] = []
    for record in records:
        try:
            decoded.append((record, decode_rgb(record["image"], limits), None))
        except ImageRejected as error:
            decoded.append((record, None, make_reject(record, "score", error.reason, error.detail)))
    good = [(record, image) for record, image, reject in decoded if reject is None]
    scored: dict[str, dict] = {}
    if good:
        texts = sorted({text for record, _ in good for text in record[ENTITY_TEXTS]})
        row_of_text = {text: i for i, text in enumerate(texts)}
        image_emb = scorer.embed_images([image for _, image in good])
        text_emb = scorer.embed_texts(texts)
        for (record, _), emb in zip(good, image_emb):
            sims = text_emb[[row_of_text[t] for t in record[ENTITY_TEXTS]]] @ emb
            annotation = {k: v for k, v in record.items() if k != ENTITY_TEXTS}
            annotation["links"] = [{**link, "image_entity_score": float(s)}
                                   for link, s in zip(record["links"], sims)]
            scored[record["sample_id"]] = annotation
    return [(None, reject) if reject else (scored[record["sample_id"]], None)
            for record, _, reject in decoded]
