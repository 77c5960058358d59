"""Semantic-noise diagnostic: neighbour quality gaps per feature space, and its plot."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qfmiqm.eval.diagnose import diagnose_features, format_table, knn_indices, plot_semantic_noise, semantic_noise_table
from qfmiqm.errors import UsageError
from qfmiqm.models.backbones import BackboneFeatures
from qfmiqm.models.card import DecoderConfig
from qfmiqm.models.qfm import QualityHead


def test_small_case_by_hand():
    feats = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = np.array([10.0, 50.0, 20.0, 22.0])
    assert knn_indices(feats, 1).ravel().tolist() == [1, 0, 3, 2]
    table = semantic_noise_table({"f": feats}, labels, k=1, thresholds=[5.0, 30.0])
    # neighbour gaps: 40, 40, 2, 2
    assert table["spaces"]["f"]["share"] == [0.5, 0.5]
    assert table["spaces"]["f"]["mean_abs_dq"] == pytest.approx(21.0)
    assert table["spaces"]["f"]["per_image_share"] == [1.0, 1.0, 0.0, 0.0]
    # all 12 ordered pairs: gaps 40,10,12,30,28,2 twice
    assert table["baseline"]["share"] == pytest.approx([5 / 6, 1 / 6])  # only 40 exceeds 30


def test_quality_aware_space_has_less_semantic_noise_than_a_random_one():
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 100, 200)
    angle = y / 100 * np.pi / 2
    quality_space = np.stack([np.cos(angle), np.sin(angle)], 1) + rng.normal(0, 0.01, (200, 2))
    semantic_space = rng.normal(size=(200, 32))
    table = semantic_noise_table({"quality": quality_space, "semantic": torch.from_numpy(semantic_space)}, y, k=5)
    q, s, base = table["spaces"]["quality"]["share"], table["spaces"]["semantic"]["share"], table["baseline"]["share"]
    assert q[1] < 0.05 and all(a < b for a, b in zip(q, s))
    assert all(abs(a - b) < 0.1 for a, b in zip(s, base))  # random features: no better than chance
    text = format_table(table)
    assert "quality 5-NN" in text and "all pairs" in text


def test_gated_space_follows_the_head(tmp_path):
    torch.manual_seed(0)
    dims = [8, 16]
    head = QualityHead(dims, None, DecoderConfig(width=32, grid=2))
    feats = BackboneFeatures([torch.rand(12, c, 4, 4) for c in dims], None)
    labels = torch.linspace(0, 100, 12)
    open_gate = diagnose_features(feats, labels, head=head, k=3)
    assert set(open_gate["spaces"]) == {"backbone", "gated"}
    with torch.no_grad():
        head.gate.logits[1][:12].fill_(-20.0)  # close most channels of level 2
    closed = diagnose_features(feats, labels, head=head, k=3)
    assert closed["spaces"]["backbone"] == open_gate["spaces"]["backbone"]
    assert closed["spaces"]["gated"] != open_gate["spaces"]["gated"]
    png = plot_semantic_noise(closed, tmp_path / "noise.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert list(tmp_path.iterdir()) == [png]  # no temporary file left behind


def test_mismatched_inputs_are_usage_errors():
    with pytest.raises(UsageError, match="rows"):
        semantic_noise_table({"f": np.zeros((3, 2))}, [1.0, 2.0])
    with pytest.raises(UsageError, match="at least 2"):
        semantic_noise_table({"f": np.zeros((1, 2))}, [1.0])
