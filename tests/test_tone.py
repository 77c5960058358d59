"""The image-level tone term: its statistics, its fit, and how a model card carries it."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from scipy import ndimage

from qfmiqm.data.colour import LUMA
from qfmiqm.data.policy import InputPolicy, policy_views
from qfmiqm.errors import UsageError, WeightsError
from qfmiqm.models.card import ModelCard
from qfmiqm.models.tone import STATISTICS, ToneTerm, tone_statistics
from qfmiqm.train.tone import fit_tone_term, ordered_share, scene_pairs

ROOT = Path(__file__).resolve().parents[1]
POLICY = InputPolicy()


def _torch_reference(crops: torch.Tensor) -> torch.Tensor:
    """The statistics as computed before the move to numpy (torch, uint8 crops (N, K, 3, S, S)),
    kept here as the oracle that the numpy version reproduces."""
    def percentiles(values, qs):
        n_bins, (b, m) = 256 * 4, values.shape
        idx = (values * 4).long().clamp_(0, n_bins - 1) + torch.arange(b).unsqueeze(1) * n_bins
        cdf = torch.bincount(idx.flatten(), minlength=b * n_bins).view(b, n_bins).cumsum(dim=1).double()
        targets = torch.tensor(qs, dtype=torch.float64) / 100.0 * m
        first = torch.searchsorted(cdf, targets.expand(b, -1).contiguous())
        return (first.clamp(max=n_bins - 1).float() + 0.5) / 4

    n = crops.shape[0]
    rgb = crops.float()
    y = (rgb * torch.tensor(LUMA).view(1, 1, 3, 1, 1)).sum(dim=2)
    flat = y.flatten(1)
    mean = flat.mean(dim=1)
    std = (flat - mean.unsqueeze(1)).pow(2).mean(dim=1).sqrt()
    p1, p5, p95, p99 = percentiles(flat, (1, 5, 95, 99)).unbind(dim=1)
    centred = y.flatten(0, 1).unsqueeze(1)
    centred = centred - centred.mean(dim=(2, 3), keepdim=True)
    m, m2 = F.avg_pool2d(centred, 7, stride=1), F.avg_pool2d(centred * centred, 7, stride=1)
    local = (m2 - m * m).clamp_(min=0.0).sqrt().view(n, -1)
    local_median = percentiles(local.clamp(max=255.0), (50,)).squeeze(1)
    saturation = (rgb.amax(dim=2) - rgb.amin(dim=2)).flatten(1).mean(dim=1)
    return torch.stack([std, p1, p5, p95, p99, mean, local.mean(dim=1), local_median, saturation], dim=1)


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _contrast(img: np.ndarray, keep: float) -> np.ndarray:
    arr = img.astype(np.float32)
    return np.clip(arr.mean() + keep * (arr - arr.mean()) + 0.5, 0, 255).astype(np.uint8)


def _stats(views: list[np.ndarray]) -> dict[str, float]:
    return dict(zip(STATISTICS, tone_statistics(views).tolist()))


@pytest.fixture(scope="module")
def coffee(samples) -> np.ndarray:
    return _rgb(samples["coffee"])


@pytest.mark.parametrize("policy", [POLICY, InputPolicy(num_crops=9), InputPolicy(size=300, num_crops=1)],
                         ids=["5x224", "9x224", "1x300"])
def test_statistics_reproduce_the_torch_implementation_on_real_crops(samples, policy):
    for name in ("chelsea", "coffee", "rocket"):
        views = policy_views(_rgb(samples[name]), policy)
        got = tone_statistics(views)
        assert got.dtype == np.float32 and got.shape == (len(STATISTICS),)
        crops = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2)[None]
        tonal = STATISTICS.index("blockiness")  # the oracle predates it; tested on its own below
        np.testing.assert_allclose(got[:tonal], _torch_reference(crops)[0].numpy(), rtol=1e-4, atol=1e-3, err_msg=name)


def _local_std(y: np.ndarray) -> np.ndarray:
    """float64 7x7 local std at the windows wholly inside ``y`` (h, w)."""
    m = ndimage.uniform_filter(y, 7)[3:-3, 3:-3]
    m2 = ndimage.uniform_filter(y * y, 7)[3:-3, 3:-3]
    return np.sqrt(np.maximum(m2 - m * m, 0))


def test_statistics_agree_with_numpy_over_views_of_different_sizes(coffee):
    views = [coffee[:, :250], coffee[:, 250:], coffee[100:324, 100:324]]  # 400x250, 400x350, 224x224
    rgb = [v.astype(np.float64) for v in views]
    y = [v @ LUMA.astype(np.float64) for v in rgb]
    every = np.concatenate([v.ravel() for v in y])
    got = _stats(views)
    assert got["luma_mean"] == pytest.approx(every.mean(), abs=1e-3)
    assert got["luma_std"] == pytest.approx(every.std(), rel=1e-4)
    for q in (1, 5, 95, 99):  # histogram percentiles: exact to the 0.25-level bin
        assert abs(got[f"p{q}"] - np.percentile(every, q)) <= 0.3, q
    sat = np.concatenate([(v.max(axis=2) - v.min(axis=2)).ravel() for v in rgb])
    assert got["saturation"] == pytest.approx(sat.mean(), rel=1e-6)
    local = np.concatenate([_local_std(v).ravel() for v in y])  # each view's own windows
    assert got["local_std_mean"] == pytest.approx(local.mean(), rel=1e-5)
    assert abs(got["local_std_median"] - np.median(local)) <= 0.3


def test_two_halves_differ_from_the_whole_only_in_the_windows_across_the_cut(coffee):
    whole, halves = _stats([coffee]), _stats([coffee[:, :300], coffee[:, 300:]])
    for name in ("luma_std", "p1", "p5", "p95", "p99", "luma_mean", "saturation"):
        assert halves[name] == pytest.approx(whole[name], rel=1e-6), name
    local = _local_std(coffee.astype(np.float64) @ LUMA.astype(np.float64))  # (394, 594)
    assert whole["local_std_mean"] == pytest.approx(local.mean(), rel=1e-5)
    # windows start at columns 0..593; those starting at 294..299 straddle the cut at 300
    kept = np.concatenate([local[:, :294], local[:, 300:]], axis=1)
    assert halves["local_std_mean"] == pytest.approx(kept.mean(), rel=1e-5)
    assert halves["local_std_mean"] != pytest.approx(whole["local_std_mean"], rel=1e-5)


def test_strips_neither_drop_nor_double_count_rows_or_windows(coffee, monkeypatch):
    """The statistics do not depend on how views are cut into strips of rows (tone._STRIP_PIXELS):
    one strip per view, the default, or strips of LOCAL_WINDOW rows."""
    from qfmiqm.models import tone

    views = [coffee, coffee[:300, :224], np.ascontiguousarray(coffee.transpose(1, 0, 2))]
    default = tone_statistics(views)
    for pixels in (1 << 30, 1):
        monkeypatch.setattr(tone, "_STRIP_PIXELS", pixels)
        np.testing.assert_allclose(tone_statistics(views), default, rtol=1e-6, atol=1e-6, err_msg=str(pixels))


def test_the_order_of_the_views_does_not_matter(coffee, chelsea_rgb):
    a, b = policy_views(coffee, POLICY), policy_views(chelsea_rgb, POLICY)
    np.testing.assert_allclose(tone_statistics(a + b), tone_statistics(b[::-1] + a[::-1]), rtol=1e-6)
    assert not np.allclose(tone_statistics(a), tone_statistics(b))


def test_a_contrast_loss_shrinks_the_tonal_range_in_proportion(coffee):
    before, after = _stats(policy_views(coffee, POLICY)), _stats(policy_views(_contrast(coffee, 0.7), POLICY))
    assert after["luma_std"] / before["luma_std"] == pytest.approx(0.7, abs=0.02)
    assert (after["p99"] - after["p1"]) / (before["p99"] - before["p1"]) == pytest.approx(0.7, abs=0.03)
    assert after["local_std_mean"] / before["local_std_mean"] == pytest.approx(0.7, abs=0.03)
    # the crops' mean moves 30 % of the way to the whole photo's mean, a few grey levels
    assert after["luma_mean"] == pytest.approx(before["luma_mean"], rel=0.02)


def test_flat_images_have_no_spread():
    grey = _stats([np.full((32, 32, 3), 128, np.uint8), np.full((300, 40, 3), 128, np.uint8)])
    assert grey["luma_std"] == 0 and grey["local_std_mean"] == 0 and grey["saturation"] == 0
    assert grey["p1"] == grey["p99"] == 128.125  # centre of the 0.25-wide bin of 128
    colour = _stats([np.full((500, 375, 3), (10, 200, 90), np.uint8)])
    assert colour["luma_std"] == 0 and colour["local_std_mean"] == 0 and colour["saturation"] == 190


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def _blockiness_oracle(img: np.ndarray) -> float:
    """Direct: mean |luma step| per phase of the 8-grid, strongest phase against the rest."""
    y = img.astype(np.float64) @ LUMA.astype(np.float64)
    ratios = []
    for steps in (np.abs(np.diff(y, axis=1)), np.abs(np.diff(y, axis=0)).T):
        means = np.array([steps[:, p::8].mean() for p in range(8)])
        k = means.argmax()
        ratios.append(np.log((means[k] + 1) / (np.delete(means, k).mean() + 1)))
    return float(np.mean(ratios))


def test_blockiness_grows_with_jpeg_compression_and_not_with_blur(coffee):
    levels = [_stats([_jpeg(coffee, q)])["blockiness"] for q in (95, 50, 30, 18, 10, 5)]
    assert np.all(np.diff(levels) > 0), levels
    assert _stats([coffee])["blockiness"] < 0.05 < levels[1]
    blurred = np.asarray(Image.fromarray(coffee).filter(ImageFilter.GaussianBlur(3)))
    assert _stats([blurred])["blockiness"] < 0.05
    # the grid is found at any offset: a crop of a compressed photo cut 3 and 5 pixels in
    q30 = _jpeg(coffee, 30)
    assert _stats([q30[3:, 5:]])["blockiness"] == pytest.approx(levels[2], abs=0.02)


def test_blockiness_matches_a_direct_computation_over_strips_and_views(coffee, monkeypatch):
    from qfmiqm.models import tone

    q30 = _jpeg(coffee, 30)
    views = [q30[:, :250], q30[3:300, 250:]]
    pixels = np.array([v.shape[0] * v.shape[1] for v in views], dtype=np.float64)
    expected = np.dot(pixels, [_blockiness_oracle(v) for v in views]) / pixels.sum()
    for strip_pixels in (1 << 30, tone._STRIP_PIXELS, 1):
        monkeypatch.setattr(tone, "_STRIP_PIXELS", strip_pixels)
        assert _stats(views)["blockiness"] == pytest.approx(expected, rel=1e-4), strip_pixels


def _reblur_oracle(views: list[np.ndarray]) -> float:
    """Direct, after Crete-Roffet et al.: each image against its 3-pixel box blur (scipy), the
    steps of both along each axis away from the borders, min(step, blurred step) over step,
    each weighted by the step squared."""
    kept = total = 0.0
    for v in views:
        y = (v.astype(np.float32) @ LUMA.astype(np.float32)).astype(np.float64)
        for axis in (0, 1):
            inner = (slice(None),) * axis + (slice(1, -1),)  # steps whose box lies inside the image
            step = np.abs(np.diff(y, axis=axis))[inner]
            blurred = np.abs(np.diff(ndimage.uniform_filter1d(y, 3, axis=axis), axis=axis))[inner]
            kept += (np.minimum(step, blurred) * step ** 2).sum()
            total += (step ** 3).sum()
    return kept / total


def test_reblur_matches_a_direct_computation_over_strips_and_views(coffee, monkeypatch):
    from qfmiqm.models import tone

    views = [coffee[:, :250], coffee[3:300, 250:], np.ascontiguousarray(coffee.transpose(1, 0, 2))]
    expected = _reblur_oracle(views)
    for strip_pixels in (1 << 30, tone._STRIP_PIXELS, 1):
        monkeypatch.setattr(tone, "_STRIP_PIXELS", strip_pixels)
        assert _stats(views)["reblur"] == pytest.approx(expected, rel=1e-5), strip_pixels


def test_reblur_rises_with_blur_and_hardly_moves_with_noise(coffee):
    """Sharpness as the image's own edges measure it: a 0.7 px blur, the mildest level of the
    peers benchmark, already moves it clearly; mild noise, whose steps are small, hardly."""
    def blur(sigma):
        return np.clip(ndimage.gaussian_filter(coffee.astype(np.float32), (sigma, sigma, 0)) + 0.5, 0, 255).astype(np.uint8)

    levels = [_stats([coffee])["reblur"]] + [_stats([blur(s)])["reblur"] for s in (0.7, 1.3, 2.2)]
    assert np.all(np.diff(levels) > 0.02), levels
    assert _stats([blur(3.6)])["reblur"] > 0.9  # saturated: past ~2 px the steps are 8-bit rounding
    noisy = np.clip(coffee + np.random.default_rng(0).normal(0, 6, coffee.shape), 0, 255).astype(np.uint8)
    assert abs(_stats([noisy])["reblur"] - levels[0]) < 0.2 * (levels[1] - levels[0])
    assert _stats([np.full((16, 16, 3), 90, np.uint8)])["reblur"] == 1.0  # no steps: nothing to lose

def _noise_oracle(views: list[np.ndarray]) -> float:
    """Direct: |y convolved with [1 -2 1]^T [1 -2 1]| (scipy) over every 3 x 3 window inside each
    view, pooled; the median, rounded to the histogram's quarter-level bin centre as the
    statistic reports it, over 6 x 0.6745."""
    kernel = np.outer([1.0, -2.0, 1.0], [1.0, -2.0, 1.0])
    responses = []
    for v in views:
        y = (v.astype(np.float32) @ LUMA.astype(np.float32)).astype(np.float64)
        responses.append(np.abs(ndimage.correlate(y, kernel, mode="constant")[1:-1, 1:-1]).ravel())
    r = np.sort(np.concatenate(responses))
    median = r[int(np.ceil(0.5 * r.size)) - 1]  # the first value whose cumulative share reaches 1/2
    return (np.floor(median * 4) + 0.5) / 4 / (6 * 0.6745)


def test_noise_matches_a_direct_computation_over_strips_and_views(coffee, monkeypatch):
    from qfmiqm.models import tone

    views = [coffee[:, :250], coffee[3:300, 250:], np.ascontiguousarray(coffee.transpose(1, 0, 2))]
    expected = _noise_oracle(views)
    for strip_pixels in (1 << 30, tone._STRIP_PIXELS, 1):
        monkeypatch.setattr(tone, "_STRIP_PIXELS", strip_pixels)
        assert _stats(views)["noise"] == pytest.approx(expected, abs=0.05), strip_pixels


def test_noise_estimates_the_std_of_added_noise_and_hardly_moves_with_blur(coffee):
    """On a flat grey image it reads the std of the white noise added; on a real photo it rises
    with each noise level of the peers benchmark, and a blur (which removes noise) lowers it."""
    rng = np.random.default_rng(0)
    for sigma in (3, 6, 12, 25):
        grey = np.clip(120 + rng.normal(0, sigma, (200, 300, 1)), 0, 255).astype(np.uint8).repeat(3, axis=2)
        assert _stats([grey])["noise"] == pytest.approx(sigma, rel=0.05), sigma
    assert _stats([np.full((16, 16, 3), 90, np.uint8)])["noise"] < 0.05
    noisy = [np.clip(coffee + rng.normal(0, s, coffee.shape), 0, 255).astype(np.uint8) for s in (6, 10, 18)]
    levels = [_stats([coffee])["noise"]] + [_stats([n])["noise"] for n in noisy]
    assert np.all(np.diff(levels) > 1.0), levels
    blurred = np.clip(ndimage.gaussian_filter(coffee.astype(np.float32), (0.7, 0.7, 0)) + 0.5, 0, 255).astype(np.uint8)
    assert _stats([blurred])["noise"] <= levels[0]


def test_statistics_refuse_what_is_not_an_image():
    with pytest.raises(ValueError, match="at least one view"):
        tone_statistics([])
    for bad in (np.zeros((32, 32, 3), np.float32), np.zeros((32, 32), np.uint8), np.zeros((6, 32, 3), np.uint8)):
        with pytest.raises(ValueError, match="a view must be"):
            tone_statistics([bad])


def test_statistics_import_neither_torch_nor_scipy():
    """The ONNX Runtime scoring path imports the module without torch or scipy installed."""
    code = f"""
