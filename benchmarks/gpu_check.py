"""The prepared GPU check (issue 21): four numbers that need a GPU, measured with the shipped
code on synthetic or shipped data, so they can be taken the day a GPU is at hand.

Sections (each timed after warm-up calls, the device synchronized at the edges of each timed
window, the median window quoted; each guarded, so one that fails is reported with its error
and the others still run; the exit code is 1 if any failed):

- ``mofi_train``: one ``trainer.state.train_step`` of the ``mofi_vit_b16`` config (ViT-B/16,
  bf16 autocast, gradient checkpointing, byte text tower, cosine head + contrastive loss) on
  synthetic uint8 batches: samples/s, model TFLOP/s, MFU (model FLOPs, recompute excluded) and
  HFU (recompute included) against ``trainer.perf.peak_flops``.
- ``head_2m``: the 2M x 768 ``ShardedCosineHead`` alone on one device (world 1), stepped as
  ``train_step`` steps it: loss forward/backward, gradient clipping, fused AdamW. Peak device
  memory and step time.
- ``clip_scoring``: the engine's scoring path (``decode_rgb`` + ``OpenClipScorer.embed_images``,
  as ``ScoreStage`` runs them) with open_clip ViT-B-32 on real JPEG bytes (scikit-image's
  photos re-encoded at web sizes). Random-init weights: the GPU machine has no downloadable
  weights, and the weights' values do not change the speed.
- ``spacy_ner``: the engine's mention extractor (``i2e_engine.ner.build_extractor``, which calls
  ``spacy.prefer_gpu()``) over real captions; docs/s and whether spaCy ran on the GPU.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--smoke] [--out result.json] [--only a,b]

``--smoke`` shrinks every size so the whole check runs on a CPU in well under a minute: the
plumbing test (tests/test_gpu_check.py). Its numbers are no benchmark.
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

GOLD_CAPTIONS = REPO / "benchmarks" / "gold" / "coco_mini_entities.jsonl"
JPEG_LONG_SIDES = (640, 1024)   # a typical web photo and a large one
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Sizes:
    """Every size the check uses; ``full`` for a GPU (one 80 GB H100), ``smoke`` for the CPU
    plumbing run. ``windows`` timed windows of ``calls`` calls each, after ``warmup`` calls."""
    train_config: str
    train_classes: int
    train_windows: tuple[int, int, int]     # (warmup, windows, calls)
    head_classes: int
    head_batch: int
    head_windows: tuple[int, int, int]
    scoring_images: int                     # images per timed call
    scoring_batch: int                      # the scorer's batch_size
    scoring_windows: tuple[int, int, int]
    ner_docs: int                           # docs per timed call
    ner_windows: tuple[int, int, int]


FULL = Sizes(train_config="mofi_vit_b16", train_classes=100_000, train_windows=(3, 3, 4),
             head_classes=2_000_000, head_batch=256, head_windows=(2, 3, 3),
             scoring_images=512, scoring_batch=256, scoring_windows=(1, 3, 1),
             ner_docs=4096, ner_windows=(1, 3, 1))
# smoke_mofi's logits chunk is 3 classes: few classes keep its loss to a few chunks
SMOKE = Sizes(train_config="smoke_mofi", train_classes=32, train_windows=(2, 2, 1),
              head_classes=20_000, head_batch=32, head_windows=(1, 2, 1),
              scoring_images=2, scoring_batch=2, scoring_windows=(1, 2, 1),
              ner_docs=64, ner_windows=(1, 2, 1))


# ----------------------------------------------------------------------------- timing

def synchronizer(device: torch.device) -> Callable[[], None]:
    """What waits for the device: CUDA work is asynchronous, so a timer read without it would
    measure the kernel launches, not the work."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_windows(fn: Callable[[], object], sync: Callable[[], None], warmup: int, windows: int,
                 calls: int) -> list[float]:
    """Seconds per call in each of ``windows`` timed windows of ``calls`` calls, after ``warmup``
    calls left out (allocator warm-up, cuDNN/cuBLAS heuristics, the FLOP-counting step). The
    device is synchronized at each window's edges only, so calls inside a window overlap host
    and device work as a real loop does."""
    for _ in range(warmup):
        fn()
    sync()
    seconds = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        seconds.append((time.perf_counter() - start) / calls)
    return seconds


def release(device: torch.device) -> None:
    """Free what the last section left, so the next one starts from an empty device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


# ----------------------------------------------------------------------------- shipped data

def captions() -> list[str]:
    """Real alt-texts: the 100 COCO captions of the linking gold set and the 16 descriptions of
    the engine's demo photos (names, places, products), in a fixed order."""
    from i2e_engine.demo import DEMO_PAIRS
    coco = [json.loads(line)["text"] for line in GOLD_CAPTIONS.read_text().splitlines() if line.strip()]
    return coco + [text for _, text in DEMO_PAIRS]


