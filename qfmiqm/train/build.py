"""Building what a run trains: the net (ImageNet backbone + fresh head), its model card, the
distillation teacher and the optimizer. Config mistakes fail here naming their key."""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from qfmiqm.data.transforms import InputPolicy
from qfmiqm.errors import QfmiqmError, UsageError, WeightsError
from qfmiqm.models.backbones import get_backbone_spec
from qfmiqm.models.card import ModelCard, ScoreMapping
from qfmiqm.models.qfm import QualityNet
from qfmiqm.models.registry import build_net, load_net, resolve_model
from qfmiqm.train.distillation import make_teacher
from qfmiqm.train.feeding import TEACHER_ON_FEATURES, TEACHER_ON_IMAGES
from qfmiqm.train.finetune import trainable_param_groups
from qfmiqm.train.schema import OptimConfig, TrainConfig


def check_backbone_weights(cfg: TrainConfig) -> None:
    """The backbone exists and its ImageNet weights are at hand (packaged, or model.backbone_weights)."""
    m = cfg.model
    try:
        spec = get_backbone_spec(m.backbone)
    except UsageError as exc:
        raise UsageError(f"config: 'model.backbone': {exc}") from None
    if m.backbone_weights:
        if not os.path.isfile(m.backbone_weights):
            raise UsageError(f"config: 'model.backbone_weights' = {m.backbone_weights!r}: file not found "
                             f"({spec.name}: {spec.weights_help})")
    elif not spec.weights_offline:
        raise UsageError(f"config: 'model.backbone_weights' is not set and backbone '{spec.name}' has no "
                         f"packaged ImageNet weights: {spec.weights_help} (or --set model.backbone_weights=FILE)")


def training_card(cfg: TrainConfig, name: str = "training", policy: Optional[InputPolicy] = None,
                  **changes) -> ModelCard:
    """The model card of the net being trained (``changes`` override its fields)."""
    m = cfg.model
    base = ModelCard(name=name, backbone=m.backbone, trained=False, input=policy or InputPolicy(),
                     decoder=m.decoder, score=ScoreMapping(), includes_backbone=m.finetune.mode != "frozen")
    return replace(base, **changes)


def build_training_net(cfg: TrainConfig, device: torch.device) -> tuple[QualityNet, list[dict]]:
    """The net on ``device`` in training mode, and its trainable parameter groups."""
    m = cfg.model
    try:
        # includes_backbone=False: start from the ImageNet backbone even when it will be fine-tuned
        net = build_net(training_card(cfg, includes_backbone=False), backbone_weights=m.backbone_weights,
                        trust_pickle=m.trust_pickle)
    except WeightsError as exc:
        raise UsageError(f"config: 'model.backbone_weights': {exc}") from None
    except UsageError as exc:
        raise UsageError(f"config: 'model.decoder': {exc}") from None
    net.to(device)
    groups = trainable_param_groups(net, m.finetune.mode, m.finetune.last_n)
    net.train()
    return net, groups


def build_teacher(cfg: TrainConfig, net: QualityNet, feeder,
                  device: torch.device) -> tuple[Optional[nn.Module], Optional[nn.Module], str]:
    """The distillation teacher, the student module an EMA teacher follows (None for a trained
    checkpoint) and what the teacher is called on (``feeding.TEACHER_ON_*``)."""
    student, called_on = feeder.distill_student(net)
    name = cfg.distill.teacher
    # a checkpoint teacher never meets cached block inputs: train.cache_block_inputs refuses it
    if name == "ema":
        return make_teacher(student), student, called_on
    try:
        loaded = load_net(resolve_model(name), backbone_weights=cfg.model.backbone_weights,
                          trust_pickle=cfg.model.trust_pickle).to(device)
    except QfmiqmError as exc:
        raise UsageError(f"config: 'distill.teacher' = {name!r}: {exc}") from None
    if feeder.cached:
        if loaded.backbone.name != net.backbone.name:
            raise UsageError(f"config: 'distill.teacher' = {name!r}: with cached features the teacher needs "
                             f"the same backbone ({net.backbone.name}), not {loaded.backbone.name}")
        return make_teacher(loaded.head), None, TEACHER_ON_FEATURES
    return make_teacher(loaded), None, TEACHER_ON_IMAGES


def build_optimizer(param_groups: list[dict], o: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over the groups, each split into decayed and (optim.no_decay_1d) undecayed parameters;
    ``lr_scale`` per group: 1 for the head, optim.gate_lr_scale, optim.backbone_lr_scale."""
    groups = []
    for g in param_groups:
        scale = {"head": 1.0, "gate": o.gate_lr_scale}.get(g["name"], o.backbone_lr_scale)
        decay = [p for p in g["params"] if not (o.no_decay_1d and p.ndim <= 1)]
        no_decay = [p for p in g["params"] if o.no_decay_1d and p.ndim <= 1]
        for params, wd, suffix in ((decay, o.weight_decay, ""), (no_decay, 0.0, "_no_decay")):
            if params:
                groups.append({"params": params, "weight_decay": wd, "name": g["name"] + suffix, "lr_scale": scale})
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)
