"""The annotation stages as objects with a model lifecycle: check, NER, link, score.

Each stage is small: ``setup()`` loads what it needs once per process (spaCy, the alias
index, the scorer), ``process(batch)`` turns a batch into a :class:`StageResult` (kept items
and reject rows). Runners never call a model themselves; they place :func:`annotate_batch`
(or :func:`i2e_engine.shard.annotate_shard`) on workers, so Beam, Spark and a bare loop give
the same rows. This follows Beam's ModelHandler and NeMo Curator's stages: setup once,
process batches, one definition for every executor.

A stage's ``process`` may raise on a bad batch (a model error, out of memory). The caller
:func:`run_stage` then retries the batch's items one by one, so one bad row becomes a reject
row (``<stage>_error``) instead of failing its neighbours or the shard.
"""
from __future__ import annotations

import gc
import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Generic, Iterable, Optional, Sequence, TypeVar

import schemas
from i2e_engine.config import BuildConfig, LinkConfig, NerConfig, ScorerConfig
from i2e_engine.dedup.hashes import hash_image_bytes
from i2e_engine.dedup.plan import HashRow, RowDedup, ShardDedup
from i2e_engine.images import ImageLimits, ImageRejected, decode_rgb
from i2e_engine.metrics import StageClock
from i2e_engine.records import Link, Mention, Pair, make_reject
from i2e_engine.text import TextRejected, normalize_alt_text

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class StageResult(Generic[Out]):
    """What a stage made of a batch: items for the next stage, and reject rows."""
    kept: list[Out] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, outcomes: Iterable[tuple[Optional[Out], Optional[dict]]]) -> "StageResult[Out]":
        """From per-item (item, None) or (None, reject) outcomes."""
        result = cls()
        for item, reject in outcomes:
            if reject is not None:
                result.rejects.append(reject)
            else:
                result.kept.append(item)
        return result

    def extend(self, other: "StageResult[Out]") -> None:
        self.kept.extend(other.kept)
        self.rejects.extend(other.rejects)


@dataclass
class Mentioned:
    """A checked record (an annotation row without ``links``) and the mentions found in its alt-text."""
    record: dict
    mentions: list[Mention]


@dataclass
class Linked:
    """A record with its linked mentions and, per mention, the text each remaining
    candidate (the text's choice, then its runner-ups) is scored against."""
    record: dict
    links: list[Link]
    candidate_texts: list[dict[str, str]]     # per link: entity_id -> entity text


class Stage(ABC, Generic[In, Out]):
    """One annotation stage. ``name`` is also the ``stage`` of the reject rows it makes."""

    name: str

    def setup(self) -> None:
        """Load models; called once per process before the first ``process``."""

    @abstractmethod
    def process(self, batch: Sequence[In]) -> StageResult[Out]:
        """Annotate a batch; may raise, see :func:`run_stage`."""

    @staticmethod
    def record_of(item: In) -> dict:
        """The record a reject row of ``item`` is made from."""
        return item.record if isinstance(item, (Mentioned, Linked)) else item