def web_jpegs() -> list[bytes]:
    """The demo's scikit-image photos as JPEG bytes with the longer side at each of
    ``JPEG_LONG_SIDES``: real photo content at the sizes a web crawl brings."""
    from PIL import Image

    from i2e_engine.demo import DEMO_PAIRS, skimage_data_dir
    out = []
    for name, _ in DEMO_PAIRS:
        with Image.open(skimage_data_dir() / name) as opened:
            photo = opened.convert("RGB")
        for side in JPEG_LONG_SIDES:
            scale = side / max(photo.size)
            resized = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                                   Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            resized.save(buffer, "JPEG", quality=JPEG_QUALITY)
            out.append(buffer.getvalue())
    return out


def cycled(items: list, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


# ----------------------------------------------------------------------------- sections

def train_batch(batch_size: int, image_size: int, max_labels: int, num_classes: int, texts: list[str],
                pin: bool) -> dict:
    """A synthetic loader batch with the loader's keys and dtypes: uint8 NHWC pixels, two
    entities per image (the rest -1), every image valid. Pinned on CUDA, as a loader's are."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, num_classes, (batch_size, max_labels), generator=g)
    labels[:, 2:] = -1
    batch = {"pixels": torch.randint(0, 256, (batch_size, image_size, image_size, 3), generator=g,
                                     dtype=torch.uint8),
             "labels": labels, "valid": torch.ones(batch_size, dtype=torch.int64), "text_class": labels[:, 0]}
    if pin:
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return {**batch, "texts": cycled(texts, batch_size)}


def check_mofi_train(device: torch.device, sizes: Sizes) -> tuple[dict, str]:
    """samples/s, model TFLOP/s, MFU and HFU of the shipped train step."""
    from trainer.configs import get_config
    from trainer.dist import Comm
    from trainer.perf import peak_flops
    from trainer.state import build_state, train_step

    cfg = get_config(sizes.train_config)
    if device.type != "cuda":
        cfg.precision = "fp32"  # bf16 autocast is the CUDA path
    comm = Comm(device=device)
    state = build_state(cfg, sizes.train_classes, comm, device)
    batch = train_batch(cfg.data.batch_size, cfg.data.image_size, cfg.data.max_labels, sizes.train_classes,
                        captions(), pin=device.type == "cuda")
    seconds = time_windows(lambda: train_step(state, batch, comm, measure_flops=True), synchronizer(device),
                           *sizes.train_windows)
    step_s = statistics.median(seconds)
    peak = peak_flops(device, cfg.precision)
    flops, recompute = state.flops_per_step, state.recompute_flops_per_step
    record = {
        "config": cfg.name, "image_arch": cfg.image.arch, "image_size": cfg.data.image_size,
        "batch_per_gpu": cfg.data.batch_size, "num_classes": sizes.train_classes, "precision": cfg.precision,
        "grad_checkpointing": cfg.image.grad_checkpointing, "text_tower": cfg.text.kind,
        "step_s_median": step_s, "step_s_windows": seconds,
        "samples_per_s": cfg.data.batch_size / step_s,
        "model_flops_per_step": flops, "recompute_flops_per_step": recompute,
        "model_tflops_per_s": flops / step_s / 1e12,
        "peak_tflops": peak / 1e12 if peak else None,
        "mfu": flops / step_s / peak if peak else None,
        "hfu": (flops + recompute) / step_s / peak if peak else None,
        "peak_memory_bytes": peak_memory(device),
        "loss_finite": math.isfinite(state.history[-1]),
    }
    mfu = f"MFU {record['mfu']:.1%}, HFU {record['hfu']:.1%}" if peak else "MFU n/a (no peak for this device)"
    line = (f"{cfg.name} ({cfg.image.arch} {cfg.data.image_size}px, batch {cfg.data.batch_size}, "
            f"{sizes.train_classes:,} classes, {cfg.precision}): {record['samples_per_s']:.1f} samples/s, "
            f"{record['model_tflops_per_s']:.3g} model TFLOP/s, {mfu}")
    return record, line


def make_head(num_classes: int, dim: int, device: torch.device):
    """World-1 ``ShardedCosineHead`` with random rows made on ``device``. Its constructor draws
    every 4096-row block from a seeded CPU generator (about 40 s for 2M x 768 on this project's
    CPU, then a 6 GB copy); the rows' values do not change the step's speed, so the bench fills
    them in place instead (as benchmarks/bench_train.py's measure_head does)."""
    from trainer.heads import ShardedCosineHead
    head = ShardedCosineHead(1, dim)  # one row: the constructor sets every attribute
    head.num_classes, head.end = num_classes, num_classes
    head.weight = torch.nn.Parameter(torch.empty(num_classes, dim, device=device).normal_(0, 0.02))
    return head


def check_head(device: torch.device, sizes: Sizes) -> tuple[dict, str]:
    """Peak memory and step time of the cosine head as the trainer steps it (mofi_vit_b16's
    scale, margin, logits chunk, clipping and AdamW settings; bf16 logits on CUDA)."""
    from trainer.configs import get_config
    from trainer.dist import Comm
    from trainer.heads import head_memory_bytes
    from trainer.state import adamw, clip_gradients

    cfg = get_config("mofi_vit_b16")
    t, o, dim, rows = cfg.task, cfg.optim, cfg.embed_dim, sizes.head_batch
    comm = Comm(device=device)
    head = make_head(sizes.head_classes, dim, device)
    opt = adamw([head.weight], o.adamw_impl, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(rows, dim, generator=g), dim=1).to(device).requires_grad_()
    labels = torch.randint(0, sizes.head_classes, (rows, cfg.data.max_labels), generator=g).to(device)
    labels[:, 2:] = -1
    valid = torch.ones(rows, device=device)
    lowp = device.type == "cuda" and cfg.precision == "bf16"  # as trainer.task.Task sets it

    def step() -> None:
        head.weight.grad, feats.grad = None, None
        loss = head(feats, labels, valid, scale=t.scale, margin=t.margin, chunk=t.logits_chunk,
                    sample_rate=t.sample_rate, comm=comm, lowp=lowp)
        loss.backward()
        _, grad = head.gradient()
        clip_gradients([], grad, o.clip_grad_norm, comm, device)
        opt.step()

    seconds = time_windows(step, synchronizer(device), *sizes.head_windows)
    kept = [head.weight, head.weight.grad, *(v for v in opt.state[head.weight].values() if torch.is_tensor(v))]
    derived = head_memory_bytes(sizes.head_classes, dim, 1, batch_rows=rows, chunk=t.logits_chunk)
    record = {
        "num_classes": sizes.head_classes, "dim": dim, "batch_rows": rows, "world": 1, "lowp_logits": lowp,
        "step_s_median": statistics.median(seconds), "step_s_windows": seconds,
        "peak_memory_bytes": peak_memory(device),
        "persistent_bytes": sum(x.numel() * x.element_size() for x in kept),
        "derived_total_bytes": derived["total"],
    }
    peak = record["peak_memory_bytes"]
    memory = f"peak {peak / 2**30:.2f} GiB" if peak is not None else "peak n/a (CPU)"
    line = (f"cosine head {sizes.head_classes:,} x {dim} (world 1, batch {rows}): step "
            f"{record['step_s_median'] * 1e3:.1f} ms, {memory}, persistent "
            f"{record['persistent_bytes'] / 2**30:.2f} GiB (derived total {derived['total'] / 2**30:.2f} GiB)")
    return record, line


def check_clip_scoring(device: torch.device, sizes: Sizes) -> tuple[dict, str]:
    """images/s of JPEG decode + preprocess + image tower as ``ScoreStage`` runs them (decode
    one scorer batch, then ``embed_images``); the tower alone and the decode alone apart, to
    show which one bounds the rate."""
    from i2e_engine.images import ImageLimits, decode_rgb
    from i2e_engine.scorers.openclip import OpenClipScorer

    scorer = OpenClipScorer("ViT-B-32", device=device.type, batch_size=sizes.scoring_batch,
                            allow_random_init=True)
    jpegs = cycled(web_jpegs(), sizes.scoring_images)
    limits, step = ImageLimits(), scorer.batch_size

    def score_all() -> None:
        for start in range(0, len(jpegs), step):
            scorer.embed_images([decode_rgb(data, limits) for data in jpegs[start:start + step]])

    def decode_all() -> None:
        for data in jpegs:
            decode_rgb(data, limits)

    pixels = torch.randn(step, 3, 224, 224, device=device)

    @torch.inference_mode()
    def tower() -> None:
        with torch.autocast("cuda", enabled=device.type == "cuda"):  # as OpenClipScorer._encode_images
            scorer.model.encode_image(pixels)

    sync = synchronizer(device)
    end_to_end = time_windows(score_all, sync, *sizes.scoring_windows)
    decode = time_windows(decode_all, sync, *sizes.scoring_windows)
    tower_s = time_windows(tower, sync, *sizes.scoring_windows)
    n = len(jpegs)
    record = {
        "arch": "ViT-B-32", "weights": scorer.name, "scorer_batch_size": step, "images_per_call": n,
        "jpeg_long_sides": list(JPEG_LONG_SIDES), "mean_jpeg_bytes": sum(map(len, jpegs)) // n,
        "images_per_s": n / statistics.median(end_to_end),
        "decode_images_per_s": n / statistics.median(decode),
        "tower_images_per_s": step / statistics.median(tower_s),
        "s_per_call_windows": end_to_end,
    }
    line = (f"open_clip ViT-B-32 scoring (random init, batch {step}): {record['images_per_s']:.1f} images/s "
            f"incl. JPEG decode + preprocess in one process; decode alone {record['decode_images_per_s']:.1f}/s, "
            f"image tower alone {record['tower_images_per_s']:.1f}/s")
    return record, line


class SectionError(RuntimeError):
    """A section that measured but did not measure what it should: its numbers are kept."""

    def __init__(self, record: dict, message: str):
        super().__init__(message)
        self.record = record


def check_spacy_ner(device: torch.device, sizes: Sizes) -> tuple[dict, str]:
    """docs/s of the engine's spaCy pipeline (tokenizer, tok2vec, tagger, attribute_ruler,
    ner) through ``MentionExtractor.extract``. No KB alias matcher: it is CPU work over the
    4.7M-entity KB, which a fresh machine has not built. On CUDA, a spaCy left on the CPU
    (no CuPy) fails the section: its docs/s would not be the GPU's."""
    from thinc.api import get_current_ops

    from i2e_engine.config import NerConfig
    from i2e_engine.ner import build_extractor

    config = NerConfig(prefer_gpu=device.type == "cuda")
    extractor = build_extractor(config)
    ops = type(get_current_ops()).__name__
    on_gpu = ops == "CupyOps"
    texts = cycled(captions(), sizes.ner_docs)
    seconds = time_windows(lambda: extractor.extract(texts, config.batch_size), lambda: None, *sizes.ner_windows)
    record = {"model": config.model, "pipes": extractor.nlp.pipe_names, "batch_size": config.batch_size,
              "docs_per_call": len(texts), "thinc_ops": ops, "on_gpu": on_gpu,
              "docs_per_s": len(texts) / statistics.median(seconds), "s_per_call_windows": seconds}
    line = (f"spaCy {config.model} NER ({ops}, {'GPU' if on_gpu else 'CPU'}): {record['docs_per_s']:.1f} docs/s "
            f"over {len(texts)} captions")
    if device.type == "cuda" and not on_gpu:
        raise SectionError(record, line + " -- spaCy did not move to the GPU: is cupy-cuda13x installed?")
    return record, line


SECTIONS: dict[str, Callable[[torch.device, Sizes], tuple[dict, str]]] = {
    "mofi_train": check_mofi_train, "head_2m": check_head, "clip_scoring": check_clip_scoring,
    "spacy_ner": check_spacy_ner,
}


# ----------------------------------------------------------------------------- driver

def run_section(name: str, device: torch.device, sizes: Sizes) -> tuple[dict, str]:
    """One section, guarded: an exception becomes ``ok: false`` with its error, and the check
    goes on with the next section."""
    start = time.perf_counter()
    try:
        record, line = SECTIONS[name](device, sizes)
        record = {"ok": True, **record}
    except Exception as error:  # noqa: BLE001 -- every failure is reported, none stops the check
        record = {"ok": False, **getattr(error, "record", {}), "error": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc(limit=-3)}
        line = f"FAILED: {type(error).__name__}: {error}"
    finally:
        release(device)
    record["section_wall_s"] = round(time.perf_counter() - start, 2)
    return record, line


def cpu_model() -> str:
    """The CPU's model name (benchmarks/_common.py has the same, but importing it pulls in the
    readers' dependencies, which a bare GPU image run with --no-install may lack)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def environment(device: torch.device, smoke: bool) -> dict:
    from importlib import metadata

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"device": device.type, "device_name": name, "smoke": smoke, "cpus": os.cpu_count(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "spacy": version("spacy"), "cupy": version("cupy-cuda13x"), "open_clip": version("open_clip_torch"),
            "timm": version("timm")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: the CPU plumbing run, not a benchmark")
    p.add_argument("--out", help="write the JSON result here")
    p.add_argument("--only", help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device")
    names = args.only.split(",") if args.only else list(SECTIONS)
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; known: {list(SECTIONS)}")
    device, sizes = torch.device(args.device), SMOKE if args.smoke else FULL
    result = {**environment(device, args.smoke), "sections": {}}
    print(json.dumps({"environment": {k: v for k, v in result.items() if k != "sections"}}), flush=True)
    lines = []
    for name in names:
        record, line = run_section(name, device, sizes)
        result["sections"][name] = record
        lines.append(f"{name:13s} {line}")
        print(lines[-1], flush=True)
        print(json.dumps({"section": name, **record}), flush=True)
    result["failed"] = [name for name, record in result["sections"].items() if not record["ok"]]
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    kind = "SMOKE (plumbing, not a benchmark)" if args.smoke else "full sizes"
    print(f"\n== GPU check summary: {result['device_name']}, {kind} ==", *lines,
          f"failed: {', '.join(result['failed']) or 'none'}", sep="\n", flush=True)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
