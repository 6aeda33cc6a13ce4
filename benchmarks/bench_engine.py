"""Pairs/s of every annotation stage as plain calls, on this CPU, with the real models and
the real coco-mini data.

Over the same records (coco-mini val + train captions, every pass read again, ``--copies``
passes): read (``list_shards`` + ``read_shard``, COCO index cache cleared on each pass, as
a fresh worker parses the JSON), then the shipped stage objects of ``i2e_engine.stages``
called directly, each on batches of ``BuildConfig.batch_rows`` (what ``annotate_shard``
hands a stage): ``CheckStage.process``, ``NerStage.process`` (spaCy + KB alias matcher),
``LinkStage.process`` and ``ScoreStage.process`` (offline scorer, text cache cleared each
repeat, as in a fresh worker). No framework: Beam and Spark builds, and finalize, are
timed by ``bench_build.py``.

Model loads are timed once, apart, and are not in the pairs/s: the alias index
(``shared_alias_index``, built once per process and shared by NER, link and the entities
writer), then each stage's ``setup()`` (NER and link reuse that index).

Full-size run (about 1.5 minutes on an idle 2-core machine)::

    .venv/bin/python benchmarks/bench_engine.py --repeats 3 --out benchmarks/out/bench_engine.json

Smoke run: ``--max-pairs 40 --repeats 1``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_DATA, captions_files, facts_lines, loadavg, median, run_facts, timed  # noqa: E402

from i2e_engine.config import BuildConfig  # noqa: E402
from i2e_engine.kb.build import ensure_default_kb, shared_alias_index  # noqa: E402
from i2e_engine.readers import coco, list_shards, read_shard  # noqa: E402
from i2e_engine.records import Pair  # noqa: E402
from i2e_engine.stages import CheckStage, LinkStage, NerStage, ScoreStage, Stage, StageResult  # noqa: E402

STAGES = ("read", "check", "ner", "link", "score")


def read_pairs(captions: list[str], max_pairs: int | None) -> list[Pair]:
    """One cold read of coco-mini: list the shards, read them (index cache cleared first)."""
    coco._cached_index.cache_clear()
    pairs = [pair for shard in list_shards(captions) for pair in read_shard(shard)]
    return pairs[:max_pairs]


def run_batches(stage: Stage, items: Sequence, batch_rows: int) -> StageResult:
    """``stage.process`` over batches of ``batch_rows`` items, as annotate_shard feeds it."""
    result = StageResult()
    for start in range(0, len(items), batch_rows):
        result.extend(stage.process(items[start:start + batch_rows]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every stage; medians are quoted")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="coco-mini root (annotations/ + photos)")
    parser.add_argument("--copies", type=int, default=2, help="read passes over coco-mini per repeat")
    parser.add_argument("--max-pairs", type=int, help="only the first N pairs of each pass (smoke runs)")
    parser.add_argument("--out", help="also write the raw numbers as JSON here")
    args = parser.parse_args()

    facts = run_facts()
    captions = captions_files(args.data)
    config = BuildConfig()
    kb_path = str(ensure_default_kb())
    check = CheckStage(config)
    ner = NerStage(config.ner, kb_path)
    link = LinkStage(config.link, kb_path, config.scorer.entity_text)
    score = ScoreStage(config.scorer, config.image)
    loads = {
        "alias index: shared_alias_index (once per process; NER, link and the entities writer share it)":
            timed(lambda: shared_alias_index(kb_path))[0],
        "ner: NerStage.setup (spaCy + KB alias phrase matcher)": timed(ner.setup)[0],
        "link: LinkStage.setup (Linker over the shared alias index)": timed(link.setup)[0],
        "score: ScoreStage.setup (offline scorer)": timed(score.setup)[0],
    }

    runs: dict[str, list[float]] = {name: [] for name in STAGES}
    counts: dict[str, int] = {}
    loads_per_repeat = []
    started = time.perf_counter()
    for repeat in range(args.repeats):
        loads_per_repeat.append(loadavg())
        score.scorer.text_cache.clear()
        dt, passes = timed(lambda: [read_pairs(captions, args.max_pairs) for _ in range(args.copies)])
        runs["read"].append(dt)
        # later passes get new sample ids, so every row is a distinct record downstream
        pairs = [{**pair, "sample_id": f"{pair['sample_id']}#{copy}"} if copy else pair
                 for copy, one_pass in enumerate(passes) for pair in one_pass]
        items: Sequence = pairs
        counts["read"] = len(pairs)
        for stage in (check, ner, link, score):
            counts[stage.name] = len(items)
            dt, result = timed(lambda: run_batches(stage, items, config.batch_rows))  # noqa: B023 (called at once)
            runs[stage.name].append(dt)
            items = result.kept
        counts["annotated"] = len(items)
        print(f"repeat {repeat + 1}/{args.repeats} done at {time.perf_counter() - started:.0f} s, "
              f"load average {loadavg()}", file=sys.stderr, flush=True)

    notes = {"read": f"list_shards + read_shard, {args.copies} cold passes",
             "check": "CheckStage.process", "ner": f"NerStage.process, spaCy batch {config.ner.batch_size}",
             "link": "LinkStage.process",
             "score": f"ScoreStage.process, scorer batch {config.scorer.batch_size}, cold text cache"}
    lines = [*facts_lines(facts),
             f"Load average per repeat {loads_per_repeat}, at end {loadavg()}; {args.repeats} repeats, medians; "
             f"stages fed batches of {config.batch_rows} (BuildConfig.batch_rows); total "
             f"{time.perf_counter() - started:.0f} s after loading.", "",
             f"### Stages as plain calls ({counts['read']} pairs in, {counts['annotated']} annotated)", "",
             "| stage | pairs in | median s | pairs/s | min-max s |", "|---|---:|---:|---:|---:|"]
    table = {}
    for name in STAGES:
        m, n = median(runs[name]), counts[name]
        table[name] = {"pairs": n, "median_s": m, "pairs_per_s": n / m, "runs_s": runs[name]}
        lines.append(f"| {name} ({notes[name]}) | {n} | {m:.3f} | {n / m:,.1f} | "
                     f"{min(runs[name]):.3f}-{max(runs[name]):.3f} |")
    lines += ["", "Model loads (once, not in the pairs/s):", "", "| load | s |", "|---|---:|"]
    lines += [f"| {name} | {s:.2f} |" for name, s in loads.items()]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            **facts, "loadavg_per_repeat": loads_per_repeat, "loadavg_end": loadavg(), "repeats": args.repeats,
            "batch_rows": config.batch_rows, "loads_s": loads, "stages": table, "counts": counts,
            "markdown": report}, indent=2))


if __name__ == "__main__":
    main()