import sys, types
sys.modules["torch"] = sys.modules["scipy"] = None  # importing either now fails
for pkg in ("qfmiqm", "qfmiqm.data", "qfmiqm.models"):  # skip qfmiqm/__init__.py, which loads scoring
    sys.modules[pkg] = types.ModuleType(pkg)
    sys.modules[pkg].__path__ = [{str(ROOT)!r} + "/" + pkg.replace(".", "/")]
import numpy as np
from qfmiqm.models.tone import ToneTerm, tone_statistics
print(tone_statistics([np.full((16, 16, 3), 128, np.uint8)])[1])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "128.125"


N_STATS = len(STATISTICS)


def _term(weights=(1.0,) + (0.0,) * (N_STATS - 1)) -> ToneTerm:
    return ToneTerm(mean=tuple(range(N_STATS)), scale=(2.0,) * N_STATS, weights=tuple(weights), bias=0.5)


def test_term_is_linear_in_the_standardised_statistics(coffee):
    stats = np.array([[4.0] + [0.0] * (N_STATS - 1), [10.0] + [0.0] * (N_STATS - 1)], dtype=np.float32)
    got = _term().of_statistics(stats)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, [2.5, 5.5])
    views = policy_views(coffee, POLICY)
    term = _term(weights=tuple(np.linspace(-1, 1, N_STATS)))
    assert term(views) == pytest.approx(float(term.of_statistics(tone_statistics(views)[None])[0]))
    assert isinstance(term(views), float)


