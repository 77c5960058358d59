"""IQA metrics: hand-computed values, agreement with scipy, the logistic fit, degenerate inputs."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from scipy.special import expit

import qfmiqm.eval.metrics as metrics_module
from qfmiqm import metrics
from qfmiqm.errors import UsageError
from qfmiqm.eval.metrics import MetricInputError, MetricWarning, all_metrics, logistic4, logistic_fit


@pytest.fixture
def monotone_nonlinear():
    """MOS that is a saturating (logistic) function of the prediction, plus a little noise."""
    rng = np.random.default_rng(7)
    pred = rng.uniform(0, 100, 300)
    mos = 1 + 4 * expit((pred - 60) / 6) + rng.normal(0, 0.05, pred.size)
    return pred, mos


# --------------------------------------------------------------------------- hand-computed values


def test_perfect_monotone_and_reversed():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    up, down = [2, 4, 6, 8, 10], [10, 8, 6, 4, 2]
    assert metrics.srcc(x, up) == pytest.approx(1.0)
    assert metrics.krcc(x, up) == pytest.approx(1.0)
    assert metrics.plcc(x, up) == pytest.approx(1.0)
    assert metrics.srcc(x, down) == pytest.approx(-1.0)
    assert metrics.krcc(x, down) == pytest.approx(-1.0)
    assert metrics.plcc(x, down) == pytest.approx(-1.0)
    # monotone but not linear: ranks agree perfectly, Pearson does not
    cubes = [v**3 for v in x]
    assert metrics.srcc(x, cubes) == pytest.approx(1.0)
    assert metrics.plcc(x, cubes) < 0.99


def test_pearson_by_hand():
    # x=[1,2,3], y=[1,2,4]: sum dx*dy = 3, sum dx^2 = 2, sum dy^2 = 42/9  ->  r = 9 / sqrt(84)
    assert metrics.plcc([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))


def test_kendall_by_hand():
    # one discordant pair out of six
    assert metrics.krcc([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx((5 - 1) / 6)


def test_ties_use_average_ranks_and_tau_b():
    x, y = [1, 2, 2, 3], [1, 2, 3, 4]
    # ranks of x: 1, 2.5, 2.5, 4 -> Pearson on ranks = 4.5 / sqrt(4.5 * 5)
    assert metrics.srcc(x, y) == pytest.approx(4.5 / math.sqrt(22.5))
    # 5 concordant, 0 discordant, 1 pair tied in x only: tau-b = 5 / sqrt(6 * 5)
    assert metrics.krcc(x, y) == pytest.approx(5 / math.sqrt(30))


def test_rmse_by_hand():
    assert metrics.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))
    assert metrics.rmse([3, 3, 3], [1, 2, 3]) == pytest.approx(math.sqrt(5 / 3))


# --------------------------------------------------------------------------- against scipy


def test_matches_scipy_on_random_data():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=80)
    mos = 0.6 * pred + rng.normal(size=80)
    mos[::7] = np.round(mos[::7], 1)  # a few ties
    assert metrics.srcc(pred, mos) == pytest.approx(stats.spearmanr(pred, mos).statistic)
    assert metrics.plcc(pred, mos) == pytest.approx(stats.pearsonr(pred, mos).statistic)
    assert metrics.krcc(pred, mos) == pytest.approx(stats.kendalltau(pred, mos).statistic)
    assert metrics.rmse(pred, mos) == pytest.approx(np.sqrt(np.mean((pred - mos) ** 2)))


def test_accepts_tensors_series_and_column_vectors():
    pred, mos = [0.1, 0.4, 0.2, 0.9], [1.0, 3.0, 2.5, 4.0]
    expected = metrics.srcc(pred, mos)
    assert metrics.srcc(torch.tensor(pred, requires_grad=True), pd.Series(mos)) == pytest.approx(expected)
    assert metrics.srcc(np.array(pred)[:, None], mos) == pytest.approx(expected)


# --------------------------------------------------------------------------- logistic fit


def test_logistic_fit_recovers_known_parameters():
    x = np.linspace(0, 100, 60)
    truth = (5.0, 1.0, 40.0, 8.0)
    fit = logistic_fit(x, logistic4(x, *truth))
    assert fit.kind == "logistic"
    assert np.allclose(fit(x), logistic4(x, *truth), atol=1e-4)
    assert fit.params[2] == pytest.approx(40.0, abs=0.05)
    assert abs(fit.params[3]) == pytest.approx(8.0, abs=0.05)


def test_fitted_plcc_beats_raw_on_monotone_nonlinear(monotone_nonlinear):
    pred, mos = monotone_nonlinear
    raw, fitted = metrics.plcc(pred, mos), metrics.plcc(pred, mos, fit=True)
    assert fitted >= raw
    assert fitted > 0.99 > raw
    assert metrics.rmse(pred, mos, fit=True) < 0.1 < metrics.rmse(pred, mos)


def test_fit_handles_decreasing_relation(monotone_nonlinear):
    pred, mos = monotone_nonlinear
    # DMOS-like direction: the mapping flips, fitted PLCC stays high and positive
    assert metrics.plcc(-pred, mos, fit=True) == pytest.approx(metrics.plcc(pred, mos, fit=True), abs=1e-6)
    assert metrics.srcc(-pred, mos) == pytest.approx(-metrics.srcc(pred, mos))


def test_fit_falls_back_to_a_line_when_optimiser_fails(monkeypatch, monotone_nonlinear):
    pred, mos = monotone_nonlinear

    def fail(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(metrics_module.optimize, "curve_fit", fail)
    with pytest.warns(MetricWarning, match="did not converge"):
        fit = logistic_fit(pred, mos)
    assert fit.kind == "linear"
    slope, intercept = np.polyfit(pred, mos, 1)
    assert fit.params == pytest.approx((slope, intercept))
    with pytest.warns(MetricWarning, match="linear fit"):
        assert metrics.plcc(pred, mos, fit=True) == pytest.approx(metrics.plcc(pred, mos))


def test_few_items_use_a_line_with_a_warning():
    pred, mos = [1.0, 2.0, 3.0, 5.0], [1.0, 3.0, 2.0, 4.0]
    with pytest.warns(MetricWarning, match="only 4 items"):
        fit = logistic_fit(pred, mos)
    assert fit.kind == "linear"


def test_all_metrics_is_consistent_with_the_single_functions(monotone_nonlinear):
    pred, mos = monotone_nonlinear
    out = all_metrics(pred, mos)
    assert out["n"] == len(pred) and out["fit"] == "logistic"
    assert out["srcc"] == pytest.approx(metrics.srcc(pred, mos))
    assert out["krcc"] == pytest.approx(metrics.krcc(pred, mos))
    assert out["plcc"] == pytest.approx(metrics.plcc(pred, mos))
    assert out["rmse"] == pytest.approx(metrics.rmse(pred, mos))
    assert out["plcc_fit"] == pytest.approx(metrics.plcc(pred, mos, fit=True))
    assert out["rmse_fit"] == pytest.approx(metrics.rmse(pred, mos, fit=True))


# --------------------------------------------------------------------------- degenerate inputs


@pytest.mark.parametrize("fn", [metrics.srcc, metrics.krcc, metrics.plcc])
def test_constant_predictions_give_nan_and_a_warning(fn):
    with pytest.warns(MetricWarning, match="predictions constant"):
        assert math.isnan(fn([3.0, 3.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0]))
    with pytest.warns(MetricWarning, match="MOS constant"):
        assert math.isnan(fn([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]))


def test_constant_inputs_in_fitted_metrics_and_all_metrics():
    pred, mos = [5.0] * 6, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    with pytest.warns(MetricWarning, match="constant"):
        assert math.isnan(metrics.plcc(pred, mos, fit=True))
    with pytest.warns(MetricWarning, match="constant"):
        assert math.isnan(metrics.rmse(pred, mos, fit=True))
    with pytest.warns(MetricWarning, match="constant") as record:
        out = all_metrics(pred, mos)
    assert len(record) == 1  # one warning for the whole set, not one per metric
    assert all(math.isnan(out[k]) for k in ("srcc", "krcc", "plcc", "plcc_fit", "rmse_fit"))
    assert out["rmse"] == pytest.approx(metrics.rmse(pred, mos)) and out["fit"] is None
    with pytest.raises(MetricInputError, match="constant"):
        logistic_fit(pred, mos)


def test_raw_rmse_of_constant_predictions_is_defined_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.rmse([2.0, 2.0], [1.0, 3.0]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "pred, mos, message",
    [
        ([1, 2, 3], [1, 2], "differ in length"),
        ([1], [1], "at least 2 items"),
        ([1, float("nan"), 3], [1, 2, 3], r"pred: 1 non-finite value\(s\) \(first at index 1"),
        ([1, 2, 3], [1, 2, float("inf")], "mos: 1 non-finite"),
        (["a", "b"], [1, 2], "pred: values must be numbers"),
        (np.ones((2, 3)), np.ones((2, 3)), "1-D"),
    ],
)
def test_bad_inputs_raise_one_line_errors(pred, mos, message):
    with pytest.raises(MetricInputError, match=message) as info:
        metrics.srcc(pred, mos)
    assert isinstance(info.value, UsageError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_fitted_metrics_need_three_items():
    with pytest.raises(ValueError, match="at least 3 items"):
        metrics.plcc([1, 2], [1, 2], fit=True)
    with pytest.raises(ValueError, match="at least 3 items"):
        all_metrics([1, 2], [1, 2])
