"""The run report: one self-contained HTML page about a finished build.

``build_report(output)`` reads the manifest and the tables (any URI the engine supports),
in bounded memory at any size (:mod:`i2e_engine.report.data`), and writes
``<output>/report.html`` (:mod:`i2e_engine.report.render`): the funnel per stage with the
accounting check, score histograms with the thresholds in force, the entities' long tail and
top entities, sampled thumbnails of kept and dropped rows, duplicate clusters, time and
throughput per stage, the configuration and versions. `i2e report OUT --html FILE` and the
end of every build (``pipelines.run.run_build``) both call it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

from i2e_engine import storage
from i2e_engine.report.data import gather
from i2e_engine.report.render import render, thumbnail

log = logging.getLogger(__name__)
MAX_BYTES = 5_000_000   # the page stays under this whatever the run's size


@dataclass(frozen=True)
class ReportResult:
    uri: str            # where the page was written
    bytes: int          # its size
    thumbnails: int     # thumbnails on it
    seconds: float      # time to gather and render


def build_report(output_uri: str, html_uri: Optional[str] = None, *, kept_samples: int = 48, per_reason: int = 4,
                 max_bytes: int = MAX_BYTES) -> ReportResult:
    """Write the report of the build in ``output_uri`` to ``html_uri`` (default
    ``<output>/report.html``). Thumbnails are dropped from the end (duplicates, then dropped
    rows, then kept rows) until the page is under ``max_bytes``."""
    started = time.perf_counter()
    data = gather(output_uri, kept_samples=kept_samples, per_reason=per_reason)
    rejected = [s for _, samples in sorted(data.reject_samples.items()) for s in samples]
    pictured = [*((id(s), s.image) for s in [*data.kept_samples, *rejected]),
                *((id(row), row["image"]) for row in data.duplicates["samples"])]
    encoded = [(key, thumbnail(image)) for key, image in pictured if image]
    shown = len(encoded)
    while True:
        page = render(data, dict(encoded[:shown])).encode("utf-8")
        if len(page) < max_bytes or shown == 0:
            break
        shown //= 2
    uri = storage.normalize(html_uri) if html_uri else storage.join(data.out, "report.html")
    storage.write_bytes(uri, page)
    return ReportResult(uri=uri, bytes=len(page), thumbnails=sum(1 for _, t in encoded[:shown] if t),
                        seconds=round(time.perf_counter() - started, 2))


def write_build_report(output_uri: str, progress: Callable[[str], None] = print) -> Optional[str]:
    """The report at the end of a build: its URI, or None (with a warning) when it could not be
    made. The tables are published by then; a report failure does not undo them."""
    try:
        result = build_report(output_uri)
    except Exception as error:  # the build succeeded; the page is a view of it
        log.warning("the run report of %s could not be written: %s: %s", output_uri, type(error).__name__, error)
        return None
    progress(f"report: {result.uri} ({result.bytes / 1e6:.1f} MB, {result.seconds} s)")
    return result.uri
