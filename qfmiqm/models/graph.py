"""``ScoringGraph``: the network as both runtimes run it, from uint8 pixels to raw head scores.

Input: uint8 views (N, H, W, 3), any H and W (one batch holds views of one size); output: the
raw head score of each view (N,). Normalisation, the backbone, the grid pooling, the channel gate
and the panel decoder are all inside, so that ONNX Runtime needs nothing but the decoded pixels,
and PyTorch runs exactly the same operations (qfmiqm.models.runtime_torch).

The head pools each feature map to a ``grid`` x ``grid`` token grid with adaptive average
pooling, whose bins depend on the map's size. ONNX has no adaptive pooling for sizes the grid does
not divide, so the pooling is written as two products with averaging matrices built from the
map's own (dynamic) size: ``P_h @ map @ P_w^T``, the same bins as ``adaptive_avg_pool2d``.
"""
from __future__ import annotations

import torch
from torch import nn

from qfmiqm.data.policy import InputPolicy
from qfmiqm.models.backbones import BackboneFeatures
from qfmiqm.models.qfm import QualityNet


def pool_matrix(n: int | torch.Tensor, grid: int) -> torch.Tensor:
    """(grid, n) weights that average ``n`` positions into ``grid`` bins, bins as PyTorch's
    ``adaptive_avg_pool``; ``n`` may be a traced size, so the matrix follows the input's size."""
    i = torch.arange(grid)
    start = torch.div(i * n, grid, rounding_mode="floor")
    end = torch.div((i + 1) * n + grid - 1, grid, rounding_mode="floor")
    j = torch.arange(n)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.float() / (end - start)[:, None].float()


def grid_pool_matmul(m: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, grid, grid) by averaging, exportable for any H, W."""
    return pool_matrix(m.shape[-2], grid) @ m @ pool_matrix(m.shape[-1], grid).t()


class ScoringGraph(nn.Module):
    """uint8 views (N, H, W, 3) -> raw head scores (N,) float32."""

    def __init__(self, net: QualityNet, policy: InputPolicy):
        super().__init__()
        self.net = net.eval()
        self.grid = net.head.grid
        self.register_buffer("mean", torch.tensor(policy.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(policy.std).view(1, 3, 1, 1) * 255.0), persistent=False)

    def normalised(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) with the backbone's mean and std."""
        x = views.permute(0, 3, 1, 2).float()
        return (x - self.mean) * self.inv_std

    def pooled(self, x: torch.Tensor) -> BackboneFeatures:
        feats = self.net.backbone(x)
        if self.grid <= 0:
            return feats
        return BackboneFeatures([grid_pool_matmul(m, self.grid) for m in feats.maps], feats.cls_token)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.net.head.score(self.pooled(self.normalised(views)))
