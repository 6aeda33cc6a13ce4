"""Supervised vs contrastive vs multi-task (MOFI) on Caltech-101, through the real engine and trainer.

Stages (each skips work already done, so a rerun resumes; --stages picks a subset):

  prepare  select training categories and (``--heldout-categories``) other categories to
           evaluate on, from Caltech-101's fixed split; write an img2dataset-style parquet
           of the training categories' train images (jpg bytes, natural alt-text naming the
           category, url = relative path), a custom KB parquet (one entity per training
           category: the held-out ones are unknown to the engine and the trainer), and the
           evaluation split files (``<relpath> <category>``): eval_train (kNN database,
           probe training) and eval_test (queries), both of the evaluation categories
  build    ``i2e build pairs.parquet --kb kb.parquet --output tables/`` (the engine: NER +
           alias matcher, linking, image-entity scoring), then measure linking accuracy
           against the folder label (linking.json)
  train    trainer/train.py with the supervised / contrastive / mofi recipe, same image tower
           (EfficientNet-Lite0, ImageNet weights, frozen trunk + trainable MLP projection, or
           with ``--trunk finetune`` the whole tower),
           same tables, steps, batch and seed, for every --seeds; exports to encoders/
  eval     the GPR1200 protocol (mAP, self-match included), leave-one-out mAP and R@1, kNN
           and linear-probe top-1 on the evaluation categories, for every exported encoder, for
           the untrained tower exported the same way (``--proj-init identity``), for WiSE-FT
           interpolations (``--wise-alpha``), and for the untrained pretrained tower through
           trainer.eval's own offline path (``python -m trainer.eval --encoder offline``: its
           own preprocessing and 1280-d features; ``--no-offline-baseline`` skips it)
  report   results.json + results.md: mean +- std over seeds per recipe and metric

Evaluation modes: ``cli`` runs ``python -m trainer.eval`` on every exported encoder (each
re-encodes all images through the full tower); ``fast`` (default) uses that the trunk is
frozen: the trunk features of the eval images are computed once (with the exported
encoder's own preprocessing), each encoder's trained projection is applied to them, and the
same trainer.eval metric functions score the result. Fast mode checks, per encoder, that
its embeddings equal ``load_encoder(path).encode_images`` on a sample of images, and fails
otherwise.

Examples: the scale EXPERIMENTS.md section 2 reports (train on 50 categories, evaluate on
the 50 others), the same with the whole tower fine-tuned, and every image of both halves:
  .venv/bin/python experiments/caltech_mofi.py --categories 50 --heldout-categories 50 --max-per-class 25 \\
      --max-test-per-class 15 --steps 100 --work experiments/out/caltech_heldout
  .venv/bin/python experiments/caltech_mofi.py ... --trunk finetune --work experiments/out/caltech_heldout_ft
  .venv/bin/python experiments/caltech_mofi.py --categories 50 --heldout-categories 50 --max-per-class 0 \\
      --max-test-per-class 0 --steps 3000 --eval-mode cli --work experiments/out/caltech_full

Section 3 (the fixed comparison): ``--proj-init identity --proj-hidden 0 --embed-dim 1280`` makes
the untrained tower a 0-step export of the same config (encoders/untrained, its embedding the
pretrained trunk's pooled features), evaluated through the same path as the trained encoders;
``--wise-alpha 0.5`` also evaluates WiSE-FT encoders (image tower weights interpolated with the
untrained one's); ``--tag`` keeps several settings in one work folder (hyper-parameter search):
  .venv/bin/python experiments/caltech_mofi.py --categories 50 --heldout-categories 50 --max-per-class 25 \\
      --max-test-per-class 15 --proj-init identity --proj-hidden 0 --embed-dim 1280 --lr 3e-4 \\
      --wise-alpha 0.5 --work experiments/out/caltech_fixed
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from caltech101_entities import ENTITIES, EXCLUDED, TEMPLATES, article  # noqa: E402

RECIPES = ("supervised", "contrastive", "mofi")
STAGES = ("prepare", "build", "train", "eval", "report")
PY = sys.executable
METRICS = [("retrieval", "map_gpr1200", "GPR1200 mAP"),
           ("retrieval", "map_leave_one_out", "mAP (leave-one-out)"),
           ("retrieval", "recall_at_1_leave_one_out", "R@1 (leave-one-out)"),
           ("knn", "top1", "kNN top-1 (k=20)"),
           ("linear_probe", "top1", "linear probe top-1")]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def entity_id(folder: str) -> str:
    return f"caltech101:{folder}"


# ------------------------------------------------------------------------------------- prepare

def read_split(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def select(args) -> dict[str, list[str]]:
    """The subset: ``categories`` (the training entities) with their ``train`` images, and the
    evaluation categories with ``eval_train`` (kNN database, linear-probe training set) and
    ``eval_test`` (GPR1200-protocol queries, kNN and probe test) images. With
    ``--heldout-categories M`` the evaluation categories are M others, disjoint from the
    training ones (transfer to unseen categories); with 0 they are the training categories."""
    data = Path(args.data)
    all_cats = sorted(ENTITIES)
    order = [all_cats[i] for i in np.random.default_rng(args.subset_seed).permutation(len(all_cats))]
    if args.category_names:
        cats = sorted(args.category_names.split(","))
        unknown = set(cats) - set(all_cats)
        if unknown:
            raise SystemExit(f"unknown or excluded categories: {sorted(unknown)}")
    elif args.categories:
        cats = sorted(order[:args.categories])
    else:
        cats = all_cats
    rest = [c for c in order if c not in cats]
    if args.heldout_categories > len(rest):
        raise SystemExit(f"--heldout-categories {args.heldout_categories}: only {len(rest)} categories are not "
                         f"training categories")
    eval_cats = sorted(rest[:args.heldout_categories]) if args.heldout_categories else cats

    def pick(lines: list[str], chosen: list[str], cap: int) -> list[str]:
        out = []
        for cat in chosen:
            files = sorted(ln for ln in lines if ln.split("/", 1)[0] == cat)
            if cap and len(files) > cap:  # a seeded sample, not the first files (they are not shuffled)
                rng = np.random.default_rng([args.subset_seed, int(hashlib.sha256(cat.encode()).hexdigest()[:8], 16)])
                files = sorted(files[i] for i in rng.choice(len(files), cap, replace=False))
            out.extend(files)
        return out

    train_lines, test_lines = read_split(data / "train.txt"), read_split(data / "test.txt")
    return {"categories": cats, "eval_categories": eval_cats,
            "train": pick(train_lines, cats, args.max_per_class),
            "eval_train": pick(train_lines, eval_cats, database_cap(args)),
            "eval_test": pick(test_lines, eval_cats, args.max_test_per_class)}


def database_cap(args: argparse.Namespace) -> int:
    """Database images per evaluation category: --max-eval-train-per-class, else --max-per-class
    (so more training images need not change what the evaluation ranks against)."""
    return args.max_per_class if args.max_eval_train_per_class is None else args.max_eval_train_per_class


def caption_for(rel: str) -> str:
    folder = rel.split("/", 1)[0]
    name = ENTITIES[folder][0]
    template = TEMPLATES[int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) % len(TEMPLATES)]
    return template.format(name=name, Name=name[0].upper() + name[1:], a=article(name))


def kb_kind(name: str) -> str:
    """The KB kind of a category's entity. The linker links a common noun written in lower case
    ("a photo of a motorcycle") only to a visual concept (kind ``concept``), and a name ("Snoopy",
    "Joshua tree") only to an entity that is not a concept; so a category whose name is a common
    noun is a concept, one whose name is capitalized a thing."""
    return "thing" if name[:1].isupper() else "concept"


def stage_prepare(args, work: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import schemas
    from i2e_engine.kb.build import _write_versioned, kb_version

    done = work / "prepare.json"
    if done.exists():
        log(f"prepare: done before ({done})")
        return json.loads(done.read_text())
    work.mkdir(parents=True, exist_ok=True)
    chosen = select(args)
    cats, train = chosen["categories"], chosen["train"]
    images = Path(args.data) / "101_ObjectCategories"
    # img2dataset-style parquet: jpg bytes, caption, url (here: the relative path)
    table = pa.table({"jpg": pa.array([(images / rel).read_bytes() for rel in train], pa.binary()),
                      "caption": [caption_for(rel) for rel in train],
                      "url": train})
    tmp = work / ".pairs.parquet.tmp"
    pq.write_table(table, tmp, row_group_size=256)
    os.replace(tmp, work / "pairs.parquet")
    # custom KB: one entity per selected category (the schema `i2e kb build` writes; versioned metadata)
    kb = schemas.from_records([{"entity_id": entity_id(c), "name": ENTITIES[c][0], "description": ENTITIES[c][1],
                                "aliases": list(ENTITIES[c][2]), "source": "custom", "popularity": 1.0,
                                "qid": None, "wiki_title": None, "kind": kb_kind(ENTITIES[c][0])}
                               for c in cats], "kb")
    _write_versioned(kb, work / "kb.parquet", kb_version(kb))
    for split in ("eval_train", "eval_test"):  # what the evaluation reads (never the training images)
        (work / f"{split}_split.txt").write_text("".join(f"{rel} {rel.split('/', 1)[0]}\n" for rel in chosen[split]))
    heldout = not set(chosen["eval_categories"]) & set(cats)
    info = {"categories": cats, "n_categories": len(cats), "n_train": len(train),
            "eval_categories": chosen["eval_categories"], "heldout": heldout,
            "n_eval_train": len(chosen["eval_train"]), "n_eval_test": len(chosen["eval_test"]),
            "excluded_folders": EXCLUDED, "max_per_class": args.max_per_class,
            "max_eval_train_per_class": database_cap(args), "max_test_per_class": args.max_test_per_class, "subset_seed": args.subset_seed,
            "example_captions": [caption_for(rel) + f"  <- {rel}" for rel in train[:: max(1, len(train) // 6)]]}
    done.write_text(json.dumps(info, indent=2))
    log(f"prepare: {len(cats)} training categories ({len(train)} images); evaluation on "
        f"{len(chosen['eval_categories'])} {'held-out' if heldout else 'training'} categories "
        f"({len(chosen['eval_train'])} database / {len(chosen['eval_test'])} query images) -> {work}")
    return info


# --------------------------------------------------------------------------------------- build

def stage_build(args, work: Path) -> dict:
    import pandas as pd

    tables = work / "tables"
    if not (tables / "manifest.json").exists():
        cmd = [str(REPO / ".venv/bin/i2e") if (REPO / ".venv/bin/i2e").exists() else "i2e", "build",
               str(work / "pairs.parquet"), "--kb", str(work / "kb.parquet"), "--output", str(tables),
               "--entity-text", "name_description"]
        log("build: " + " ".join(cmd))
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO)
        (work / "build_time.json").write_text(json.dumps({"wall_s": round(time.perf_counter() - t0, 1)}))
    else:
        log(f"build: tables exist ({tables})")
    from i2e_engine import table_uri

    images = pd.read_parquet(table_uri(str(tables), "images"), columns=["image_id", "url"])
    pairs = pd.read_parquet(table_uri(str(tables), "image_entities"),
                            columns=["image_id", "entity_id", "rank", "mention"])
    rejects = pd.read_parquet(table_uri(str(tables), "rejects"))
    sample = pd.read_parquet(work / "pairs.parquet", columns=["url", "caption"])
    sample["expected"] = [entity_id(u.split("/", 1)[0]) for u in sample["url"]]
    linked = images.merge(pairs, on="image_id", how="left")
    per_image = linked.groupby("url").agg(entities=("entity_id", lambda s: sorted(x for x in s if isinstance(x, str))),
                                          top=("entity_id", lambda s: None))
    top1 = linked[linked["rank"] == 1].set_index("url")["entity_id"]
    rows = []
    for url, caption, expected in zip(sample["url"], sample["caption"], sample["expected"]):
        ents = per_image["entities"].get(url)
        kept = ents is not None
        rows.append({"url": url, "caption": caption, "expected": expected, "kept": kept,
                     "entities": ents or [], "top1": top1.get(url)})
    df = pd.DataFrame(rows)
    n = len(df)
    correct_top1 = int((df["top1"] == df["expected"]).sum())
    correct_any = int(sum(e in ents for e, ents in zip(df["expected"], df["entities"])))
    no_entity = int(sum(k and not ents for k, ents in zip(df["kept"], df["entities"])))
    wrong = df[df["kept"] & df["top1"].notna() & (df["top1"] != df["expected"])]
    dropped = df[~df["kept"]]
    manifest = json.loads((tables / "manifest.json").read_text())
    report = {
        "n_train_images": n, "kept_in_images_table": int(df["kept"].sum()),
        "linked_to_correct_entity_top1": correct_top1, "linking_accuracy_top1": round(correct_top1 / n, 4),
        "correct_entity_among_links": correct_any, "kept_without_entity": no_entity,
        "linked_to_wrong_entity": len(wrong), "dropped_by_engine": len(dropped),
        "multi_entity_images": int(sum(len(e) > 1 for e in df["entities"])),
        "reject_reasons": rejects.groupby(["stage", "kind", "reason"]).size().reset_index(name="n")
        .to_dict(orient="records") if len(rejects) else [],
        "wrong_examples": wrong.head(10)[["url", "caption", "top1", "expected"]].to_dict(orient="records"),
        "dropped_examples": dropped.head(10)[["url", "caption"]].to_dict(orient="records"),
        "per_category_accuracy": {c.split(":", 1)[1]: round(float(g["top1"].eq(c).mean()), 3)
                                  for c, g in df.groupby("expected")},
        "engine_manifest_summary": {k: manifest.get(k) for k in ("input_samples", "kept", "filtered", "rejected",
                                                                    "kb_version", "scorer") if k in manifest},
    }
    (work / "linking.json").write_text(json.dumps(report, indent=2, default=str))
    log(f"build: linking accuracy (rank-1 entity == folder category) {correct_top1}/{n} = {correct_top1 / n:.2%}; "
        f"wrong {len(wrong)}, kept without entity {no_entity}, dropped {len(dropped)}")
    return report


# --------------------------------------------------------------------------------------- train

def run_name(args, recipe: str, seed: int) -> str:
    """``<recipe>[-<tag>]_s<seed>``: the encoder's folder under encoders/ and its eval/ file."""
    return f"{recipe}{'-' + args.tag if args.tag else ''}_s{seed}"


