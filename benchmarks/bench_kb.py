"""The KB at scale: build time and size, alias index load time and memory per process, the
mention matcher (trie walk against spaCy's PhraseMatcher), candidate generation with prior
scoring in mentions/s per core, and linking quality on the Tweeki gold set (old KB against
new, through the public CLI).

    python benchmarks/bench_kb.py [--out benchmarks/out/kb.json] [--skip-build]

Every number comes from the shipped code: ``build_kb``, ``ensure_alias_index``,
``AliasIndex``, ``MentionExtractor`` and ``Linker``, and ``i2e kb eval`` as a subprocess.
Medians of ``--repeats`` runs where a step is fast enough to repeat.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, captions_files, facts_lines, median, run_facts, timed  # noqa: E402

from i2e_engine.config import LinkConfig, NerConfig  # noqa: E402
from i2e_engine.kb.build import (DEFAULT_KB_MIN_POPULATION, DEFAULT_SOURCES, DEMO_SOURCES,  # noqa: E402
                                 build_kb, ensure_alias_index, ensure_default_kb, ensure_kb)

GOLD = REPO.parent / "shared" / "data" / "nel" / "tweeki_gold.jsonl"
COCO = REPO.parent / "shared" / "data" / "coco-mini"
PHRASE_MATCHER_SAMPLE = (25_000, 100_000)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def measure_build(tmp: Path) -> dict:
    """Build the default KB from scratch into a fresh cache (one run: it takes minutes)."""
    out = tmp / "kb.parquet"
    seconds, table = timed(lambda: build_kb(list(DEFAULT_SOURCES), out, min_population=DEFAULT_KB_MIN_POPULATION))
    index = ensure_alias_index(str(out))
    meta = json.loads((index / "meta.json").read_text())
    aliases = sum(len(a) for a in table.column("aliases").to_pylist())
    return {"sources": list(DEFAULT_SOURCES), "seconds_build_and_index": round(seconds, 1),
            "entities": table.num_rows, "aliases": aliases, "index_keys": meta["keys"],
            "index_candidates": meta["candidates"], "kb_parquet_mb": round(out.stat().st_size / 2**20, 1),
            "index_mb": round(folder_bytes(index) / 2**20, 1)}


_LOAD_SCRIPT = """
import json, sys, time
def status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1]) / 1024
from i2e_engine.kb.alias_index import AliasIndex
before = {f: status(f) for f in ('VmRSS', 'RssAnon', 'RssFile')}
t1 = time.perf_counter()
index = AliasIndex(sys.argv[1])
t2 = time.perf_counter()
found = sum(bool(index.candidates(w)) for w in sys.argv[2:])
t3 = time.perf_counter()
print(json.dumps({"open_seconds": t2 - t1, "first_lookups_seconds": t3 - t2, "found": found,
                  "rss_mib": status('VmRSS'), "index_rss_mib": status('VmRSS') - before['VmRSS'],
                  "index_private_mib": status('RssAnon') - before['RssAnon'],
                  "index_shared_mib": status('RssFile') - before['RssFile']}))
