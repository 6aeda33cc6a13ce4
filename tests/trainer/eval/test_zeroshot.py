"""Zero-shot plumbing with a tiny deterministic fake encoder (no real text tower here)."""
from __future__ import annotations

import numpy as np
import pytest

from trainer.eval.zeroshot import DEFAULT_TEMPLATES, class_text_embeddings, clean_class_name, zeroshot_classify

VOCAB = ("car side", "stop sign", "dalmatian", "Motorbikes", "accordion", "pizza")


class WordEncoder:
    """Text -> one-hot of the vocabulary phrase it contains, plus a template-specific
    perturbation that only averaging over templates cancels out."""

    name = "fake:words"
    has_text_tower = True

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode_images(self, images):  # pragma: no cover - zero-shot only needs texts here
        raise NotImplementedError

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.seen.extend(texts)
        out = np.zeros((len(texts), len(VOCAB) + len(DEFAULT_TEMPLATES)), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, [i for i, phrase in enumerate(VOCAB) if phrase in text]] = 1.0
            template = next(i for i, t in enumerate(DEFAULT_TEMPLATES) if any(t.format(p) == text for p in VOCAB))
            out[row, len(VOCAB) + template] = 3.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_clean_class_name() -> None:
    assert clean_class_name("car_side") == "car side"
    assert clean_class_name("  stop__sign ") == "stop sign"
    assert clean_class_name("Motorbikes") == "Motorbikes"


def test_prompts_are_cleaned_names_in_every_template() -> None:
    encoder = WordEncoder()
    embeddings = class_text_embeddings(encoder, ["car side"])
    assert encoder.seen == [t.format("car side") for t in DEFAULT_TEMPLATES]
    assert embeddings.shape == (1, len(VOCAB) + len(DEFAULT_TEMPLATES))
    assert np.isclose(np.linalg.norm(embeddings), 1.0)


def test_zero_shot_accuracy_follows_the_images() -> None:
    labels = np.array(["car_side", "stop_sign", "dalmatian", "Motorbikes", "accordion", "pizza"] * 3)
    class_index = {name: VOCAB.index(clean_class_name(name)) for name in set(labels)}
    images = np.zeros((len(labels), len(VOCAB) + len(DEFAULT_TEMPLATES)))
    images[np.arange(len(labels)), [class_index[name] for name in labels]] = 1.0
    images[:, len(VOCAB):] = 0.3  # the same for every image: the template offsets must not decide
    right = zeroshot_classify(WordEncoder(), images, labels)
    assert right.top1 == 100.0 and right.top5 == 100.0
    assert right.predictions.tolist() == labels.tolist()
    shuffled = zeroshot_classify(WordEncoder(), images, np.roll(labels, 1))
    assert shuffled.top1 == 0.0
    assert shuffled.n_classes == 6 and shuffled.prompts_per_class == len(DEFAULT_TEMPLATES)


def test_display_names_override_cleaning() -> None:
    encoder = WordEncoder()
    images = np.zeros((1, len(VOCAB) + len(DEFAULT_TEMPLATES)))
    images[0, VOCAB.index("pizza")] = 1.0
    result = zeroshot_classify(encoder, images, ["cls_7"], class_names=["cls_7", "cls_8"],
                               display_names={"cls_7": "pizza", "cls_8": "accordion"})
    assert result.top1 == 100.0 and result.top5 is None
    assert "a photo of a pizza." in encoder.seen


def test_encoder_without_text_tower_is_refused() -> None:
    class ImageOnly(WordEncoder):
        has_text_tower = False

    with pytest.raises(ValueError, match="no text tower"):
        zeroshot_classify(ImageOnly(), np.eye(2), ["a", "b"])
