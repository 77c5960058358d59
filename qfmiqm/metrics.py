"""Public metrics API (``qfmiqm.metrics.srcc / plcc / krcc / rmse``); see :mod:`qfmiqm.eval.metrics`."""
from __future__ import annotations

from qfmiqm.eval.metrics import (
    LogisticFit,
    MetricInputError,
    MetricWarning,
    all_metrics,
    krcc,
    logistic_fit,
    plcc,
    rmse,
    srcc,
)

__all__ = [
    "srcc", "plcc", "krcc", "rmse", "logistic_fit", "all_metrics",
    "LogisticFit", "MetricInputError", "MetricWarning",
]
