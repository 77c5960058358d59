"""The pixel-statistics level (qfmiqm.models.pixel_stats) and the backbone entry that appends it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qfmiqm.models.backbones import create_backbone
from qfmiqm.models.pixel_stats import CHANNELS, PixelStats

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _normalised(rgb: np.ndarray, mean=MEAN, std=STD) -> torch.Tensor:
    x = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)[None]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _channel(stats: torch.Tensor, name: str) -> torch.Tensor:
    return stats[:, CHANNELS.index(name)]


@pytest.fixture(scope="module")
def coffee_crop(samples) -> np.ndarray:
    img = np.asarray(Image.open(samples["coffee"]).convert("RGB"), dtype=np.float32)
    return img[88:312, 188:412]


def test_a_contrast_loss_shrinks_the_crop_range_and_spread(coffee_crop):
    stats = PixelStats(MEAN, STD)
    mean = coffee_crop.mean()
    reduced = mean + 0.7 * (coffee_crop - mean)
    with torch.no_grad():
        before, after = stats(_normalised(coffee_crop)), stats(_normalised(reduced))
    # ratios of scaled channels: the scale cancels
    spread = _channel(after, "crop_std")[0, 0, 0] / _channel(before, "crop_std")[0, 0, 0]
    tonal = lambda s: _channel(s, "crop_max")[0, 0, 0] - _channel(s, "crop_min")[0, 0, 0]  # noqa: E731
    assert spread.item() == pytest.approx(0.7, abs=0.02)
    assert (tonal(after) / tonal(before)).item() == pytest.approx(0.7, abs=0.05)
    # detail shrinks with the contrast; the mean level does not move
    assert _channel(after, "detail").mean() < 0.8 * _channel(before, "detail").mean()
    assert _channel(after, "local_mean").mean().item() == pytest.approx(_channel(before, "local_mean").mean().item(), abs=0.01)


def test_statistics_are_of_pixels_not_of_normalised_values():
    grey = np.full((64, 64, 3), 255 * 0.4, dtype=np.float32)
    white = np.full((64, 64, 3), 255.0, dtype=np.float32)
    for mean, std in ((MEAN, STD), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        stats = PixelStats(mean, std)
        with torch.no_grad():
            g, w = stats(_normalised(grey, mean, std)), stats(_normalised(white, mean, std))
        assert g.shape == (1, len(CHANNELS), 8, 8)
        assert torch.allclose(_channel(g, "local_mean"), torch.tensor(0.4), atol=1e-5)
        for name in ("local_std", "saturation", "detail", "clipped", "crop_std"):
            assert _channel(g, name).abs().max() < 1e-3, name
        assert torch.allclose(_channel(w, "clipped"), torch.tensor(5.0))  # all clipped, x5 scale


def test_pixstats_backbone_appends_one_level_and_keeps_the_others(samples, coffee_crop):
    plain, extended = create_backbone("efficientnet_lite0"), create_backbone("efficientnet_lite0_pixstats")
    assert extended.feature_dims == plain.feature_dims + [len(CHANNELS)]
    x = _normalised(coffee_crop, plain.mean, plain.std)
    with torch.no_grad():
        a, b = plain(x), extended(x)
    assert len(b.maps) == len(a.maps) + 1
    for m, n in zip(a.maps, b.maps):
        assert torch.equal(m, n)
    assert b.maps[-1].shape[-2:] == (224 // 8, 224 // 8)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0_pixstats", "efficientnet_lite0_nss"])
def test_a_model_on_a_pixel_level_backbone_exports_to_onnx(tmp_path, backbone):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from qfmiqm.export import export_model
    from qfmiqm.models.card import DecoderConfig, ModelCard
    from qfmiqm.models.qfm import QualityNet
    from qfmiqm.models.registry import save_model

    torch.manual_seed(0)
    net = QualityNet(create_backbone(backbone), DecoderConfig(width=32, heads=2, grid=4))
    with torch.no_grad():  # a head that reads the statistics level strongly
        net.head.adapter.proj[-1].weight.mul_(50)
    card = ModelCard(name="px", backbone=backbone, trained=True,
                     decoder=DecoderConfig(width=32, heads=2, grid=4))
    ckpt = tmp_path / "px.safetensors"
    save_model(net, card, ckpt)
    result = export_model(ckpt, tmp_path / "px.onnx")  # raises ExportError unless onnxruntime agrees
    assert result.max_abs_diff < 0.01


def test_cached_features_are_keyed_by_the_statistics_version(monkeypatch, tmp_path):
    from qfmiqm.data.transforms import InputPolicy
    from qfmiqm.models.card import DecoderConfig
    from qfmiqm.models.qfm import QualityNet
    from qfmiqm.train import cache

    def namespace(backbone: str) -> str:
        torch.manual_seed(0)  # the same random backbone weights each time: they are hashed too
        net = QualityNet(create_backbone(backbone, pretrained=False), DecoderConfig(width=32, heads=2, grid=4))
        return cache.FeatureCache(tmp_path, net, InputPolicy(), hflip=0.5).namespace(InputPolicy())

    plain, extended = namespace("efficientnet_lite0"), namespace("efficientnet_lite0_pixstats")
    assert plain != extended
    from qfmiqm.models import backbones
    level, version = backbones.PIXEL_LEVELS["pixel_stats"]
    monkeypatch.setitem(backbones.PIXEL_LEVELS, "pixel_stats", (level, version + 1))
    assert namespace("efficientnet_lite0_pixstats") != extended
    assert namespace("efficientnet_lite0") == plain  # caches of plain backbones stay valid
