"""The QFM head: DEIQT's decoder exactly, config keys, gate switch, caching, safetensors."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from qfmiqm.errors import UsageError
from qfmiqm.models.backbones import BackboneFeatures, create_backbone
from qfmiqm.models.card import DecoderConfig, ModelCard
from qfmiqm.models.qfm import QualityHead, QualityNet
from qfmiqm.models.registry import ModelEntry, load_net, save_model

DEIQT = DecoderConfig(width=0, heads=6, grid=0, gate=False)  # DEIQT on ViT-S/16
LITE0_DIMS = [24, 40, 112, 320]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ReferencePanel(nn.Module):
    """DEIQT's decoder written from its public code (models/deiqt.py, Experts_MOS): queries
    (1, P, D) plus the CLS token, nn.TransformerDecoder of one pre-norm layer, one bias-free
    Linear(D, 1) over every member, mean."""

    def __init__(self, dim: int, members: int = 6, heads: int = 6):
        super().__init__()
        layer = nn.TransformerDecoderLayer(d_model=dim, dropout=0.0, nhead=heads, activation=F.gelu,
                                           batch_first=True, dim_feedforward=dim * 4, norm_first=True)
        self.bunch_decoder = nn.TransformerDecoder(layer, num_layers=1)
        self.bunch_embedding = nn.Parameter(torch.zeros(1, members, dim))
        self.heads = nn.Linear(dim, 1, bias=False)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q = self.bunch_embedding.expand(b, -1, -1) + ref.view(b, 1, -1).expand(b, self.bunch_embedding.shape[1], -1)
        return self.heads(self.bunch_decoder(q, x)).view(b, -1).mean(dim=1)


def _crops(samples, n=2, size=224) -> torch.Tensor:
    out = []
    for path in list(samples.values())[:n]:
        img = np.asarray(Image.open(path).convert("RGB"))[:size, :size]
        out.append(torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255 - 0.5)
    return torch.stack(out) / 0.5


def test_vit_head_is_exactly_deiqt(samples):
    torch.manual_seed(0)
    vit = create_backbone("vit_small_patch16_224", pretrained=False)
    head = QualityHead(vit.feature_dims, vit.feature_dims[-1], DEIQT)
    ref = ReferencePanel(384)
    ref.bunch_decoder.layers[0].load_state_dict(head.decoder.layers[0].state_dict())
    with torch.no_grad():
        ref.bunch_embedding.copy_(head.decoder.queries[None])
        ref.heads.weight.copy_(head.decoder.member_heads)
    x = _crops(samples)
    with torch.no_grad():
        tokens = vit.model.forward_features(x)  # DEIQT's encoder output: CLS, then 196 patch tokens
        ours = head(vit(x))
    expected = ref(tokens[:, 1:], tokens[:, 0])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    assert abs(ours[0] - ours[1]) > 1e-4  # two photos, two scores: the comparison is not vacuous
    # nothing besides DEIQT's parameters: queries, one decoder layer, one shared head
    own = {k for k in head.state_dict()}
    assert own == {"decoder.queries", "decoder.member_heads"} | {f"decoder.layers.0.{k}" for k in ref.bunch_decoder.layers[0].state_dict()}


def test_deiqt_initialisation_follows_its_code():
    torch.manual_seed(0)
    head = QualityHead([384], 384, DEIQT)
    layer = head.decoder.layers[0]
    for lin in (layer.linear1, layer.linear2, layer.self_attn.out_proj, layer.multihead_attn.out_proj):
        assert lin.weight.std().item() == pytest.approx(0.02, rel=0.15)
        assert torch.count_nonzero(lin.bias) == 0
    for p in (head.decoder.queries, head.decoder.member_heads):
        assert p.std().item() == pytest.approx(0.02, rel=0.3)


@pytest.mark.parametrize("changes, members, layers, tokens", [
    ({}, 6, 1, 4 * 49),
    ({"panel_size": 3, "depth": 2, "heads": 8, "width": 64, "grid": 4}, 3, 2, 4 * 16),
    ({"member_heads": "separate", "grid": 0}, 6, 1, 56 * 56 + 28 * 28 + 14 * 14 + 7 * 7),
])
def test_decoder_config_keys_shape_the_head(changes, members, layers, tokens):
    cfg = dataclasses.replace(DecoderConfig(), **changes)
    head = QualityHead(LITE0_DIMS, None, cfg)
    feats = BackboneFeatures([torch.randn(2, c, s, s) for c, s in zip(LITE0_DIMS, (56, 28, 14, 7))], None)
    assert head.decoder.queries.shape == (members, cfg.width)
    assert len(head.decoder.layers) == layers
    assert head.decoder.layers[0].self_attn.num_heads == cfg.heads
    assert head.decoder.member_heads.shape[0] == (members if cfg.member_heads == "separate" else 1)
    glob, toks = head.adapter(head.select(head.pool(feats)))
    assert toks.shape == (2, tokens, cfg.width) and glob.shape == (2, cfg.width)
    member_scores = head.decoder.member_scores(glob, toks)
    assert member_scores.shape == (2, members)
    torch.testing.assert_close(head(feats), member_scores.mean(-1))


def test_bad_decoder_configs_are_usage_errors():
    with pytest.raises(UsageError, match="one feature width"):
        QualityHead(LITE0_DIMS, None, DecoderConfig(width=0))
    with pytest.raises(UsageError, match="divisible"):
        QualityHead(LITE0_DIMS, None, DecoderConfig(width=100, heads=6))
    with pytest.raises(UsageError, match="member_heads"):
        QualityHead(LITE0_DIMS, None, DecoderConfig(member_heads="each"))


def test_gate_switch_and_selection():
    feats = BackboneFeatures([torch.rand(3, c, 7, 7) for c in LITE0_DIMS], None)
    torch.manual_seed(0)
    gated = QualityHead(LITE0_DIMS, None, DecoderConfig())
    torch.manual_seed(0)
    plain = QualityHead(LITE0_DIMS, None, DecoderConfig(gate=False))
    assert plain.gate is None and all(k.startswith(("adapter", "decoder")) for k in plain.state_dict())
    assert plain.select(feats) is feats
    with torch.no_grad():  # a fully open gate is the identity: same network as without gate
        for g in gated.gate.logits:
            g.fill_(60.0)
    torch.testing.assert_close(gated(feats), plain(feats))
    with torch.no_grad():  # closing the deepest level's channels changes the prediction
        gated.gate.logits[3].fill_(-60.0)
    assert not torch.allclose(gated(feats), plain(feats))


def test_cached_pooled_features_give_the_same_scores():
    torch.manual_seed(0)
    head = QualityHead(LITE0_DIMS, None, DecoderConfig())
    feats = BackboneFeatures([torch.randn(4, c, s, s) for c, s in zip(LITE0_DIMS, (56, 28, 14, 7))], None)
    pooled = head.pool(feats)
    assert [tuple(m.shape[-2:]) for m in pooled.maps] == [(7, 7)] * 4
    assert torch.equal(head(pooled), head(feats))


def test_head_state_round_trips_through_safetensors_bit_exactly(tmp_path):
    torch.manual_seed(0)
    head = QualityHead(LITE0_DIMS, None, DecoderConfig(member_heads="separate"))
    with torch.no_grad():  # make every tensor non-trivial, gate included
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "head.safetensors"
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path))
    torch.manual_seed(1)
    again = QualityHead(LITE0_DIMS, None, DecoderConfig(member_heads="separate"))
    again.load_state_dict(load_file(str(path)))
    for (k, a), b in zip(head.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    feats = BackboneFeatures([torch.rand(2, c, 7, 7) for c in LITE0_DIMS], None)
    assert torch.equal(head(feats), again(feats))


def test_vit_checkpoint_with_backbone_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = dataclasses.replace(DEIQT, gate=True)
    net = QualityNet(create_backbone("vit_small_patch16_224", pretrained=False), cfg).eval()
    card = ModelCard(name="vit-test", backbone="vit_small_patch16_224", trained=False, decoder=cfg, includes_backbone=True)
    path = tmp_path / "vit.safetensors"
    card = save_model(net, card, path)
    again = load_net(ModelEntry(ModelCard.read(path.with_suffix(".json")), path))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(net(x), again(x))
