"""Image-entity scorers behind one protocol; see base.py. Implementations load on demand."""
from i2e_engine.scorers.base import (Scorer, ScorerWeightsMissing, TextEmbeddingCache,
                                     create_scorer, entity_text, list_scorers, register_scorer,
                                     resolve_device, score_pairs)

__all__ = ["Scorer", "ScorerWeightsMissing", "TextEmbeddingCache", "create_scorer", "entity_text",
           "list_scorers", "register_scorer", "resolve_device", "score_pairs"]
