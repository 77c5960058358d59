"""L_reg: the regression loss on quality scores.

DEIQT trains with ``torch.nn.SmoothL1Loss()`` (beta 1) on raw MOS. Optional terms, each off at
weight 0 (then not computed at all, so the loss is exactly DEIQT's):
- PLCC loss ``1 - pearson(pred, y)``: scale-free, rewards a linear fit to the labels;
- rank loss: mean over batch pairs with ``y_i > y_j`` of ``relu(margin - (p_i - p_j))``,
  a hinge on every wrongly ordered (or too close, with a margin) pair.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    return F.smooth_l1_loss(pred, target, beta=beta)


def plcc_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 - Pearson correlation over the batch (0 for a perfect linear fit, 2 for an inverted one)."""
    p = pred - pred.mean()
    t = target - target.mean()
    return 1.0 - (p * t).sum() / (p.norm() * t.norm() + eps)


def rank_loss(pred: torch.Tensor, target: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Pairwise hinge: mean of relu(margin - (p_i - p_j)) over pairs with y_i > y_j."""
    better = target[:, None] > target[None, :]
    if not better.any():
        return pred.sum() * 0.0
    diff = pred[:, None] - pred[None, :]
    return F.relu(margin - diff[better]).mean()


@dataclass(frozen=True)
class RegressionLoss:
    """L_reg = smooth_l1(beta) + plcc_weight * plcc_loss + rank_weight * rank_loss(margin)."""

    beta: float = 1.0
    plcc_weight: float = 0.0
    rank_weight: float = 0.0
    rank_margin: float = 0.0

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = smooth_l1(pred, target, self.beta)
        if self.plcc_weight:
            loss = loss + self.plcc_weight * plcc_loss(pred, target)
        if self.rank_weight:
            loss = loss + self.rank_weight * rank_loss(pred, target, self.rank_margin)
        return loss
