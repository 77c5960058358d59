"""L_reg: the regression loss on quality scores.

DEIQT trains with ``torch.nn.SmoothL1Loss()`` (beta 1) on raw MOS. Optional terms, each off at
weight 0 (then not computed at all, so the loss is exactly DEIQT's):
- PLCC loss ``1 - pearson(pred, y)``: scale-free, rewards a linear fit to the labels;
- rank loss: mean over batch pairs with ``y_i > y_j`` of ``relu(margin - (p_i - p_j))``,
  a hinge on every wrongly ordered (or too close, with a margin) pair.

``anchored_hinge`` is the in-scene counterpart, for batches in runs of one scene led by its
pristine image (``data.group_anchor``); the objective adds it (``qfm.anchor_weight``).
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


def anchored_hinge(pred: torch.Tensor, target: torch.Tensor, margin: float, min_gap: float) -> torch.Tensor:
    """In-scene hinge on a batch in anchored runs (data.group_anchor): every item carrying the
    batch's top label (a pristine image) leads the items after it, up to the next leader, which
    are versions of its own scene; it must score ``margin`` above each of them whose label is more
    than ``min_gap`` below its own. Mean of relu(margin - (p_leader - p_member)) over those pairs.
    Comparing within a scene cancels content, which a batch-wide rank hinge cannot do."""
    leader = target == target.max()
    run = torch.cumsum(leader.long(), 0) - 1           # the run each position is in; -1 before the first leader
    member = (run >= 0) & ~leader
    lead_at = torch.nonzero(leader).flatten()[run[member]]
    counted = (target[lead_at] - target[member]) > min_gap
    if not counted.any():
        return pred.sum() * 0.0
    return F.relu(margin - (pred[lead_at] - pred[member]))[counted].mean()


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
