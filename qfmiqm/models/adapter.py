"""Upstream-feature selection and token building between backbone and decoder.

``grid_pool`` brings every CNN level to a fixed token grid (a ViT grid is kept as is with
``grid=0``). ``ChannelGate`` is QFM-IQM's adaptive feature selection: a learned sigmoid weight
per backbone channel, per level (the class token shares the gate of the level it comes from).
``TokenAdapter`` turns the gated levels into decoder tokens: each level's grid is flattened into
tokens and projected to the decoder width (a level embedding tells levels apart when there are
several); the global token is the projected class token (ViT) or the projected concatenation
of the levels' pooled vectors (CNN). With ``width=0`` nothing is projected (DEIQT on a ViT).

Pooling, gating and projection are all linear per position, so pooling first and projecting
the small grid gives the same result as projecting the full maps, at a fraction of the cost.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qfmiqm.errors import UsageError
from qfmiqm.models.backbones import BackboneFeatures


def grid_pool(feats: BackboneFeatures, grid: int) -> BackboneFeatures:
    """Average-pool each map to ``grid`` x ``grid`` (``grid=0``: keep native). Pooling a map that
    is already on the grid returns it unchanged, so cached pooled features can be fed again."""
    if grid <= 0:
        return feats
    maps = [m if m.shape[-2:] == (grid, grid) else F.adaptive_avg_pool2d(m, grid) for m in feats.maps]
    return BackboneFeatures(maps, feats.cls_token)


class ChannelGate(nn.Module):
    """Per-channel sigmoid gates over each backbone level, initialised open (sigmoid(3) ~ 0.95)."""

    def __init__(self, dims: list[int], init_logit: float = 3.0):
        super().__init__()
        self.logits = nn.ParameterList([nn.Parameter(torch.full((d,), float(init_logit))) for d in dims])

    def gates(self) -> list[torch.Tensor]:
        return [torch.sigmoid(g) for g in self.logits]

    def forward(self, feats: BackboneFeatures) -> BackboneFeatures:
        gates = self.gates()
        maps = [m * g.view(1, -1, 1, 1) for m, g in zip(feats.maps, gates)]
        cls = feats.cls_token * gates[-1] if feats.cls_token is not None else None
        return BackboneFeatures(maps, cls)


def _projection(in_dim: int, width: int) -> nn.Module:
    return nn.Identity() if width == 0 else nn.Linear(in_dim, width)


class TokenAdapter(nn.Module):
    """Gated (pooled) levels -> (global token (B, D), tokens (B, N, D))."""

    def __init__(self, dims: list[int], width: int, cls_dim: int | None = None):
        super().__init__()
        if width == 0 and len(set(dims) | ({cls_dim} if cls_dim else set())) != 1:
            raise UsageError(
                f"decoder width 0 (native, no projection) needs one feature width; this backbone has {dims}"
            )
        self.width = width or dims[0]
        self.proj = nn.ModuleList([_projection(d, width) for d in dims])
        self.uses_cls = bool(cls_dim)
        if cls_dim:
            self.global_proj = _projection(cls_dim, width)
        else:
            self.global_proj = _projection(sum(dims), width) if width else nn.Identity()
        # DEIQT has one level and no level embedding; several levels need to be told apart
        self.level_embed = nn.Parameter(torch.zeros(len(dims), self.width)) if len(dims) > 1 else None

    def forward(self, feats: BackboneFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = []
        for i, (m, proj) in enumerate(zip(feats.maps, self.proj)):
            t = proj(m.flatten(2).transpose(1, 2))
            tokens.append(t + self.level_embed[i] if self.level_embed is not None else t)
        tokens = torch.cat(tokens, dim=1)
        if self.uses_cls:
            global_token = self.global_proj(feats.cls_token)
        else:
            global_token = self.global_proj(torch.cat([m.mean(dim=(2, 3)) for m in feats.maps], dim=1))
        return global_token, tokens
