"""Quality maps (``QualityModel.quality_map``, ``qfmiqm score --map/--map-data``): the windows'
pooling, the cells' weights, the map of a held-out photo (coffee: never seen in training,
docs/default-model.md), that it locates a half-image defect, the files the CLI writes."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from qfmiqm.cli import app
from qfmiqm.data.policy import crop_boxes
from qfmiqm.eval.quality_map import (
    DATA_SUFFIX, MAP_SUFFIX, QualityMap, cells_from_windows, cover_weights, map_filenames, quality_map,
    render_overlay, supports_maps, window_features,
)
from qfmiqm.models.backbones import BackboneFeatures
from qfmiqm.models.decoder import AttentionPanelDecoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: the held-out photo at a small size (450 x 300): a map takes well under a second
SMALL = (450, 300)


@pytest.fixture(scope="module")
def coffee(samples) -> np.ndarray:
    return np.asarray(Image.open(samples["coffee"]).convert("RGB").resize(SMALL, Image.BICUBIC))


@pytest.fixture(scope="module")
def coffee_map(default_torch_model, coffee) -> QualityMap:
    return quality_map(default_torch_model, coffee)


# --- the parts --------------------------------------------------------------------------------


def test_window_features_are_each_windows_adaptive_pooling():
    torch.manual_seed(0)
    # two levels of a 96 x 128 image at strides 8 and 32; windows of 64 px at a 32-px step
    feats = BackboneFeatures([torch.randn(1, 3, 12, 16), torch.randn(1, 5, 3, 4)], None)
    out = window_features(feats, [8, 32], 64, 4, [0, 32], [0, 32, 64])
    for level, (m, s) in enumerate(zip(feats.maps, [8, 32])):
        assert out.maps[level].shape == (6, m.shape[1], 4, 4)
        for i, (y, x) in enumerate([(y, x) for y in (0, 32) for x in (0, 32, 64)]):
            crop = m[..., y // s:(y + 64) // s, x // s:(x + 64) // s]
            torch.testing.assert_close(out.maps[level][i:i + 1], F.adaptive_avg_pool2d(crop, 4))


def test_cells_average_the_windows_that_cover_them():
    w = cover_weights(10, 4, 7, 1.75)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert (w[:, 0][7:] == 0).all() and (w[:, 3][:3] == 0).all()  # only covering windows count
    np.testing.assert_allclose(cells_from_windows(np.full((2, 3), 42.0), 7), 42.0)
    step = cells_from_windows(np.array([[10.0, 10.0, 10.0, 90.0, 90.0, 90.0]]), 3)
    assert step.shape == (3, 8) and (np.diff(step, axis=1) > -1e-9).all()  # a step stays monotone
    assert step[0, 0] == pytest.approx(10.0) and step[0, -1] == pytest.approx(90.0)


# --- the map of a real photo ------------------------------------------------------------------


def test_map_covers_the_image_with_one_value_per_cell_on_0_100(coffee_map):
    m = coffee_map
    assert m.image.shape == (300, 450, 3) and m.cell == 32
    assert m.values.shape == (10, 15) and m.values.dtype == np.float32  # ceil(300/32) x ceil(450/32)
    assert np.isfinite(m.values).all() and 0 <= m.values.min() and m.values.max() <= 100
    assert m.upsampled().shape == (300, 450)


def test_map_score_is_the_models_score(default_torch_model, coffee, coffee_map):
    assert coffee_map.score == pytest.approx(default_torch_model.score(coffee), abs=1e-3)


def test_whole_image_model_scores_and_maps_from_one_backbone_pass(default_torch_model, coffee, monkeypatch):
    from qfmiqm.scoring import with_policy

    whole = with_policy(default_torch_model, layout="whole")
    expected = whole.score(coffee)
    net = whole.net
    calls = []
    forward = type(net.backbone).forward
    monkeypatch.setattr(type(net.backbone), "forward", lambda self, x: calls.append(x.shape) or forward(self, x))
    m = quality_map(whole, coffee)
    assert len(calls) == 1, f"backbone passes: {calls}"
    assert m.score == pytest.approx(expected, abs=1e-3)


def test_map_of_one_crop_is_that_crops_score(default_torch_model, coffee):
    small = coffee[:224, :224]  # one window, the same view as every crop of the policy
    m = quality_map(default_torch_model, small)
    assert m.values.shape == (7, 7)
    np.testing.assert_allclose(m.values, m.score, atol=1e-3)


def test_map_is_smooth_with_no_seam_at_the_crop_edges(default_torch_model, coffee_map):
    up = coffee_map.upsampled()
    # a seam would be a jump between neighbouring pixels; these change by a fraction of a point
    assert np.abs(np.diff(up, axis=0)).max() < 1 and np.abs(np.diff(up, axis=1)).max() < 1
    assert np.abs(np.diff(coffee_map.values, axis=1)).max() < 10
    # where the old crops' edges were (the attention maps' seams), the step between two pixels is
    # no larger than the steps beside it: no one-pixel spike
    boxes = crop_boxes(300, 450, default_torch_model.policy)
    for axis, length, edges in ((0, 300, {b[i] for b in boxes for i in (0, 2)}),
                                (1, 450, {b[i] for b in boxes for i in (1, 3)})):
        steps = np.abs(np.diff(up, axis=axis)).max(axis=1 - axis)  # steps[i]: between i and i + 1
        for e in sorted(edges - {0, length}):
            beside = np.concatenate([steps[max(0, e - 17):e - 2], steps[e + 1:e + 16]])
            assert steps[e - 1] <= beside.max() + 1e-4, (axis, e)


@pytest.mark.parametrize("kind", ["blur s4", "noise s25", "jpeg q10"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_map_locates_a_distorted_half(default_torch_model, coffee, load_tool, kind, side):
    tool = load_tool("map_localisation")
    m = quality_map(default_torch_model, tool.half_distorted(coffee, kind, side), with_score=False)
    assert tool.drop(m.upsampled(), side) >= 10  # the distorted half's mean is >= 10 points lower


def test_quality_map_method_works_in_both_runtimes(default_model, default_torch_model, coffee, coffee_map):
    assert default_model.runtime.name == "onnx" and supports_maps(default_model)
    np.testing.assert_allclose(default_model.quality_map(coffee), coffee_map.values, atol=1e-3)  # PyTorch twin
    np.testing.assert_allclose(default_torch_model.quality_map(coffee), coffee_map.values, atol=1e-4)


def test_overlay_has_the_photo_a_colour_bar_and_fits_1024(coffee_map):
    fig = render_overlay(coffee_map)
    w, h = fig.get_size_inches() * fig.dpi
    assert 450 < w < 450 + 200 and 300 < h < 300 + 100  # the photo plus room for bar and title
    assert len(fig.axes) == 2 and "score" in fig.axes[0].get_title()
    big = QualityMap(np.zeros((600, 2000, 3), np.uint8), np.zeros((19, 63), np.float32), 32, 50.0)
    assert render_overlay(big).get_size_inches()[0] * 100 < 1024 + 200


def test_map_filenames_disambiguate_equal_stems():
    names = map_filenames(["a/x.jpg", "b/x.jpg", "a/x.png", "a/y.jpg"])
    assert names["a/y.jpg"] == "y" + MAP_SUFFIX
    stems = [names[p] for p in ("a/x.jpg", "b/x.jpg", "a/x.png")]
    assert len(set(stems)) == 3 and all(n.startswith("x-") and n.endswith(MAP_SUFFIX) for n in stems)
    assert map_filenames(["b/x.jpg", "a/x.jpg"])["a/x.jpg"] == names["a/x.jpg"]  # stable: a hash of the path


# --- the CLI ----------------------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        return im.size


def test_cli_map_writes_png_and_npy_per_good_image_and_goes_on_after_a_bad_one(samples, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(np.asarray(Image.open(samples["chelsea"]))[:240, :320]).save(tmp_path / "a" / "cat.png")
    shutil.copy(tmp_path / "a" / "cat.png", tmp_path / "b" / "cat.png")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "maps"
    files = [str(bad), str(tmp_path / "a" / "cat.png"), str(tmp_path / "b" / "cat.png")]
    result = CliRunner().invoke(app, ["score", *files, "--map", str(out), "--map-data"])
    assert result.exit_code == 1, result.output
    assert f"error: {bad}:" in result.stderr
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 4 and not any("broken" in n for n in written)
    pngs = [n for n in written if n.endswith(MAP_SUFFIX)]
    assert len(pngs) == 2 and all(n.startswith("cat-") for n in pngs)
    w, h = _png_size(out / pngs[0])
    assert 320 < w and 240 < h
    data = np.load(out / pngs[0].replace(MAP_SUFFIX, DATA_SUFFIX))
    assert data.shape == (8, 10) and data.dtype == np.float32 and 0 <= data.min() and data.max() <= 100
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_cli_map_failure_for_one_image_is_one_error_line_and_the_rest_go_on(coffee, tmp_path):
    Image.fromarray(coffee).save(tmp_path / "one.png")
    Image.fromarray(coffee[:, ::-1]).save(tmp_path / "two.png")
    out = tmp_path / "maps"
    (out / "one.map.png").mkdir(parents=True)  # a folder where the PNG should go
    result = CliRunner().invoke(app, ["score", str(tmp_path / "one.png"), str(tmp_path / "two.png"), "--map", str(out)])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {tmp_path / 'one.png'}: quality map not written")
    assert len(result.stdout.strip().splitlines()) == 3  # header + both scores
    assert _png_size(out / "two.map.png")[0] > 450
    assert not (out / "two.map.npy").exists()  # no --map-data


@pytest.mark.parametrize("error", [RuntimeError("a kernel failed"), MemoryError()], ids=["unexpected", "memory"])
def test_cli_map_that_raises_keeps_the_score_and_the_rest_go_on(coffee, tmp_path, monkeypatch, error):
    """A map computation that fails in a way nobody planned for (or runs out of memory) costs that
    image its map, not its score, and not the other images' maps."""
    from qfmiqm.eval import quality_map as qm

    Image.fromarray(coffee).save(tmp_path / "one.png")
    Image.fromarray(coffee[:, ::-1]).save(tmp_path / "two.png")
    real = qm.quality_map

    def failing(model, item, *args, **kwargs):
        if str(item).endswith("one.png"):
            raise error
        return real(model, item, *args, **kwargs)

    monkeypatch.setattr(qm, "quality_map", failing)
    out = tmp_path / "maps"
    result = CliRunner().invoke(app, ["score", str(tmp_path / "one.png"), str(tmp_path / "two.png"), "--map", str(out)])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    expected = "out of memory" if isinstance(error, MemoryError) else "RuntimeError: a kernel failed"
    assert len(errors) == 1 and errors[0].startswith(f"error: {tmp_path / 'one.png'}: quality map not written")
    assert errors[0].endswith(expected) or errors[0].endswith(expected + ")")
    rows = result.stdout.strip().splitlines()
    assert len(rows) == 3 and all(r.split(",")[1] for r in rows[1:])  # both scored
    assert (out / "two.map.png").is_file() and not (out / "one.map.png").exists()