def train_overrides(args, recipe: str, seed: int) -> list[str]:
    s = [f"task.recipe={recipe}", f"seed={seed}", "use_gpu=false", "precision=fp32",
         f"image.proj_hidden={args.proj_hidden}",
         f"data.batch_size={args.batch_size}", "data.augment=false",
         "data.text_template={name}, {description}", "text.context_length=32",
         f"optim.lr={args.lr}", f"optim.head_lr={args.head_lr}", f"optim.warmup_steps={args.warmup}",
         "optim.weight_decay=0.05", f"optim.ema_decay={args.ema}",
         f"checkpoint_every={args.steps}", "keep_checkpoints=1", f"log_every={max(1, args.steps // 10)}",
         "task.scale=16.0", "task.margin=0.1"]
    if args.proj_init != "random":  # identity: the untrained tower's embedding is the trunk's pooled features
        s += [f"image.proj_init={args.proj_init}", f"embed_dim={args.embed_dim}"]
    if args.trunk_lr_scale != 1.0:
        s.append(f"optim.trunk_lr_scale={args.trunk_lr_scale}")
    if args.trunk == "frozen":  # the trunk runs once per image; later epochs read the feature cache
        s += ["image.freeze_trunk=true", "image.feature_cache=1000000"]
    else:
        s += ["image.freeze_trunk=false"]
    if recipe == "supervised":
        s.append("text.kind=none")  # no text tower in the supervised recipe
    if recipe == "mofi":
        s += ["task.supervised_weight=1.0", "task.contrastive_weight=1.0"]
    return s


