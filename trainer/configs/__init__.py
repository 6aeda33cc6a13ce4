"""Experiment configs as small Python functions returning dataclasses (big_vision style).

``get_config(name)`` looks a config up by name (see ``CONFIGS``); ``apply_overrides``
applies ``section.field=value`` strings (values parsed as JSON when they parse, else kept
as strings); ``to_dict``/``format_config`` give the printable resolved config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from i2e_engine.encoder.config import ImageTowerConfig, TextTowerConfig  # the towers: the engine's, shared


@dataclass
class DataConfig:
    packed: str | None = None          # packed dataset URI (`i2e pack` output: index.json, vocab, shards/)
    tables: str | None = None          # I2E tables; train.py packs them into the local cache first
    image_size: int = 224
    batch_size: int = 256              # per worker, fixed (each epoch's tail is dropped)
    max_labels: int = 4                # entities kept per image, best rank first
    text_template: str = "{name}, {description}. {alt_text}"   # fields: name, description, alt_text
    text_entity: str = "sampled"       # "sampled": drawn among the image's entities per (seed, epoch, key);
                                       # "first": always the best-ranked one
    entity_balanced: bool = False      # sampled with probability ~ 1/image_count of the class
    augment: bool = True               # random resized crop + horizontal flip
    crop_scale: tuple = (0.35, 1.0)
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    shuffle_buffer: int = 4096         # samples in each rank's shuffle buffer (memory: this x packed JPEG size)
    decode_threads: int = 0            # decode threads inside each worker (0: the worker's CPUs, at least 1)
    prefetch_batches: int = 2          # decoded batches in flight per worker


@dataclass
class TaskConfig:
    recipe: str = "mofi"               # "supervised" | "contrastive" | "mofi"
    supervised_weight: float = 1.0
    contrastive_weight: float = 1.0
    scale: float = 32.0                # cosine-softmax scale s
    margin: float = 0.2                # CosFace margin m subtracted from positive cosines
    sample_rate: float = 1.0           # fraction of classes per step (positives always kept)
    logits_chunk: int = 65536          # classes per fp32 logits chunk
    init_logit_scale: float = 2.6592   # log(1/0.07)
    max_logit_scale: float = 100.0


@dataclass
class OptimConfig:
    lr: float = 1e-3
    head_lr: float | None = None       # default: lr
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.98)
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.0
    clip_grad_norm: float = 1.0        # 0 disables
    trunk_lr_scale: float = 1.0        # the image trunk's lr = lr x this (a pretrained trunk fine-tuned gently)
    ema_decay: float = 0.0             # 0 disables EMA
    adamw_impl: str = "auto"           # "auto" (= "fused": one kernel, on CUDA and on CPUs) | "fused"
                                       # | "foreach" | "for_loop"


@dataclass
class TrainConfig:
    name: str = "mofi"
    embed_dim: int = 512
    total_steps: int = 100_000
    seed: int = 0
    precision: str = "bf16"            # "bf16" (autocast, GPU only) | "fp32"
    compile: bool = False              # torch.compile the towers' forward (in place: same state-dict keys)
    channels_last: bool = False        # image tower weights and input pixels in channels-last memory format
    checkpoint_every: int = 1000
    log_every: int = 10
    keep_checkpoints: int = 3
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 3
    storage_path: str | None = None    # default: ~/ray_results
    run_name: str | None = None        # default: config name
    data: DataConfig = field(default_factory=DataConfig)
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


ADAMW_IMPLS = ("auto", "fused", "foreach", "for_loop")
PROJ_INITS = ("random", "identity")
_REMOVED = {"fail_at_step"}  # fields of older configs (in checkpoints' meta.json) that no longer exist


def to_dict(config: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(data: dict) -> TrainConfig:
    sections = {"data": DataConfig, "image": ImageTowerConfig, "text": TextTowerConfig,
                "task": TaskConfig, "optim": OptimConfig}
    kwargs = {}
    for key, value in data.items():
        if key in _REMOVED:
            continue
        if key in sections:
            sub = dict(value)
            for f in dataclasses.fields(sections[key]):
                if f.name in sub and isinstance(sub[f.name], list) and isinstance(f.default, tuple):
                    sub[f.name] = tuple(sub[f.name])
            kwargs[key] = sections[key](**sub)
        else:
            kwargs[key] = value
    return TrainConfig(**kwargs)


def format_config(config: TrainConfig) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


# Fields that may change between a run and its resume without breaking the checkpoint.
_RESUME_FREE = {"total_steps", "checkpoint_every", "log_every", "keep_checkpoints", "max_failures",
                "storage_path", "run_name", "use_gpu", "cpus_per_worker", "compile", "channels_last"}


# Fields added after checkpoint format 2, with their defaults: at the default they are left out of
# the fingerprint, so checkpoints written before they existed still resume.
_ADDED_DEFAULTS = {("image", "proj_init"): "random", ("optim", "trunk_lr_scale"): 1.0}


def fingerprint(config: TrainConfig) -> str:
    """Hash of the fields that must match for a checkpoint to be resumed."""
    data = to_dict(config)
    for (section, key), default in _ADDED_DEFAULTS.items():
        if data[section].get(key) == default:
            data[section].pop(key)
    for key in _RESUME_FREE:
        data.pop(key, None)
    for key in ("decode_threads", "prefetch_batches", "packed", "tables"):
        data["data"].pop(key, None)
    data["optim"].pop("adamw_impl", None)  # the same optimizer state either way
    data["text"].pop("trim_padding", None)  # the same model and numerics either way
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def check_config(config: TrainConfig) -> TrainConfig:
    """Fail at config time on values the run would only trip over later."""
    from trainer.data import TEXT_ENTITY, template_fields
    template_fields(config.data.text_template)
    if config.data.text_entity not in TEXT_ENTITY:
        raise ValueError(f"data.text_entity {config.data.text_entity!r} not in {TEXT_ENTITY}")
    if config.data.shuffle_buffer < 1:
        raise ValueError("data.shuffle_buffer must be >= 1")
    if config.image.proj_init not in PROJ_INITS:
        raise ValueError(f"image.proj_init {config.image.proj_init!r} not in {PROJ_INITS}")
    if config.optim.trunk_lr_scale < 0:
        raise ValueError("optim.trunk_lr_scale must be >= 0")
    if config.optim.adamw_impl not in ADAMW_IMPLS:
        raise ValueError(f"optim.adamw_impl {config.optim.adamw_impl!r} not in {ADAMW_IMPLS}")
    return config


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``a.b=value`` overrides in place and return the config."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        target = config
        parts = key.split(".")
        for part in parts[:-1]:
            if not hasattr(target, part):
                raise ValueError(f"unknown config section {part!r} in {key!r}")
            target = getattr(target, part)
        if not dataclasses.is_dataclass(target) or parts[-1] not in {f.name for f in dataclasses.fields(target)}:
            raise ValueError(f"unknown config field {key!r}")
        value = _parse_value(text)
        if isinstance(getattr(target, parts[-1]), tuple) and isinstance(value, list):
            value = tuple(value)
        setattr(target, parts[-1], value)
    return config


from trainer.configs import mofi as _mofi  # noqa: E402

CONFIGS: dict[str, Callable[[], TrainConfig]] = {
    name: getattr(_mofi, name) for name in _mofi.__all__
}


def get_config(name: str) -> TrainConfig:
    if name not in CONFIGS:
        raise KeyError(f"unknown config {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name]()
