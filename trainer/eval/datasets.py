"""Evaluation sets read as they ship: class folders, split/label files, GPR1200's flat
layout, and COCO captions JSON.

Nothing is copied or re-encoded: a set is a root folder plus relative paths (and labels),
so its identity for the embedding cache is cheap to compute and changes whenever a file
is added, removed, relabelled or rewritten.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from i2e_engine.images import decode_rgb

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageList:
    """Images under ``root`` by relative path; the unit the embedding cache keys on."""

    root: Path
    paths: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        """sha256 over the resolved root and each file's path, size and mtime.

        Size and mtime (not contents) keep this fast on thousands of files while still
        invalidating the cache when an image is replaced.
        """
        digest = hashlib.sha256(str(self.root.resolve()).encode())
        for rel in self.paths:
            stat = (self.root / rel).stat()
            digest.update(f"\n{rel}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
        return digest.hexdigest()

    def iter_images(self) -> Iterator[Image.Image]:
        """Decode each image to RGB through the engine's guarded decoder.

        An image the decoder rejects raises (with its path): silently dropping it would
        change the evaluation set behind the metric's back.
        """
        for rel in self.paths:
            path = self.root / rel
            try:
                yield decode_rgb(path.read_bytes())
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from error


@dataclass(frozen=True)
class LabelledImages:
    """A labelled image set: one class label (and optionally a domain) per image."""

    name: str
    images: ImageList
    labels: tuple[str, ...]
    domains: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.labels)} labels for {len(self.images)} images")
        if self.domains is not None and len(self.domains) != len(self.images):
            raise ValueError(f"{len(self.domains)} domains for {len(self.images)} images")
        if not self.images.paths:
            raise ValueError(f"{self.name}: no images")

    @property
    def class_names(self) -> list[str]:
        """Sorted distinct labels: the class order used by zero-shot and the linear probe."""
        return sorted(set(self.labels))

    def subset(self, indices: Sequence[int], name: str) -> LabelledImages:
        """The images at ``indices`` (used by tests and by callers that sample a set)."""
        return LabelledImages(
            name=name,
            images=ImageList(self.images.root, tuple(self.images.paths[i] for i in indices)),
            labels=tuple(self.labels[i] for i in indices),
            domains=None if self.domains is None else tuple(self.domains[i] for i in indices),
        )


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def load_folder(root: str | Path) -> LabelledImages:
    """Class = immediate subfolder of ``root``; images anywhere below it, sorted by path."""
    root = Path(root)
    paths: list[str] = []
    labels: list[str] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(p for p in class_dir.rglob("*") if _is_image(p)):
            paths.append(path.relative_to(root).as_posix())
            labels.append(class_dir.name)
    return LabelledImages(name=root.name, images=ImageList(root, tuple(paths)), labels=tuple(labels))


def _parse_label_line(line: str, image_root: Path) -> tuple[str, str]:
    # "<relpath>" (class = first path component, as Caltech-101's split files) or
    # "<relpath> <label>". A line that is itself an existing file is a bare path, so
    # paths with spaces still work in the first form.
    if (image_root / line).is_file() or len(line.split()) == 1:
        rel = line
        parts = Path(rel).parts
        if len(parts) < 2:
            raise ValueError(f"{line!r}: a bare path needs its class as the first folder")
        return rel, parts[0]
    rel, label = line.rsplit(maxsplit=1)
    return rel, label


def _find_image_root(label_file: Path, first_line: str, candidates: Sequence[Path]) -> Path:
    # The paths in a split file are relative to the image folder, which is not always the
    # file's own folder (Caltech-101: caltech101/train.txt vs caltech101/101_ObjectCategories/).
    first_paths = {first_line, first_line.rsplit(maxsplit=1)[0]}
    for base in candidates:
        for folder in [base, *sorted(p for p in base.iterdir() if p.is_dir())]:
            if any((folder / rel).is_file() for rel in first_paths):
                return folder
    raise FileNotFoundError(f"{label_file}: cannot find {first_line!r} under {', '.join(map(str, candidates))}")


def load_label_file(label_file: str | Path, image_root: str | Path | None = None) -> LabelledImages:
    """Images and labels from a list file (``<relpath>`` or ``<relpath> <label>`` per line).

    Listed paths are resolved against ``image_root`` (if given), then the file's folder,
    or one immediate subfolder of either where the first listed image exists. Blank lines
    and ``#`` comments are skipped; a listed image that does not exist is an error.
    """
    label_file = Path(label_file)
    lines = [ln.strip() for ln in label_file.read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ValueError(f"{label_file}: no entries")
    candidates = ([Path(image_root)] if image_root is not None else []) + [label_file.parent]
    root = _find_image_root(label_file, lines[0], candidates)
    pairs = [_parse_label_line(line, root) for line in lines]
    missing = [rel for rel, _ in pairs if not (root / rel).is_file()]
    if missing:
        raise FileNotFoundError(f"{label_file}: {len(missing)} listed images missing under {root}, e.g. {missing[0]}")
    return LabelledImages(
        name=f"{root.name}:{label_file.name}",
        images=ImageList(root, tuple(rel for rel, _ in pairs)),
        labels=tuple(label for _, label in pairs),
    )


def read_domain_map(path: str | Path) -> dict[str, str]:
    """``<category> <domain>`` per line -> mapping (GPR1200 groups its 1200 classes in 6 domains)."""
    mapping: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            category, domain = line.split(maxsplit=1)
            mapping[category] = domain
    return mapping


def load_gpr1200(folder: str | Path, domain_map: Mapping[str, str] | None = None) -> LabelledImages:
    """GPR1200's own layout: one flat folder of ``{category}_{name}.jpg``; class = category.

    ``domain_map`` (category -> domain) enables per-domain mAP; every category must be in it.
    """
    folder = Path(folder)
    paths = sorted(p.name for p in folder.iterdir() if _is_image(p))
    bad = [name for name in paths if "_" not in name]
    if bad:
        raise ValueError(f"{folder}: {len(bad)} files not named {{category}}_{{name}}, e.g. {bad[0]}")
    labels = tuple(name.split("_", 1)[0] for name in paths)
    domains = None
    if domain_map is not None:
        unknown = sorted(set(labels) - set(domain_map))
        if unknown:
            raise ValueError(f"{len(unknown)} categories have no domain, e.g. {unknown[0]}")
        domains = tuple(domain_map[label] for label in labels)
    return LabelledImages(name=folder.name, images=ImageList(folder, tuple(paths)), labels=labels, domains=domains)


def load_labelled(path: str | Path, split_file: str | Path | None = None,
                  layout: str = "auto", domain_map: Mapping[str, str] | None = None) -> LabelledImages:
    """Open ``path`` as the CLI does: a split/label file if given, else a folder layout.

    ``split_file`` is taken as given if it exists, else relative to ``path``. ``layout``:
    ``folder`` (class = subfolder), ``gpr1200`` (flat ``{category}_{name}``), or ``auto``
    (folder when ``path`` has subfolders, gpr1200 otherwise). With ``domain_map`` every
    image gets its category's domain; categories missing from a split-file or folder set's
    map are grouped as ``unmapped`` rather than dropped, so mAP still covers every query.
    """
    path = Path(path)
    if split_file is not None:
        split = Path(split_file)
        if not split.exists() and (path / split).exists():
            split = path / split
        dataset = load_label_file(split, image_root=path if path.is_dir() else None)
    elif path.is_file():
        dataset = load_label_file(path)
    else:
        has_dirs = any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())
        use = layout if layout != "auto" else ("folder" if has_dirs else "gpr1200")
        if use == "folder":
            dataset = load_folder(path)
        elif use == "gpr1200":
            dataset = load_gpr1200(path, domain_map)
        else:
            raise ValueError(f"unknown layout {layout!r} (folder, gpr1200, auto)")
    if domain_map is not None and dataset.domains is None:
        dataset = LabelledImages(dataset.name, dataset.images, dataset.labels,
                                 tuple(domain_map.get(label, "unmapped") for label in dataset.labels))
    return dataset


@dataclass(frozen=True)
class CaptionSet:
    """Images with several captions each; ``caption_image[i]`` is caption i's image index."""

    name: str
    images: ImageList
    captions: tuple[str, ...]
    caption_image: tuple[int, ...]


