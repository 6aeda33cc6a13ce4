"""Beam RunInference ModelHandlers for the two model stages.

RunInference gives each stage adaptive batching (BatchElements), one model per worker
process shared by its threads, inference metrics, and a dead-letter output; the handlers
only say how to load a model and what to do with one batch, by calling ``i2e_engine``.
Elements are whole records (dicts), so no key/value re-joining is needed.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from apache_beam.ml.inference.base import ModelHandler

from i2e_engine.config import NerConfig, ScorerConfig
from i2e_engine.images import ImageLimits


class SpacyNerHandler(ModelHandler[dict, tuple, Any]):
    """Batched spaCy NER + KB alias matcher over records' ``alt_text``.

    Emits ``(record, mentions)`` per record.
    """

    def __init__(self, config: NerConfig, kb_path: str):
        super().__init__()
        self._config = config
        self._kb_path = kb_path

    def load_model(self):
        from i2e_engine.kb.build import load_alias_index
        from i2e_engine.ner import build_extractor

        phrases = load_alias_index(self._kb_path).phrases() if self._config.alias_matcher else ()
        return build_extractor(self._config, phrases)

    def run_inference(self, batch: Sequence[dict], model, inference_args: Optional[dict] = None
                      ) -> Iterable[tuple]:
        mentions = model.extract([record["alt_text"] for record in batch], self._config.batch_size)
        return list(zip(batch, mentions))

    def batch_elements_kwargs(self) -> dict:
        # Pinned: each nlp.pipe call has a fixed cost that BatchElements' adaptive sizing
        # does not see, so it settles on 5-8 texts a batch and loses ~10% (BENCHMARKS.md).
        # A bundle's last batch is still sent partial, so nothing waits for a full batch.
        return {"min_batch_size": self._config.batch_size, "max_batch_size": self._config.batch_size}

    def get_metrics_namespace(self) -> str:
        return "i2e_ner"


class ScorerHandler(ModelHandler[dict, tuple, Any]):
    """Image-entity scoring of linked records; one image forward and one text forward
    per batch. Emits ``(annotation, None)`` or ``(None, reject)`` per record."""

    def __init__(self, config: ScorerConfig, limits: ImageLimits):
        super().__init__()
        self._config = config
        self._limits = limits

    def load_model(self):
        from i2e_engine.scorers.base import create_scorer

        return create_scorer(self._config)

    def run_inference(self, batch: Sequence[dict], model, inference_args: Optional[dict] = None
                      ) -> Iterable[tuple]:
        from i2e_engine.stages import score_batch

        return score_batch(batch, model, self._limits)

    def batch_elements_kwargs(self) -> dict:
        # Adaptive up to the configured size: on a CPU the CNN is faster per image in small
        # batches, which BatchElements finds by itself (BENCHMARKS.md).
        return {"min_batch_size": 1, "max_batch_size": self._config.batch_size}

    def get_metrics_namespace(self) -> str:
        return "i2e_scorer"
