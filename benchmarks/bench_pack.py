"""`i2e pack` throughput (input pairs/s) of the local runner, on the engine's own tables.

Input: the tables of one `i2e build` of coco-mini (local runner, built here unless
``--tables`` names one), replicated ``--copies`` times: every table part of ``images`` and
``image_entities`` is written again with " #copy N" after its ``source_shard`` and a new
``image_id`` (sha256 of the old one and N), so each replica is a distinct image to the pack
(its own order key and shard) while its bytes, alt-text, entities and scores are the
original's; ``manifest.json`` is rewritten with the replicated row counts. The photos are
coco-mini's (about 640x480 JPEGs), so every image is decoded (at a reduced JPEG scale),
resized to 256 px and re-encoded.

Each measured pack is ``pipelines.pack.run_pack(PackConfig(...), "local")`` into a fresh
output folder, the whole call timed (plan, the narrow decisions, both passes, vocab,
index); ``--repeats`` runs, medians. pairs/s = input pairs / wall; images/s likewise.
The bare baseline, in the same rounds: one loop that reads every image of the same tables
and puts it through the shipped ``i2e_engine.pack.resize_image`` (decode, resize,
re-encode: the work no pack can skip), writing nothing. ratio = bare wall / pack wall.

    .venv/bin/python benchmarks/bench_pack.py --copies 20 --repeats 3 --out benchmarks/out/bench_pack.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_DATA, facts_lines, median, proc_status_kib, run_facts, timed  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from i2e_engine.pack import PackConfig, resize_image  # noqa: E402
from i2e_engine.publish import table_uri  # noqa: E402
from pipelines.pack import run_pack  # noqa: E402


def build_tables(data: str, out: Path) -> Path:
    """One `i2e build` of coco-mini with the local runner (about a minute on 2 cores)."""
    from i2e_engine.config import BuildConfig
    from pipelines.run import run_build

    run_build(BuildConfig(inputs=[data], output=str(out)), runner="local", progress=lambda _: None)
    return out


def _replica(table: pa.Table, copy: int) -> pa.Table:
    """``table`` with the row keys and image ids of replica ``copy`` (copy 0 is the original)."""
    if copy == 0:
        return table
    ids = [hashlib.sha256(f"{image_id}#copy{copy}".encode()).hexdigest() for image_id in table["image_id"].to_pylist()]
    table = table.set_column(table.schema.get_field_index("image_id"), table.schema.field("image_id"),
                             pa.array(ids, pa.string()))
    shards = pc.binary_join_element_wise(table["source_shard"], pa.scalar(f" #copy {copy}"), "")
    return table.set_column(table.schema.get_field_index("source_shard"), table.schema.field("source_shard"), shards)


def replicate_tables(tables: Path, copies: int, out: Path) -> dict[str, int]:
    """``tables`` with ``copies`` distinct replicas of every image and pair; returns the row counts."""
    rows = {"images": 0, "image_entities": 0}
    manifest = json.loads((tables / "manifest.json").read_text())
    for table in rows:
        (out / table).mkdir(parents=True)
        for part in sorted(Path(table_uri(str(tables), table, manifest)).glob("*.parquet")):
            source = pq.read_table(part)
            for copy in range(copies):
                replica = _replica(source, copy)
                pq.write_table(replica, out / table / f"copy{copy:03d}-{part.name}", row_group_size=64)
                rows[table] += replica.num_rows
    shutil.copytree(table_uri(str(tables), "entities", manifest), out / "entities")
    manifest["rows"].update(rows)
    manifest["tables"] = {table: table for table in ("images", "image_entities", "entities")}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return rows


def bare_resize_loop(tables: Path, image_size: int = 256, quality: int = 90) -> float:
    """Seconds for the floor: every image of ``tables`` read and resized, in one loop."""
    start = time.perf_counter()
    for part in sorted(Path(table_uri(str(tables), "images")).glob("*.parquet")):
        for batch in pq.ParquetFile(part).iter_batches(columns=["image"], batch_size=64):
            for data in batch.column(0).to_pylist():
                resize_image(data, image_size, quality)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", help="an existing `i2e build` output (default: build coco-mini here)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="coco-mini root, when building the tables")
    parser.add_argument("--copies", type=int, default=10, help="distinct replicas of every image and pair")
    parser.add_argument("--repeats", type=int, default=3, help="measured packs; medians")
    parser.add_argument("--shard-rows", type=int, default=1000)
    parser.add_argument("--shard-format", default="webdataset", choices=["webdataset", "parquet"])
    parser.add_argument("--workdir", help="where tables and packs go (default: a new temp folder, removed)")
    parser.add_argument("--out", help="also write the raw numbers as JSON here")
    args = parser.parse_args()
    facts = run_facts()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_pack_"))
    try:
        tables = Path(args.tables) if args.tables else build_tables(args.data, work / "built")
        rows = replicate_tables(tables, args.copies, work / "tables")
        runs = []
        for number in range(args.repeats):
            config = PackConfig(tables=str(work / "tables"), output=str(work / f"pack{number}"),
                                shard_rows=args.shard_rows, shard_format=args.shard_format)
            seconds, index = timed(lambda: run_pack(config, "local"))
            counts = index["counts"]
            runs.append({"seconds": round(seconds, 2), "input_pairs": counts["input_pairs"],
                         "input_images": counts["input_images"], "kept_images": counts["kept_images"],
                         "shards": len(index["shards"]),
                         "shard_bytes": sum((work / f"pack{number}" / s["path"]).stat().st_size for s in index["shards"])})
            runs[-1]["bare_seconds"] = round(bare_resize_loop(work / "tables"), 2)
            print(f"pack {number}: {seconds:.2f} s, {counts['input_pairs'] / seconds:.0f} pairs/s; "
                  f"bare resize loop {runs[-1]['bare_seconds']} s", file=sys.stderr)
            shutil.rmtree(work / f"pack{number}")
        wall = median([r["seconds"] for r in runs])
        result = {"facts": facts, "copies": args.copies, "table_rows": rows, "runs": runs, "median_seconds": wall,
                  "pairs_per_second": round(rows["image_entities"] / wall, 1),
                  "images_per_second": round(rows["images"] / wall, 1),
                  "bare_median_seconds": median([r["bare_seconds"] for r in runs]),
                  "ratio_bare_over_pack": median([r["bare_seconds"] / r["seconds"] for r in runs]), "peak_rss_mib": (proc_status_kib("VmHWM") or 0) // 1024}
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    lines = facts_lines(facts) + [
        "", f"Input: {rows['images']} images, {rows['image_entities']} pairs ({args.copies} distinct replicas of "
        f"the coco-mini tables); {args.shard_format} shards of {args.shard_rows} rows, 256 px, JPEG q90.", "",
        "| run | pack wall s | pairs/s | images/s | shards | MB written | bare resize loop s | ratio bare / pack |",
        "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {i} | {r['seconds']} | {r['input_pairs'] / r['seconds']:.0f} | {r['input_images'] / r['seconds']:.0f} "
              f"| {r['shards']} | {r['shard_bytes'] / 1e6:.1f} | {r['bare_seconds']} | {r['bare_seconds'] / r['seconds']:.3f} |"
              for i, r in enumerate(runs)]
    lines += [f"| **median** | {wall} | **{result['pairs_per_second']:.0f}** | {result['images_per_second']:.0f} | | "
              f"| {result['bare_median_seconds']} | **{result['ratio_bare_over_pack']:.3f}** |",
              "", f"Peak RSS of the benchmark process (build included when it built the tables): "
              f"{result['peak_rss_mib']} MiB."]
    print("\n".join(lines))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
