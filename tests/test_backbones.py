from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from qfmiqm.errors import UsageError, WeightsError
from qfmiqm.models import backbones
from qfmiqm.models.backbones import create_backbone, get_backbone_spec
from qfmiqm.models.weights import map_in_order, read_state_dict

CAT_CLASSES = set(range(281, 286)) | {383}  # tabby, tiger cat, Persian, Siamese, Egyptian cat; Madagascar cat
ESPRESSO, CUP = 967, 968


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0")


def _imagenet_input(path, backbone) -> torch.Tensor:
    img = Image.open(path).convert("RGB").resize((backbone.input_size,) * 2, Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    mean = torch.tensor(backbone.mean).view(3, 1, 1)
    std = torch.tensor(backbone.std).view(3, 1, 1)
    return ((x - mean) / std)[None]


def test_packaged_lite0_weights_classify_real_photos(lite0, samples):
    with torch.no_grad():
        cat_top5 = set(lite0.classify(_imagenet_input(samples["chelsea"], lite0)).topk(5).indices[0].tolist())
        coffee_top5 = set(lite0.classify(_imagenet_input(samples["coffee"], lite0)).topk(5).indices[0].tolist())
    assert cat_top5 & CAT_CLASSES, f"chelsea is a cat, top-5 was {cat_top5}"
    assert {ESPRESSO, CUP} & coffee_top5, f"coffee is an espresso, top-5 was {coffee_top5}"


def test_lite0_exposes_multilevel_maps_and_preprocessing(lite0):
    assert lite0.feature_dims == [24, 40, 112, 320]
    assert lite0.input_size == 224 and lite0.mean == (0.485, 0.456, 0.406)
    with torch.no_grad():
        feats = lite0(torch.zeros(2, 3, 224, 224))
    assert [tuple(m.shape) for m in feats.maps] == [(2, 24, 56, 56), (2, 40, 28, 28), (2, 112, 14, 14), (2, 320, 7, 7)]
    assert feats.cls_token is None


def test_in_order_mapping_fails_loudly_on_shape_mismatch():
    target = {"a.weight": torch.zeros(3, 2), "a.bias": torch.zeros(3)}
    with pytest.raises(WeightsError, match="does not line up"):
        map_in_order({"x": torch.zeros(3, 2), "y": torch.zeros(4)}, target, "pkg")
    with pytest.raises(WeightsError, match="cannot map"):
        map_in_order({"x": torch.zeros(3, 2)}, target, "pkg")


def test_packaged_checksum_is_verified(monkeypatch):
    bad = dataclasses.replace(get_backbone_spec("efficientnet_lite0"), packaged_sha256="0" * 64)
    monkeypatch.setitem(backbones.BACKBONES, "efficientnet_lite0", bad)
    with pytest.raises(WeightsError, match="checksum"):
        create_backbone("efficientnet_lite0")


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "resnet50"])
def test_backbone_without_offline_weights_says_what_to_do(name):
    assert not get_backbone_spec(name).weights_offline
    with pytest.raises(WeightsError) as info:
        create_backbone(name)
    message = str(info.value)
    assert "--backbone-weights FILE" in message and "\n" not in message


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "vit.safetensors"
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("vit_small_patch16_224", weights=missing)


def test_vit_loads_safetensors_and_gives_cls_plus_patch_grid(tmp_path):
    torch.manual_seed(0)
    random_vit = create_backbone("vit_small_patch16_224", pretrained=False)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in random_vit.model.state_dict().items()}, str(path))
    vit = create_backbone("vit_small_patch16_224", weights=path)
    for (k, a), b in zip(random_vit.model.state_dict().items(), vit.model.state_dict().values()):
        assert torch.equal(a, b), k
    with torch.no_grad():
        feats = vit(torch.zeros(1, 3, 224, 224))
    assert [tuple(m.shape) for m in feats.maps] == [(1, 384, 14, 14)]
    assert tuple(feats.cls_token.shape) == (1, 384)
    assert vit.mean == (0.5, 0.5, 0.5)


def test_weights_of_another_backbone_are_rejected(tmp_path, lite0):
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in lite0.model.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match="do not fit"):
        create_backbone("resnet50", weights=path)


def test_pickle_with_code_is_refused_unless_trusted(tmp_path):
    torch.manual_seed(0)
    resnet = create_backbone("resnet50", pretrained=False)
    plain = tmp_path / "resnet.pth"
    torch.save(resnet.model.state_dict(), plain)
    assert torch.equal(create_backbone("resnet50", weights=plain).model.conv1.weight, resnet.model.conv1.weight)

    wrapped = tmp_path / "resnet_obj.pth"
    torch.save({"state_dict": resnet.model.state_dict(), "extra": _Custom()}, wrapped)
    with pytest.raises(WeightsError, match="--trust-pickle"):
        create_backbone("resnet50", weights=wrapped)
    trusted = create_backbone("resnet50", weights=wrapped, trust_pickle=True)
    assert torch.equal(trusted.model.conv1.weight, resnet.model.conv1.weight)


class _Custom:
    pass


def test_npz_and_corrupted_files(tmp_path):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    np.savez(tmp_path / "w.npz", **arrays)
    assert torch.equal(read_state_dict(tmp_path / "w.npz")["w"], torch.from_numpy(arrays["w"]))
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.ones(64, 64)}, str(good))
    truncated = tmp_path / "bad.safetensors"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(WeightsError, match="corrupted or truncated"):
        read_state_dict(truncated)
    bad_pth = tmp_path / "bad.pth"
    bad_pth.write_bytes(b"not a zip nor a pickle")
    with pytest.raises(WeightsError):
        read_state_dict(bad_pth)
    with pytest.raises(WeightsError, match="unknown weights format"):
        read_state_dict(_touch(tmp_path / "w.h5"))


def _touch(p):
    p.write_bytes(b"x")
    return p


def test_unknown_backbone_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown backbone"):
        create_backbone("alexnet")


def test_pickle_module_is_not_needed_for_safe_reads(tmp_path):
    # a payload that would run code if unpickled without weights_only
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump(_Custom(), f)
    with pytest.raises(WeightsError):
        read_state_dict(path)
