"""The natural-scene-statistics level (qfmiqm.models.nss) and the backbone entries that append it."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from qfmiqm.data.colour import LUMA
from qfmiqm.models.backbones import create_backbone
from qfmiqm.models.nss import CHANNELS, NssStats

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _normalised(rgb: np.ndarray, mean=MEAN, std=STD) -> torch.Tensor:
    x = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)[None]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _mean_of(stats: torch.Tensor, name: str) -> float:
    return stats[:, CHANNELS.index(name)].mean().item()


@pytest.fixture(scope="module")
def coffee_crop(samples) -> np.ndarray:
    img = np.asarray(Image.open(samples["coffee"]).convert("RGB"), dtype=np.float32)
    return img[88:312, 188:412]


def test_mscn_matches_brisques_definition_computed_with_scipy(coffee_crop):
    y = (coffee_crop / 255.0) @ np.asarray(LUMA, dtype=np.float32)
    # BRISQUE: 7x7 Gaussian window, sigma 7/6 (truncate = 3 px / sigma), C = 1 on the 0-255 scale
    gauss = lambda a: ndimage.gaussian_filter(a, 7 / 6, mode="nearest", truncate=3 / (7 / 6))  # noqa: E731
    mu = gauss(y)
    sigma = np.sqrt(np.abs(gauss(y * y) - mu * mu))
    expected = (y - mu) / (sigma + 1 / 255)
    got = NssStats(MEAN, STD).mscn(torch.from_numpy(y.astype(np.float32))[None, None])[0, 0].numpy()
    # float32 cancellation in E[y^2] - E[y]^2 on flat patches: compare where the local contrast is real
    textured = sigma > 0.01
    assert textured.mean() > 0.3
    np.testing.assert_allclose(got[textured], expected[textured], atol=0.03)


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32)


def test_the_statistics_move_the_way_brisque_reads_them(coffee_crop):
    stats = NssStats(MEAN, STD)
    rng = np.random.default_rng(0)
    versions = {
        "pristine": coffee_crop,
        "blur": ndimage.gaussian_filter(coffee_crop, (3, 3, 0)),
        "noise": np.clip(coffee_crop + rng.normal(0, 25, coffee_crop.shape), 0, 255),
        "jpeg": _jpeg(coffee_crop, 10),
    }
    with torch.no_grad():
        s = {k: stats(_normalised(v)) for k, v in versions.items()}
    assert s["pristine"].shape == (1, len(CHANNELS), 28, 28)
    # blur flattens the local contrast under the stabilising constant
    assert _mean_of(s["blur"], "s1_mscn_var") < 0.5 * _mean_of(s["pristine"], "s1_mscn_var")
    # white noise decorrelates neighbours: products lose their positive mean, gain negative mass
    assert _mean_of(s["noise"], "s1_h_mean") < 0.5 * _mean_of(s["pristine"], "s1_h_mean")
    assert _mean_of(s["noise"], "s1_h_left") > 3 * _mean_of(s["pristine"], "s1_h_left")
    # 8x8 blocking: coefficients flatten inside blocks and peak at their edges (smaller shape ratio)
    assert _mean_of(s["jpeg"], "s1_mscn_shape") < _mean_of(s["pristine"], "s1_mscn_shape") - 0.02
    for v in s.values():
        assert torch.isfinite(v).all()


def test_flat_and_clipped_images_give_finite_statistics():
    stats = NssStats(MEAN, STD)
    for value in (0.0, 100.0, 255.0):
        with torch.no_grad():
            out = stats(_normalised(np.full((64, 64, 3), value, dtype=np.float32)))
        assert torch.isfinite(out).all()
        assert out.abs().max() < 0.01  # float32 rounding of a flat window, not structure


def test_nss_backbone_appends_one_level(coffee_crop):
    # its ONNX export is tested with the other pixel levels' (tests/test_pixel_stats.py)
    plain = create_backbone("efficientnet_lite0")
    both = create_backbone("efficientnet_lite0_pixstats_nss")
    assert both.feature_dims[: len(plain.feature_dims)] == plain.feature_dims
    assert both.feature_dims[-1] == len(CHANNELS)
    assert both.pixel_level_versions.keys() == {"pixel_stats", "nss"}
    with torch.no_grad():
        maps = both(_normalised(coffee_crop, both.mean, both.std)).maps
    assert maps[-1].shape[-2:] == (28, 28)