def test_card_round_trips_the_term_and_refuses_a_foreign_one():
    card = replace(ModelCard(name="m", backbone="efficientnet_lite0", trained=True), tone=_term())
    again = ModelCard.from_dict(json.loads(card.to_json()))
    assert again == card and again.tone == _term()
    assert ModelCard.from_dict(json.loads(replace(card, tone=None).to_json())).tone is None
    foreign = json.loads(card.to_json())
    foreign["tone"]["statistics"] = ["luma_std"] * N_STATS
    with pytest.raises(WeightsError, match="not this version's"):
        ModelCard.from_dict(foreign, "x.json")
    short = json.loads(card.to_json())
    short["tone"]["weights"] = [1.0]
    with pytest.raises(WeightsError, match="means, scales and weights"):
        ModelCard.from_dict(short, "x.json")


def test_a_term_of_some_statistics_reads_only_their_columns(coffee):
    """A card written before a statistic was added (or fitted on a chosen few) keeps its meaning:
    the term picks its own columns by name out of every statistic scoring computes."""
    names = ("p1", "saturation")
    term = ToneTerm(mean=(10.0, 50.0), scale=(2.0, 10.0), weights=(1.0, -2.0), statistics=names)
    stats = tone_statistics([coffee])[None]
    by_name = dict(zip(STATISTICS, stats[0].astype(np.float64)))
    expected = (by_name["p1"] - 10) / 2 - 2 * (by_name["saturation"] - 50) / 10
    assert term.of_statistics(stats)[0] == pytest.approx(expected)
    card = replace(ModelCard(name="m", backbone="efficientnet_lite0", trained=True), tone=term)
    assert ModelCard.from_dict(json.loads(card.to_json())).tone.statistics == names
    with pytest.raises(ValueError, match="not this version's"):
        ToneTerm(mean=(0.0,), scale=(1.0,), weights=(1.0,), statistics=("sharpness",))


