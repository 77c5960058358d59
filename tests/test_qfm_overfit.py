"""A tiny QFM model, all components on, fits 64 distorted crops of the real sample photos.

Frozen EfficientNet-Lite0 features are computed once and cached (pooled to the head's grid);
the head then trains on the cached tensors with matching, adversarial perturbation and
distillation (EMA teacher on 16 extra unlabelled crops). Targets follow the distortion level.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from scipy.stats import spearmanr

from qfmiqm.models.backbones import create_backbone
from qfmiqm.models.card import DecoderConfig
from qfmiqm.models.features import index_features
from qfmiqm.models.qfm import QualityHead
from qfmiqm.train.distillation import ema_update, make_teacher
from qfmiqm.train.finetune import set_backbone_mode
from qfmiqm.train.objective import QFMConfig, QFMObjective

LEVELS = 4
BLUR_RADIUS = (0, 1, 2, 4)
NOISE_SIGMA = (0, 8, 20, 45)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def distorted_crops(samples, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n 224 crops at native resolution, alternately blurred / noised at level i//2 % 4;
    target 100 (pristine) down to 0 (level 3)."""
    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in samples.values()]
    images, targets = [], []
    for i in range(n):
        kind, level, photo = i % 2, (i // 2) % LEVELS, photos[(i // (2 * LEVELS)) % len(photos)]
        x0, y0 = rng.integers(0, photo.width - 224), rng.integers(0, photo.height - 224)
        crop = photo.crop((x0, y0, x0 + 224, y0 + 224))
        if kind == 0:
            arr = np.asarray(crop.filter(ImageFilter.GaussianBlur(BLUR_RADIUS[level])), dtype=np.float32)
        else:
            arr = np.asarray(crop, dtype=np.float32) + rng.normal(0, NOISE_SIGMA[level], (224, 224, 3))
        images.append(np.clip(arr, 0, 255) / 255)
        targets.append(100.0 * (1 - level / (LEVELS - 1)))
    return np.stack(images).astype(np.float32), np.array(targets, dtype=np.float32)


def test_qfm_head_overfits_64_synthetic_images(samples):
    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0")
    set_backbone_mode(backbone, "frozen")
    head = QualityHead(backbone.feature_dims, None, DecoderConfig(width=64, grid=4))
    images, targets = distorted_crops(samples, 80)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2) - torch.tensor(backbone.mean).view(1, 3, 1, 1)) \
        / torch.tensor(backbone.std).view(1, 3, 1, 1)
    with torch.no_grad():  # the frozen backbone runs once; its pooled features are the cache
        cache = head.pool(backbone(x))
    labelled, extra = index_features(cache, slice(0, 64)), index_features(cache, slice(64, 80))
    y = torch.from_numpy(targets[:64])

    cfg = QFMConfig(lambda_kd=0.5, ema_decay=0.99)  # all three components on
    objective, teacher = QFMObjective(cfg), make_teacher(head)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=0.05)
    gate_before = torch.cat([g.detach().clone() for g in head.gate.logits])
    seen = set()
    for _epoch in range(15):
        for idx in torch.randperm(64).split(16):
            loss, logs = objective(head, index_features(labelled, idx), y[idx], extra_feats=extra, teacher=teacher)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema_update(teacher, head, cfg.ema_decay)
            seen |= {k for k, v in logs.items() if v > 0}
    assert {"reg", "match", "adv", "kd"} <= seen
    with torch.no_grad():
        pred = head(labelled)
    srcc = spearmanr(pred.numpy(), y.numpy()).statistic
    assert srcc > 0.95, srcc
    assert (torch.cat([g.detach() for g in head.gate.logits]) - gate_before).abs().max() > 1e-2
