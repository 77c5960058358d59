"""Image-level tonal statistics and the linear tone term of a model's score.

The per-crop features of a frozen ImageNet backbone are built to ignore a global loss of contrast
(ImageNet training jitters contrast), and one 224 crop cannot tell a low-contrast scene from a
contrast-reduced photo. Where the darkest and brightest parts of the *whole* image lie can
(tools/tone_probe.py: 36 of 36 held-out photos told from their 70 % contrast version). So a model
may carry a ``ToneTerm``: a linear function of ``STATISTICS`` computed once per image over all of
its policy crops, added to the mean of the crops' raw scores (docs/default-model.md).

The statistics are computed in torch from the uint8 crops, on whatever device they are on, so the
same numbers come out in training (tools/fit_tone.py), in scoring and behind an ONNX network.
Percentiles come from histograms with ``BINS_PER_LEVEL`` bins per grey level: exact to a quarter
grey level, at a fraction of the cost of a sort.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from qfmiqm.data.distortions import LUMA

STATISTICS = ("luma_std", "p1", "p5", "p95", "p99", "luma_mean", "local_std_mean", "local_std_median",
              "saturation")
#: window of the local standard deviation (pixels)
LOCAL_WINDOW = 7
#: histogram bins per grey level for the percentiles (0.25 grey-level resolution)
BINS_PER_LEVEL = 4


def _percentiles(values: torch.Tensor, qs: tuple[float, ...], hi: float = 256.0) -> torch.Tensor:
    """Percentiles (0-100) of each row of ``values`` (B, M) in [0, hi), from a histogram."""
    n_bins = int(hi * BINS_PER_LEVEL)
    b, m = values.shape
    idx = (values * BINS_PER_LEVEL).long().clamp_(0, n_bins - 1)
    idx = idx + torch.arange(b, device=values.device).unsqueeze(1) * n_bins
    hist = torch.bincount(idx.flatten(), minlength=b * n_bins).view(b, n_bins)
    cdf = hist.cumsum(dim=1).to(torch.float64)
    targets = torch.tensor(qs, device=values.device, dtype=torch.float64) / 100.0 * m
    # first bin whose cumulative count reaches the target; its centre is the percentile
    first = torch.searchsorted(cdf, targets.expand(b, -1).contiguous())
    return (first.clamp(max=n_bins - 1).to(torch.float32) + 0.5) / BINS_PER_LEVEL


def tone_statistics(crops: torch.Tensor) -> torch.Tensor:
    """uint8 crops (N, K, 3, S, S) of N images -> (N, len(STATISTICS)) float32 statistics on the
    0-255 scale, each over all K crops of an image together."""
    n, k = crops.shape[:2]
    rgb = crops.float()
    luma_w = torch.tensor(LUMA, device=crops.device, dtype=torch.float32).view(1, 1, 3, 1, 1)
    y = (rgb * luma_w).sum(dim=2)  # (N, K, S, S)
    flat = y.flatten(1)
    mean = flat.mean(dim=1)
    std = (flat - mean.unsqueeze(1)).pow(2).mean(dim=1).sqrt()
    p1, p5, p95, p99 = _percentiles(flat, (1, 5, 95, 99)).unbind(dim=1)
    local = _local_std(y.flatten(0, 1).unsqueeze(1)).view(n, -1)
    local_median = _percentiles(local.clamp(max=255.0), (50,)).squeeze(1)
    saturation = (rgb.amax(dim=2) - rgb.amin(dim=2)).flatten(1).mean(dim=1)
    return torch.stack([std, p1, p5, p95, p99, mean, local.mean(dim=1), local_median, saturation], dim=1)


def _local_std(y: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) -> local standard deviation in LOCAL_WINDOW windows (valid positions only),
    centred on each window's mean so that flat regions give 0 and not float32 noise."""
    centred = y - y.mean(dim=(2, 3), keepdim=True)
    m = F.avg_pool2d(centred, LOCAL_WINDOW, stride=1)
    m2 = F.avg_pool2d(centred * centred, LOCAL_WINDOW, stride=1)
    return (m2 - m * m).clamp_(min=0.0).sqrt()


@dataclass(frozen=True)
class ToneTerm:
    """``bias + sum(weights * (stats - mean) / scale)``: added to an image's raw score."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float = 0.0
    statistics: tuple[str, ...] = STATISTICS

    def __post_init__(self) -> None:
        n = len(self.statistics)
        if tuple(self.statistics) != STATISTICS:
            raise ValueError(f"tone term statistics {list(self.statistics)} are not this version's {list(STATISTICS)}")
        if not len(self.mean) == len(self.scale) == len(self.weights) == n:
            raise ValueError(f"tone term needs {n} means, scales and weights")

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 crops (N, K, 3, S, S) -> (N,) additive raw-score term."""
        return self.of_statistics(tone_statistics(crops))

    def of_statistics(self, stats: torch.Tensor) -> torch.Tensor:
        """(N, len(STATISTICS)) float32 statistics -> (N,) term."""
        dev = stats.device
        z = (stats - torch.tensor(self.mean, device=dev)) / torch.tensor(self.scale, device=dev)
        return z @ torch.tensor(self.weights, device=dev) + self.bias

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ToneTerm":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
