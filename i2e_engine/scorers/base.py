"""One protocol for every image-entity scorer, plus what all of them share.

The engine only ever needs three things from a scoring model: image embeddings, text
embeddings and their cosine. Keeping that surface this small lets the Beam ModelHandler,
the linker and the evaluation treat the offline bridge, open_clip and the project's own
trained encoder alike. The base class owns the invariants (float32, L2-normalized rows,
chunking by batch size, the text cache) so that an implementation only writes the two
forward passes and cannot get them subtly wrong.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from i2e_engine.config import ScorerConfig

ENTITY_TEXT_MODES = ("name", "name_description")
DEFAULT_TEXT_CACHE_SIZE = 65_536  # entity texts; ~100 MB at 384 dims, ~200 MB at 768


class ScorerWeightsMissing(RuntimeError):
    """The scorer's weights are not on this machine and will not be downloaded.

    Raised instead of letting a library retry the network: these machines have no hub
    access, and a worker that hangs on retries is worse than one that fails loudly.
    """


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else is kept as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def entity_text(name: str, description: str | None, mode: str = "name_description") -> str:
    """The text an entity is scored against, e.g. "Eiffel Tower, tower in Paris, France".

    The description disambiguates homonyms ("Paris" the city vs the Trojan prince), so
    "name_description" is the default; "name" exists for KBs without descriptions and for
    comparing the two. The description's first letter is lowered unless it starts an
    acronym, so the text reads as one phrase.
    """
    if mode not in ENTITY_TEXT_MODES:
        raise ValueError(f"entity text mode must be one of {ENTITY_TEXT_MODES}, got {mode!r}")
    name = name.strip()
    description = (description or "").strip()
    if mode == "name" or not description:
        return name
    if not description[1:2].isupper():
        description = description[0].lower() + description[1:]
    return f"{name}, {description}"


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32 (an all-zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


def score_pairs(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Row-wise cosine of already-normalized embeddings: (N, D) x (N, D) -> (N,) float32.

    Numpy broadcasting applies, so one image (1, D) can be scored against N texts.
    """
    image_emb = np.asarray(image_emb, dtype=np.float32)
    text_emb = np.asarray(text_emb, dtype=np.float32)
    if image_emb.shape[-1] != text_emb.shape[-1]:
        raise ValueError(f"embedding widths differ: {image_emb.shape} vs {text_emb.shape}")
    return np.einsum("...d,...d->...", image_emb, text_emb).astype(np.float32, copy=False)


class TextEmbeddingCache:
    """Bounded LRU from text to its embedding row.

    Entity texts repeat across images far more than images repeat (a popular entity is
    scored against thousands of photos), so caching them removes most text-tower work.
    Thread-safe because Beam may share one model between the threads of a worker.
    """

    def __init__(self, max_entries: int = DEFAULT_TEXT_CACHE_SIZE):
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached rows among ``texts`` (counting one hit or miss per text)."""
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for text in texts:
                row = self._rows.get(text)
                if row is None:
                    self.misses += 1
                else:
                    self._rows.move_to_end(text)
                    found[text] = row
                    self.hits += 1
        return found

    def store(self, texts: Sequence[str], rows: np.ndarray) -> None:
        """Insert rows, evicting the least recently used beyond ``max_entries``."""
        if self.max_entries == 0:
            return
        with self._lock:
            for text, row in zip(texts, rows):
                row = np.array(row, dtype=np.float32)  # own copy: callers may mutate theirs
                row.flags.writeable = False
                self._rows[text] = row
                self._rows.move_to_end(text)
            while len(self._rows) > self.max_entries:
                self._rows.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self.hits = self.misses = 0


class Scorer(ABC):
    """Embeds images and entity texts into one space where cosine means "depicts".

    Subclasses set ``name`` (weights identity and version, stored with every score for
    provenance), ``device`` and ``dim``, and implement one forward pass per chunk in
    ``_encode_images`` / ``_encode_texts``. Callers use ``embed_images`` / ``embed_texts``,
    which chunk by ``batch_size``, normalize, and cache texts.
    """

    name: str
    device: str
    dim: int
    # The image-entity score under which an entity is taken not to be in the image: the
    # linker's image-aware choice makes a mention NIL when every candidate scores under
    # it (LinkConfig.image_nil_score overrides it). Scores are not calibrated alike across
    # scorers, so each measures its own; None never drops a mention for the image.
    nil_score: Optional[float] = None

    def __init__(self, batch_size: int = 32, text_cache_size: int = DEFAULT_TEXT_CACHE_SIZE):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = batch_size
        self.text_cache = TextEmbeddingCache(text_cache_size)

    @abstractmethod
    def _encode_images(self, images: list[Image.Image]) -> np.ndarray:
        """One forward pass over at most ``batch_size`` images -> (n, dim)."""

    @abstractmethod
    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        """One forward pass over at most ``batch_size`` texts -> (n, dim)."""

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(len(images), dim) float32, L2-normalized rows."""
        images = list(images)
        chunks = [self._encode_images(images[i:i + self.batch_size])
                  for i in range(0, len(images), self.batch_size)]
        return self._finish(chunks)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalized; repeated texts are encoded once."""
        texts = list(texts)
        rows = self.text_cache.lookup(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in rows))
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i:i + self.batch_size]
            encoded = l2_normalize(self._encode_texts(chunk))
            self.text_cache.store(chunk, encoded)
            rows.update(zip(chunk, encoded))
        return self._finish([np.stack([rows[t] for t in texts])] if texts else [])

    score_pairs = staticmethod(score_pairs)

    def _finish(self, chunks: list[np.ndarray]) -> np.ndarray:
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(np.concatenate(chunks, axis=0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r})"


_hub_lock = threading.RLock()


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Make Hugging Face Hub code answer from the local cache only, for this block.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so setting the variable is not
    enough once it is imported; its constant is flipped too, and both are restored.
    Offline, a missing file fails at once instead of after connection retries.
    """
    import huggingface_hub.constants as hub_constants

    with _hub_lock:
        previous_env = os.environ.get("HF_HUB_OFFLINE")
        previous_flag = hub_constants.HF_HUB_OFFLINE
        os.environ["HF_HUB_OFFLINE"] = "1"
        hub_constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            hub_constants.HF_HUB_OFFLINE = previous_flag
            if previous_env is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = previous_env


ScorerFactory = Callable[..., Scorer]
_FACTORIES: dict[str, ScorerFactory] = {}
# Built-ins are imported on first use so that importing the engine does not pull in
# torch, timm, open_clip, sentence-transformers and the trainer's towers.
_BUILTIN_MODULES = {
    "offline": "i2e_engine.scorers.offline",
    "open_clip": "i2e_engine.scorers.openclip",
    "mofi": "i2e_engine.scorers.mofi",
}


def register_scorer(name: str) -> Callable[[ScorerFactory], ScorerFactory]:
    """Decorator: make ``factory(config: ScorerConfig, **kwargs) -> Scorer`` creatable by name."""

    def decorate(factory: ScorerFactory) -> ScorerFactory:
        _FACTORIES[name] = factory
        return factory

    return decorate


def list_scorers() -> list[str]:
    return sorted(set(_FACTORIES) | set(_BUILTIN_MODULES))


def create_scorer(config: ScorerConfig, **kwargs) -> Scorer:
    """Build the scorer named by ``config.name``; ``kwargs`` go to its factory unchanged."""
    if config.name not in _FACTORIES and config.name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[config.name])
    factory = _FACTORIES.get(config.name)
    if factory is None:
        raise ValueError(f"unknown scorer {config.name!r}; known: {list_scorers()}")
    return factory(config, **kwargs)
