"""QualityNet: backbone -> channel gate (QFM feature selection) -> tokens -> panel decoder."""
from __future__ import annotations

import torch
from torch import nn

from qfmiqm.models.adapter import ChannelGate, TokenAdapter
from qfmiqm.models.backbones import Backbone, BackboneFeatures
from qfmiqm.models.card import DecoderConfig
from qfmiqm.models.decoder import AttentionPanelDecoder


class QualityHead(nn.Module):
    """Everything after the backbone. Works on (cached) backbone features."""

    def __init__(self, feature_dims: list[int], cls_dim: int | None, cfg: DecoderConfig):
        super().__init__()
        self.gate = ChannelGate(feature_dims) if cfg.gate else None
        self.adapter = TokenAdapter(feature_dims, cfg.width, grid=cfg.grid, cls_dim=cls_dim)
        self.decoder = AttentionPanelDecoder(
            cfg.width, panel_size=cfg.panel_size, depth=cfg.depth, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio
        )

    def forward(self, feats: BackboneFeatures) -> torch.Tensor:
        maps = self.gate(feats.maps) if self.gate is not None else feats.maps
        global_token, tokens = self.adapter(maps, feats.cls_token)
        return self.decoder(global_token, tokens)


class QualityNet(nn.Module):
    """Full network on normalised crops: (N, 3, S, S) -> raw scores (N,)."""

    def __init__(self, backbone: Backbone, cfg: DecoderConfig):
        super().__init__()
        self.backbone = backbone
        cls_dim = backbone.feature_dims[-1] if backbone.spec.kind == "vit" else None
        self.head = QualityHead(backbone.feature_dims, cls_dim, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
