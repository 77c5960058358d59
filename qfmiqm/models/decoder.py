"""DEIQT's attention-panel decoder (Qin et al., AAAI 2023).

Learnable panel queries, each added to the global token, go through pre-norm transformer
decoder layer(s) that cross-attend to the backbone tokens; a bias-free linear head per panel
member gives one score each, and the prediction is their mean.
"""
from __future__ import annotations

import torch
from torch import nn


class AttentionPanelDecoder(nn.Module):
    def __init__(self, dim: int, panel_size: int = 6, depth: int = 1, heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        self.queries = nn.Parameter(torch.empty(panel_size, dim))
        nn.init.trunc_normal_(self.queries, std=0.02)
        layer = nn.TransformerDecoderLayer(
            d_model=dim, nhead=heads, dim_feedforward=int(dim * mlp_ratio),
            dropout=0.0, activation="gelu", batch_first=True, norm_first=True,
        )
        self.layers = nn.TransformerDecoder(layer, num_layers=depth)
        self.norm = nn.LayerNorm(dim)
        self.member_heads = nn.Parameter(torch.empty(panel_size, dim))
        nn.init.trunc_normal_(self.member_heads, std=0.02)

    def member_scores(self, global_token: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, D), (B, N, D) -> per-member scores (B, panel_size)."""
        queries = global_token[:, None, :] + self.queries[None]
        out = self.norm(self.layers(queries, tokens))
        return (out * self.member_heads[None]).sum(-1)

    def forward(self, global_token: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.member_scores(global_token, tokens).mean(-1)
