"""Beam DoFns over the engine core: each one places a core function, nothing more.

Models live in one :class:`~i2e_engine.stages.Annotator` per worker process
(``apache_beam.utils.shared.Shared``), loaded in ``setup`` and used by every shard that
process annotates.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics.metric import Metrics
from apache_beam.utils.shared import Shared

from i2e_engine.config import BuildConfig
from i2e_engine.dedup.plan import ShardDedup
from i2e_engine.metrics import metric_name
from i2e_engine.shard import annotate_shard, hash_shard
from i2e_engine.stages import Annotator, CheckStage
from i2e_engine.workdir import WorkDir

NAMESPACE = "i2e"


class BeamStageMetrics:
    """The core's per-stage row counts as Beam counters (``i2e`` namespace, ``<stage>.rows``)."""

    def inc(self, stage: str, name: str, n: int) -> None:
        Metrics.counter(NAMESPACE, metric_name(stage, name)).inc(n)


class _SharedAnnotator:
    """A weak-referenceable holder, as ``Shared`` requires."""

    def __init__(self, annotator: Annotator):
        self.annotator = annotator


class HashShardDoFn(beam.DoFn):
    """Check and hash one input shard inside the worker; emits its file stem."""

    def __init__(self, config: BuildConfig, work: WorkDir, fingerprint: str, run_id: str):
        self._config, self._work, self._fingerprint, self._run_id = config, work, fingerprint, run_id
        self._hashed = Metrics.counter(NAMESPACE, "rows_hashed")

    def setup(self):
        self._check = CheckStage(self._config)

    def process(self, shard):
        marker = hash_shard(shard, self._check, self._work, self._fingerprint, self._run_id, self._config.batch_rows,
                            metrics=BeamStageMetrics())
        self._hashed.inc(marker.annotations)
        yield marker.stem


class AnnotateShardDoFn(beam.DoFn):
    """(shard_id, {shard: [ShardRef], dedup: [RowDedup]}) -> annotate and commit the shard
    inside the worker under its decisions; emits (shard_id, stem)."""

    def __init__(self, config: BuildConfig, kb_path: str, work: WorkDir, fingerprint: str, run_id: str,
                 shared: Shared):
        self._config, self._kb_path, self._work = config, kb_path, work
        self._fingerprint, self._run_id, self._shared = fingerprint, run_id, shared
        self._pairs = Metrics.counter(NAMESPACE, "pairs_read")
        self._annotations = Metrics.counter(NAMESPACE, "annotations")
        self._rejects = Metrics.counter(NAMESPACE, "rejects")
        self._shards = Metrics.counter(NAMESPACE, "shards_committed")

    def setup(self):
        load = lambda: _SharedAnnotator(Annotator(self._config, self._kb_path))  # noqa: E731
        self._annotator = self._shared.acquire(load, tag=self._fingerprint).annotator

    def process(self, element):
        _, joined = element
        dedup = ShardDedup.of(joined["dedup"])
        for shard in joined["shard"]:
            marker = annotate_shard(shard, self._annotator, self._work, self._fingerprint, self._run_id, dedup,
                                    self._config.batch_rows, metrics=BeamStageMetrics())
            if marker.run_id == self._run_id:
                self._pairs.inc(marker.pairs_read)
                self._annotations.inc(marker.annotations)
                self._rejects.inc(marker.rejects)
                self._shards.inc()
            yield marker.shard_id, marker.stem