def load_coco_captions(annotations: str | Path, image_dir: str | Path | None = None,
                       require_captions: bool = True) -> CaptionSet:
    """COCO captions JSON -> CaptionSet, images in ``images`` order, captions in file order.

    ``image_dir`` defaults to the split folder beside ``annotations/`` (``captions_val2017.json``
    -> ``../val2017``). With ``require_captions`` (the usual protocol) images without a
    caption are dropped; otherwise they stay as distractors for text-to-image search.
    """
    annotations = Path(annotations)
    data = json.loads(annotations.read_text())
    if image_dir is None:
        split = annotations.stem.split("_", 1)[-1]
        image_dir = annotations.parent.parent / split
    image_dir = Path(image_dir)
    captions_by_image: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        captions_by_image.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    images = [img for img in data["images"] if not require_captions or img["id"] in captions_by_image]
    if not images:
        raise ValueError(f"{annotations}: no captioned images")
    captions: list[str] = []
    caption_image: list[int] = []
    for index, img in enumerate(images):
        for caption in captions_by_image.get(img["id"], []):
            captions.append(caption)
            caption_image.append(index)
    return CaptionSet(
        name=f"{image_dir.name}:{annotations.name}",
        images=ImageList(image_dir, tuple(img["file_name"] for img in images)),
        captions=tuple(captions),
        caption_image=tuple(caption_image),
    )
