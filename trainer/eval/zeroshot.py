"""Zero-shot classification: class names through the encoder's text tower, no training.

Each class is represented by the mean of its prompts' normalized text embeddings,
renormalized (CLIP's prompt ensembling: averaging templates smooths out any one phrasing's
quirks). An image is assigned the class with the highest cosine similarity; ties go to the
lower class index (sorted class names), so results are reproducible.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from trainer.eval.encoders import ImageEncoder
from trainer.eval.retrieval import l2_normalize
from trainer.eval.results import MetricResult

# A small subset of the CLIP paper's ImageNet prompt list, neutral about image style.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a good photo of a {}.",
)


def clean_class_name(name: str) -> str:
    """Folder-style class name -> words: ``car_side`` -> ``car side``; case is kept
    (entity names such as ``Motorbikes`` or proper nouns carry meaning in it)."""
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip()


@dataclass(frozen=True)
class ZeroShotResult(MetricResult):
    """Accuracies x100 to 2 decimals; ``top5`` is None with fewer than 5 classes."""

    top1: float
    top5: float | None
    n_classes: int
    n_images: int
    prompts_per_class: int
    predictions: np.ndarray = field(repr=False)



def class_text_embeddings(encoder: ImageEncoder, names: Sequence[str],
                          templates: Sequence[str] = DEFAULT_TEMPLATES, batch_size: int = 256) -> np.ndarray:
    """One normalized embedding per class name: the renormalized mean over its prompts."""
    if not encoder.has_text_tower:
        raise ValueError(f"{encoder.name} has no text tower: zero-shot needs one")
    prompts = [template.format(name) for name in names for template in templates]
    chunks = [encoder.encode_texts(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
    per_prompt = l2_normalize(np.concatenate(chunks)).reshape(len(names), len(templates), -1)
    return l2_normalize(per_prompt.mean(axis=1))


def zeroshot_classify(encoder: ImageEncoder, image_embeddings: np.ndarray,
                      labels: Sequence[str] | np.ndarray, class_names: Sequence[str] | None = None,
                      templates: Sequence[str] = DEFAULT_TEMPLATES,
                      display_names: Mapping[str, str] | None = None) -> ZeroShotResult:
    """Zero-shot top-1/top-5 of ``image_embeddings`` against prompts for each class.

    ``class_names`` defaults to the sorted distinct labels. The text for a class is
    ``display_names[label]`` when given, else :func:`clean_class_name` of the label.
    """
    label_array = np.asarray(labels)
    classes = list(class_names) if class_names is not None else sorted(set(label_array.tolist()))
    texts = [(display_names or {}).get(c) or clean_class_name(c) for c in classes]
    text_emb = class_text_embeddings(encoder, texts, templates)
    sims = l2_normalize(image_embeddings) @ text_emb.T
    order = np.argsort(-sims, axis=1, kind="stable")  # ties -> lower class index
    class_of = {c: i for i, c in enumerate(classes)}
    truth = np.array([class_of.get(label, -1) for label in label_array.tolist()])
    top1 = float(np.mean(order[:, 0] == truth))
    top5 = float(np.mean((order[:, :5] == truth[:, None]).any(axis=1))) if len(classes) >= 5 else None
    return ZeroShotResult(
        top1=round(top1 * 100.0, 2), top5=None if top5 is None else round(top5 * 100.0, 2),
        n_classes=len(classes), n_images=len(label_array), prompts_per_class=len(templates),
        predictions=np.asarray(classes)[order[:, 0]])
