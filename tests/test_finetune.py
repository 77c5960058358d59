"""Backbone modes: frozen, full, last-N blocks, for every registered backbone."""
from __future__ import annotations

import pytest
import torch

from qfmiqm.errors import UsageError
from qfmiqm.models.backbones import create_backbone, list_backbones
from qfmiqm.models.card import DecoderConfig
from qfmiqm.models.qfm import QualityNet
from qfmiqm.train.finetune import backbone_units, set_backbone_mode, trainable_param_groups

LAST_BLOCK = {"efficientnet_lite0": "blocks.6.", "efficientnet_lite0_pixstats": "blocks.6.",
              "efficientnet_lite0_nss": "blocks.6.", "efficientnet_lite0_pixstats_nss": "blocks.6.",
              "vit_small_patch16_224": "blocks.11.", "resnet50": "layer4."}
SECOND_LAST = {"efficientnet_lite0": "blocks.5.", "efficientnet_lite0_pixstats": "blocks.5.",
               "efficientnet_lite0_nss": "blocks.5.", "efficientnet_lite0_pixstats_nss": "blocks.5.",
               "vit_small_patch16_224": "blocks.10.", "resnet50": "layer3."}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=list_backbones())
def backbone(request):
    torch.manual_seed(0)
    return create_backbone(request.param, pretrained=False)


def _trainable(backbone) -> set[str]:
    return {k for k, p in backbone.model.named_parameters() if p.requires_grad}


def test_every_registered_backbone_has_a_table_entry():
    assert set(LAST_BLOCK) == set(list_backbones())


def test_full_mode_trains_exactly_the_parameters_the_features_use(backbone):
    backbone.requires_grad_(True)
    backbone.model.zero_grad(set_to_none=True)
    feats = backbone(torch.randn(1, 3, 64, 64) if backbone.spec.kind == "cnn" else torch.randn(1, 3, 224, 224))
    sum(t.sum() for t in list(feats.maps) + [t for t in [feats.cls_token] if t is not None]).backward()
    used = {k for k, p in backbone.model.named_parameters() if p.grad is not None}
    groups = set_backbone_mode(backbone, "full")
    assert _trainable(backbone) == used
    assert sum(p.numel() for p in groups[0]["params"]) == sum(p.numel() for k, p in backbone.model.named_parameters() if k in used)


def test_frozen_mode_trains_nothing(backbone):
    assert set_backbone_mode(backbone, "frozen") == []
    assert _trainable(backbone) == set()


@pytest.mark.parametrize("n", [1, 2])
def test_last_n_mode_trains_the_last_blocks_and_the_tail(backbone, n):
    groups = set_backbone_mode(backbone, "last_n", last_n=n)
    prefixes = (LAST_BLOCK[backbone.name],) + ((SECOND_LAST[backbone.name],) if n == 2 else ())
    prefixes += tuple(f"{t}." for t in backbone.spec.tail)
    trainable = _trainable(backbone)
    assert trainable and all(k.startswith(prefixes) for k in trainable)
    assert all(any(k.startswith(p) for k in trainable) for p in prefixes)
    assert len(groups[0]["params"]) == len(trainable)


def test_last_n_larger_than_the_backbone_and_unknown_modes_are_usage_errors(backbone):
    n_blocks = len(backbone_units(backbone)[1])
    with pytest.raises(UsageError, match=f"has {n_blocks} blocks"):
        set_backbone_mode(backbone, "last_n", last_n=n_blocks + 1)
    with pytest.raises(UsageError, match="backbone mode"):
        set_backbone_mode(backbone, "partial")


def test_frozen_batchnorm_keeps_its_statistics_in_training_mode():
    torch.manual_seed(0)
    net = QualityNet(create_backbone("efficientnet_lite0", pretrained=False), DecoderConfig())
    groups = trainable_param_groups(net, "last_n", last_n=1)
    assert [g["name"] for g in groups] == ["head", "gate", "backbone"]
    net.train()
    frozen_bn, trained_bn = net.backbone.model.bn1, net.backbone.model.blocks[6][0].bn1
    assert not frozen_bn.training and trained_bn.training and net.head.training
    before = frozen_bn.running_mean.clone()
    net(torch.randn(2, 3, 64, 64))
    assert torch.equal(frozen_bn.running_mean, before)
    set_backbone_mode(net.backbone, "full")
    assert frozen_bn.training  # unfreezing puts it back to training mode
