"""Quality-aware feature matching (QFM-IQM, component 1).

In a batch, image i is paired with the image j of *close quality* (|y_i - y_j| <= tau) whose
upstream features are *semantically most different* (largest cosine distance of the pooled
descriptors g(F)). Their feature difference is quality-irrelevant by construction: semantic
noise. Rescaled level by level to rho * ||F_i||, it becomes the perturbation

    delta_ij,l = rho * ||F_i,l|| * (F_j,l - F_i,l) / ||F_j,l - F_i,l||     (each level l)

and L_match = mean_i |f(F_i + delta_ij) - f(F_i)|  (or squared) asks the prediction not to move
along it. delta is a constant direction (no gradient flows through it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from qfmiqm.models.backbones import BackboneFeatures
from qfmiqm.models.features import index_features, level_norms, map_levels

NO_PARTNER = -1

MATCH_DISTANCES = {
    "abs": lambda d: d.abs(),
    "squared": lambda d: d.square(),
}


def mine_pairs(targets: torch.Tensor, descriptors: torch.Tensor, tau: float) -> torch.Tensor:
    """For each i, the j != i with |y_i - y_j| <= tau and the largest cosine distance of
    descriptors; ``NO_PARTNER`` (-1) where no other image is close enough in quality."""
    d = F.normalize(descriptors.detach().float(), dim=1)
    distance = 1.0 - d @ d.T
    y = targets.detach().float()
    allowed = (y[:, None] - y[None, :]).abs() <= tau
    allowed.fill_diagonal_(False)
    partner = distance.masked_fill(~allowed, float("-inf")).argmax(dim=1)
    return torch.where(allowed.any(dim=1), partner, torch.full_like(partner, NO_PARTNER))


def semantic_noise(pooled: BackboneFeatures, anchors: torch.Tensor, partners: torch.Tensor,
                   rho: float, eps: float = 1e-12) -> BackboneFeatures:
    """delta for each (anchor, partner) pair, every level rescaled to rho * ||F_anchor||."""
    f_i = index_features(pooled, anchors)
    f_j = index_features(pooled, partners)

    def rescale(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a.detach(), b.detach()
        diff = b - a
        return diff * (rho * level_norms(a) / (level_norms(diff) + eps))

    return map_levels(rescale, f_i, f_j)


def matching_loss(perturbed_pred: torch.Tensor, clean_pred: torch.Tensor, distance: str = "abs") -> torch.Tensor:
    """mean |f(F_i + delta_ij) - f(F_i)| ("abs") or its square ("squared")."""
    return MATCH_DISTANCES[distance](perturbed_pred - clean_pred).mean()
