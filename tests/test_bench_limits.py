"""qfmiqm.bench_limits: the backbone in ONNX Runtime matches PyTorch, and the reference speeds."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

pytest.importorskip("onnxruntime")

from qfmiqm.bench_limits import (  # noqa: E402
    OrtBackbone, backbone_limit_ips, brisque_ips, brisque_scorer, normalised, same_size_batches,
)
from qfmiqm.models.backbones import create_backbone  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / name).convert("RGB"))


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("efficientnet_lite0")


def test_onnx_maps_equal_torch_at_native_sizes(backbone):
    ort_backbone = OrtBackbone(backbone, threads=1)
    # two non-square sizes, neither of them the traced one, one with odd sides
    images = [_rgb("chelsea.jpg"), _rgb("coffee.jpg")[40:341, 100:357]]
    assert [im.shape[:2] for im in images] == [(300, 451), (301, 257)]
    for img in images:
        x = normalised([img], backbone.mean, backbone.std)
        got = ort_backbone(x)
        with torch.inference_mode():
            expected = [m.numpy() for m in backbone(torch.from_numpy(x)).maps]
        assert len(got) == len(expected) == 4
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            assert np.abs(g - e).max() < 1e-3


def test_same_size_batches():
    a, b = np.zeros((4, 5, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)
    sizes = [[im.shape for im in batch] for batch in same_size_batches([a, a, a, b, a], 2)]
    assert sizes == [[a.shape] * 2, [a.shape], [b.shape], [a.shape]]


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_backbone_limit_ips(backbone, runtime):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(64, 96), (64, 96), (80, 72)]]
    threads = torch.get_num_threads()
    ips = backbone_limit_ips(backbone, images, runtime=runtime, threads=1)
    assert math.isfinite(ips) and ips > 0
    assert torch.get_num_threads() == threads and not backbone.training  # both restored


def test_backbone_limit_ips_rejects_unknown_runtime(backbone):
    with pytest.raises(ValueError, match="runtime"):
        backbone_limit_ips(backbone, [np.zeros((32, 32, 3), np.uint8)], runtime="tensorrt")


@pytest.fixture(scope="module")
def brisque_score():
    score = brisque_scorer()
    if score is None:
        pytest.skip("the 'brisque' package (with OpenCV) is not installed: pip install 'qfmiqm[bench]'")
    return score


def test_brisque_scores_blur_worse(brisque_score):
    photo = Image.open(SAMPLES / "chelsea.jpg").convert("RGB")
    sharp = brisque_score(np.asarray(photo))
    blurred = brisque_score(np.asarray(photo.filter(ImageFilter.GaussianBlur(3))))
    assert 0 <= sharp <= 100
    assert blurred > sharp + 20  # higher BRISQUE = worse


def test_brisque_ips(brisque_score, tmp_path):
    paths = []
    for i, name in enumerate(["chelsea.jpg", "coffee.jpg"]):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(_rgb(name)[:120, :160]).save(path, quality=90)
        paths.append(path)
    ips = brisque_ips(paths)
    assert ips is not None and math.isfinite(ips) and ips > 0