def test_fit_of_chosen_statistics_gives_a_term_of_those_only():
    rng = np.random.default_rng(1)
    stats = rng.normal(0, 1, (40, N_STATS))
    head = rng.normal(50, 5, 40)
    pairs = np.stack([np.arange(20), np.arange(20) + 20], axis=1)
    term = fit_tone_term(stats, head, pairs, statistics=["luma_std", "blockiness"])
    assert term.statistics == ("luma_std", "blockiness") and len(term.weights) == 2
    with pytest.raises(UsageError, match="choose among"):
        fit_tone_term(stats, head, pairs, statistics=["sharpness"])


def test_fit_corrects_the_pairs_a_head_cannot_order():
    """Scenes whose pristine image has the wider range (statistic 0) but a head score 1 point
    below its version: the fitted term puts every pristine image above; other statistics,
    uninformative noise, get small weights."""
    rng = np.random.default_rng(0)
    n = 200
    pristine = rng.normal(0, 1, (n, N_STATS))
    pristine[:, 0] = rng.uniform(40, 80, n)
    version = pristine + rng.normal(0, 0.1, (n, N_STATS))
    version[:, 0] = 0.7 * pristine[:, 0]
    stats = np.concatenate([pristine, version])
    head = np.concatenate([np.full(n, 70.0), np.full(n, 71.0)])
    pairs = np.stack([np.arange(n), np.arange(n) + n], axis=1)
    assert ordered_share(head, pairs) == 0.0
    term = fit_tone_term(stats, head, pairs, lam=1e-3, temperature=1.0)
    with_term = head + term.of_statistics(stats)
    assert ordered_share(with_term, pairs) == 1.0
    assert term.weights[0] > 0 and max(abs(w) for w in term.weights[1:]) < 0.25 * term.weights[0]
    assert abs(with_term.mean() - head.mean()) < 1e-6  # standardised: no shift of the score scale
    strong = fit_tone_term(stats, head, pairs, lam=1e3, temperature=1.0)
    assert max(abs(w) for w in strong.weights) < 0.01 * term.weights[0]


