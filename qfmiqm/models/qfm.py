"""QualityNet: backbone -> grid pool -> channel gate (QFM feature selection) -> tokens -> panel decoder.

The head works on ``BackboneFeatures`` alone, so it trains the same on a live backbone and on
cached features of a frozen one. It exposes its stages because QFM-IQM's losses act between
them: ``pool`` gives the upstream features F the losses perturb (and that can be cached),
``select`` applies the gate, ``score`` maps F to predictions.
"""
from __future__ import annotations

import torch
from torch import nn

from qfmiqm.models.adapter import ChannelGate, TokenAdapter, grid_pool
from qfmiqm.models.backbones import Backbone, BackboneFeatures
from qfmiqm.models.card import DecoderConfig
from qfmiqm.models.decoder import AttentionPanelDecoder
from qfmiqm.models.features import pooled_descriptor


class QualityHead(nn.Module):
    """Everything after the backbone. Works on (cached) backbone features."""

    def __init__(self, feature_dims: list[int], cls_dim: int | None, cfg: DecoderConfig):
        super().__init__()
        self.grid = cfg.grid
        self.gate = ChannelGate(feature_dims, init_logit=cfg.gate_init) if cfg.gate else None
        self.adapter = TokenAdapter(feature_dims, cfg.width, cls_dim=cls_dim)
        self.decoder = AttentionPanelDecoder(
            self.adapter.width, panel_size=cfg.panel_size, depth=cfg.depth, heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio, member_heads=cfg.member_heads,
        )

    def pool(self, feats: BackboneFeatures) -> BackboneFeatures:
        """Backbone features -> F, the upstream features QFM-IQM perturbs (grid-pooled, ungated).
        Idempotent: F can be cached and passed to ``forward`` again."""
        return grid_pool(feats, self.grid)

    def select(self, pooled: BackboneFeatures) -> BackboneFeatures:
        """Adaptive feature selection: the channel gate (identity when switched off)."""
        return self.gate(pooled) if self.gate is not None else pooled

    def score(self, pooled: BackboneFeatures) -> torch.Tensor:
        """F -> raw scores (B,)."""
        global_token, tokens = self.adapter(self.select(pooled))
        return self.decoder(global_token, tokens)

    def forward(self, feats: BackboneFeatures) -> torch.Tensor:
        return self.score(self.pool(feats))

    @torch.no_grad()
    def gated_descriptor(self, feats: BackboneFeatures) -> torch.Tensor:
        """g(select(F)): the pooled descriptor of the features the decoder actually sees."""
        return pooled_descriptor(self.select(self.pool(feats)))


class QualityNet(nn.Module):
    """Full network on normalised crops: (N, 3, S, S) -> raw scores (N,)."""

    def __init__(self, backbone: Backbone, cfg: DecoderConfig):
        super().__init__()
        self.backbone = backbone
        cls_dim = backbone.feature_dims[-1] if backbone.spec.kind == "vit" else None
        self.head = QualityHead(backbone.feature_dims, cls_dim, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
