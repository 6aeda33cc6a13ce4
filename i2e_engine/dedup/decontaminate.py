"""Benchmark decontamination: training rows that copy an evaluation image are dropped.

The evaluation images (``--decontaminate FOLDER_OR_URI ...``) are hashed once, on the
driver, under the same decode limits and with the same two perceptual hashes as the
training rows. :class:`EvalIndex` is small (an evaluation set is thousands of images, not
billions), so every worker holds it whole and checks each training row against it: same
sha256, or within the near-duplicate radius by :func:`near_distance`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from i2e_engine import storage
from i2e_engine.dedup.hashes import PerceptualHashes, hash_image_bytes, near_distance
from i2e_engine.dedup.index import HashIndex
from i2e_engine.images import ImageLimits, ImageRejected

READ_BATCH = 256
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class EvalImage:
    uri: str
    sha256: str
    hashes: PerceptualHashes


@dataclass(frozen=True)
class EvalMatch:
    uri: str
    distance: int


class EvalIndex:
    """Evaluation images by sha256 and by the buckets of their hashes."""

    def __init__(self, images: Sequence[EvalImage], index: HashIndex):
        self.images, self.index = list(images), index
        self._by_sha = {}
        for image in sorted(self.images, key=lambda i: i.uri):
            self._by_sha.setdefault(image.sha256, image)
        self._buckets: dict[tuple[int, int], list[EvalImage]] = {}
        for image in self.images:
            for value in (image.hashes.phash, image.hashes.phash_center):
                for bucket in index.bucket_keys(value):
                    self._buckets.setdefault(bucket, []).append(image)

    def __len__(self) -> int:
        return len(self.images)

    def match(self, sha256: str, hashes: PerceptualHashes) -> Optional[EvalMatch]:
        """The evaluation image a training row copies (the nearest, then the first URI), or None."""
        exact = self._by_sha.get(sha256)
        if exact is not None:
            return EvalMatch(exact.uri, 0)
        found: dict[str, int] = {}
        for value in (hashes.phash, hashes.phash_center):
            for bucket in self.index.bucket_keys(value):
                for image in self._buckets.get(bucket, ()):
                    distance = near_distance(hashes, image.hashes)
                    if distance <= self.index.radius:
                        found[image.uri] = distance
        if not found:
            return None
        uri = min(found, key=lambda u: (found[u], u))
        return EvalMatch(uri, found[uri])


def hash_eval_images(folders: Sequence[str], limits: ImageLimits, index: HashIndex,
                     progress: Callable[[str], None] = print) -> EvalIndex:
    """Hash every image under ``folders`` (local paths or URIs). Unreadable files are
    reported and skipped: they cannot leak into training as copies we could recognise."""
    images, skipped = [], []
    for folder in folders:
        uri = storage.normalize(folder)
        if not storage.isdir(uri):
            raise FileNotFoundError(f"--decontaminate {folder}: not a folder")
        paths = storage.find(uri, IMAGE_SUFFIXES)
        for start in range(0, len(paths), READ_BATCH):   # memory holds one batch of files
            for path, data in sorted(storage.read_many(paths[start:start + READ_BATCH]).items()):
                images.extend(_hash_one(path, data, limits, skipped))
    progress(f"decontamination: {len(images)} evaluation images hashed from {len(folders)} folder(s)"
             + (f"; {len(skipped)} unreadable, skipped (e.g. {skipped[0]})" if skipped else ""))
    return EvalIndex(images, index)


def _hash_one(path: str, data: bytes, limits: ImageLimits, skipped: list[str]) -> list[EvalImage]:
    try:
        info, hashes = hash_image_bytes(data, limits)
    except ImageRejected as error:
        skipped.append(f"{path} ({error.reason})")
        return []
    return [EvalImage(path, info.sha256, hashes)]
