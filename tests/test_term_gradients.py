"""tools/term_gradients.py: each QFM term's gradient against L_reg's, per part of the network.
Checked on limits whose answer is known: an adversarial step of radius ~0 adds exactly L_reg's
gradient again (ratio lambda_adv, cosine 1), and a term with lambda 0 adds nothing."""
from __future__ import annotations

import pytest
import torch

from qfmiqm.models.backbones import create_backbone
from qfmiqm.models.card import DecoderConfig
from qfmiqm.models.qfm import QualityNet
from qfmiqm.train.objective import QFMConfig


@pytest.fixture(scope="module")
def net_and_batches():
    torch.manual_seed(0)
    net = QualityNet(create_backbone("efficientnet_lite0", pretrained=False),
                     DecoderConfig(width=16, heads=2, grid=2, gate=True)).eval()
    batches = [(torch.randn(6, 3, 64, 64), torch.linspace(-20, 20, 6)) for _ in range(2)]
    return net, batches


def test_a_vanishing_adversarial_step_repeats_the_regression_gradient(load_tool, net_and_batches):
    tool = load_tool("term_gradients")
    net, batches = net_and_batches
    qfm = QFMConfig(adv_rho=1e-7, lambda_adv=0.5, lambda_match=0.0, match_tau=100.0)
    stats = tool.term_statistics(net, batches, qfm, train_blocks=1)
    assert set(stats["adv"]) == {"gate", "adapter", "decoder", "backbone blocks"}
    for part, s in stats["adv"].items():
        assert s["ratio"] == pytest.approx(0.5, rel=1e-3), part
        assert s["cos"] == pytest.approx(1.0, abs=1e-3), part
    for part, s in stats["match"].items():  # lambda_match 0: the term changes no gradient
        assert s["ratio"] == pytest.approx(0.0, abs=1e-6), part


def test_matching_adds_a_gradient_of_its_own(load_tool, net_and_batches):
    tool = load_tool("term_gradients")
    net, batches = net_and_batches
    stats = tool.term_statistics(net, batches, QFMConfig(match_tau=100.0, match_rho=0.5), train_blocks=0)
    assert "backbone blocks" not in stats["match"]
    assert stats["match"]["decoder"]["ratio"] > 0.0
    table = tool.markdown(stats)
    assert table.count("\n") == 2 + len(stats["match"])
