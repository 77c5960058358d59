"""``--decode device``: JPEG files decoded where the model runs (nvJPEG on a GPU).

On CPU the device decoder is torchvision's libjpeg-turbo, the same library Pillow uses, so the
device path must give exactly the worker path's scores; these tests run it there.
"""
from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from qfmiqm.cli import app
from qfmiqm.data.device_decode import DECODE_MODES, direct_jpeg_bytes, resolve_decode, views_on_device
from qfmiqm.data.policy import InputPolicy, policy_views
from qfmiqm.errors import UsageError

POLICY = InputPolicy()


@pytest.fixture(scope="module")
def files(samples, tmp_path_factory):
    """Real photos in every form the device path must either take or hand to Pillow."""
    d = tmp_path_factory.mktemp("decode")
    coffee = Image.open(samples["coffee"]).convert("RGB")
    out = {"jpeg": d / "coffee.jpg", "gray": d / "gray.jpg", "png": d / "coffee.png", "rotated": d / "rotated.jpg",
           "large": d / "large.jpg", "small": d / "small.jpg", "cmyk": d / "cmyk.jpg",
           "truncated": d / "truncated.jpg", "progressive": d / "progressive.jpg"}
    shutil.copy(samples["coffee"], out["jpeg"])
    coffee.convert("L").save(out["gray"], quality=90)
    coffee.save(out["png"])
    exif = Image.Exif()
    exif[274] = 6  # rotate 90 degrees clockwise when shown
    coffee.save(out["rotated"], quality=90, exif=exif)
    coffee.resize((1800, 1200), Image.BICUBIC).save(out["large"], quality=90)
    coffee.resize((180, 120)).save(out["small"], quality=90)
    coffee.convert("CMYK").save(out["cmyk"], quality=90)
    data = samples["rocket"].read_bytes()
    out["truncated"].write_bytes(data[: len(data) // 3])
    coffee.save(out["progressive"], quality=85, progressive=True)
    return out


def test_only_jpegs_the_policy_uses_as_they_are_go_to_the_device(files):
    taken = {k for k, p in files.items() if direct_jpeg_bytes(p, POLICY, 10**8) is not None}
    assert taken == {"jpeg", "gray", "truncated", "progressive"}
    data = direct_jpeg_bytes(files["jpeg"], POLICY, 10**8)
    assert data.dtype == torch.uint8 and bytes(data.numpy()) == files["jpeg"].read_bytes()
    assert direct_jpeg_bytes(files["jpeg"], POLICY, 1000) is None  # over the pixel limit: Pillow words it
    assert direct_jpeg_bytes(Image.open(files["jpeg"]), POLICY, 10**8) is None
    assert direct_jpeg_bytes(files["jpeg"].parent, POLICY, 10**8) is None


@pytest.mark.parametrize("policy", [POLICY, InputPolicy(layout="whole")], ids=["crops", "whole"])
def test_device_views_equal_pillow_views_on_cpu(files, policy):
    encoded = [direct_jpeg_bytes(files[k], policy, 10**8) for k in ("jpeg", "gray")]
    views = views_on_device(encoded, policy, torch.device("cpu"))
    for got, key in zip(views, ("jpeg", "gray")):
        expected = policy_views(np.asarray(Image.open(files[key]).convert("RGB")), policy)
        assert len(got) == len(expected) == (5 if policy.layout == "crops" else 1)
        for g, e in zip(got, expected):
            assert g.shape == e.shape and torch.equal(g, torch.from_numpy(np.array(e)))


def test_a_file_the_device_decoder_refuses_costs_only_its_own_result(files):
    encoded = [direct_jpeg_bytes(files[k], POLICY, 10**8) for k in ("jpeg", "truncated", "gray")]
    views = views_on_device(encoded, POLICY, torch.device("cpu"))
    assert views[0] is not None and views[1] is None and views[2] is not None


def test_device_decoding_scores_like_worker_decoding(default_torch_model, files, samples):
    default_model = default_torch_model
    device_model = copy.copy(default_model)
    device_model.decode = "device"
    assert device_model.decodes_on_device and not default_model.decodes_on_device
    items = [str(p) for p in files.values()] + [str(samples["chelsea"]), str(files["jpeg"].parent / "missing.jpg")]
    for workers in (0, 2):
        by_workers = list(default_model.iter_scores(items, batch_size=3, workers=workers))
        on_device = list(device_model.iter_scores(items, batch_size=3, workers=workers))
        assert [r.path for r in on_device] == items
        assert [r.error for r in on_device] == [r.error for r in by_workers]
        for a, b in zip(on_device, by_workers):
            if a.ok:
                assert a.score == pytest.approx(b.score, abs=1e-4), a.path
    errors = {r.path: r.error for r in on_device if not r.ok}
    assert set(errors) == {str(files["truncated"]), items[-1]}
    assert "cannot decode" in errors[str(files["truncated"])]


def test_unknown_or_unavailable_decode_modes_are_usage_errors(monkeypatch):
    assert DECODE_MODES == ("workers", "device")
    with pytest.raises(UsageError, match="decode must be one of"):
        resolve_decode("gpu", torch.device("cpu"))
    monkeypatch.setattr("qfmiqm.data.device_decode.device_decoder_available", lambda device: False)
    with pytest.raises(UsageError, match="--decode workers"):
        resolve_decode("device", torch.device("cpu"))
    assert resolve_decode("workers", torch.device("cpu")) is False


def test_cli_decode_option(samples):
    bad = CliRunner().invoke(app, ["score", str(samples["chelsea"]), "--decode", "nvjpeg", "--device", "cpu"])
    assert bad.exit_code == 2 and "decode must be one of workers, device" in bad.output
    ok = CliRunner().invoke(app, ["score", str(samples["chelsea"]), "--decode", "device", "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines()[1].startswith(str(samples["chelsea"]) + ",")