def stage_train(args, work: Path) -> None:
    from trainer.train import build_parser, init_ray, resolve_config, run

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tables = work / "tables"
    todo = [(seed, recipe) for seed in args.seeds for recipe in args.recipes
            if not (work / "encoders" / run_name(args, recipe, seed) / "model_card.json").exists()]
    if not todo:
        log("train: all encoders exported before")
        return
    init_ray(num_cpus=2)
    times = json.loads((work / "train_times.json").read_text()) if (work / "train_times.json").exists() else {}
    for seed, recipe in todo:
        name = run_name(args, recipe, seed)
        argv = ["--config", "mofi_efficientnet_lite0", "--tables", str(tables), "--storage-path", str(work / "runs"),
                "--run-name", name, "--num-workers", "1", "--cpus-per-worker", "2", "--steps", str(args.steps),
                "--max-failures", "0"]
        for o in train_overrides(args, recipe, seed):
            argv += ["--set", o]
        cfg = resolve_config(build_parser().parse_args(argv))
        log(f"train {name}: {args.steps} steps x batch {args.batch_size}")
        (work / "train_cmds.txt").open("a").write(
            "python trainer/train.py " + " ".join(a if " " not in a else repr(a) for a in argv) + "\n")
        t0 = time.perf_counter()
        result = run(cfg, str(work / "encoders" / name))
        if result.error:
            raise RuntimeError(f"training {name} failed: {result.error}")
        times[name] = {"wall_s": round(time.perf_counter() - t0, 1),
                       "final": {k: result.metrics.get(k) for k in ("loss", "loss_supervised", "loss_contrastive",
                                                                    "samples_per_s_steady", "epoch", "bad_images")}}
        (work / "train_times.json").write_text(json.dumps(times, indent=2))
        log(f"train {name}: {times[name]}")


