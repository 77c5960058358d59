"""Attention maps (qfmiqm score --map): the decoder's opt-in attention recording, the map of a
real photo, the overlay PNGs the CLI writes."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from qfmiqm.cli import app
from qfmiqm.data.policy import resize_for_policy, view_boxes
from qfmiqm.eval.attention_map import (
    MAP_SUFFIX, AttentionMap, attention_map, map_filenames, place_crops, render_overlay, supports_maps,
)
from qfmiqm.models.decoder import AttentionPanelDecoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    assert len(records) == depth  # one entry per layer per forward pass
    for w in records:
        assert w.shape == (3, 4, 6, 20)  # (batch, heads, panel members, tokens)
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 6), atol=1e-5, rtol=0)
    # the hooks are gone after the block: the default path has none
    assert all(not layer.multihead_attn._forward_hooks for layer in dec.layers)


def test_recorded_weights_are_the_layers_cross_attention():
    dec, glob, toks = _decoder_inputs()
    layer = dec.layers[0]
    with torch.no_grad(), dec.record_attention() as records:
        dec(glob, toks)
        x = layer.norm2((glob[:, None] + dec.queries[None]) + layer._sa_block(layer.norm1(glob[:, None] + dec.queries[None]), None, None))
        _, expected = layer.multihead_attn(x, toks, toks, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(records[0], expected)


@pytest.fixture(scope="module")
def default_model(default_torch_model):
    """Maps read the network's attention: the default model in the PyTorch runtime."""
    return default_torch_model


@pytest.fixture(scope="module")
def chelsea_map(default_model, samples) -> AttentionMap:
    return attention_map(default_model, str(samples["chelsea"]))


def test_map_of_a_real_photo_covers_the_resized_image_in_0_1(default_model, samples, chelsea_map):
    img = np.asarray(Image.open(samples["chelsea"]).convert("RGB"))
    resized = resize_for_policy(img, default_model.policy)
    m = chelsea_map
    assert m.values.shape == m.covered.shape == resized.shape[:2] and m.image.shape == resized.shape
    assert np.isfinite(m.values).all() and m.values.min() >= 0 and m.values.max() <= 1
    assert m.values[m.covered].min() == 0 and m.values.max() == 1  # normalised per image
    assert m.values[m.covered].std() > 0.05  # not constant
    assert len(m.offsets) == len(view_boxes(*resized.shape[:2], default_model.policy))
    assert m.covered.mean() > 0.95  # whole image, or 5 crops of 224 on 451 x 300 (all but thin gaps)


def test_map_score_equals_the_models_score(default_model, samples, chelsea_map):
    # the map runs the views one at a time, scoring batches them: float32 sums differ in the last digits
    assert chelsea_map.score == pytest.approx(default_model.score(str(samples["chelsea"])), abs=1e-4)
    rocket = attention_map(default_model, str(samples["rocket"]))
    assert rocket.score == pytest.approx(default_model.score(str(samples["rocket"])), abs=1e-4)


def test_a_resized_image_gets_a_map_of_its_policy_size(default_model, samples):
    small = Image.open(samples["coffee"]).convert("RGB").resize((150, 100))  # upscaled to 336 x 224
    m = attention_map(default_model, small)
    assert m.values.shape == (224, 336) and np.isfinite(m.values).all()
    assert m.score == pytest.approx(default_model.score(small), abs=1e-4)


def test_place_crops_averages_overlaps_and_marks_uncovered_pixels():
    maps = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0)])
    values, covered = place_crops(maps, [(0, 0), (0, 1)], 3, 4)
    np.testing.assert_allclose(values, [[1, 2, 3, 0], [1, 2, 3, 0], [0, 0, 0, 0]])
    assert covered.sum() == 6 and not covered[2].any() and not covered[:, 3].any()


def test_overlay_is_downscaled_to_1024_and_leaves_uncovered_pixels_alone():
    h, w = 600, 2000
    img = np.full((h, w, 3), 128, dtype=np.uint8)
    covered = np.zeros((h, w), dtype=bool)
    covered[:, : w // 2] = True
    values = np.where(covered, np.linspace(0, 1, w, dtype=np.float32)[None], 0).astype(np.float32)
    out = render_overlay(AttentionMap(img, values, covered, 42.0, [(0, 0)]))
    assert out.size == (1024, round(h * 1024 / w)) and out.mode == "RGB"
    arr = np.asarray(out)
    assert (arr[-5:, -50:] == 128).all()  # right half: plain image
    assert not (arr[-5:, 100:400] == 128).all()  # left half: coloured


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


def test_cli_map_writes_one_png_per_good_image_and_goes_on_after_a_bad_one(samples, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(samples["chelsea"], tmp_path / "a" / "cat.jpg")
    shutil.copy(samples["chelsea"], tmp_path / "b" / "cat.jpg")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "maps"
    files = [str(samples["coffee"]), str(bad), str(tmp_path / "a" / "cat.jpg"), str(tmp_path / "b" / "cat.jpg")]
    result = CliRunner().invoke(app, ["score", *files, "--map", str(out)])
    assert result.exit_code == 1, result.output
    assert f"error: {bad}:" in result.stderr
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 3 and "coffee.map.png" in written and not any("broken" in n for n in written)
    assert _png_size(out / "coffee.map.png") == (600, 400)
    for name in written:
        if name.startswith("cat-"):
            assert _png_size(out / name) == (451, 300)
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_cli_map_failure_for_one_image_is_one_error_line_and_the_rest_go_on(samples, tmp_path):
    out = tmp_path / "maps"
    (out / "chelsea.map.png").mkdir(parents=True)  # a folder where the PNG should go
    result = CliRunner().invoke(app, ["score", str(samples["chelsea"]), str(samples["rocket"]), "--map", str(out)])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {samples['chelsea']}: attention map not written")
    assert len(result.stdout.strip().splitlines()) == 3  # header + both scores
    assert _png_size(out / "rocket.map.png") == (640, 427)


def test_cli_map_needs_a_pytorch_model(samples, tmp_path, monkeypatch, default_model):
    import qfmiqm.scoring

    class OnnxLike:
        runtime = type("Runtime", (), {"name": "onnx"})()
        card = default_model.card

    assert not supports_maps(OnnxLike()) and supports_maps(default_model)
    monkeypatch.setattr(qfmiqm.scoring, "load", lambda *a, **k: OnnxLike())
    result = CliRunner().invoke(app, ["score", str(samples["chelsea"]), "--map", str(tmp_path / "maps")])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --map needs a PyTorch model (a .safetensors checkpoint or zoo name, not ONNX)"
    assert result.stdout == ""