def test_cli_map_data_needs_map(samples):
    result = CliRunner().invoke(app, ["score", str(samples["coffee"]), "--map-data"])
    assert result.exit_code == 2 and "--map-data needs --map" in result.stderr


def test_cli_map_needs_a_pytorch_model(samples, tmp_path, monkeypatch, default_torch_model):
    import qfmiqm.scoring

    class OnnxFile:
        runtime = type("Runtime", (), {"name": "onnx"})()
        card = type("Card", (), {"name": "exported", "weights_sha256": None, "trained": True})()

    assert not supports_maps(OnnxFile()) and supports_maps(default_torch_model)
    monkeypatch.setattr(qfmiqm.scoring, "load", lambda *a, **k: OnnxFile())
    result = CliRunner().invoke(app, ["score", str(samples["chelsea"]), "--map", str(tmp_path / "maps")])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --map needs a PyTorch model (a .safetensors checkpoint or zoo name, not ONNX)"
    assert result.stdout == ""


# --- the decoder's opt-in attention recording (no longer drawn by --map; kept for analysis) ---


def _decoder_inputs(depth: int = 1):
    torch.manual_seed(0)
    dec = AttentionPanelDecoder(32, panel_size=6, depth=depth, heads=4).eval()
    return dec, torch.randn(3, 32), torch.randn(3, 20, 32)


@pytest.mark.parametrize("depth", [1, 2])
def test_recording_attention_leaves_scores_bit_identical_and_rows_sum_to_one(depth):
    dec, glob, toks = _decoder_inputs(depth)
    with torch.inference_mode():
        plain = dec(glob, toks)
        with dec.record_attention() as records:
            recorded = dec(glob, toks)
        after = dec(glob, toks)
    assert torch.equal(plain, recorded) and torch.equal(plain, after)
    assert len(records) == depth
    for w in records:
        assert w.shape == (3, 4, 6, 20)  # (batch, heads, panel members, tokens)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 6), atol=1e-5, rtol=0)
    assert all(not layer.multihead_attn._forward_hooks for layer in dec.layers)