# ------------------------------------------------------------------------- untrained and WiSE-FT

def export_untrained(args, work: Path) -> Path | None:
    """The untrained tower exported as the trained ones are (same config, 0 steps), so that it is
    evaluated through the same path: same preprocessing, same embedding. Only meaningful with
    ``--proj-init identity`` (its embedding is then the pretrained trunk's pooled features)."""
    import torch

    from trainer.export import export_encoder
    from trainer.towers import DualEncoder
    from trainer.train import build_parser, resolve_config
    out = work / "encoders" / "untrained"
    if args.proj_init != "identity" or (out / "model_card.json").exists():
        return out if out.exists() else None
    argv = ["--config", "mofi_efficientnet_lite0", "--steps", str(args.steps), "--run-name", "untrained"]
    for o in train_overrides(args, "supervised", 0):
        argv += ["--set", o]
    cfg = resolve_config(build_parser().parse_args(argv))
    torch.manual_seed(0)
    model = DualEncoder(cfg.image, cfg.text, cfg.embed_dim, cfg.data.mean, cfg.data.std)
    export_encoder(out, model, cfg, steps=0, name="untrained")
    log(f"untrained tower exported (identity projection, {cfg.embed_dim}-d) -> {out}")
    return out


def interpolate_state_dicts(base: dict, trained: dict, alpha: float) -> dict:
    """WiSE-FT: (1 - alpha) * base + alpha * trained for every floating-point tensor (alpha = 0:
    base exactly, 1: trained exactly); other tensors (BatchNorm's step counters) are the trained
    ones. Both state dicts must have the same keys and shapes."""
    import torch
    if base.keys() != trained.keys():
        raise ValueError(f"state dicts differ in keys: {sorted(set(base) ^ set(trained))[:5]}")
    out = {}
    for key, t in trained.items():
        b = base[key]
        if b.shape != t.shape:
            raise ValueError(f"{key}: shape {tuple(b.shape)} vs {tuple(t.shape)}")
        if not t.is_floating_point() or alpha == 1.0:
            out[key] = t.clone()
        elif alpha == 0.0:
            out[key] = b.clone()
        else:
            out[key] = torch.lerp(b.to(t.dtype), t, float(alpha))
    return out