def test_a_gap_makes_the_fit_open_a_lead_the_plain_fit_does_not_ask_for():
    """Pairs the head orders by 1 point, a statistic that tells them apart: asking for a gap of 6
    points opens the pristine images' lead by about that much more than the plain fit does."""
    rng = np.random.default_rng(1)
    n = 200
    pristine = rng.normal(0, 1, (n, N_STATS))
    version = pristine + rng.normal(0, 0.05, (n, N_STATS))
    version[:, -1] += 1.0  # e.g. reblur: the version is the blurrier
    stats = np.concatenate([pristine, version])
    head = np.concatenate([np.full(n, 71.0), np.full(n, 70.0)])
    pairs = np.stack([np.arange(n), np.arange(n) + n], axis=1)

    def lead(gap):
        term = fit_tone_term(stats, head, pairs, lam=1e-4, temperature=1.0, gap=gap)
        scores = head + term.of_statistics(stats)
        return float(np.median(scores[pairs[:, 0]] - scores[pairs[:, 1]]))

    plain = lead(0.0)
    assert 1.0 < plain and plain + 4.0 < lead(6.0) < plain + 8.0


class _Synthetic:
    name = "s"

    def __init__(self, content, types, labels=None):
        self.content, self.types = content, types
        self.labels = np.asarray(labels if labels is not None else [50.0] * len(content or ()))


