"""DEIQT's attention-panel decoder (Qin et al., AAAI 2023), as its public code defines it.

``panel_size`` learnable query embeddings ("panel members") are each added to the global token
(the ViT class token in DEIQT); ``depth`` pre-norm transformer decoder layers (self-attention
among the members, cross-attention to the backbone tokens, GELU FFN of ``mlp_ratio`` x width,
no dropout, no final norm) refine them; a bias-free linear head maps each member to a score and
the prediction is the mean over members. DEIQT shares one head across members
(``member_heads="shared"``); ``"separate"`` gives each member its own.
Initialisation follows DEIQT: truncated normal (std 0.02) for queries and linear weights,
zero biases.

``record_attention()`` is the opt-in way to see where the panel looks (attention maps,
docs/quality-maps.md): while it is active, forward hooks on the cross-attention modules
record the weights; without it no hook exists and the forward pass is the plain one.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from qfmiqm.errors import UsageError

MEMBER_HEADS = {"shared": lambda panel_size: 1, "separate": lambda panel_size: panel_size}


def _deiqt_init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class AttentionPanelDecoder(nn.Module):
    def __init__(self, dim: int, panel_size: int = 6, depth: int = 1, heads: int = 6,
                 mlp_ratio: float = 4.0, member_heads: str = "shared"):
        super().__init__()
        if member_heads not in MEMBER_HEADS:
            raise UsageError(f"decoder member_heads must be one of {sorted(MEMBER_HEADS)}, not '{member_heads}'")
        if dim % heads:
            raise UsageError(f"decoder width {dim} is not divisible by its {heads} attention heads")
        self.queries = nn.Parameter(torch.empty(panel_size, dim))
        self.layers = nn.ModuleList([
            nn.TransformerDecoderLayer(
                d_model=dim, nhead=heads, dim_feedforward=int(dim * mlp_ratio),
                dropout=0.0, activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(depth)
        ])
        self.member_heads = nn.Parameter(torch.empty(MEMBER_HEADS[member_heads](panel_size), dim))
        self.apply(_deiqt_init)
        nn.init.trunc_normal_(self.queries, std=0.02)
        nn.init.trunc_normal_(self.member_heads, std=0.02)

    def member_scores(self, global_token: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, D), (B, N, D) -> per-member scores (B, panel_size)."""
        x = global_token[:, None, :] + self.queries[None]
        for layer in self.layers:
            x = layer(x, tokens)
        return (x * self.member_heads).sum(-1)

    def forward(self, global_token: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.member_scores(global_token, tokens).mean(-1)

    @contextmanager
    def record_attention(self) -> Iterator[list[torch.Tensor]]:
        """Record the cross-attention weights of every forward pass inside the block.

        Yields a list that receives, per forward pass and per layer in order, the detached
        weights (B, heads, panel_size, N) of the panel queries over the N tokens (each row sums
        to 1). The layer's own output is not touched (the hook recomputes the weights from the
        same inputs), so scores are bit-identical with and without recording.
        """
        records: list[torch.Tensor] = []

        def hook(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: tuple) -> None:
            # Module.forward (not __call__) so the hook does not trigger itself
            _, weights = module.forward(*args, **{**kwargs, "need_weights": True, "average_attn_weights": False})
            records.append(weights.detach())

        handles = [layer.multihead_attn.register_forward_hook(hook, with_kwargs=True) for layer in self.layers]
        try:
            yield records
        finally:
            for handle in handles:
                handle.remove()