def export_wise(untrained: Path, trained: Path, out: Path, alpha: float) -> Path:
    """An exported encoder whose image tower interpolates ``untrained`` and ``trained`` (the text
    tower, if any, is the trained one's, unchanged)."""
    import shutil

    import torch
    if (out / "model_card.json").exists():
        return out
    load = lambda d: torch.load(d / "image_tower.pt", map_location="cpu", weights_only=True)  # noqa: E731
    state = interpolate_state_dicts(load(untrained), load(trained), alpha)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(trained, tmp)
    torch.save(state, tmp / "image_tower.pt")
    card = json.loads((tmp / "model_card.json").read_text())
    card.update(name=out.name, wise_ft={"alpha": alpha, "untrained": str(untrained), "trained": str(trained)})
    (tmp / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def wise_name(args, recipe: str, seed: int, alpha: float) -> str:
    return f"{run_name(args, recipe, seed).rsplit('_s', 1)[0]}-wise{alpha:g}_s{seed}"


# ---------------------------------------------------------------------------------------- eval

def eval_cli(work: Path, data: Path, encoder: str, out: Path) -> dict:
    if not out.exists():
        cmd = [PY, "-m", "trainer.eval", "--encoder", encoder, "--dataset", str(data / "101_ObjectCategories"),
               "--split-file", str(work / "eval_test_split.txt"), "--train-split", str(work / "eval_train_split.txt"),
               "--tasks", "retrieval,knn,linear_probe", "--cache-dir", str(work / "eval_cache"), "--out", str(out)]
        log("eval: " + " ".join(cmd))
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def trunk_features(work: Path, data: Path, split: str, tower) -> np.ndarray:
    """Frozen-trunk features (n, 1280) of an evaluation split ("train" | "test"), preprocessed
    exactly as ExportedEncoder does."""
    import torch

    from trainer.data import transform
    from trainer.eval.datasets import load_labelled
    cache = work / "eval_cache" / f"trunk_eval_{split}.npy"
    if cache.exists():
        return np.load(cache)
    ds = load_labelled(data / "101_ObjectCategories", work / f"eval_{split}_split.txt")
    out = []
    batch: list = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for img in list(ds.images.iter_images()) + [None]:
            if img is not None:
                batch.append(transform(img.convert("RGB"), 224, augment=False, rng=None))
            if len(batch) == 64 or (img is None and batch):
                out.append(tower.trunk(tower.normalize(torch.from_numpy(np.stack(batch)))).numpy())
                batch = []
    feats = np.concatenate(out).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, feats)
    log(f"eval: trunk features of {split}: {feats.shape} in {time.perf_counter() - t0:.0f} s")
    return feats


