"""qfmiqm: no-reference image quality assessment (QFM-IQM, DEIQT), offline.

>>> import qfmiqm
>>> m = qfmiqm.load("default")          # or a .safetensors checkpoint; device="cpu"|"cuda"
>>> m.score("photo.jpg")               # -> float, 0-100, higher is better

Submodules and names load on first use, so ``import qfmiqm`` and scoring on the CPU with ONNX
Runtime never import torch, timm, scipy or matplotlib.
"""
from __future__ import annotations

import importlib
from typing import Any

from qfmiqm.errors import ImageError, QfmiqmError, UsageError, WeightsError

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first access)
_LAZY = {
    "load": "qfmiqm.scoring",
    "QualityModel": "qfmiqm.scoring",
    "ScoreResult": "qfmiqm.results",
    "list_models": "qfmiqm.models.registry",
}
_SUBMODULES = ("datasets", "metrics", "ray")  # qfmiqm.ray: needs the ray extra to be useful


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"qfmiqm.{name}")
    else:
        raise AttributeError(f"module 'qfmiqm' has no attribute '{name}'")
    globals()[name] = value
    return value


def create_metric(name: str = "default", device: str | None = "auto", **kwargs: Any) -> Any:
    """pyiqa-style alias of :func:`load`."""
    from qfmiqm.scoring import load

    return load(name, device=device, **kwargs)


__all__ = [
    "__version__", "load", "create_metric", "list_models", "QualityModel", "ScoreResult", "datasets", "metrics",
    "QfmiqmError", "UsageError", "ImageError", "WeightsError",
]
