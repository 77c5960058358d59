"""``TrainConfig``: every training setting and its default, in one typed tree.

YAML files in ``configs/`` only override these defaults (``_base_`` inheritance and ``--set``
are handled by ``qfmiqm.train.config``). The optimiser defaults are DEIQT's published ones
(narthchin/DEIQT ``configs/vit/deiqt_livec.yaml`` + its ``config.py``): AdamW, lr 2e-4, weight
decay 0.05, batch 16, 9 epochs with 3 linear warm-up epochs from 2e-7, step decay x0.1 every 3
epochs, gradient-norm clipping at 5. docs/training.md lists every key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from qfmiqm.data.transforms import InputPolicy
from qfmiqm.errors import UsageError
from qfmiqm.models.card import DecoderConfig
from qfmiqm.train.config import apply_overrides, build, config_hash, load_yaml_chain, to_plain
from qfmiqm.train.finetune import FinetuneConfig
from qfmiqm.train.objective import QFMConfig
from qfmiqm.train.schedule import SCHEDULES


@dataclass(frozen=True)
class DataConfig:
    """What to train on and how it is split."""

    #: benchmark name (``qfmiqm datasets list``) or a CSV/TSV of your own (``qfmiqm synth``'s labels.csv)
    dataset: str = ""
    #: data root (benchmarks) or the folder a CSV's relative paths start from; None: $QFMIQM_DATA / ./datasets
    root: Optional[str] = None
    #: train on the images present when some are missing (default: refuse an incomplete set)
    allow_missing: bool = False
    #: which split of the N-split protocol this run trains (0-based)
    split: int = 0
    n_splits: int = 10
    test_fraction: float = 0.2
    #: carved out of the train side; the best epoch is chosen on it (eval.select = val)
    val_fraction: float = 0.1
    seed: int = 0
    #: an existing splits.json to use instead of drawing splits
    split_file: Optional[str] = None
    #: random training crops per image per epoch (DEIQT's PATCH_NUM: 10)
    repeats: int = 1
    #: horizontal-flip probability of a training crop
    hflip: float = 0.5
    #: overrides the dataset's own max_short_side preprocessing (e.g. SPAQ's 512)
    max_short_side: Optional[int] = None
    #: train on labels minus their training-set mean (stored as the card's score offset): the
    #: bias-free panel head then starts at the right level. A pure shift: SRCC/PLCC, smooth-L1
    #: and every score-valued QFM constant are unchanged by it. DEIQT trains on raw labels.
    center_targets: bool = False
    #: unlabelled images for distillation: "train" (other crops of the training images),
    #: a folder of images, or a CSV; None: no distillation batch
    extra: Optional[str] = None
    #: the folder a CSV given as ``extra`` resolves its relative paths from
    extra_root: Optional[str] = None
    #: batches made of runs of this many images of the same content (reference image), so that
    #: in-batch pair losses (qfm.rank_weight) meet versions of one scene; 0: plain shuffle.
    #: Needs a content column (synthetic sets)
    group_size: int = 0
    #: with group_size: every run starts with its scene's pristine image (type "pristine"), so
    #: every batch holds pristine images with their own distorted versions (qfm.anchor_weight
    #: ranks exactly those pairs)
    group_anchor: bool = False


@dataclass(frozen=True)
class InputConfig:
    """The input policy (docs/input-policy.md); mean/std None: the backbone's own (timm config)."""

    size: int = InputPolicy.size
    max_short_side: int = InputPolicy.max_short_side
    #: deterministic test crops per image (1, 5 or a square); the prediction is their mean
    num_crops: int = InputPolicy.num_crops
    mean: Optional[tuple[float, float, float]] = None
    std: Optional[tuple[float, float, float]] = None
    #: what the network sees at test time: "whole" (the whole image, tiled above ``tile``) or
    #: "crops" (``num_crops`` crops of ``size``); docs/input-policy.md
    layout: str = InputPolicy.layout
    tile: int = InputPolicy.tile
    #: side of the random training crops (None: ``size``); with the whole layout, training on
    #: larger crops (the whole 288 px image of a synthetic set) matches what the test sees
    train_size: Optional[int] = None

    def policy(self, backbone_mean: tuple, backbone_std: tuple) -> InputPolicy:
        return InputPolicy(self.size, self.max_short_side, self.num_crops,
                           tuple(self.mean or backbone_mean), tuple(self.std or backbone_std),
                           layout=self.layout, tile=self.tile)

    def train_policy(self, policy: InputPolicy) -> InputPolicy:
        """The policy the random training crops are cut by: ``policy`` with ``train_size``."""
        if self.train_size is None or self.train_size == policy.size:
            return policy
        return policy.replace(size=self.train_size, max_short_side=max(policy.max_short_side, self.train_size),
                              tile=max(policy.tile, 2 * self.train_size))