"""


def measure_load(index_folder: Path, repeats: int) -> dict:
    """Open the index in fresh processes: time to open and to answer a few lookups, the
    process's whole RSS, and what opening the index added to it: private (RssAnon) and
    mapped index pages, which the processes of a machine share (RssFile)."""
    words = ["Paris", "dog", "Barack Obama", "Falcon 9", "red fox", "pizza", "Eiffel Tower", "Springfield"]
    runs = [json.loads(subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, str(index_folder), *words], check=True,
                                      capture_output=True, text=True, cwd=REPO).stdout) for _ in range(repeats)]
    return {key: round(median([r[key] for r in runs]), 3) for key in runs[0]}


def caption_texts() -> list[str]:
    texts: list[str] = []
    for path in captions_files(COCO):
        texts += [a["caption"].strip() for a in json.loads(Path(path).read_text())["annotations"]]
    if GOLD.is_file():
        texts += [json.loads(line)["text"] for line in GOLD.read_text().splitlines() if line.strip()]
    return texts


def measure_matching(kb_path: str, texts: list[str], repeats: int) -> dict:
    """Mention finding over every matchable alias: the trie walk (shipped) against spaCy's
    PhraseMatcher (built over a sample of the same keys, since all of them do not fit)."""
    import spacy
    from spacy.matcher import PhraseMatcher

    from i2e_engine.kb.build import shared_alias_index
    from i2e_engine.ner import build_extractor

    index = shared_alias_index(kb_path)
    extractor = build_extractor(NerConfig(), index)
    docs = list(extractor.nlp.pipe(texts, batch_size=256))
    tokens = sum(len(d) for d in docs)
    trie_seconds = median([timed(lambda: [extractor.alias_spans(d) for d in docs])[0] for _ in range(repeats)])
    keys = index.phrases()
    nlp = spacy.blank("en")
    phrase = {}
    for size in PHRASE_MATCHER_SAMPLE:
        sample = keys[:: max(1, len(keys) // size)][:size]
        matcher = PhraseMatcher(nlp.vocab, attr="LOWER")
        before = _rss_mib()
        build_seconds, _ = timed(lambda: matcher.add("ALIAS", list(nlp.tokenizer.pipe(sample, batch_size=1000))))
        grown = _rss_mib() - before
        match_seconds = median([timed(lambda: [matcher(d) for d in docs])[0] for _ in range(repeats)])
        phrase[size] = {"build_seconds": round(build_seconds, 2), "rss_growth_mib": round(grown, 1),
                        "match_tokens_per_second": round(tokens / match_seconds)}
    per_key = {s: phrase[s]["build_seconds"] / s for s in PHRASE_MATCHER_SAMPLE}
    per_key_mib = {s: phrase[s]["rss_growth_mib"] / s for s in PHRASE_MATCHER_SAMPLE}
    largest = PHRASE_MATCHER_SAMPLE[-1]
    return {"matchable_keys": len(keys), "texts": len(texts), "tokens": tokens,
            "trie_tokens_per_second": round(tokens / trie_seconds), "phrase_matcher": phrase,
            "phrase_matcher_all_keys_build_seconds_extrapolated": round(per_key[largest] * len(keys)),
            "phrase_matcher_all_keys_rss_gib_extrapolated": round(per_key_mib[largest] * len(keys) / 1024, 1)}


def _rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure_candidates(kb_path: str, texts: list[str], repeats: int) -> dict:
    """Candidate generation and prior scoring (the linker's first step: normalize, trie
    lookup, the key's candidates, the lower-case rule, argmax prior) on the mentions the
    extractor finds in real captions; then the whole linker (context similarity too)."""
    from i2e_engine.kb.build import shared_alias_index
    from i2e_engine.linking import Linker

    index = shared_alias_index(kb_path)
    from i2e_engine.ner import build_extractor

    extractor = build_extractor(NerConfig(), index)
    mentions = [(text, found) for text, found in zip(texts, extractor.extract(texts))]
    surfaces = [m["text"] for _, found in mentions for m in found]
    linker = Linker(index, LinkConfig())

    def candidates_and_priors():
        for surface in surfaces:
            found = linker.candidates(surface)
            if found:
                max(found, key=lambda c: c[1])

    cand_seconds = median([timed(candidates_and_priors)[0] for _ in range(repeats)])
    link_seconds = median([timed(lambda: [linker.link(t, f) for t, f in mentions])[0] for _ in range(repeats)])
    return {"mentions": len(surfaces), "candidates_and_prior_mentions_per_second": round(len(surfaces) / cand_seconds),
            "full_link_mentions_per_second": round(len(surfaces) / link_seconds)}


def measure_image_nil(kb_path: str, photos: int = 150) -> dict:
    """The offline scorer's image-entity scores of a coco-mini caption's own links against
    links of another photo's caption (the shipped stages and scorer): the quantiles, and
    how much of each a NIL threshold keeps. Its ``nil_score`` is the 5th percentile of own."""
    import dataclasses
    import random

    import numpy as np

    from _common import coco_pairs
    from i2e_engine.config import BuildConfig
    from i2e_engine.images import decode_rgb
    from i2e_engine.stages import Annotator, run_stage

    config = dataclasses.replace(BuildConfig(), link=LinkConfig(image_nil_score=-1.0))
    annotator = Annotator(config, kb_path).setup()
    items = run_stage(annotator.check, coco_pairs(COCO)[:photos]).kept
    for stage in (annotator.ner, annotator.link):
        items = run_stage(stage, items).kept
    scorer = annotator.score.scorer
    texts = [[next(iter(by_entity.values())) for by_entity in item.candidate_texts] for item in items]
    images = scorer.embed_images([decode_rgb(item.record["image"], config.image) for item in items])
    rng = random.Random(0)
    own, other = [], []
    for i in range(len(items)):
        own += (scorer.embed_texts(texts[i]) @ images[i]).tolist()
        j = rng.randrange(len(items))
        if j != i:
            other += (scorer.embed_texts(texts[j]) @ images[i]).tolist()
    own, other = np.array(own), np.array(other)
    return {"photos": len(items), "own_links": len(own), "other_links": len(other),
            "quantiles": {q: [round(float(np.quantile(own, q)), 3), round(float(np.quantile(other, q)), 3)]
                          for q in (0.05, 0.1, 0.25, 0.5, 0.75, 0.95)},
            "kept_at": {th: [round(float((own >= th).mean()), 3), round(float((other >= th).mean()), 3)]
                        for th in (0.05, 0.09, 0.15)}}


def measure_tweeki(kb_paths: dict[str, str]) -> dict:
    """``i2e kb eval`` on the Tweeki gold set for each KB and mention setting."""
    settings = {"every alias hit (default)": [], "capitalized alias hits": ["--alias-case", "capitalized"],
                "NER mentions only": ["--no-alias-matcher"]}
    out = {}
    for name, kb in kb_paths.items():
        for setting, flags in settings.items():
            command = [sys.executable, "-m", "pipelines.cli", "kb", "eval", str(GOLD), "--kb", kb, "--json", *flags]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO).stdout)
            out[f"{name}, {setting}"] = {k: round(v, 3) if isinstance(v, float) else v
                                         for k, v in result.items() if k != "kb"}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "kb.json"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-build", action="store_true", help="reuse the cached default KB instead of timing a build")
    args = parser.parse_args()
    report: dict = {"facts": run_facts()}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_build:
            os.environ["I2E_CACHE"] = str(Path(tmp) / "cache")
            report["build"] = measure_build(Path(tmp))
            print(json.dumps(report["build"], indent=1), flush=True)
            kb_path = str(Path(tmp) / "kb.parquet")
        else:
            kb_path = str(ensure_default_kb())
        index_folder = ensure_alias_index(kb_path)
        report["load"] = measure_load(index_folder, args.repeats)
        print(json.dumps(report["load"], indent=1), flush=True)
        texts = caption_texts()
        report["matching"] = measure_matching(kb_path, texts, args.repeats)
        print(json.dumps(report["matching"], indent=1), flush=True)
        report["candidates"] = measure_candidates(kb_path, texts, args.repeats)
        print(json.dumps(report["candidates"], indent=1), flush=True)
        report["image_nil"] = measure_image_nil(kb_path)
        print(json.dumps(report["image_nil"], indent=1), flush=True)
        if GOLD.is_file():
            demo_kb = ensure_kb(DEMO_SOURCES, 100_000)
            report["tweeki"] = measure_tweeki({"old KB (vital+geonames>=100k)": str(demo_kb),
                                               "new KB (default)": kb_path})
            print(json.dumps(report["tweeki"], indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print("\n".join(facts_lines(report["facts"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
