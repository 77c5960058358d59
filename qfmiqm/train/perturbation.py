"""Adversarial perturbation of the upstream features (QFM-IQM, component 2).

One normalised gradient-ascent step on the features F (SAM-like, but on features instead of
weights), per image i and level l:

    g_i,l = dL_reg/dF_i,l
    delta_i,l = r_i,l * g_i,l / ||g_i,l||,   r = rho * ||F_i,l|| ("relative") or rho ("absolute")

then L_adv = L_reg(f(F + delta), y): the worst-case nearby features must still give the right
score, which trains the gate to drop the channels the prediction is fragile along.
delta is a constant (no second-order terms), as in SAM.
"""
from __future__ import annotations

from typing import Sequence

import torch

from qfmiqm.models.features import level_norms

ADV_SCALES = {
    "relative": lambda level, rho: rho * level_norms(level.detach()),
    "absolute": lambda level, rho: rho,
}


def ascent_direction(loss: torch.Tensor, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """dloss/dF for each level (zeros for a level the loss does not use), keeping the graph for
    the caller's backward pass. Only input gradients are computed, no parameter gradients."""
    grads = torch.autograd.grad(loss, list(levels), retain_graph=True, allow_unused=True)
    return [torch.zeros_like(f) if g is None else g for f, g in zip(levels, grads)]


def adversarial_delta(levels: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], rho: float,
                      scale: str = "relative", eps: float = 1e-12) -> list[torch.Tensor]:
    """delta = radius * g / ||g|| per sample and level (detached), one tensor per level."""
    radius = ADV_SCALES[scale]
    return [(g * (radius(f, rho) / (level_norms(g) + eps))).detach() for f, g in zip(levels, grads)]