def eval_fast(work: Path, data: Path, enc_dir: Path, out: Path, feats: dict, sets: dict) -> dict:
    import torch

    from trainer.eval.datasets import ImageList
    from trainer.eval.knn import knn_classify
    from trainer.eval.linear_probe import linear_probe
    from trainer.eval.retrieval import retrieval_metrics
    from trainer.export import load_encoder
    if out.exists():
        return json.loads(out.read_text())
    t0 = time.perf_counter()
    enc = load_encoder(enc_dir)
    assert enc.image_tower.freeze_trunk, f"{enc_dir}: fast eval needs a frozen-trunk encoder"
    with torch.inference_mode():
        x = {s: torch.nn.functional.normalize(enc.image_tower.proj(torch.from_numpy(f)), dim=-1).numpy()
             for s, f in feats.items()}
    # check: the shortcut equals the exported encoder's own encode_images on a sample
    test = sets["test"]
    idx = list(range(0, len(test.labels), max(1, len(test.labels) // 16)))[:16]
    sample = ImageList(test.images.root, tuple(test.images.paths[i] for i in idx))
    direct = enc.encode_images(list(sample.iter_images()))
    err = float(np.abs(direct - x["test"][idx]).max())
    if err > 1e-4:
        raise RuntimeError(f"{enc_dir}: fast-eval embeddings differ from encode_images by {err}")
    train = sets["train"]
    report = {"encoder": enc.name, "mode": "fast (frozen trunk features x exported projection)",
              "check_max_abs_diff_vs_encode_images": err,
              "dataset": {"eval_set": test.name, "n_eval": len(test.labels), "n_classes": len(test.class_names),
                          "train_set": train.name, "n_train": len(train.labels)},
              "results": {
                  "retrieval": retrieval_metrics(x["test"], test.labels).as_dict(),
                  "knn": knn_classify(x["train"], train.labels, x["test"], test.labels, k=20).as_dict(),
                  "linear_probe": linear_probe(x["train"], train.labels, x["test"], test.labels).as_dict()},
              "timing_s": {"total": round(time.perf_counter() - t0, 2)}}
    out.write_text(json.dumps(report, indent=2))
    return report


def stage_eval(args, work: Path) -> None:
    data = Path(args.data)
    (work / "eval").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.offline_baseline:  # sections 1-2's baseline: trainer.eval's own offline tower and preprocessing
        eval_cli(work, data, "offline", work / "eval" / "baseline_pretrained.json")
    names = [run_name(args, r, s) for s in args.seeds for r in args.recipes
             if (work / "encoders" / run_name(args, r, s) / "model_card.json").exists()]
    untrained = export_untrained(args, work)
    if untrained is not None:
        for s in args.seeds:
            for r in args.recipes:
                if run_name(args, r, s) not in names:
                    continue
                for a in args.wise_alpha:
                    export_wise(untrained, work / "encoders" / run_name(args, r, s),
                                work / "encoders" / wise_name(args, r, s, a), a)
                    names.append(wise_name(args, r, s, a))
        names.insert(0, "untrained")
    elif args.wise_alpha:
        raise SystemExit("--wise-alpha needs --proj-init identity (weights interpolated with the untrained tower)")
    if args.eval_mode == "cli":
        for name in names:
            eval_cli(work, data, str(work / "encoders" / name), work / "eval" / f"{name}.json")
    elif names:
        from trainer.eval.datasets import load_labelled
        from trainer.export import load_encoder
        sets = {s: load_labelled(data / "101_ObjectCategories", work / f"eval_{s}_split.txt")
                for s in ("train", "test")}
        tower = load_encoder(work / "encoders" / names[0]).image_tower
        feats = {s: trunk_features(work, data, s, tower) for s in ("train", "test")}
        for name in names:
            r = eval_fast(work, data, work / "encoders" / name, work / "eval" / f"{name}.json", feats, sets)
            log(f"eval {name}: mAP {r['results']['retrieval']['map_gpr1200']} (check diff "
                f"{r['check_max_abs_diff_vs_encode_images']:.1e})")
    log(f"eval: {time.perf_counter() - t0:.0f} s")


# -------------------------------------------------------------------------------------- report

OFFLINE = "pretrained, offline path (sections 1-2)"
UNTRAINED = "untrained (same path)"


def paired_vs_untrained(per_run: dict) -> dict:
    """{recipe: {seed: GPR1200 mAP(run) - GPR1200 mAP(untrained)}} (the untrained tower has no seed)."""
    if "untrained" not in per_run:
        return {}
    base = per_run["untrained"]["GPR1200 mAP"]
    out: dict = {}
    for name, vals in per_run.items():
        if "_s" in name and name != "untrained":
            recipe, seed = name.rsplit("_s", 1)
            out.setdefault(recipe, {})[int(seed)] = round(vals["GPR1200 mAP"] - base, 2)
    return out


def stage_report(args, work: Path) -> dict:
    rows: dict[str, dict[str, list[float]]] = {}
    per_run = {}
    for path in sorted((work / "eval").glob("*.json")):
        name = path.stem
        recipe = {"baseline_pretrained": OFFLINE, "untrained": UNTRAINED}.get(name, name.rsplit("_s", 1)[0])
        res = json.loads(path.read_text())["results"]
        per_run[name] = {label: res[task][key] for task, key, label in METRICS}
        for task, key, label in METRICS:
            rows.setdefault(recipe, {}).setdefault(label, []).append(res[task][key])
    order = [UNTRAINED, OFFLINE] + sorted(r for r in rows if r not in (UNTRAINED, OFFLINE))
    summary = {r: {m: {"mean": round(float(np.mean(v)), 2), "std": round(float(np.std(v, ddof=1)), 2) if len(v) > 1
                       else 0.0, "n": len(v), "values": v} for m, v in rows[r].items()} for r in order if r in rows}
    info = json.loads((work / "prepare.json").read_text())
    linking = json.loads((work / "linking.json").read_text()) if (work / "linking.json").exists() else {}
    results = {"setup": {k: info[k] for k in ("n_categories", "n_train", "heldout", "eval_categories", "n_eval_train",
                                              "n_eval_test", "max_per_class", "max_test_per_class", "categories")},
               "train": {"steps": args.steps, "batch_size": args.batch_size, "seeds": args.seeds, "lr": args.lr,
                         "head_lr": args.head_lr, "proj_hidden": args.proj_hidden, "trunk": args.trunk,
                         "proj_init": args.proj_init, "embed_dim": args.embed_dim,
                         "trunk_lr_scale": args.trunk_lr_scale, "ema": args.ema, "wise_alpha": args.wise_alpha},
               "linking_accuracy_top1": linking.get("linking_accuracy_top1"),
               "summary": summary, "per_run": per_run}
    (work / "results.json").write_text(json.dumps(results, indent=2))
    labels = [label for _, _, label in METRICS]
    lines = ["| recipe | seeds | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for r, metrics in summary.items():
        n = metrics[labels[0]]["n"]
        cells = [f"{metrics[l]['mean']:.2f} ± {metrics[l]['std']:.2f}" if n > 1 else f"{metrics[l]['mean']:.2f}"
                 for l in labels]
        lines.append(f"| {r} | {n if r not in (UNTRAINED, OFFLINE) else '-'} | " + " | ".join(cells) + " |")
    lines += ["", "Per run:", "", "| run | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name, vals in per_run.items():
        lines.append(f"| {name} | " + " | ".join(f"{vals[l]:.2f}" for l in labels) + " |")
    paired = paired_vs_untrained(per_run)
    results["paired_gpr1200_vs_untrained"] = paired
    if paired:
        lines += ["", "GPR1200 mAP minus the untrained tower's (same path), per seed:", ""]
        lines += [f"- {r}: " + ", ".join(f"s{s} {d:+.2f}" for s, d in sorted(v.items())) for r, v in paired.items()]
    (work / "results.json").write_text(json.dumps(results, indent=2))
    (work / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "caltech101"),
                   help="Caltech-101 folder (101_ObjectCategories/, train.txt, test.txt); default ../shared/data/caltech101")
    p.add_argument("--work", default=str(REPO / "experiments" / "out" / "caltech_mofi"),
                   help="work folder for everything generated (git-ignored by default)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4, help="towers (projection, text tower, logit scale)")
    p.add_argument("--head-lr", type=float, default=3e-3, help="the supervised cosine head")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--proj-hidden", type=int, default=1024, help="MLP projection width on the frozen trunk (0: linear)")
    p.add_argument("--categories", type=int, default=20,
                   help="number of categories (a fixed seeded sample of the 100 entity categories; 0 = all)")
    p.add_argument("--category-names", help="comma-separated folder names instead of --categories")
    p.add_argument("--max-per-class", type=int, default=25, help="train images per category (0 = all)")
    p.add_argument("--max-eval-train-per-class", type=int, default=None,
                   help="kNN/linear-probe database images per evaluation category (default: --max-per-class)")
    p.add_argument("--max-test-per-class", type=int, default=15, help="test images per category (0 = all)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the category/image sample (not of training)")
    p.add_argument("--heldout-categories", type=int, default=20,
                   help="evaluate on this many other categories, never trained on (0: on the training categories)")
    p.add_argument("--proj-init", choices=("random", "identity"), default="random",
                   help="identity: a linear projection that starts as the identity (needs --proj-hidden 0 and "
                        "--embed-dim 1280), so the untrained tower, exported and evaluated like the trained ones, "
                        "is the pretrained trunk's features")
    p.add_argument("--embed-dim", type=int, default=384, help="embedding width (with --proj-init identity: 1280)")
    p.add_argument("--trunk-lr-scale", type=float, default=1.0, help="image trunk lr = --lr x this (fine-tuning)")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights (exported when > 0)")
    p.add_argument("--wise-alpha", type=float, nargs="*", default=[],
                   help="WiSE-FT: also evaluate (1-a) x untrained + a x trained image towers, for each a "
                        "(needs --proj-init identity)")
    p.add_argument("--tag", default="", help="suffix of run names (<recipe>-<tag>_s<seed>), to keep several "
                   "hyper-parameter settings in one work folder")
    p.add_argument("--no-offline-baseline", dest="offline_baseline", action="store_false",
                   help="skip sections 1-2's baseline (trainer.eval --encoder offline: its own preprocessing)")
    p.add_argument("--trunk", choices=("frozen", "finetune"), default="frozen",
                   help="frozen: ImageNet trunk fixed, MLP projection trained; finetune: the whole tower trains")
    p.add_argument("--eval-mode", choices=("fast", "cli"), default="fast",
                   help="fast: frozen trunk features once x each projection (frozen trunk only); cli: trainer.eval")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.proj_init == "identity" and (args.proj_hidden or args.embed_dim != 1280):
        raise SystemExit("--proj-init identity needs --proj-hidden 0 and --embed-dim 1280 (Lite0's pooled width)")
    if args.trunk == "finetune" and args.eval_mode == "fast":
        args.eval_mode = "cli"  # fast mode reuses frozen-trunk features; a fine-tuned trunk has its own
    work = Path(args.work).resolve()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = set(stages) - set(STAGES)
    if bad:
        raise SystemExit(f"unknown stages {sorted(bad)}")
    if not (Path(args.data) / "train.txt").is_file():
        raise SystemExit(f"Caltech-101 not found at {args.data} (expected train.txt, test.txt, 101_ObjectCategories/)")
    t0 = time.perf_counter()
    timing = json.loads((work / "stage_times.json").read_text()) if (work / "stage_times.json").exists() else {}
    for stage in STAGES:
        if stage in stages:
            s0 = time.perf_counter()
            globals()[f"stage_{stage}"](args, work)
            timing[stage] = timing.get(stage, 0) + round(time.perf_counter() - s0, 1)
            (work / "stage_times.json").write_text(json.dumps(timing, indent=2))
    log(f"done in {time.perf_counter() - t0:.0f} s; stage wall times (cumulative over reruns): {timing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