def test_scene_pairs_pair_each_version_with_its_own_pristine_image():
    ds = _Synthetic(["a", "a", "a", "b", "b", "c"], ["pristine", "blur", "jpeg", "blur", "pristine", "pristine"])
    assert scene_pairs(ds).tolist() == [[0, 1], [0, 2], [4, 3]]


def test_scene_pairs_leave_out_the_skipped_types():
    ds = _Synthetic(["a"] * 4, ["pristine", "blur", "desaturate", "jpeg"])
    assert scene_pairs(ds, skip_types=frozenset({"desaturate"})).tolist() == [[0, 1], [0, 3]]


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
    config.write_text(f"_base_: {ROOT / 'configs' / 'default_model.yaml'}\n"
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
    views = policy_views(_rgb(samples["coffee"]), fitted.card.input)
    expected = d.score(image) - d.card.tone(views) + m.card.tone(views)
    assert m.score(image) == pytest.approx(expected, abs=1e-3)


def test_fit_tone_tool_refuses_bad_arguments(load_tool, monkeypatch, tmp_path):
    tool = load_tool("fit_tone")
    monkeypatch.setattr(sys, "argv", ["fit_tone.py", "--model", "default", "--temperature", "0"])
    with pytest.raises(SystemExit, match="--temperature > 0"):
        tool.main()
    monkeypatch.setattr(sys, "argv", ["fit_tone.py", "--model", "default", "--gap", "-1"])
    with pytest.raises(SystemExit, match="--gap must be >= 0"):
        tool.main()
    monkeypatch.setattr(sys, "argv", ["fit_tone.py", "--model", str(tmp_path / "none.safetensors")])
    with pytest.raises(SystemExit, match="none.safetensors: model file not found"):
        tool.main()
