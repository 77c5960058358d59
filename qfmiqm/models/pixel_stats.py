"""A feature level of plain pixel statistics, appended to a backbone's levels.

ImageNet training augments with brightness, contrast and saturation jitter, so the backbone's
features are built to ignore exactly what a global contrast loss changes (docs/default-model.md
measured it: a probe on the pooled features tells a pristine photo from its 0.8-contrast version
in 25 of 36 held-out cases, against 36 of 36 for blur, JPEG and noise). A no-reference cue that
survives is the tonal range a camera or editor normally fills: a photo whose darkest and
brightest parts have moved toward the mean has lost contrast. These statistics give the head
that range, the local contrast and the saturation, as one more map level, so the gate, the
token adapter, the matching and the perturbation treat it like any backbone level.

All operations are pooling and elementwise arithmetic (exportable to ONNX); there are no weights.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qfmiqm.data.colour import LUMA  # the luminance the synthetic distortions use

#: bump when the statistics change: cached features of another version are not reused
VERSION = 1
#: channel names, in order (docs/method.md); each is scaled to roughly unit range
CHANNELS = (
    "local_mean", "local_std", "local_max", "local_min", "saturation", "detail", "clipped",
    "crop_max", "crop_min", "crop_std",
)
_SCALE = (1.0, 4.0, 1.0, 1.0, 2.0, 20.0, 5.0, 1.0, 1.0, 4.0)


class PixelStats(nn.Module):
    """Normalised crops (B, 3, S, S) -> (B, 10, S / stride, S / stride) luminance/colour statistics.

    Per ``stride`` x ``stride`` cell: mean, standard deviation, maximum and minimum of the
    luminance, mean saturation (max - min of R, G, B), mean fine detail (|Y - 3x3 mean of Y|) and
    the fraction of pixels clipped to black or white. Per crop (the same value in every cell):
    the maximum and minimum of the 4 x 4-averaged luminance (the tonal range, robust to single
    pixels) and the luminance standard deviation.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], stride: int = 8):
        super().__init__()
        self.stride = stride
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("luma", torch.as_tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @property
    def channels(self) -> int:
        return len(CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x.float() * self.std + self.mean).clamp(0.0, 1.0)
        y = (rgb * self.luma).sum(1, keepdim=True)
        s = self.stride
        local_mean = F.avg_pool2d(y, s)
        # centred on the crop mean first: E[y^2] - E[y]^2 then cancels far less in float32
        centred = y - y.mean((2, 3), keepdim=True)
        centred_mean = F.avg_pool2d(centred, s)
        local_std = (F.avg_pool2d(centred * centred, s) - centred_mean * centred_mean).clamp_min(0.0).sqrt()
        local_max = F.max_pool2d(y, s)
        local_min = -F.max_pool2d(-y, s)
        saturation = F.avg_pool2d(rgb.amax(1, keepdim=True) - rgb.amin(1, keepdim=True), s)
        detail = F.avg_pool2d((y - F.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=False)).abs(), s)
        clipped = F.avg_pool2d(((y < 0.02) | (y > 0.98)).float(), s)
        smooth = F.avg_pool2d(y, 4)
        crop = torch.cat([smooth.amax((2, 3), keepdim=True), smooth.amin((2, 3), keepdim=True),
                          y.flatten(1).std(1).view(-1, 1, 1, 1)], dim=1).expand(-1, -1, *local_mean.shape[-2:])
        stats = torch.cat([local_mean, local_std, local_max, local_min, saturation, detail, clipped, crop], dim=1)
        return (stats * self.scale).to(x.dtype)