def _error_detail(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def run_stage(stage: Stage[In, Out], batch: Sequence[In]) -> StageResult[Out]:
    """``stage.process(batch)``; when the batch fails, each item alone, and an item that
    fails alone becomes a ``<stage>_error`` reject (retryable with ``--retry-failed``)."""
    try:
        return stage.process(batch)
    except Exception as error:  # a model can fail in any way; the rows must not be lost
        if len(batch) == 1:
            log.warning("%s failed on one row: %s", stage.name, _error_detail(error))
            return StageResult(rejects=[make_reject(stage.record_of(batch[0]), stage.name,
                                                    f"{stage.name}_error", _error_detail(error))])
        log.warning("%s failed on a batch of %d (%s); retrying row by row", stage.name, len(batch),
                    _error_detail(error))
    result: StageResult[Out] = StageResult()
    for item in batch:
        result.extend(run_stage(stage, [item]))
    return result


ANNOTATION_KEYS = ("sample_id", "source", "source_shard", "row_in_shard", "url")


def ner_text(record: dict) -> str:
    """What NER and linking read: the alt-text, then the alt-texts of the copies dedup
    dropped in favour of this image, one per line (mention offsets are into this text)."""
    return "\n".join([record["alt_text"], *record["alt_texts_of_copies"]])


def hash_row(record: dict) -> HashRow:
    """The narrow row of a checked record that the dedup plan reads (the ``hashes`` table)."""
    return {key: record[key] for key in schemas.column_names("hashes") if key != "pixels"} | {
        "pixels": record["width"] * record["height"]}


def dedup_reject(pair: Pair, decision: RowDedup) -> dict:
    """The reject row of a pair dedup dropped before the models."""
    survivor = (decision.survivor_shard, decision.survivor_row) if decision.survivor_shard else None
    return make_reject(pair, "dedup", decision.reason, decision.detail, kind="filtered",
                       cluster_id=decision.cluster_id, survivor=survivor)


class CheckStage(Stage[Pair, dict]):
    """Read errors, image checks (size limits before decode, truncation), perceptual hashes
    and alt-text normalization. No model; a bad row is a reject, never an exception."""

    name = "check"

    def __init__(self, config: BuildConfig):
        self.config = config

    def check(self, pair: Pair) -> tuple[Optional[dict], Optional[dict]]:
        if pair.get("read_error"):
            return None, make_reject(pair, "read", pair["read_error"].split(":")[0], pair["read_error"])
        try:
            info, hashes = hash_image_bytes(pair["image"], self.config.image)
        except ImageRejected as error:
            return None, make_reject(pair, "image", error.reason, error.detail)
        try:
            text = normalize_alt_text(pair["text"], self.config.text)
        except TextRejected as error:
            return None, make_reject(pair, "text", error.reason, error.detail)
        raw = pair["text"].decode("utf-8") if isinstance(pair["text"], bytes) else pair["text"]
        record = {key: pair[key] for key in ANNOTATION_KEYS}
        record.update(sha256=info.sha256, phash=hashes.phash, phash_center=hashes.phash_center,
                      width=info.width, height=info.height, image_format=info.image_format,
                      image=pair["image"], alt_text_raw=raw[:self.config.text.max_raw_chars], alt_text=text,
                      alt_texts_of_copies=[])
        return record, None

    def process(self, batch: Sequence[Pair]) -> StageResult[dict]:
        return StageResult.of(self.check(pair) for pair in batch)


class NerStage(Stage[dict, Mentioned]):
    """spaCy NER plus the KB alias phrase matcher, batched over alt-texts."""

    name = "ner"

    def __init__(self, config: NerConfig, kb_path: str):
        self.config, self.kb_path = config, kb_path
        self.extractor = None

    def setup(self) -> None:
        from i2e_engine.kb.build import shared_alias_index
        from i2e_engine.ner import build_extractor

        self.extractor = build_extractor(self.config, shared_alias_index(self.kb_path))

    def process(self, batch: Sequence[dict]) -> StageResult[Mentioned]:
        found = self.extractor.extract([ner_text(record) for record in batch], self.config.batch_size)
        return StageResult(kept=[Mentioned(record, mentions) for record, mentions in zip(batch, found)])


def freeze_setup_objects() -> None:
    """Move what is alive once a worker's models are loaded (spaCy's vocabulary and
    pipeline, the link model, tokenizers: hundreds of thousands of objects that live as
    long as the process) out of the cyclic garbage collector's scans. Otherwise every full
    collection walks them all again while batches are processed: freezing them raised the
    linker's rate by a fifth (BENCHMARKS.md). Garbage is collected first, so nothing dead
    is kept."""
    gc.collect()
    gc.freeze()


class LinkStage(Stage[Mentioned, Linked]):
    """Mentions -> KB entities; a record with nothing linked is filtered here."""

    name = "link"

    def __init__(self, config: LinkConfig, kb_path: str, entity_text_mode: str):
        self.config, self.kb_path, self.entity_text_mode = config, kb_path, entity_text_mode
        self.linker = None

    def setup(self) -> None:
        from i2e_engine.kb.build import shared_alias_index
        from i2e_engine.linking import Linker

        self.linker = Linker(shared_alias_index(self.kb_path), self.config)

    def link(self, item: Mentioned, links: list[Link]) -> tuple[Optional[Linked], Optional[dict]]:
        """One record's result, given its links."""
        from i2e_engine.scorers.base import entity_text

        record, mentions = item.record, item.mentions
        if not mentions:
            return None, make_reject(record, "ner", "no_mentions", "no entity mention found in the alt-text",
                                     kind="filtered")
        if not links:
            found = ", ".join(sorted({m["text"] for m in mentions}))[:300]
            return None, make_reject(record, "link", "no_entity_linked",
                                     f"no mention linked above the NIL threshold: {found}", kind="filtered")
        index = self.linker.alias_index

        def text_of(entity_id: str) -> str:
            row = index.row_of(entity_id)
            return entity_text(index.field(row, "name"), index.field(row, "description"), self.entity_text_mode)

        texts = [{e: text_of(e) for e in [link["entity_id"], *(c["entity_id"] for c in link["runner_ups"])]}
                 for link in links]
        return Linked(record, links, texts), None

    def process(self, batch: Sequence[Mentioned]) -> StageResult[Linked]:
        # The batch's names are scored together (Linker.link_many).
        links = self.linker.link_many([ner_text(item.record) for item in batch], [list(item.mentions) for item in batch])
        return StageResult.of(self.link(item, found) for item, found in zip(batch, links))


class ScoreStage(Stage[Linked, dict]):
    """Image-entity scores of every remaining candidate of every mention (one image
    forward and one text forward per batch), then the image-aware choice
    (:func:`i2e_engine.linking.choose_with_image`). Emits annotation rows (the
    ``annotations`` table's columns); a row whose every mention the image rejects is
    filtered (``image_nil``)."""

    name = "score"

    def __init__(self, config: ScorerConfig, link: LinkConfig, limits: ImageLimits):
        self.config, self.link_config, self.limits = config, link, limits
        self.scorer = None

    def setup(self) -> None:
        from i2e_engine.scorers.base import create_scorer

        self.scorer = create_scorer(self.config)

    @property
    def nil_score(self) -> Optional[float]:
        configured = self.link_config.image_nil_score
        return configured if configured is not None else self.scorer.nil_score

    def _choose(self, item: Linked, scores: dict[str, float]) -> tuple[Optional[dict], Optional[dict]]:
        from i2e_engine.linking import best_link_per_entity, choose_with_image

        chosen = [choose_with_image(link, {e: scores[t] for e, t in texts.items()}, self.link_config.image_weight,
                                    self.nil_score, self.link_config.text_certain_score)
                  for link, texts in zip(item.links, item.candidate_texts)]
        links = best_link_per_entity(chosen)
        if not links:
            found = ", ".join(sorted({link["mention"] for link in item.links}))[:300]
            return None, make_reject(item.record, "score", "image_nil",
                                     f"the image disagrees with every candidate (image-entity score < "
                                     f"{self.nil_score}): {found}", kind="filtered")
        for link in links:
            link["runner_ups"] = [{key: c[key] for key in _RUNNER_UP_COLUMNS} for c in link["runner_ups"]]
        return {**item.record, "links": links}, None

    def process(self, batch: Sequence[Linked]) -> StageResult[dict]:
        """Decoded pixels are held for one scorer batch at a time, not the whole batch: a
        64-megapixel image decodes to 192 MB."""
        result: StageResult[dict] = StageResult()
        texts = sorted({text for item in batch for by_entity in item.candidate_texts for text in by_entity.values()})
        row_of_text = {text: i for i, text in enumerate(texts)}
        text_emb = self.scorer.embed_texts(texts)
        step = self.scorer.batch_size
        for start in range(0, len(batch), step):
            good: list[tuple[Linked, object]] = []
            for item in batch[start:start + step]:
                try:
                    good.append((item, decode_rgb(item.record["image"], self.limits)))
                except ImageRejected as error:
                    result.rejects.append(make_reject(item.record, "score", error.reason, error.detail))
            if not good:
                continue
            image_emb = self.scorer.embed_images([image for _, image in good])
            for (item, _), emb in zip(good, image_emb):
                wanted = sorted({text for by_entity in item.candidate_texts for text in by_entity.values()})
                sims = text_emb[[row_of_text[t] for t in wanted]] @ emb
                row, reject = self._choose(item, dict(zip(wanted, sims.tolist())))
                if reject is not None:
                    result.rejects.append(reject)
                else:
                    result.kept.append({**row, "image_embedding": emb.tolist()})
        return result


_RUNNER_UP_COLUMNS = ("entity_id", "link_score", "image_entity_score")


class Annotator:
    """The four stages in order, set up together: pairs in, annotation rows and rejects out.

    One Annotator per process is enough (runners share it between threads and tasks); it
    holds no per-batch state.
    """

    def __init__(self, config: BuildConfig, kb_path: str):
        self.config, self.kb_path = config, kb_path
        self.check = CheckStage(config)
        self.ner = NerStage(config.ner, kb_path)
        self.link = LinkStage(config.link, kb_path, config.scorer.entity_text)
        self.score = ScoreStage(config.scorer, config.link, config.image)
        self.stages: tuple[Stage, ...] = (self.check, self.ner, self.link, self.score)
        self._ready = False
        self._lock = threading.Lock()

    def setup(self) -> "Annotator":
        """Load every stage's models, once (later calls, from any thread, do nothing)."""
        with self._lock:
            if not self._ready:
                for stage in self.stages:
                    stage.setup()
                freeze_setup_objects()
                self._ready = True
        return self

    def process(self, pairs: Sequence[Pair], dedup: ShardDedup = ShardDedup(),
                clock: Optional[StageClock] = None) -> StageResult[dict]:
        """Annotate one batch of pairs; every pair ends in ``kept`` or ``rejects``. Pairs
        ``dedup`` dropped become reject rows before any model runs; a survivor reads its
        copies' alt-texts with its own. ``clock`` records each stage's rows and seconds."""
        clock = clock or StageClock()
        rejects: list[dict] = []
        items: list = []
        for pair in pairs:
            decision = dedup.get(pair["row_in_shard"])
            if decision is not None and decision.dropped:
                rejects.append(dedup_reject(pair, decision))
            else:
                items.append(pair)
        for stage in self.stages:
            if not items:
                break
            with clock.time(stage.name, len(items)):
                result = run_stage(stage, items)
            rejects.extend(result.rejects)
            items = result.kept
            if stage is self.check:
                for record in items:
                    decision = dedup.get(record["row_in_shard"])
                    record["alt_texts_of_copies"] = list(decision.copy_texts) if decision else []
        return StageResult(kept=list(items), rejects=rejects)
