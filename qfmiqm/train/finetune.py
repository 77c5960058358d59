"""Backbone modes: frozen, fully fine-tuned, or only the last N blocks fine-tuned.

Which parameters form the stem, the blocks and the tail of each backbone is data in its
registry entry (``BackboneSpec.stem/blocks/tail``), so every registered backbone works here
without a branch: efficientnet stages, ViT blocks, ResNet layers.

A frozen backbone needs no gradient at all: run it once, cache ``head.pool(feats)``, and train
the head with the objective on the cached tensors. BatchNorm layers whose parameters are frozen
keep their running statistics in training mode (``Backbone.train``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from qfmiqm.errors import UsageError
from qfmiqm.models.backbones import Backbone
from qfmiqm.models.qfm import QualityNet

Units = tuple[list[str], list[str], list[str]]  # stem, blocks, tail: parameter-name prefixes

#: mode -> which prefixes train, given (stem, blocks, tail) and N
BACKBONE_MODES: dict[str, Callable[[Units, int], list[str]]] = {
    "frozen": lambda units, n: [],
    "full": lambda units, n: units[0] + units[1] + units[2],
    "last_n": lambda units, n: units[1][len(units[1]) - n:] + units[2],
}


@dataclass(frozen=True)
class FinetuneConfig:
    """How much of the backbone trains. ``mode``: frozen | full | last_n (the paper fine-tunes
    the whole backbone); ``last_n``: blocks trained in last_n mode."""

    mode: str = "full"
    last_n: int = 2

    def __post_init__(self) -> None:
        if self.mode not in BACKBONE_MODES:
            raise UsageError(f"backbone mode must be one of {sorted(BACKBONE_MODES)}, not '{self.mode}'")
        if self.last_n < 1:
            raise UsageError(f"last_n must be at least 1, not {self.last_n}")


def backbone_units(backbone: Backbone) -> Units:
    """The backbone's stem, blocks (``"name.*"`` expanded to the children of ``name``) and tail."""
    spec = backbone.spec
    blocks: list[str] = []
    for entry in spec.blocks:
        if entry.endswith(".*"):
            parent = entry[:-2]
            blocks += [f"{parent}.{child}" for child, _ in backbone.model.get_submodule(parent).named_children()]
        else:
            blocks.append(entry)
    return list(spec.stem), blocks, list(spec.tail)


def _params_under(model: nn.Module, prefixes: list[str]) -> list[nn.Parameter]:
    return [p for name, p in model.named_parameters()
            if any(name == pre or name.startswith(pre + ".") for pre in prefixes)]


def set_backbone_mode(backbone: Backbone, mode: str = "full", last_n: int = 2) -> list[dict]:
    """Set ``requires_grad`` for ``mode`` and return the trainable backbone parameter groups
    (``[{"name": "backbone", "params": [...]}]``, empty when frozen)."""
    cfg = FinetuneConfig(mode, last_n)
    stem, blocks, tail = backbone_units(backbone)
    if cfg.mode == "last_n" and cfg.last_n > len(blocks):
        raise UsageError(f"last_n={cfg.last_n} but {backbone.name} has {len(blocks)} blocks")
    backbone.requires_grad_(False)
    params = _params_under(backbone.model, BACKBONE_MODES[cfg.mode]((stem, blocks, tail), cfg.last_n))
    for p in params:
        p.requires_grad_(True)
    backbone.train(backbone.training)  # re-apply the frozen-BatchNorm rule
    return [{"name": "backbone", "params": params}] if params else []


def trainable_param_groups(net: QualityNet, mode: str = "full", last_n: int = 2) -> list[dict]:
    """Head group, gate group (its own learning rate: ``optim.gate_lr_scale``) and the backbone
    group of ``mode``, ready for ``torch.optim.AdamW``."""
    net.head.requires_grad_(True)
    gate = list(net.head.gate.parameters()) if net.head.gate is not None else []
    gate_ids = {id(p) for p in gate}
    head = [p for p in net.head.parameters() if id(p) not in gate_ids]
    groups = [{"name": "head", "params": head}] + ([{"name": "gate", "params": gate}] if gate else [])
    return groups + set_backbone_mode(net.backbone, mode, last_n)
