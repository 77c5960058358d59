"""The image-level tone term: its statistics, its fit, and how a model card carries it."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from qfmiqm.data.distortions import LUMA
from qfmiqm.data.transforms import InputPolicy, policy_crops
from qfmiqm.errors import WeightsError
from qfmiqm.models.card import ModelCard
from qfmiqm.models.tone import STATISTICS, ToneTerm, tone_statistics
from qfmiqm.train.tone import fit_tone_term, ordered_share, scene_pairs

POLICY = InputPolicy()


def _contrast(img: np.ndarray, keep: float) -> np.ndarray:
    arr = img.astype(np.float32)
    return np.clip(arr.mean() + keep * (arr - arr.mean()) + 0.5, 0, 255).astype(np.uint8)


def _stats(img: np.ndarray) -> dict[str, float]:
    values = tone_statistics(policy_crops(img, POLICY).unsqueeze(0))[0].tolist()
    return dict(zip(STATISTICS, values))


@pytest.fixture(scope="module")
def coffee(samples) -> np.ndarray:
    return np.asarray(Image.open(samples["coffee"]).convert("RGB"))


def test_statistics_agree_with_numpy_over_all_crops_of_an_image(coffee):
    crops = policy_crops(coffee, POLICY)  # 5 crops of the 400 x 600 photo
    rgb = crops.permute(0, 2, 3, 1).numpy().astype(np.float64)
    y = rgb @ np.array(LUMA)
    got = _stats(coffee)
    assert got["luma_mean"] == pytest.approx(y.mean(), abs=1e-3)
    assert got["luma_std"] == pytest.approx(y.std(), rel=1e-4)
    for q in (1, 5, 95, 99):  # histogram percentiles: exact to the 0.25-level bin
        assert abs(got[f"p{q}"] - np.percentile(y, q)) <= 0.3, q
    assert got["saturation"] == pytest.approx((rgb.max(axis=3) - rgb.min(axis=3)).mean(), rel=1e-4)
    local = []
    for crop in y:  # 7x7 windows wholly inside each crop
        m = ndimage.uniform_filter(crop, 7)[3:-3, 3:-3]
        m2 = ndimage.uniform_filter(crop * crop, 7)[3:-3, 3:-3]
        local.append(np.sqrt(np.maximum(m2 - m * m, 0)))
    local = np.concatenate([v.ravel() for v in local])
    assert got["local_std_mean"] == pytest.approx(local.mean(), rel=1e-3)
    assert abs(got["local_std_median"] - np.median(local)) <= 0.3


def test_a_contrast_loss_shrinks_the_tonal_range_in_proportion(coffee):
    before, after = _stats(coffee), _stats(_contrast(coffee, 0.7))
    assert after["luma_std"] / before["luma_std"] == pytest.approx(0.7, abs=0.02)
    assert (after["p99"] - after["p1"]) / (before["p99"] - before["p1"]) == pytest.approx(0.7, abs=0.03)
    assert after["local_std_mean"] / before["local_std_mean"] == pytest.approx(0.7, abs=0.03)
    # the crops' mean moves 30 % of the way to the whole photo's mean, a few grey levels
    assert after["luma_mean"] == pytest.approx(before["luma_mean"], rel=0.02)


def test_images_of_a_batch_are_independent(coffee, chelsea_rgb):
    a, b = policy_crops(coffee, POLICY), policy_crops(chelsea_rgb, POLICY)
    together = tone_statistics(torch.stack([a, b]))
    alone = torch.cat([tone_statistics(a[None]), tone_statistics(b[None])])
    torch.testing.assert_close(together, alone)
    assert not torch.allclose(together[0], together[1])


def test_a_flat_grey_image_has_no_spread():
    flat = torch.full((1, 2, 3, 32, 32), 128, dtype=torch.uint8)
    s = dict(zip(STATISTICS, tone_statistics(flat)[0].tolist()))
    assert s["luma_std"] == 0 and s["local_std_mean"] == 0 and s["saturation"] == 0
    assert s["p1"] == s["p99"] == pytest.approx(128.125)  # centre of the 0.25-wide bin of 128


def _term(weights=(1.0,) + (0.0,) * 8) -> ToneTerm:
    return ToneTerm(mean=tuple(range(9)), scale=(2.0,) * 9, weights=tuple(weights), bias=0.5)


def test_term_is_linear_in_the_standardised_statistics():
    stats = torch.tensor([[4.0] + [0.0] * 8, [10.0] + [0.0] * 8])
    torch.testing.assert_close(_term().of_statistics(stats), torch.tensor([2.5, 5.5]))


def test_card_round_trips_the_term_and_refuses_a_foreign_one():
    card = replace(ModelCard(name="m", backbone="efficientnet_lite0", trained=True), tone=_term())
    again = ModelCard.from_dict(json.loads(card.to_json()))
    assert again == card and again.tone == _term()
    assert ModelCard.from_dict(json.loads(replace(card, tone=None).to_json())).tone is None
    foreign = json.loads(card.to_json())
    foreign["tone"]["statistics"] = ["luma_std"] * 9
    with pytest.raises(WeightsError, match="not this version's"):
        ModelCard.from_dict(foreign, "x.json")
    short = json.loads(card.to_json())
    short["tone"]["weights"] = [1.0]
    with pytest.raises(WeightsError, match="means, scales and weights"):
        ModelCard.from_dict(short, "x.json")


def test_fit_corrects_the_pairs_a_head_cannot_order():
    """Scenes whose pristine image has the wider range (statistic 0) but a head score 1 point
    below its version: the fitted term puts every pristine image above; other statistics,
    uninformative noise, get small weights."""
    rng = np.random.default_rng(0)
    n = 200
    pristine = rng.normal(0, 1, (n, 9))
    pristine[:, 0] = rng.uniform(40, 80, n)
    version = pristine + rng.normal(0, 0.1, (n, 9))
    version[:, 0] = 0.7 * pristine[:, 0]
    stats = np.concatenate([pristine, version])
    head = np.concatenate([np.full(n, 70.0), np.full(n, 71.0)])
    pairs = np.stack([np.arange(n), np.arange(n) + n], axis=1)
    assert ordered_share(head, pairs) == 0.0
    term = fit_tone_term(stats, head, pairs, lam=1e-3, temperature=1.0)
    with_term = head + term.of_statistics(torch.tensor(stats, dtype=torch.float32)).double().numpy()
    assert ordered_share(with_term, pairs) == 1.0
    assert term.weights[0] > 0 and max(abs(w) for w in term.weights[1:]) < 0.25 * term.weights[0]
    assert abs(with_term.mean() - head.mean()) < 1e-6  # standardised: no shift of the score scale
    strong = fit_tone_term(stats, head, pairs, lam=1e3, temperature=1.0)
    assert max(abs(w) for w in strong.weights) < 0.01 * term.weights[0]


class _Synthetic:
    name = "s"

    def __init__(self, content, types, labels=None):
        self.content, self.types = content, types
        self.labels = np.asarray(labels if labels is not None else [50.0] * len(content or ()))


def test_scene_pairs_pair_each_version_with_its_own_pristine_image():
    ds = _Synthetic(["a", "a", "a", "b", "b", "c"], ["pristine", "blur", "jpeg", "blur", "pristine", "pristine"])
    assert scene_pairs(ds).tolist() == [[0, 1], [0, 2], [4, 3]]


def test_scene_pairs_keep_the_mildest_versions_of_each_type():
    content = ["a"] * 6
    types = ["pristine", "blur", "blur", "blur", "jpeg", "jpeg"]
    labels = [100, 60, 90, 75, 40, 80]
    ds = _Synthetic(content, types, labels)
    assert scene_pairs(ds, mildest=2).tolist() == [[0, 2], [0, 3], [0, 4], [0, 5]]
    assert scene_pairs(ds, mildest=1).tolist() == [[0, 2], [0, 5]]
    assert len(scene_pairs(ds, mildest=None)) == 5
    from qfmiqm.errors import UsageError

    with pytest.raises(UsageError, match="no scene"):
        scene_pairs(_Synthetic(["a", "b"], ["blur", "pristine"]))
    with pytest.raises(UsageError, match="reference and type"):
        scene_pairs(_Synthetic(None, None))


def test_fit_tone_tool_end_to_end(load_tool, samples, tmp_path, monkeypatch):
    """tools/fit_tone.py on a tiny synthetic set made from two sample photos: the written model
    keeps the head's weights, carries a term with the fit's provenance, and scores accordingly."""
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    import qfmiqm
    from qfmiqm.cli import app
    from qfmiqm.models.registry import resolve_model, zoo_entries

    src = tmp_path / "photos"
    src.mkdir()
    for name in ("chelsea", "rocket"):
        (src / f"{name}.jpg").write_bytes(samples[name].read_bytes())
    synth = tmp_path / "synth"
    result = CliRunner().invoke(app, ["synth", "--src", str(src), "--out", str(synth), "--size", "256", "--crops", "1",
                                      "--types", "contrast_change,gaussian_blur", "--levels", "2", "--seed", "0",
                                      "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    config = tmp_path / "tone.yaml"
    config.write_text(f"_base_: {Path(__file__).parents[1] / 'configs' / 'default_model.yaml'}\n"
                      f"data:\n  dataset: {synth / 'labels.csv'}\ntrain:\n  cache_dir: {tmp_path / 'cache'}\n")
    out = tmp_path / "with_tone.safetensors"
    tool = load_tool("fit_tone")
    monkeypatch.setattr(sys, "argv", ["fit_tone.py", "--model", "default", "--config", str(config),
                                      "--out", str(out), "--lam", "1e-2"])
    tool.main()
    default = zoo_entries()["default"]
    fitted = resolve_model(out)
    assert fitted.card.tone is not None and fitted.card.tone.weights != default.card.tone.weights
    assert fitted.card.metrics["tone_fit"]["pairs"] == 2 * 2 * 2  # 2 scenes x 2 types x levels 1-2
    head = {k: v for k, v in load_file(str(out)).items()}
    assert head.keys() == load_file(str(default.weights_path)).keys()
    assert all(torch.equal(v, load_file(str(default.weights_path))[k]) for k, v in head.items())
    image = str(samples["coffee"])
    m, d = qfmiqm.load(out, device="cpu"), qfmiqm.load("default", device="cpu")
    crops = policy_crops(np.asarray(Image.open(image).convert("RGB")), POLICY).unsqueeze(0)
    expected = d.score(image) - float(d.tone_term(crops)[0]) + float(m.tone_term(crops)[0])
    assert m.score(image) == pytest.approx(expected, abs=1e-3)


def test_fit_tone_tool_refuses_bad_arguments(load_tool, monkeypatch, tmp_path):
    tool = load_tool("fit_tone")
    monkeypatch.setattr(sys, "argv", ["fit_tone.py", "--model", "default", "--temperature", "0"])
    with pytest.raises(SystemExit, match="--temperature > 0"):
        tool.main()
    monkeypatch.setattr(sys, "argv", ["fit_tone.py", "--model", str(tmp_path / "none.safetensors")])
    with pytest.raises(SystemExit, match="none.safetensors: model file not found"):
        tool.main()
