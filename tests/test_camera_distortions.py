"""Camera-defect distortions (issue #22): low light, exposure, wide-halo sharpening, combinations."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from qfmiqm.cli import app
from qfmiqm.data import distortions as D
from qfmiqm.data.distortions import DISTORTIONS, distortion_names
from qfmiqm.data.synth import ms_ssim, proxy_score

CAMERA_TYPES = ("lowlight_noise", "underexposure", "overexposure", "oversharpen", "blur_jpeg", "blur_noise",
                "camera_combo")


@pytest.fixture(scope="module")
def cat(samples) -> np.ndarray:
    """samples/chelsea.jpg shrunk to 128x96 (non-square, to catch axis mix-ups): small and fast."""
    im = Image.open(samples["chelsea"]).convert("RGB").resize((128, 96), Image.Resampling.LANCZOS)
    return np.asarray(im)


def _luma(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ D.LUMA


def _rising(fractions: list[float]) -> bool:
    """Every step up, except while nothing is clipped yet (a mild level may clip no pixel)."""
    return all(a < b or a == b == 0.0 for a, b in zip(fractions, fractions[1:]))


# --- the registry --------------------------------------------------------------------------

def test_camera_types_follow_the_kadid_types_without_a_kadid_number():
    names = distortion_names()
    assert names[25:] == list(CAMERA_TYPES)  # appended: the 25 KADID names keep their order
    assert [DISTORTIONS[n].kadid_id for n in names[:25]] == list(range(1, 26))
    for name in CAMERA_TYPES:
        d = DISTORTIONS[name]
        assert d.kadid_id is None and len(d.params) == 5 and d.unit and d.available()
    assert {DISTORTIONS[n].family for n in ("blur_jpeg", "blur_noise", "camera_combo")} == {"multiple"}


# --- every camera type ---------------------------------------------------------------------

@pytest.mark.parametrize("name", CAMERA_TYPES)
def test_severity_rises_with_every_level(name, cat):
    outs = [DISTORTIONS[name](cat, level, np.random.default_rng(4)) for level in range(1, 6)]
    for out in outs:
        assert out.dtype == np.uint8 and out.shape == cat.shape
    scores = [proxy_score(cat, out) for out in outs]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert scores[0] < 99.0  # level 1 is visible, not a no-op
    gray = [ms_ssim(_luma(cat), _luma(out)) for out in outs]
    assert gray[0] > gray[-1]  # a second full-reference measure agrees end to end


@pytest.mark.parametrize("name", CAMERA_TYPES)
def test_same_seed_same_image(name, cat):
    d = DISTORTIONS[name]
    assert np.array_equal(d(cat, 3, 9), d(cat, 3, np.random.default_rng(9)))
    as_float = d(cat.astype(np.float32) / 255.0, 3, 9)
    assert as_float.dtype == np.float32 and as_float.shape == cat.shape
    assert 0.0 <= as_float.min() and as_float.max() <= 1.0


@pytest.mark.parametrize("name", ("lowlight_noise", "blur_noise", "camera_combo"))
def test_random_types_depend_on_the_seed(name, cat):
    d = DISTORTIONS[name]
    assert not np.array_equal(d(cat, 3, 1), d(cat, 3, 2))


# --- exposure ------------------------------------------------------------------------------

def test_underexposure_darkens_and_crushes_more_shadows_each_level(cat):
    black = [float(np.mean(cat.max(axis=2) == 0))]
    means = [float(_luma(cat).mean())]
    for level in range(1, 6):
        out = DISTORTIONS["underexposure"](cat, level)
        black.append(float(np.mean(out.max(axis=2) == 0)))
        means.append(float(_luma(out).mean()))
    assert _rising(black) and black[5] > 0.01, black  # the cat has few deep shadows to crush
    assert all(a > b for a, b in zip(means, means[1:])), means


def test_overexposure_blows_out_more_highlights_each_level(cat):
    clipped = [float(np.mean(cat.max(axis=2) == 255))]
    means = [float(_luma(cat).mean())]
    for level in range(1, 6):
        out = DISTORTIONS["overexposure"](cat, level)
        clipped.append(float(np.mean(out.max(axis=2) == 255)))
        means.append(float(_luma(out).mean()))
    assert _rising(clipped) and clipped[5] > 0.3, clipped
    assert all(a < b for a, b in zip(means, means[1:])), means


def test_srgb_round_trip():
    x = np.linspace(0.0, 1.0, 256, dtype=np.float32)
    assert np.allclose(D.linear_to_srgb(D.srgb_to_linear(x)), x, atol=1e-5)
    assert D.srgb_to_linear(np.float32(0.5)) == pytest.approx(0.2140, abs=1e-4)


# --- low light -----------------------------------------------------------------------------

def test_poisson_quantile_is_exact_below_the_cutoff_and_gaussian_above():
    from scipy import stats

    u = np.random.default_rng(0).random(5000)
    for lam in (0.05, 2.0, 29.0):
        counts = D.poisson_quantile(np.full(u.shape, lam), u)
        assert np.array_equal(counts, stats.poisson.ppf(u, lam))
    big = D.poisson_quantile(np.full(u.shape, 400.0), u)
    assert big.mean() == pytest.approx(400.0, abs=1.0) and big.std() == pytest.approx(20.0, rel=0.05)
    # monotone in u and in the mean: the coupling that keeps levels ordered
    assert np.all(np.diff(D.poisson_quantile(np.full(50, 7.0), np.linspace(0.01, 0.99, 50))) >= 0)
    assert np.all(np.diff(D.poisson_quantile(np.linspace(0.1, 60.0, 50), np.full(50, 0.3))) >= 0)


def test_sensor_noise_is_signal_dependent():
    """Poisson-Gaussian: variance = signal / photons + (read noise / photons)^2 in full-scale units."""
    photons = 100.0
    for signal in (0.05, 0.5):
        flat = np.full((64, 64, 3), signal, dtype=np.float32)
        sensed = D._poisson_gaussian(flat, photons, np.random.default_rng(1))
        expected = signal / photons + (D.READ_NOISE_E / photons) ** 2
        assert sensed.var() == pytest.approx(expected, rel=0.1)
        assert sensed.mean() == pytest.approx(signal, rel=0.05)


def test_blind_noise_estimate():
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.linspace(0, 0.5, 96), np.linspace(0, 0.3, 128)).astype(np.float32)
    for sigma in (0.01, 0.05):
        assert D.noise_sigma(ramp + rng.normal(0, sigma, ramp.shape)) == pytest.approx(sigma, rel=0.1)


def test_lowlight_keeps_brightness_and_loses_detail(cat):
    ref = _luma(cat)
    for level in (1, 5):
        out = _luma(DISTORTIONS["lowlight_noise"](cat, level, 0))
        assert abs(out.mean() - ref.mean()) < 0.05 * 255  # exposure was right: gain restored it


# --- sharpening ----------------------------------------------------------------------------

def _overshoot_width(name: str) -> int:
    """Columns on the bright side of a vertical step edge pushed over its level by > 1/255."""
    step = np.full((32, 64, 3), 0.3, dtype=np.float32)
    step[:, 32:] = 0.6
    out = DISTORTIONS[name](step, 3, 0)
    return int(np.sum(out[16, 32:, 1] > 0.6 + 1 / 255))


def test_oversharpen_halos_are_wider_than_high_sharpen_ringing():
    assert _overshoot_width("oversharpen") >= 2 * _overshoot_width("high_sharpen") >= 2


# --- end to end ----------------------------------------------------------------------------

def test_synth_command_makes_the_camera_types(samples, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.open(samples["coffee"]).convert("RGB").resize((96, 64)).save(src / "coffee.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["synth", "--src", str(src), "--out", str(out), "--types",
                                      ",".join(CAMERA_TYPES), "--levels", "1,5", "--size", "48",
                                      "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    with open(out / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["level"]) > 0]
    assert [r["type"] for r in rows[::2]] == list(CAMERA_TYPES)  # registry order
    for mild, severe in zip(rows[::2], rows[1::2]):
        assert mild["type"] == severe["type"] and float(mild["score"]) > float(severe["score"])
