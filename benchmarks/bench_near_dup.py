"""Near-duplicate search (issue 9): the shipped multi-index search and perceptual hashes.

Part A, synthetic hashes (speed, memory, exactness). For each N of ``--sizes`` (default
10^4, 10^5, 10^6) a FRESH Python process pinned to one core (``sched_setaffinity``,
``OMP_NUM_THREADS=1`` etc.) draws N random 64-bit hashes (``numpy.random.default_rng``):
99% random originals and 1% planted near duplicates, each a copy of a different random
original with 1..4 random bits flipped. It then runs the shipped
``i2e_engine.dedup.index.near_pairs(HashIndex(radius=4, blocks=8), hashes)`` ``--repeats``
times (median wall time) and reports the process's peak RSS during the search (``VmHWM``
after resetting it through ``/proc/self/clear_refs`` once the hashes exist; where the kernel
refuses the reset, the ``ru_maxrss`` delta), recall of the planted pairs and precision
(planted pairs found / all pairs found). The peer, in the same process for N <= ``--peer-max``
(default 10^4), is imagededup's brute-force search over the same hashes as 16-digit hex
strings: ``PHash().find_duplicates(encoding_map=..., max_distance_threshold=4,
num_dist_workers=1)`` (one pool worker on the same core). imagededup took 1,444 s for 10^5
hashes on this machine kind, so larger N skip it unless ``--peer-max`` says otherwise.

Part B, real photos (recall and precision of the hashes). The first 2 jpgs (sorted) of every
Caltech-101 category except BACKGROUND_Google and Faces_easy (Faces_easy repeats Faces
photos), each with 4 variants made in memory: JPEG quality 30, resized to half, cropped 5%
per side, grayscale (PNG bytes except the JPEG one). Ours: ``hash_image_bytes`` on the
bytes, then ``near_pairs`` over whole + central hashes (``owners``, ``is_center``), i.e.
``near_distance <= 4``. Peer: imagededup ``PHash.encode_image`` on the decoded RGB array and
its ``find_duplicates`` at its default threshold 10. Recall = original-variant pairs found /
all; precision = pairs of the same original (any two of its 5 images) / all pairs reported.
Also the distances behind radius 4: per variant kind the p99 and max of ``near_distance``,
and how many pairs of different originals fall within 2, 4, 6, 8 bits.

imagededup is not a project dependency; install it by hand::

    .venv/bin/pip install imagededup==0.3.3.post2

Full run (about 2 minutes on an idle 2-core machine)::

    .venv/bin/python benchmarks/bench_near_dup.py --out benchmarks/out/bench_near_dup.json

Smoke run: ``--sizes 1000,10000 --repeats 1 --per-category 1``.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import shlex
import subprocess
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, cpu_name, loadavg, median, proc_status_kib, reset_peak  # noqa: E402
from i2e_engine.dedup.hashes import hash_image_bytes, popcount64, to_unsigned  # noqa: E402
from i2e_engine.dedup.index import HashIndex, near_pairs  # noqa: E402
from i2e_engine.images import ImageLimits  # noqa: E402

RADIUS = 4
PEER_PHOTO_THRESHOLD = 10      # imagededup's default max_distance_threshold
DEFAULT_CALTECH = REPO.parent / "shared" / "data" / "caltech101" / "101_ObjectCategories"
SKIP_CATEGORIES = {"BACKGROUND_Google", "Faces_easy"}
VARIANTS = ("jpeg_q30", "half_size", "crop_5pct", "grayscale")
ONE_CORE_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                       "NUMEXPR_NUM_THREADS")}


# ----------------------------------------------------------------------------- memory

def imagededup_phash():
    """imagededup's PHash, its INFO logs and the num_enc_workers warning silenced."""
    from imagededup.methods import PHash

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("imagededup"):
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Parameter num_enc_workers has no effect")
    return PHash(verbose=False)


