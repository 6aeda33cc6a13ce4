"""Linking through a default `i2e build` when each gold caption is the alt-text of an
unrelated real photo (Caltech-101), against the same linker on the text alone: the
image-aware choice must not drop links the text is certain of.

    python benchmarks/bench_linking_build.py [--out benchmarks/out/linking_build.json]

Each caption of the Wikidata-MEL dev set and of Tweeki is paired with one Caltech-101
photo (sorted paths, taken in turn), written as an img2dataset-style parquet, and built
with the CLI's defaults (the offline scorer, the default KB, the shipped link model). The
links are read back from the `image_entities` table and scored with the gold set's
counting rule (i2e_engine/kb/evaluate.py) on the normalized alt-text; the text-only links
are the engine's NER and linker over the same normalized texts. Both use the shipped
model, which was fit on these gold texts: this compares the image's effect, not the
linker's held-out quality (that is bench_linking.py).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, facts_lines, run_facts, timed  # noqa: E402

from i2e_engine import table_uri  # noqa: E402
from i2e_engine.kb.build import ensure_default_kb  # noqa: E402
from i2e_engine.kb.evaluate import GoldMention, GoldText, TextLinker, load_gold, score  # noqa: E402
from i2e_engine.records import make_sample_id  # noqa: E402
from i2e_engine.text import TextRejected, normalize_alt_text  # noqa: E402

DATA = REPO.parent / "shared" / "data"
SETS = (("wikidata_mel_dev", DATA / "nel" / "wikidata_mel_dev.jsonl"), ("tweeki", DATA / "nel" / "tweeki_gold.jsonl"))
CALTECH = DATA / "caltech101" / "101_ObjectCategories"


def pairs_parquet(folder: Path, texts: list[tuple[str, GoldText]], photos: list[Path]) -> Path:
    path = folder / "pairs.parquet"
    schema = pa.schema([("jpg", pa.binary()), ("caption", pa.string()), ("url", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(texts), 256):
            rows = [{"jpg": photos[i % len(photos)].read_bytes(), "caption": gold.text, "url": f"gold:{name}:{gold.id}"}
                    for i, (name, gold) in enumerate(texts[start:start + 256], start)]
            writer.write_table(pa.Table.from_pylist(rows, schema))
    return path


def relocated(gold: GoldText, text: str) -> GoldText:
    """The gold text with its mentions found again in the normalized alt-text (in order)."""
    mentions, cursor = [], 0
    for mention in sorted(gold.mentions, key=lambda m: m.start):
        at = text.find(mention.surface, cursor)
        if at < 0:
            at = text.find(mention.surface)
        if at >= 0:
            mentions.append(GoldMention(at, at + len(mention.surface), mention.surface, mention.title, mention.qid))
            cursor = at + len(mention.surface)
    return GoldText(gold.id, text, mentions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/out/linking_build.json")
    parser.add_argument("--limit", type=int, help="only the first N captions of each set")
    args = parser.parse_args(argv)
    photos = sorted(CALTECH.glob("*/*.jpg"))
    if not photos or not all(path.is_file() for _, path in SETS):
        parser.error(f"needs {CALTECH} and the gold sets under {DATA / 'nel'}")
    kb = str(ensure_default_kb())
    texts = [(name, gold) for name, path in SETS for gold in load_gold(str(path), args.limit)]
    report: dict = {"facts": run_facts(), "pairs": len(texts), "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        pairs_parquet(tmp / "in", texts, photos)
        seconds, done = timed(lambda: subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "build", str(tmp / "in"), "--output", str(tmp / "out"),
             "--kb", kb], cwd=REPO, capture_output=True, text=True))
        if done.returncode:
            sys.exit(f"i2e build failed:\n{done.stderr[-3000:]}")
        report["build_seconds"] = round(seconds, 1)
        out = str(tmp / "out")
        images = pq.read_table(table_uri(out, "images"), columns=["image_id", "url", "alt_texts_of_copies"]).to_pylist()
        links = pq.read_table(table_uri(out, "image_entities")).to_pylist()
        rejects = pq.read_table(table_uri(out, "rejects"), columns=["sample_id", "stage", "reason"]).to_pylist()
    by_image: dict[str, list[dict]] = {}
    for link in links:
        by_image.setdefault(link["image_id"], []).append(link)
    image_of = {row["url"]: row for row in images}
    # Copies and the images that read a copy's alt-text are left out of both measures.
    dropped = {row["sample_id"] for row in rejects if row["stage"] == "dedup"}
    merged = {row["url"] for row in images if row["alt_texts_of_copies"]}
    report["left_out_by_dedup"] = len(dropped) + len(merged)
    text_linker = TextLinker(kb)
    index = text_linker.link.linker.alias_index
    for name, _ in SETS:
        kept = []
        for i, (set_name, gold) in enumerate(texts):
            url = f"gold:{set_name}:{gold.id}"
            if set_name != name or url in merged or make_sample_id(photos[i % len(photos)].read_bytes(), gold.text) in dropped:
                continue
            try:
                kept.append((url, relocated(gold, normalize_alt_text(gold.text))))
            except TextRejected:
                continue
        gold = [g for _, g in kept]
        built = [by_image.get(image_of[url]["image_id"], []) if url in image_of else [] for url, _ in kept]
        text_only = list(text_linker([g.text for g in gold]))
        report["sets"][name] = {
            "images_scored": len(kept), "of_captions": sum(1 for set_name, _ in texts if set_name == name),
            "text_only": score(gold, text_only, index).to_dict(),
            "through_build": score(gold, built, index).to_dict()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print("\n".join(facts_lines(report["facts"])))
    print(f"i2e build of {len(texts)} pairs in {report['build_seconds']} s")
    for name, scores in report["sets"].items():
        print(f"{name}: {scores['images_scored']} of {scores['of_captions']} captions scored "
              f"({report['left_out_by_dedup']} pairs left out by dedup in all)")
        for who in ("text_only", "through_build"):
            s = scores[who]
            print(f"  {who:14} R {s['recall']:.3f}  P(gold) {s['precision_gold']:.3f}  P(all) {s['precision']:.3f}  "
                  f"links {s['predicted_links']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
