"""Upstream-feature selection and token building between backbone and decoder.

``ChannelGate`` is QFM-IQM's adaptive feature selection: a learned sigmoid weight per backbone
channel. ``TokenAdapter`` turns gated backbone maps into decoder tokens: each level is projected
to the decoder width by a 1x1 convolution and average-pooled to a fixed grid; the tokens of all
levels are concatenated. The global token is the backbone's class token (ViT, projected) or
the mean of all tokens (CNN).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelGate(nn.Module):
    """Per-channel sigmoid gates over each backbone level, initialised open (about 0.95)."""

    def __init__(self, dims: list[int], init_logit: float = 3.0):
        super().__init__()
        self.logits = nn.ParameterList([nn.Parameter(torch.full((d,), init_logit)) for d in dims])

    def gates(self) -> list[torch.Tensor]:
        return [torch.sigmoid(g) for g in self.logits]

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [m * g.view(1, -1, 1, 1) for m, g in zip(maps, self.gates())]


class TokenAdapter(nn.Module):
    def __init__(self, dims: list[int], width: int, grid: int = 7, cls_dim: int | None = None):
        super().__init__()
        self.grid = grid
        self.proj = nn.ModuleList([nn.Conv2d(d, width, kernel_size=1) for d in dims])
        self.cls_proj = nn.Linear(cls_dim, width) if cls_dim else None
        self.level_embed = nn.Parameter(torch.zeros(len(dims), width))

    def forward(self, maps: list[torch.Tensor], cls_token: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = []
        for i, (m, proj) in enumerate(zip(maps, self.proj)):
            t = F.adaptive_avg_pool2d(proj(m), self.grid).flatten(2).transpose(1, 2)
            tokens.append(t + self.level_embed[i])
        tokens = torch.cat(tokens, dim=1)
        if self.cls_proj is not None and cls_token is not None:
            global_token = self.cls_proj(cls_token)
        else:
            global_token = tokens.mean(dim=1)
        return global_token, tokens

