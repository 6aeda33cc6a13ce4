"""Linking quality against the floor: the naive title lookup (i2e_engine/kb/naive.py) and
the engine's linker, side by side on the same gold sets, with the linker's model scored
only on texts it was not fit on (k folds by text); an error table by kind; candidate
generation + disambiguation speed in mentions/s on one core (NER excluded).

    python benchmarks/bench_linking.py [--out benchmarks/out/linking.json] [--fit] [--ablate]

``--fit`` then fits the model on every text of both sets and writes the shipped weights
(i2e_engine/kb/link_model.json) with the KB and code versions they were fit with. The
shipped weights are never scored here (they have seen every gold text).
``--ablate`` also scores, held out the same way, models fit without each group of
features (``ABLATIONS``): what each signal is worth.

Counting (i2e_engine/kb/evaluate.py): recall = gold mentions with an overlapping link to
the gold entity; P(gold) = correct links / links whose span overlaps a gold mention;
P(all) = correct links / all links; F1 of P(gold) and recall.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, facts_lines, median, run_facts  # noqa: E402

from i2e_engine.config import LinkConfig, NerConfig  # noqa: E402
from i2e_engine.kb.build import ensure_default_kb, kb_file_version  # noqa: E402
from i2e_engine.kb.evaluate import EntityTest, TextLinker, load_gold, overlaps, score  # noqa: E402
from i2e_engine.kb.link_fit import GoldSet, cross_validate, fit_on  # noqa: E402
from i2e_engine.kb.naive import TitleLookup  # noqa: E402
from i2e_engine.link_model import DEFAULT_HIDDEN, DEFAULT_MIN_PRECISION, WEIGHTS_PATH  # noqa: E402

NEL = REPO.parent / "shared" / "data" / "nel"
COCO_GOLD = {"coco_mini_dev": REPO / "benchmarks" / "gold" / "coco_mini_entities.jsonl",
             "coco_mini_test": REPO / "benchmarks" / "gold" / "coco_mini_entities_test.jsonl"}
SETS = (("wikidata_mel_dev", NEL / "wikidata_mel_dev.jsonl", False), ("tweeki", NEL / "tweeki_gold.jsonl", True))
# What each signal is worth (--ablate): held-out scores of models fit without a group of features.
ABLATIONS = {
    "prior": ("prior", "top_prior", "prior_margin"),
    "popularity": ("log_popularity", "popularity_share"),
    "context": ("context",),
    "mention_form": ("form_alias", "form_acronym", "form_name_part", "in_text"),
    "ner_label": ("ner_person", "ner_place", "ner_org", "ner_other", "alias_only"),
    "word_frequency": ("word_frequency",),
    "entity_shape": ("person_shape", "place_kind"),
    "exact_case": ("exact_case",),
}


def gold_sets(text_linker: TextLinker, limit: int | None) -> list[GoldSet]:
    out = []
    for name, path, complete in SETS:
        texts = load_gold(str(path), limit)
        mentions = text_linker.ner.extractor.extract([t.text for t in texts], 256)
        out.append(GoldSet(name, texts, mentions, complete))
    return out


def error_kinds(gold: GoldSet, links: list[list[dict]], test: EntityTest) -> dict[str, int]:
    """Each gold mention not linked right, by kind: ``coverage`` (the KB lacks the entity),
    ``no_mention`` (no link on its span), ``surname`` (a one-word mention linked wrong or
    not at all), ``wrong_entity``; and each link that is wrong: ``nil`` (a link on no gold
    span, in a set that annotates every name) or ``wrong_sense`` (on a gold span, wrong)."""
    kinds: collections.Counter = collections.Counter()
    for item, found in zip(gold.texts, links):
        for mention in item.mentions:
            on_span = [link for link in found if overlaps(link, mention)]
            if any(test.same(link["entity_id"], mention) for link in on_span):
                continue
            if not test.covered(mention):
                kinds["missed: coverage"] += 1
            elif len(mention.surface.split()) == 1:
                kinds["missed: one-word name (surname)"] += 1
            elif not on_span:
                kinds["missed: no link on the span"] += 1
            else:
                kinds["missed: wrong entity"] += 1
        for link in found:
            golds = [m for m in item.mentions if overlaps(link, m)]
            if not golds:
                if gold.complete:
                    kinds["wrong link: should be NIL"] += 1
                continue
            if not any(test.same(link["entity_id"], m) for m in golds):
                kinds["wrong link: wrong sense"] += 1
    return dict(sorted(kinds.items()))


def speed(text_linker: TextLinker, sets: list[GoldSet], repeats: int, batch: int = 256) -> dict:
    """Mentions linked per second on one core (candidates + features + model), NER excluded,
    with the linker's caches emptied before each repeat (every surface is new to it); texts
    in batches of ``batch``, as the link stage gets them (``Linker.link_many``), and one at a
    time (``Linker.link``) for comparison."""
    linker = text_linker.link.linker
    texts = [t.text for g in sets for t in g.texts]
    found = [list(m) for g in sets for m in g.mentions]
    mentions = sum(map(len, found))

    def rate(run) -> float:
        linker.clear_caches()
        started = time.perf_counter()
        run()
        return mentions / (time.perf_counter() - started)

    batched = [rate(lambda: [linker.link_many(texts[i:i + batch], found[i:i + batch])
                             for i in range(0, len(texts), batch)]) for _ in range(repeats)]
    single = [rate(lambda: [linker.link(text, m) for text, m in zip(texts, found)]) for _ in range(repeats)]
    return {"mentions": mentions, "batch": batch, "mentions_per_s_median": round(median(batched)),
            "one_text_at_a_time_mentions_per_s_median": round(median(single)), "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/out/linking.json")
    parser.add_argument("--kb", help="KB parquet (default: the default KB, built once)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=DEFAULT_HIDDEN,
                        help="hidden units of the link model (0: a logistic regression)")
    parser.add_argument("--min-precision", type=float, default=DEFAULT_MIN_PRECISION,
                        help="the NIL threshold links the most mentions at this precision on the training folds")
    parser.add_argument("--limit", type=int, help="only the first N texts of each set (smoke runs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fit", action="store_true", help=f"write the model fit on every text to {WEIGHTS_PATH}")
    parser.add_argument("--ablate", action="store_true",
                        help="also score held-out models fit without each group of features (ABLATIONS)")
    args = parser.parse_args(argv)
    missing = [str(path) for _, path, _ in SETS if not path.is_file()]
    if missing:
        parser.error(f"gold sets not found: {missing} (they live in ../shared/data/nel)")

    kb = args.kb or str(ensure_default_kb())
    text_linker = TextLinker(kb, NerConfig(), LinkConfig())
    linker = text_linker.link.linker
    sets = gold_sets(text_linker, args.limit)
    test = EntityTest(linker.alias_index)
    # First, in a process that holds what a link worker holds: the naive lookup's 7M titles
    # and the modules run_facts imports, loaded next, would slow every garbage collection
    # of the measured loop (a worker freezes what its setup loaded, stages.freeze_setup_objects).
    measured_speed = speed(text_linker, sets, args.repeats)
    report: dict = {"facts": run_facts(), "kb": kb, "kb_version": kb_file_version(kb), "folds": args.folds,
                    "sets": {}, "speed": measured_speed}
    naive = TitleLookup.from_package(text_linker.ner.extractor.nlp)
    held_out = cross_validate(linker, sets, folds=args.folds, hidden=args.hidden, min_precision=args.min_precision)
    for gold in sets:
        naive_links = naive([t.text for t in gold.texts])
        naive_score = score(gold.texts, naive_links, linker.alias_index)
        report["sets"][gold.name] = {
            "naive_lookup": naive_score.to_dict(), "linker_held_out": held_out[gold.name].score.to_dict(),
            "errors_naive": error_kinds(gold, naive_links, test),
            "errors_linker_held_out": error_kinds(gold, held_out[gold.name].links, test)}
    if args.ablate:
        report["ablations"] = {}
        for name, without in ABLATIONS.items():
            ablated = cross_validate(linker, sets, folds=args.folds, hidden=args.hidden,
                                     min_precision=args.min_precision, without=without)
            report["ablations"][name] = {"without": list(without),
                                         **{g.name: ablated[g.name].score.to_dict() for g in sets}}
    if args.fit:
        model = fit_on(linker, sets, hidden=args.hidden, min_precision=args.min_precision, fit_info={
            "sets": {g.name: len(g.texts) for g in sets}, "kb_version": report["kb_version"],
            "fit_by": "benchmarks/bench_linking.py --fit"})
        model.save(WEIGHTS_PATH)
        report["shipped_model"] = json.loads(model.to_json())
        print(model.describe())
    # coco-mini captions labelled by hand (benchmarks/gold): no model was fit on them, so the
    # shipped model is scored here (refit above with --fit). The concept rules were read
    # against the first file (the development set); a later reading of both files' wrong
    # links added stop words (i2e_engine/kb/concepts.py), so for those the second is no
    # longer held out.
    for name, path in COCO_GOLD.items():
        coco = load_gold(str(path))
        coco_links = list(text_linker([t.text for t in coco]))
        report[name] = {
            "linker_shipped_model": score(coco, coco_links, linker.alias_index).to_dict(),
            "naive_lookup": score(coco, naive([t.text for t in coco]), linker.alias_index).to_dict(),
            "links_per_caption": round(sum(map(len, coco_links)) / len(coco), 2),
            "wrong_links": [(t.text, link["mention"], link["entity_id"]) for t, found in zip(coco, coco_links)
                            for link in found if not any(overlaps(link, m) and test.same(link["entity_id"], m)
                                                         for m in t.mentions)]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print("\n".join(facts_lines(report["facts"])))
    for name, scores in report["sets"].items():
        for who in ("naive_lookup", "linker_held_out"):
            s = scores[who]
            print(f"{name:18} {who:16} R {s['recall']:.3f}  P(gold) {s['precision_gold']:.3f}  "
                  f"P(all) {s['precision']:.3f}  F1 {s['f1']:.3f}  links {s['predicted_links']}  "
                  f"coverage {s['coverage']:.3f}")
        print(f"  naive errors: {scores['errors_naive']}")
        print(f"  linker errors (held out): {scores['errors_linker_held_out']}")
    for name, scores in report.get("ablations", {}).items():
        print(f"without {name:15} " + "  ".join(
            f"{g.name}: R {scores[g.name]['recall']:.3f} P(gold) {scores[g.name]['precision_gold']:.3f} "
            f"F1 {scores[g.name]['f1']:.3f}" for g in sets))
    for name in COCO_GOLD:
        for who in ("naive_lookup", "linker_shipped_model"):
            s = report[name][who]
            print(f"{name:18} {who:20} R {s['recall']:.3f}  P(all) {s['precision']:.3f}  links {s['predicted_links']}")
        print(f"  links per caption {report[name]['links_per_caption']}; wrong links: {report[name]['wrong_links']}")
    print(f"speed: {report['speed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