@dataclass(frozen=True)
class ModelConfig:
    """The network: backbone, how much of it trains, the decoder shape and the input policy."""

    backbone: str = "efficientnet_lite0"
    #: ImageNet weights file (required for backbones without packaged weights, e.g. ViT-S/16)
    backbone_weights: Optional[str] = None
    trust_pickle: bool = False
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    input: InputConfig = field(default_factory=InputConfig)
    #: model name written into the exported card (default: the run's name)
    name: str = ""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and the learning-rate schedule (per optimiser step, as DEIQT's timm schedulers)."""

    optimizer: Literal["adamw"] = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    #: no weight decay on 1-D parameters (biases, norms, gate logits), as DEIQT/Swin do
    no_decay_1d: bool = True
    #: backbone learning rate = lr * this (fine-tuning only)
    backbone_lr_scale: float = 1.0
    #: channel-gate learning rate = lr * this. The gate feeds a linear projection that can absorb
    #: any per-channel scale, so at the head's rate it barely moves (docs/method.md)
    gate_lr_scale: float = 1.0
    #: per process; the global batch is batch_size x world size
    batch_size: int = 16
    epochs: int = 9
    warmup_epochs: float = 3.0
    #: the warm-up starts at this learning rate (DEIQT: 2e-7)
    warmup_lr: float = 2e-7
    #: step | cosine | constant (qfmiqm.train.schedule.SCHEDULES)
    schedule: str = "step"
    #: step schedule: multiply by decay_rate every decay_epochs (counted from step 0, as timm)
    decay_epochs: float = 3.0
    decay_rate: float = 0.1
    #: floor of the learning rate after warm-up
    min_lr: float = 2e-7
    #: max gradient norm (0: no clipping); DEIQT: 5
    grad_clip: float = 5.0


@dataclass(frozen=True)
class DistillConfig:
    """Teacher for QFM's distillation term (active when qfm.kd and data.extra are set)."""

    #: "ema" (exponential moving average of the student, decay qfm.ema_decay) or a model
    #: (zoo name or .safetensors path) with the same backbone
    teacher: str = "ema"


@dataclass(frozen=True)
class EvalConfig:
    #: which model is exported as best: "val" (highest val SRCC), "last" (last epoch) or
    #: "test" (highest test SRCC: DEIQT's code does this; optimistic, flagged in the card)
    select: Literal["val", "last", "test"] = "val"
    #: evaluate every N epochs (the last epoch always)
    every: int = 1
    #: evaluate the selected model on the test split at the end
    test: bool = True
    batch_size: int = 32


@dataclass(frozen=True)
class RunConfig:
    """How the run executes (none of these change the maths, except amp and deterministic)."""

    #: auto (cuda:LOCAL_RANK when available, else cpu), cpu, cuda, cuda:N
    device: str = "auto"
    #: auto: bf16 on a GPU that supports it, none on CPU; fp16 uses a GradScaler (GPU only)
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    compile: bool = False
    deterministic: bool = False
    #: DataLoader worker processes (decoding, cropping); None: min(4, CPU cores)
    workers: Optional[int] = None
    #: frozen backbone: compute head.pool(backbone(crop)) once per crop, store on disk, reuse
    cache_features: bool = False
    #: where feature caches live (shared by runs); None: ~/.cache/qfmiqm/features or $QFMIQM_CACHE
    cache_dir: Optional[str] = None
    #: training crops (random crop + flip) stored per training image in the cache bank
    crops_per_image: int = 8
    cache_dtype: Literal["float16", "float32"] = "float32"
    #: what computes the cached features: "onnx" (ONNX Runtime, 2-3x faster than PyTorch eager on
    #: a CPU), "torch", or "auto" (ONNX Runtime for a CNN backbone on the CPU without autocast)
    cache_runtime: Literal["auto", "onnx", "torch"] = "auto"
    #: last_n fine-tuning: cache what the frozen part of the backbone computes (the activation
    #: entering the first trained block, the frozen levels) once per crop, so a step runs only the
    #: trained blocks; augmentation is then fixed per cached crop (train.crops_per_image of them).
    #: auto: on for last_n with a CNN backbone on crops, without distillation (docs/training.md)
    cache_block_inputs: Union[bool, Literal["auto"]] = "auto"
    #: checkpoint every N optimiser steps as well as at each epoch end (0: epoch ends only)
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 20
    #: rich progress bars on a terminal (plain lines otherwise)
    progress: bool = True
    seed: int = 0
    #: stop after this many optimiser steps (0: no limit); the run can be resumed later
    max_steps: int = 0
    #: torch threads per process on CPU (0: torch's default)
    threads: int = 0


@dataclass(frozen=True)
class OutConfig:
    #: runs are written to <dir>/<name>
    dir: str = "runs"
    #: default: <dataset>-split<N>-<config hash>
    name: str = ""


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    qfm: QFMConfig = field(default_factory=QFMConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: RunConfig = field(default_factory=RunConfig)
    out: OutConfig = field(default_factory=OutConfig)

    def replace(self, **sections) -> "TrainConfig":
        """A copy with dotted keys changed, e.g. ``cfg.replace(**{"data.split": 3})``."""
        plain = apply_overrides(to_plain(self), [f"{k}={_yaml_value(v)}" for k, v in sections.items()])
        return build_train_config(plain)


#: keys that do not change what is computed: a run may be resumed with other values
OPERATIONAL_KEYS = ("train.workers", "train.log_every", "train.progress", "train.cache_dir",
                    "train.checkpoint_every", "train.keep_checkpoints", "train.max_steps", "train.threads",
                    "out.dir", "out.name", "data.root", "data.extra_root", "model.backbone_weights",
                    "eval.batch_size")


def _yaml_value(v) -> str:
    import json

    return json.dumps(to_plain(v))


def load_train_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file (with its ``_base_`` chain) + ``a.b=c`` overrides -> validated TrainConfig."""
    data = load_yaml_chain(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    return build_train_config(data)


def build_train_config(data: dict) -> TrainConfig:
    cfg = build(TrainConfig, data)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Cross-key rules, each failing with one line naming the key."""
    d, o, t, e = cfg.data, cfg.optim, cfg.train, cfg.eval
    if not d.dataset:
        raise UsageError("config: 'data.dataset' is not set (a benchmark name or a labels CSV)")
    if not 0 <= d.split < d.n_splits:
        raise UsageError(f"config: 'data.split' must be in 0..{d.n_splits - 1} (data.n_splits={d.n_splits}), got {d.split}")
    positive = {"optim.batch_size": o.batch_size, "optim.epochs": o.epochs, "data.repeats": d.repeats,
                "train.crops_per_image": t.crops_per_image, "eval.every": e.every, "eval.batch_size": e.batch_size,
                "train.log_every": t.log_every, "optim.decay_epochs": o.decay_epochs}
    for key, value in positive.items():
        if value <= 0:
            raise UsageError(f"config: '{key}' must be positive, got {value}")
    for key, value in {"optim.lr": o.lr, "optim.weight_decay": o.weight_decay, "optim.warmup_epochs": o.warmup_epochs,
                       "optim.warmup_lr": o.warmup_lr, "optim.min_lr": o.min_lr, "optim.grad_clip": o.grad_clip,
                       "train.checkpoint_every": t.checkpoint_every, "train.max_steps": t.max_steps,
                       "train.threads": t.threads, "optim.backbone_lr_scale": o.backbone_lr_scale,
                       "optim.gate_lr_scale": o.gate_lr_scale, "data.group_size": d.group_size}.items():
        if value < 0:
            raise UsageError(f"config: '{key}' must be >= 0, got {value}")
    if d.group_anchor and not d.group_size:
        raise UsageError("config: 'data.group_anchor' needs 'data.group_size' (the runs it anchors)")
    if cfg.qfm.anchor_weight and not d.group_anchor:
        raise UsageError("config: 'qfm.anchor_weight' needs batches in anchored runs: set 'data.group_size' "
                         "and 'data.group_anchor: true'")
    if t.workers is not None and t.workers < 0:
        raise UsageError(f"config: 'train.workers' must be >= 0, got {t.workers}")
    if o.schedule not in SCHEDULES:
        raise UsageError(f"config: 'optim.schedule' must be one of {sorted(SCHEDULES)}, not '{o.schedule}'")
    if t.keep_checkpoints < 1:
        raise UsageError(f"config: 'train.keep_checkpoints' must be at least 1, got {t.keep_checkpoints}")
    if not 0.0 <= d.hflip <= 1.0:
        raise UsageError(f"config: 'data.hflip' must be in [0, 1], got {d.hflip}")
    if e.select == "val" and d.val_fraction <= 0 and d.split_file is None:
        raise UsageError("config: 'eval.select' is 'val' but 'data.val_fraction' is 0: set a validation "
                         "fraction, or eval.select=last")
    if t.cache_features and cfg.model.finetune.mode != "frozen":
        raise UsageError(f"config: 'train.cache_features' needs a frozen backbone "
                         f"(model.finetune.mode=frozen), not '{cfg.model.finetune.mode}'")
    if t.cache_block_inputs is True and cfg.model.finetune.mode != "last_n":
        raise UsageError(f"config: 'train.cache_block_inputs' needs model.finetune.mode=last_n, "
                         f"not '{cfg.model.finetune.mode}'")
    if t.cache_block_inputs is True and cfg.qfm.kd and d.extra and cfg.distill.teacher != "ema":
        raise UsageError("config: 'train.cache_block_inputs' does not combine with distillation from a trained "
                         "checkpoint (distill.teacher): it needs the live images; use distill.teacher=ema")
    if t.cache_block_inputs is True and cfg.model.input.layout == "whole":
        raise UsageError("config: 'train.cache_block_inputs' needs model.input.layout=crops, not whole")
    try:
        cfg.model.input.policy((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    except UsageError as exc:
        raise UsageError(f"config: 'model.input': {exc}") from None
    dec = cfg.model.decoder
    if dec.width and dec.width % dec.heads:
        raise UsageError(f"config: 'model.decoder.heads' ({dec.heads}) must divide model.decoder.width ({dec.width})")
    for key in ("panel_size", "depth", "heads"):
        if getattr(dec, key) < 1:
            raise UsageError(f"config: 'model.decoder.{key}' must be at least 1, got {getattr(dec, key)}")
    if dec.width < 0 or dec.grid < 0:
        raise UsageError("config: 'model.decoder.width' and 'model.decoder.grid' must be >= 0")


def result_hash(cfg: TrainConfig) -> str:
    """Hash of everything that changes what a run computes (not OPERATIONAL_KEYS)."""
    plain = to_plain(cfg)
    for key in OPERATIONAL_KEYS:
        section, name = key.split(".")
        plain[section].pop(name, None)
    return config_hash(plain)


def default_run_name(cfg: TrainConfig) -> str:
    stem = Path(cfg.data.dataset).parent.name if cfg.data.dataset.lower().endswith((".csv", ".tsv", ".txt")) \
        else cfg.data.dataset
    stem = stem or "dataset"
    return f"{stem}-split{cfg.data.split}-{result_hash(cfg)[:8]}"


__all__ = [
    "TrainConfig", "DataConfig", "ModelConfig", "InputConfig", "OptimConfig", "DistillConfig", "EvalConfig",
    "RunConfig", "OutConfig", "QFMConfig", "DecoderConfig", "FinetuneConfig", "load_train_config",
    "build_train_config", "validate", "result_hash", "default_run_name", "OPERATIONAL_KEYS",
]
