"""The trainer's streaming loader over packed shards: (1) samples/s of one rank's loader
(`trainer.data.Loader`: shard streaming, shuffle buffer, draft decode, augment, text, in its
decode threads) against a bare single-thread loop that decodes the same packed JPEGs (PIL open
+ RGB + resize, nothing else), median of 3 in the same run; (2) peak RSS of one rank's loader
process for 10^4 and for 10^6 packed rows (synthetic tiny JPEGs), which should not grow with
the dataset. Prints JSON and a markdown table.

    .venv/bin/python benchmarks/bench_loader.py [--data ../shared/data/coco-mini] [--rows 4096]
        [--samples 4096] [--image-size 224] [--rss-rows 10000 1000000] [--rss-samples 20480]

Packed datasets are written by the test-only writer (tests/trainer/packed_fixtures.py),
which follows the `i2e pack` contract byte for byte.
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (coco_pairs, facts_lines, median, proc_status_kib, run_facts,  # noqa: E402
                                DEFAULT_DATA)


def _config(image_size: int, batch: int, buffer: int):
    from trainer.configs import DataConfig
    return DataConfig(image_size=image_size, batch_size=batch, shuffle_buffer=buffer, prefetch_batches=2)


def write_photo_pack(data: str, out: Path, rows: int, side: int, shards: int) -> Path:
    """``rows`` packed rows cycling over the coco-mini photos (shorter side ``side``, as
    `i2e pack` stores them, JPEG q90), each with its own key."""
    from PIL import Image

    from tests.trainer.packed_fixtures import jpeg, sample, synthetic_entities, write_packed
    photos = []
    for pair in coco_pairs(data):
        with Image.open(io.BytesIO(pair["image"])) as im:
            im = im.convert("RGB")
            scale = side / min(im.size)
            if scale < 1:
                im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
            photos.append(jpeg(im))
    packed_rows = [sample(f"p{i:09d}", photos[i % len(photos)], [i % 50, (i * 7) % 50], f"caption {i}", i)
             for i in range(rows)]
    write_packed(out, [packed_rows[s::shards] for s in range(shards)], synthetic_entities(50), image_size=side)
    return out, len(photos)


def loader_rate(packed: Path, samples: int, threads: int, image_size: int, batch: int) -> float:
    from trainer.data import Loader
    from trainer.packed import open_packed
    ds = open_packed(packed)
    seen, t0 = 0, time.perf_counter()
    for b in Loader(ds, _config(image_size, batch, 1024), seed=0, rank=0, world=1, threads=threads):
        seen += len(b["keys"])
        if seen >= samples:
            break
    return seen / (time.perf_counter() - t0)


def bare_rate(packed: Path, samples: int, image_size: int) -> float:
    """Decode the same JPEGs straight from the shards: one thread, full decode, resize."""
    import numpy as np
    from PIL import Image

    from trainer.packed import iter_shard, open_packed
    ds = open_packed(packed)
    seen, t0 = 0, time.perf_counter()
    while seen < samples:
        for uri in ds.shard_uris:
            for s in iter_shard(uri, ds.shard_format):
                with Image.open(io.BytesIO(s["jpg"])) as im:
                    np.asarray(im.convert("RGB").resize((image_size, image_size), Image.BILINEAR))
                seen += 1
                if seen >= samples:
                    break
            if seen >= samples:
                break
    return seen / (time.perf_counter() - t0)


def rss_child(packed: str, samples: int) -> None:
    """Run in a fresh process: one rank's loader over ``samples`` samples; print peak RSS."""
    importlib.import_module("torch")  # loaded by every rank anyway: not the loader's memory

    from trainer.data import Loader
    from trainer.packed import open_packed
    base = proc_status_kib("VmRSS")
    ds = open_packed(packed)
    opened = proc_status_kib("VmRSS")
    seen = 0
    for b in Loader(ds, _config(32, 256, 4096), seed=0, rank=0, world=1, threads=2):
        seen += len(b["keys"])
        if seen >= samples:
            break
    print(json.dumps({"rows": ds.rows, "shards": len(ds.shard_uris), "samples_read": seen,
                      "rss_after_imports_kib": base, "rss_after_open_kib": opened, "peak_rss_kib": proc_status_kib("VmHWM")}))


