"""IQA agreement metrics between predictions and subjective scores (MOS/DMOS).

SRCC, KRCC (Kendall tau-b) and raw PLCC/RMSE come straight from scipy.stats. The fitted
variants first map predictions onto the MOS scale with the VQEG 4-parameter logistic

    f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2

(monotone, so SRCC/KRCC are unchanged by it), which is what IQA papers mean by "PLCC/RMSE after
nonlinear regression". When the logistic cannot be fitted, a least-squares line is used instead
and a :class:`MetricWarning` says so.

Degenerate inputs never crash: a correlation against a constant array is undefined, so it is
NaN plus a :class:`MetricWarning`. Malformed inputs (different lengths, too few items,
non-finite or non-numeric values) raise :class:`MetricInputError`, which is both a
``qfmiqm.errors.UsageError`` and a ``ValueError``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import optimize, stats
from scipy.special import expit

from qfmiqm.errors import UsageError

#: Fewest items for which a correlation or an RMSE is computed at all.
MIN_ITEMS = 2
#: Fewest items for fitted metrics (a line through 2 points fits anything).
MIN_ITEMS_FIT = 3
#: Fewest items for the 4-parameter logistic; with fewer it would interpolate, so a line is used.
MIN_ITEMS_LOGISTIC = 5
#: Starting slopes (in standard deviations of the predictions) tried for the logistic fit.
_LOGISTIC_START_WIDTHS = (1.0, 0.3, 3.0)


class MetricInputError(UsageError, ValueError):
    """Predictions/MOS that no metric can be computed on (wrong length, too few, not finite)."""


class MetricWarning(UserWarning):
    """A metric is undefined for these inputs (returned as NaN) or a fit fell back to a line."""


ArrayLike = Any  # sequences, numpy arrays, pandas Series, torch tensors


def _as_vector(values: ArrayLike, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensors, possibly on a GPU or requiring grad
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise MetricInputError(f"{name}: values must be numbers") from None
    if arr.ndim != 1:
        squeezed = arr.squeeze()
        if squeezed.ndim != 1:
            raise MetricInputError(f"{name}: expected a 1-D sequence of numbers, got shape {arr.shape}")
        arr = squeezed
    return arr


def validate_pair(pred: ArrayLike, mos: ArrayLike, min_items: int = MIN_ITEMS) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as float64 vectors, after checking length, size and finiteness."""
    p, m = _as_vector(pred, "pred"), _as_vector(mos, "mos")
    if p.shape != m.shape:
        raise MetricInputError(f"pred and mos differ in length ({p.size} vs {m.size})")
    if p.size < min_items:
        raise MetricInputError(f"need at least {min_items} items, got {p.size}")
    for name, arr in (("pred", p), ("mos", m)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise MetricInputError(
                f"{name}: {bad.size} non-finite value(s) (first at index {bad[0]}: {arr[bad[0]]})"
            )
    return p, m


def _constant_reason(p: np.ndarray, m: np.ndarray) -> str | None:
    """Why a correlation is undefined for these (validated) arrays, or None if it is defined."""
    const = [name for name, arr in (("predictions", p), ("MOS", m)) if np.ptp(arr) == 0]
    return f"{' and '.join(const)} constant" if const else None


def _warn_nan(metric: str, reason: str) -> float:
    warnings.warn(f"{metric}: undefined ({reason}); returning NaN", MetricWarning, stacklevel=3)
    return math.nan


def _scipy_stat(fn: Callable, p: np.ndarray, m: np.ndarray) -> float:
    with warnings.catch_warnings():  # degenerate cases are reported by our own warning
        warnings.simplefilter("ignore")
        return float(fn(p, m)[0])


def srcc(pred: ArrayLike, mos: ArrayLike) -> float:
    """Spearman rank-order correlation; ties get average ranks (scipy.stats.spearmanr)."""
    p, m = validate_pair(pred, mos)
    reason = _constant_reason(p, m)
    return _warn_nan("SRCC", reason) if reason else _scipy_stat(stats.spearmanr, p, m)


def krcc(pred: ArrayLike, mos: ArrayLike) -> float:
    """Kendall rank correlation, tau-b (tie-corrected; scipy.stats.kendalltau)."""
    p, m = validate_pair(pred, mos)
    reason = _constant_reason(p, m)
    return _warn_nan("KRCC", reason) if reason else _scipy_stat(stats.kendalltau, p, m)


@dataclass(frozen=True)
class LogisticFit:
    """A fitted monotone mapping from predictions to the MOS scale; call it on predictions.

    ``kind`` is "logistic" (params = b1, b2, b3, b4 of the VQEG function) or "linear"
    (params = slope, intercept) when the logistic could not be fitted.
    """

    params: tuple[float, ...]
    kind: str = "logistic"

    def __call__(self, x: ArrayLike) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.kind == "linear":
            slope, intercept = self.params
            return slope * x + intercept
        return logistic4(x, *self.params)


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The VQEG 4-parameter logistic; expit avoids overflow in exp for far-out x."""
    return (b1 - b2) * expit((x - b3) / max(abs(b4), 1e-12)) + b2


def _fit_line(p: np.ndarray, m: np.ndarray) -> LogisticFit:
    slope, intercept = np.polyfit(p, m, 1)
    return LogisticFit((float(slope), float(intercept)), kind="linear")


def _fit_logistic(p: np.ndarray, m: np.ndarray) -> LogisticFit | None:
    """Best of a few starts, fitted on standardised predictions for conditioning; None if all fail."""
    centre, scale = float(p.mean()), float(p.std())
    z = (p - centre) / scale
    rising = stats.spearmanr(p, m)[0] >= 0
    top, bottom = (m.max(), m.min()) if rising else (m.min(), m.max())
    best, best_sse = None, math.inf
    for width in _LOGISTIC_START_WIDTHS:
        try:
            with warnings.catch_warnings():  # e.g. OptimizeWarning: covariance not estimable
                warnings.simplefilter("ignore")
                params, _ = optimize.curve_fit(logistic4, z, m, p0=(top, bottom, 0.0, width), maxfev=10000)
        except (RuntimeError, ValueError, TypeError, FloatingPointError):
            continue
        sse = float(np.sum((logistic4(z, *params) - m) ** 2))
        if np.all(np.isfinite(params)) and sse < best_sse:
            best, best_sse = params, sse
    if best is None:
        return None
    b1, b2, b3, b4 = (float(v) for v in best)
    return LogisticFit((b1, b2, centre + scale * b3, scale * abs(b4)))


def logistic_fit(pred: ArrayLike, mos: ArrayLike) -> LogisticFit:
    """Fit the VQEG 4-parameter logistic from predictions to MOS.

    Falls back to a least-squares line (with a :class:`MetricWarning`) when there are fewer than
    ``MIN_ITEMS_LOGISTIC`` items or the optimiser fails. Constant predictions or MOS cannot be
    mapped and raise :class:`MetricInputError`; the fitted metrics turn that into NaN instead.
    """
    p, m = validate_pair(pred, mos, MIN_ITEMS_FIT)
    reason = _constant_reason(p, m)
    if reason:
        raise MetricInputError(f"cannot fit a mapping: {reason}")
    return _fit_or_line(p, m)


def _fit_or_line(p: np.ndarray, m: np.ndarray, stacklevel: int = 3) -> LogisticFit:
    if p.size < MIN_ITEMS_LOGISTIC:
        why = f"only {p.size} items (logistic needs {MIN_ITEMS_LOGISTIC})"
    else:
        fit = _fit_logistic(p, m)
        if fit is not None:
            return fit
        why = "the optimiser did not converge"
    warnings.warn(f"logistic fit not used: {why}; using a linear fit", MetricWarning, stacklevel=stacklevel)
    return _fit_line(p, m)


def _fitted(p: np.ndarray, m: np.ndarray, metric: str) -> np.ndarray | None:
    reason = _constant_reason(p, m)
    if reason:
        _warn_nan(metric, reason)
        return None
    return _fit_or_line(p, m, stacklevel=4)(p)


def _pearson(p: np.ndarray, m: np.ndarray) -> float:
    if np.ptp(p) == 0:  # only reachable for a fitted mapping that came out flat
        return _warn_nan("PLCC (fitted)", "the fitted mapping is constant")
    return _scipy_stat(stats.pearsonr, p, m)


def _rmse(p: np.ndarray, m: np.ndarray) -> float:
    return float(np.sqrt(np.mean((p - m) ** 2)))


def plcc(pred: ArrayLike, mos: ArrayLike, fit: bool = False) -> float:
    """Pearson linear correlation; with ``fit=True`` after the 4-parameter logistic mapping."""
    p, m = validate_pair(pred, mos, MIN_ITEMS_FIT if fit else MIN_ITEMS)
    if fit:
        mapped = _fitted(p, m, "PLCC (fitted)")
        return math.nan if mapped is None else _pearson(mapped, m)
    reason = _constant_reason(p, m)
    return _warn_nan("PLCC", reason) if reason else _pearson(p, m)


def rmse(pred: ArrayLike, mos: ArrayLike, fit: bool = False) -> float:
    """Root-mean-square error; with ``fit=True`` after mapping predictions onto the MOS scale.

    The raw RMSE is defined for constant inputs; the fitted one is NaN (+ warning) there.
    """
    p, m = validate_pair(pred, mos, MIN_ITEMS_FIT if fit else MIN_ITEMS)
    if fit:
        mapped = _fitted(p, m, "RMSE (fitted)")
        return math.nan if mapped is None else _rmse(mapped, m)
    return _rmse(p, m)


def metrics_and_fit(pred: ArrayLike, mos: ArrayLike) -> tuple[dict[str, Any], LogisticFit | None]:
    """:func:`all_metrics` plus the mapping it fitted (None when predictions or MOS are constant)."""
    p, m = validate_pair(pred, mos, MIN_ITEMS_FIT)
    out: dict[str, Any] = {"n": int(p.size)}
    reason = _constant_reason(p, m)
    if reason:
        _warn_nan("SRCC, KRCC, PLCC and fitted RMSE", reason)
        out.update(srcc=math.nan, krcc=math.nan, plcc=math.nan, rmse=_rmse(p, m),
                   plcc_fit=math.nan, rmse_fit=math.nan, fit=None)
        return out, None
    mapping = _fit_or_line(p, m)
    mapped = mapping(p)
    out.update(
        srcc=_scipy_stat(stats.spearmanr, p, m),
        krcc=_scipy_stat(stats.kendalltau, p, m),
        plcc=_pearson(p, m),
        rmse=_rmse(p, m),
        plcc_fit=_pearson(mapped, m),
        rmse_fit=_rmse(mapped, m),
        fit=mapping.kind,
    )
    return out, mapping


def all_metrics(pred: ArrayLike, mos: ArrayLike) -> dict[str, Any]:
    """Every metric at once, fitting the mapping a single time and warning at most once.

    Keys: n, srcc, krcc, plcc, rmse (raw), plcc_fit, rmse_fit (after the fit), fit
    ("logistic", "linear", or None when predictions or MOS are constant).
    """
    return metrics_and_fit(pred, mos)[0]


__all__ = [
    "srcc", "plcc", "krcc", "rmse", "logistic_fit", "logistic4", "all_metrics", "metrics_and_fit", "validate_pair",
    "LogisticFit", "MetricInputError", "MetricWarning", "MIN_ITEMS", "MIN_ITEMS_FIT", "MIN_ITEMS_LOGISTIC",
]