# ----------------------------------------------------------------------------- part A

def planted_hashes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` signed 64-bit hashes, 1% of them planted copies (1..4 bits flipped) of distinct
    random originals; and the planted pairs as sorted position pairs, shape (n // 100, 2)."""
    rng = np.random.default_rng(seed)
    copies = n // 100
    originals = rng.integers(0, 2**64, size=n - copies, dtype=np.uint64)
    source = rng.choice(len(originals), size=copies, replace=False)
    flips = np.zeros(copies, dtype=np.uint64)
    for row, k in enumerate(rng.integers(1, RADIUS + 1, size=copies)):
        for bit in rng.choice(64, size=k, replace=False):
            flips[row] |= np.uint64(1) << np.uint64(bit)
    values = np.concatenate([originals, originals[source] ^ flips])
    position = rng.permutation(n)           # where each value lands in the shuffled array
    hashes = np.empty(n, dtype=np.uint64)
    hashes[position] = values
    pairs = np.sort(np.stack([position[source], position[len(originals):]], axis=1), axis=1)
    return hashes.view(np.int64), pairs


def pair_codes(first: np.ndarray, second: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(first, dtype=np.int64) * n + np.asarray(second, dtype=np.int64)


def accuracy(found: np.ndarray, planted: np.ndarray) -> dict:
    hit = np.isin(planted, found).sum()
    return {"found_pairs": int(len(found)), "planted_pairs": int(len(planted)), "planted_found": int(hit),
            "recall": hit / len(planted), "precision": hit / len(found) if len(found) else 1.0}


def peer_pairs(hashes: np.ndarray) -> np.ndarray:
    """imagededup's brute-force search over the same hashes; pair codes of what it reports."""
    encoding_map = {str(i): format(int(v), "016x") for i, v in enumerate(hashes.view(np.uint64))}
    found = imagededup_phash().find_duplicates(encoding_map=encoding_map, max_distance_threshold=RADIUS,
                                                 scores=True, num_dist_workers=1)
    pairs = {(min(int(a), int(b)), max(int(a), int(b))) for a, dups in found.items() for b, _ in dups}
    pairs = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    return pair_codes(pairs[:, 0], pairs[:, 1], len(hashes))


def synthetic_child(n: int, seed: int, repeats: int, peer: bool) -> dict:
    """One size, in this (fresh, one-core) process."""
    hashes, planted = planted_hashes(n, seed)
    planted = pair_codes(planted[:, 0], planted[:, 1], n)
    index = HashIndex(radius=RADIUS, blocks=8)
    rss_before = proc_status_kib("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = reset_peak()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        found = near_pairs(index, hashes)
        times.append(time.perf_counter() - started)
    if reset:
        peak = {"memory_kind": "VmHWM - VmRSS before", "peak_increment_kib": proc_status_kib("VmHWM") - rss_before}
    else:
        peak = {"memory_kind": "ru_maxrss delta",
                "peak_increment_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before}
    assert (found.distance <= RADIUS).all()
    result = {"n": n, "ours_s": times, "ours_median_s": median(times), "rss_before_kib": rss_before, **peak,
              "ours": accuracy(pair_codes(found.first, found.second, n), planted)}
    if peer:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            found_peer = peer_pairs(hashes)
            times.append(time.perf_counter() - started)
        result.update({"peer_s": times, "peer_median_s": median(times), "peer": accuracy(found_peer, planted),
                       "peer_worker_maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss})
    return result


def run_synthetic(n: int, args) -> dict:
    command = [sys.executable, __file__, "--child", str(n), "--seed", str(args.seed), "--repeats", str(args.repeats),
               "--peer-max", str(args.peer_max)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True, env={**os.environ, **ONE_CORE_ENV})
    return json.loads(done.stdout.strip().splitlines()[-1])


def synthetic_table(results: list[dict]) -> list[str]:
    lines = ["| hashes N | planted pairs | ours `near_pairs` s, median | ours peak MiB | ours recall | ours precision "
             "| imagededup brute force s, median | imagededup recall | imagededup precision "
             "| ratio imagededup / ours |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ours = r["ours"]
        peer = r.get("peer")
        peer_cells = (f"{r['peer_median_s']:.2f} | {peer['recall']:.4f} | {peer['precision']:.4f} | "
                      f"**{r['peer_median_s'] / r['ours_median_s']:,.0f}x**") if peer else "skipped | | |"
        lines.append(f"| {r['n']:,} | {ours['planted_pairs']:,} | {r['ours_median_s']:.3f} "
                     f"({', '.join(f'{t:.3f}' for t in r['ours_s'])}) | {r['peak_increment_kib'] / 1024:,.1f} | "
                     f"{ours['recall']:.4f} | {ours['precision']:.4f} | {peer_cells} |")
    return lines


# ----------------------------------------------------------------------------- part B

def encoded(image: Image.Image, kind: str) -> bytes:
    """``kind`` variant of an RGB image, as encoded bytes (PNG except the JPEG one)."""
    width, height = image.size
    if kind == "jpeg_q30":
        out, fmt, options = image, "JPEG", {"quality": 30}
    elif kind == "half_size":
        out, fmt, options = image.resize((max(1, width // 2), max(1, height // 2)), Image.LANCZOS), "PNG", {}
    elif kind == "crop_5pct":
        dx, dy = int(width * 0.05), int(height * 0.05)
        out, fmt, options = image.crop((dx, dy, width - dx, height - dy)), "PNG", {}
    else:
        out, fmt, options = image.convert("L"), "PNG", {}
    buffer = io.BytesIO()
    out.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo_set(root: Path, per_category: int) -> list[tuple[int, str, bytes]]:
    """(original id, kind, bytes): every chosen original as read, then its 4 variants."""
    items = []
    categories = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in SKIP_CATEGORIES)
    for category in categories:
        for path in sorted(category.glob("*.jpg"))[:per_category]:
            original = len({owner for owner, _, _ in items})
            data = path.read_bytes()
            rgb = Image.open(io.BytesIO(data)).convert("RGB")
            items.append((original, "original", data))
            items += [(original, kind, encoded(rgb, kind)) for kind in VARIANTS]
    return items


def popcount_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return popcount64(np.ascontiguousarray(a[:, None] ^ b[None, :]))


def run_photos(root: Path, per_category: int) -> dict:
    items = photo_set(root, per_category)
    owner = np.array([o for o, _, _ in items])
    kind = np.array([k for _, k, _ in items])
    limits = ImageLimits()
    started = time.perf_counter()
    ours = [hash_image_bytes(data, limits)[1] for _, _, data in items]
    ours_hash_s = time.perf_counter() - started
    whole = np.array([to_unsigned(h.phash) for h in ours], dtype=np.uint64)
    central = np.array([to_unsigned(h.phash_center) for h in ours], dtype=np.uint64)

    # ours, through the shipped search: whole + central hashes, pairs of one item dropped
    hashes = np.concatenate([whole, central]).view(np.int64)
    item_of = np.concatenate([np.arange(len(items))] * 2)
    is_center = np.repeat([False, True], len(items))
    found = near_pairs(HashIndex(radius=RADIUS, blocks=8), hashes, owners=item_of, is_center=is_center)
    ours_pairs = {(min(a, b), max(a, b)) for a, b in zip(item_of[found.first].tolist(), item_of[found.second].tolist())}

    # every pair's near_distance (as hashes.near_distance, vectorized) for the distributions
    distance = np.minimum(popcount_matrix(whole, whole),
                          np.minimum(popcount_matrix(whole, central), popcount_matrix(central, whole)))
    whole_only = popcount_matrix(whole, whole)
    i, j = np.triu_indices(len(items), 1)
    brute = {(a, b) for a, b in zip(i[distance[i, j] <= RADIUS].tolist(), j[distance[i, j] <= RADIUS].tolist())}
    assert brute == ours_pairs, "near_pairs and near_distance disagree"

    # imagededup PHash on the decoded RGB arrays, its own search at its default threshold
    phasher = imagededup_phash()
    started = time.perf_counter()
    peer_hex = [phasher.encode_image(image_array=np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
                for _, _, data in items]
    peer_hash_s = time.perf_counter() - started
    found_peer = phasher.find_duplicates(encoding_map={str(n): h for n, h in enumerate(peer_hex)},
                                         max_distance_threshold=PEER_PHOTO_THRESHOLD, scores=True, num_dist_workers=1)
    peer_pairs_ = {(min(int(a), int(b)), max(int(a), int(b))) for a, dups in found_peer.items() for b, _ in dups}
    peer_int = np.array([int(h, 16) for h in peer_hex], dtype=np.uint64)
    peer_distance = popcount_matrix(peer_int, peer_int)

    originals = np.flatnonzero(kind == "original")
    first_of = {owner[o]: o for o in originals}

    def scores(pairs: set) -> dict:
        out = {"reported_pairs": len(pairs), "true_pairs": sum(owner[a] == owner[b] for a, b in pairs)}
        out["precision"] = out["true_pairs"] / len(pairs) if pairs else 1.0
        for variant in (*VARIANTS, "all"):
            rows = np.flatnonzero(kind != "original") if variant == "all" else np.flatnonzero(kind == variant)
            hit = sum((min(first_of[owner[r]], r), max(first_of[owner[r]], r)) in pairs for r in rows)
            out[f"recall_{variant}"] = hit / len(rows)
        return out

    def spread(matrix: np.ndarray) -> dict:
        out = {}
        for variant in VARIANTS:
            rows = np.flatnonzero(kind == variant)
            d = matrix[[first_of[owner[r]] for r in rows], rows]
            out[variant] = {"mean": float(d.mean()), "p99": float(np.percentile(d, 99)), "max": int(d.max())}
        return out

    different = owner[i] != owner[j]
    both_original = different & (kind[i] == "original") & (kind[j] == "original")
    within = {}
    for bits in (2, 4, 6, 8, 10):
        within[bits] = {"all_items": int((distance[i, j][different] <= bits).sum()),
                        "originals_only": int((distance[i, j][both_original] <= bits).sum()),
                        "imagededup_all_items": int((peer_distance[i, j][different] <= bits).sum())}
    return {"originals": len(originals), "items": len(items), "different_original_pairs": int(different.sum()),
            "original_pairs": int(both_original.sum()), "ours_hash_s": ours_hash_s, "peer_hash_s": peer_hash_s,
            "ours": scores(ours_pairs), "peer": scores(peer_pairs_), "ours_distance": spread(distance),
            "ours_whole_only_distance": spread(whole_only), "peer_distance": spread(peer_distance),
            "different_within": within}


def photo_tables(r: dict) -> list[str]:
    lines = [f"{r['originals']} originals x (itself + {len(VARIANTS)} variants) = {r['items']} images; "
             f"hashing took {r['ours_hash_s']:.1f} s (ours, 2 hashes each, from bytes) and {r['peer_hash_s']:.1f} s "
             "(imagededup, from decoded arrays).", "",
             "| method | " + " | ".join(f"recall {v}" for v in VARIANTS)
             + " | recall all | reported pairs | precision |",
             "|---|" + "---:|" * (len(VARIANTS) + 3)]
    for name, key in ((f"ours: pHash whole + central, `near_distance` <= {RADIUS}", "ours"),
                      (f"imagededup PHash, threshold {PEER_PHOTO_THRESHOLD} (its default)", "peer")):
        s = r[key]
        lines.append(f"| {name} | " + " | ".join(f"{s[f'recall_{v}']:.3f}" for v in VARIANTS) +
                     f" | {s['recall_all']:.3f} | {s['reported_pairs']:,} | {s['precision']:.3f} |")
    lines += ["", "Distance from each variant to its original (bits):", "",
              "| variant | ours `near_distance` p99 / max | ours whole-to-whole only mean / p99 / max "
              "| imagededup mean / p99 / max |", "|---|---:|---:|---:|"]
    for v in VARIANTS:
        ours, whole, peer = r["ours_distance"][v], r["ours_whole_only_distance"][v], r["peer_distance"][v]
        lines.append(f"| {v} | {ours['p99']:.1f} / {ours['max']} | {whole['mean']:.1f} / {whole['p99']:.1f} / "
                     f"{whole['max']} | {peer['mean']:.1f} / {peer['p99']:.1f} / {peer['max']} |")
    lines += ["", f"Pairs of different originals within d bits ({r['different_original_pairs']:,} pairs among all "
              f"images, {r['original_pairs']:,} among the originals alone):", "",
              "| d | ours, all images | ours, originals only | imagededup, all images |", "|---:|---:|---:|---:|"]
    for bits, w in r["different_within"].items():
        lines.append(f"| {bits} | {w['all_items']:,} | {w['originals_only']:,} | {w['imagededup_all_items']:,} |")
    return lines


# ----------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated N, one fresh process each")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per size (median)")
    parser.add_argument("--peer-max", type=int, default=10_000, help="run imagededup for N up to this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--caltech", default=str(DEFAULT_CALTECH), help="Caltech-101 101_ObjectCategories folder")
    parser.add_argument("--per-category", type=int, default=2, help="originals per Caltech-101 category")
    parser.add_argument("--out", help="also write the raw numbers as JSON here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(json.dumps(synthetic_child(args.child, args.seed, args.repeats, args.child <= args.peer_max)))
        return

    try:
        import imagededup  # noqa: F401
    except ImportError:
        sys.exit("imagededup is missing: .venv/bin/pip install imagededup==0.3.3.post2")
    command = f".venv/bin/python {shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])}"
    start_load = loadavg()
    lines = [f"Command: `{command}`", "",
             f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; load average at start {start_load}. "
             f"numpy {np.__version__}, imagededup {metadata.version('imagededup')}, imagehash "
             f"{metadata.version('imagehash')}.", "",
             f"Synthetic hashes (seed {args.seed}), one fresh process per N pinned to one core; "
             f"`near_pairs(HashIndex(radius={RADIUS}, blocks=8), hashes)`, medians of {args.repeats}; "
             f"imagededup `find_duplicates(encoding_map, max_distance_threshold={RADIUS}, num_dist_workers=1)` "
             f"for N <= {args.peer_max:,}.", ""]
    synthetic = []
    for n in sorted(int(s) for s in args.sizes.split(",")):
        synthetic.append(run_synthetic(n, args))
        print(f"N={n:,}: ours {synthetic[-1]['ours_median_s']:.2f} s", file=sys.stderr, flush=True)
    lines += synthetic_table(synthetic)
    if synthetic:
        lines += ["", f"Peak memory: {synthetic[0]['memory_kind']} of the search process, in MiB."]

    photos = None
    root = Path(args.caltech)
    if root.is_dir():
        photos = run_photos(root, args.per_category)
        lines += ["", "Caltech-101 photos and in-memory variants:", "", *photo_tables(photos)]
    else:
        lines += ["", f"Caltech-101 not found at {root}: the photo part was skipped."]
        print(f"skipping the photo part: {root} is missing", file=sys.stderr)
    lines += ["", f"Load average at end {loadavg()}."]

    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"command": command, "cpu": cpu_name(), "cores": os.cpu_count(),
                                              "args": vars(args), "synthetic": synthetic, "photos": photos,
                                              "markdown": report}, indent=2, default=str))


if __name__ == "__main__":
    main()