def write_synthetic_pack(out: Path, rows: int, shard_rows: int) -> Path:
    """``rows`` tiny synthetic packed rows (16 px JPEGs); an existing complete one is reused."""
    if (out / "index.json").is_file() and json.loads((out / "index.json").read_text())["rows"] == rows:
        return out
    from tests.trainer.packed_fixtures import synthetic_entities, synthetic_shards, write_packed
    sizes = [min(shard_rows, rows - s) for s in range(0, rows, shard_rows)]
    return write_packed(out, synthetic_shards(sizes, 1000, side=16), synthetic_entities(1000), image_size=16)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="coco-mini root (photos for the throughput part)")
    p.add_argument("--rows", type=int, default=4096, help="packed rows of the throughput part (photos cycled)")
    p.add_argument("--samples", type=int, default=4096, help="samples per throughput measurement")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rss-rows", type=int, nargs="*", default=[10_000, 1_000_000],
                   help="packed row counts for the RSS part (none: skip it)")
    p.add_argument("--rss-samples", type=int, default=20_480)
    p.add_argument("--workdir", default=None, help="where the packed datasets go (default: a temp dir; "
                   "synthetic packs already there are reused)")
    p.add_argument("--rss-child", nargs=2, metavar=("PACKED", "SAMPLES"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]))
        return 0
    facts = run_facts()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_loader"))
    photos, distinct = write_photo_pack(args.data, work / "photos", args.rows, 256, 8)
    rates: dict[str, list[float]] = {"bare_1_thread": [], "loader_1_thread": [], "loader_2_threads": []}
    for _ in range(3):
        rates["bare_1_thread"].append(bare_rate(photos, args.samples, args.image_size))
        rates["loader_1_thread"].append(loader_rate(photos, args.samples, 1, args.image_size, 64))
        rates["loader_2_threads"].append(loader_rate(photos, args.samples, 2, args.image_size, 64))
    throughput = {k: round(median(v), 1) for k, v in rates.items()}
    rss = []
    for rows in args.rss_rows:
        t0 = time.perf_counter()
        packed = write_synthetic_pack(work / f"synthetic_{rows}", rows, 10_000)
        written = time.perf_counter() - t0
        done = subprocess.run([sys.executable, __file__, "--rss-child", str(packed), str(args.rss_samples)],
                              capture_output=True, text=True, check=True)
        rss.append({**json.loads(done.stdout.strip().splitlines()[-1]), "write_s": round(written, 1)})
    ratio = rss[-1]["peak_rss_kib"] / rss[0]["peak_rss_kib"] if len(rss) > 1 else None
    report = {"facts": facts, "throughput_samples_per_s": throughput, "raw": rates,
              "image_size": args.image_size, "packed_rows": args.rows, "distinct_photos": distinct,
              "samples": args.samples,
              "rss": rss, "rss_ratio_largest_to_smallest": round(ratio, 3) if ratio else None}
    print(json.dumps(report, indent=2))
    print("\n".join(facts_lines(facts)))
    print("\n| loader (one rank) | samples/s (median of 3) |\n|---|---|")
    for k, v in throughput.items():
        print(f"| {k} | {v} |")
    print("\n| packed rows | shards | samples read | RSS after imports (MiB) | after open (MiB) | peak (MiB) |\n"
          "|---|---|---|---|---|---|")
    for r in rss:
        print(f"| {r['rows']} | {r['shards']} | {r['samples_read']} | {r['rss_after_imports_kib'] / 1024:.0f} | "
              f"{r['rss_after_open_kib'] / 1024:.0f} | {r['peak_rss_kib'] / 1024:.0f} |")
    if ratio:
        print(f"\nPeak RSS ratio {rss[-1]['rows']} / {rss[0]['rows']} rows: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
