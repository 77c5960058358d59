"""qfmiqm: no-reference image quality assessment (QFM-IQM, DEIQT), offline.

>>> import qfmiqm
>>> m = qfmiqm.load("default")          # or a .safetensors checkpoint; device="cpu"|"cuda"
>>> m.score("photo.jpg")               # -> float, 0-100, higher is better
"""
from __future__ import annotations

from qfmiqm import datasets, metrics
from qfmiqm.errors import ImageError, QfmiqmError, UsageError, WeightsError
from qfmiqm.models.registry import list_models
from qfmiqm.scoring import QualityModel, ScoreResult, load

__version__ = "0.1.0"


def create_metric(name: str = "default", device: str | None = "auto", **kwargs) -> QualityModel:
    """pyiqa-style alias of :func:`load`."""
    return load(name, device=device, **kwargs)


__all__ = [
    "__version__", "load", "create_metric", "list_models", "QualityModel", "ScoreResult", "datasets", "metrics",
    "QfmiqmError", "UsageError", "ImageError", "WeightsError",
]
