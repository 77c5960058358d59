"""A feature level of natural-scene statistics (BRISQUE's MSCN features), vectorised in torch.

ImageNet features are trained to recognise objects whatever the pixel noise, blocking or
ringing, so they see compression and noise only where it is strong. BRISQUE (Mittal et al.
2012) sees them in the statistics of the mean-subtracted contrast-normalised (MSCN)
luminance: a natural photo's MSCN coefficients are close to a unit Gaussian; blur makes them
peaky (heavy-tailed), noise makes them flat, blocking and ringing change the products of
neighbouring coefficients. This level gives the decoder those statistics per cell, at two
scales, beside the backbone's levels, so the gate can weigh them like any backbone channel.

BRISQUE fits generalised Gaussian distributions to the coefficients and asymmetric ones to the
four neighbour products. A fit per cell is neither cheap nor exportable, so each cell carries
the moments the fits are made from instead: the GGD's shape is a monotone function of
``E|x|^2 / E[x^2]``, and the AGGD's left/right scales are the second moments of the negative
and positive parts. All operations are convolutions, pooling and elementwise arithmetic
(exportable to ONNX); there are no weights.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qfmiqm.data.colour import LUMA

#: bump when the statistics change: cached features of another version are not reused
VERSION = 1
#: BRISQUE's Gaussian window: 7 x 7, sigma 7/6
_WINDOW, _SIGMA = 7, 7.0 / 6.0
#: BRISQUE's stabilising constant, C = 1 on the 0-255 scale
_C = 1.0 / 255.0
#: neighbour offsets of the four products (dy, dx): horizontal, vertical, main and anti diagonal
_PAIRS = ((0, 1), (1, 0), (1, 1), (1, -1))
_PER_SCALE = ("mscn_var", "mscn_shape") + tuple(
    f"{p}_{m}" for p in ("h", "v", "d1", "d2") for m in ("mean", "left", "right"))
#: channel names, in order: the 14 statistics at full and at half resolution
CHANNELS = tuple(f"s1_{c}" for c in _PER_SCALE) + tuple(f"s2_{c}" for c in _PER_SCALE)


def _gaussian_kernel() -> torch.Tensor:
    r = torch.arange(_WINDOW, dtype=torch.float32) - (_WINDOW - 1) / 2
    g = torch.exp(-(r * r) / (2 * _SIGMA * _SIGMA))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, _WINDOW, _WINDOW)


def _neighbour_product(m: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``m[i, j] * m[i + dy, j + dx]`` where the neighbour exists, padded back by replication
    so the cell grid keeps its shape (``dy >= 0``)."""
    h, w = m.shape[-2:]
    j0, j1 = max(0, -dx), w - max(0, dx)
    a = m[..., : h - dy, j0:j1]
    b = m[..., dy:, j0 + dx: j1 + dx]
    return F.pad(a * b, (j0, w - j1, 0, dy), mode="replicate")


class NssStats(nn.Module):
    """Normalised crops (B, 3, S, S) -> (B, 28, S / stride, S / stride) MSCN statistics.

    Per cell and per scale: the MSCN variance and GGD shape moment ratio ``E|x|^2 / E[x^2]``,
    and for each neighbour product (horizontal, vertical, two diagonals) its mean and the
    second moments of its negative and positive parts. The second scale is the luminance
    averaged 2 x 2, as BRISQUE's second scale.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], stride: int = 8):
        super().__init__()
        if stride % 2:
            raise ValueError(f"stride must be even (the half scale uses stride / 2), got {stride}")
        self.stride = stride
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("luma", torch.as_tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("kernel", _gaussian_kernel(), persistent=False)

    @property
    def channels(self) -> int:
        return len(CHANNELS)

    def mscn(self, y: torch.Tensor) -> torch.Tensor:
        """MSCN coefficients of a (B, 1, H, W) luminance in [0, 1]."""
        pad = _WINDOW // 2
        padded = F.pad(y, (pad, pad, pad, pad), mode="replicate")
        mu = F.conv2d(padded, self.kernel)
        var = F.conv2d(padded * padded, self.kernel) - mu * mu
        return (y - mu) / (var.clamp_min(0.0).sqrt() + _C)

    def _scale_stats(self, y: torch.Tensor, stride: int) -> torch.Tensor:
        m = self.mscn(y)
        pool = lambda t: F.avg_pool2d(t, stride)  # noqa: E731 - one pooling for every statistic
        second = pool(m * m)
        first = pool(m.abs())
        stats = [second, first * first / (second + 1e-6)]
        for dy, dx in _PAIRS:
            prod = _neighbour_product(m, dy, dx)
            stats += [pool(prod), pool(prod.clamp_max(0.0) ** 2), pool(prod.clamp_min(0.0) ** 2)]
        return torch.cat(stats, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x.float() * self.std + self.mean).clamp(0.0, 1.0)
        y = (rgb * self.luma).sum(1, keepdim=True)
        full = self._scale_stats(y, self.stride)
        half = self._scale_stats(F.avg_pool2d(y, 2), self.stride // 2)
        # log1p keeps the heavy-tailed second moments of noisy cells within a few units
        stats = torch.cat([full, half], dim=1)
        return torch.sign(stats) * torch.log1p(stats.abs() * 4.0) / math.log(5.0)
