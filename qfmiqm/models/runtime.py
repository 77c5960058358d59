"""Runtimes: what runs a model's network on a batch of views. One small interface, two engines.

- ``onnx``: ONNX Runtime (qfmiqm.models.runtime_onnx). The fastest on a CPU for this family of
  networks, and it needs no torch: scoring on the CPU never imports it.
- ``torch``: PyTorch (qfmiqm.models.runtime_torch), for CUDA GPUs and for anything that needs
  the network's modules (quality maps, feature diagnostics).

``auto`` picks ONNX Runtime on the CPU and PyTorch on CUDA. Both run the same graph
(qfmiqm.models.graph.ScoringGraph), so their scores agree within 1e-3 on the 0-100 scale.
This module imports neither engine.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Any, Protocol

import numpy as np

from qfmiqm.errors import UsageError

RUNTIMES = ("auto", "onnx", "torch")
DEFAULT_RUNTIME = "auto"


class Runtime(Protocol):
    """Runs a network: uint8 views (N, H, W, 3) of one size -> raw head scores (N,) float64."""

    #: "onnx" or "torch"
    name: str
    #: "cpu", "cuda", "cuda:1", ...
    device: str

    def head_scores(self, views: Any) -> np.ndarray:
        """uint8 (N, H, W, 3) numpy array (or, for PyTorch, a tensor) -> (N,) raw head scores."""
        ...


def cuda_possible() -> bool:
    """Whether a CUDA GPU may be present, decided without importing torch when it cannot be: no
    NVIDIA device node means no GPU (torch would take 1.7 s to say so); otherwise torch decides."""
    if "torch" not in sys.modules and not any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl")):
        return False
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str | Any | None) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; an explicit CUDA device must exist."""
    if device is None or str(device) == "auto":
        return "cuda" if cuda_possible() else "cpu"
    name = str(device)
    if not (name == "cpu" or re.fullmatch(r"cuda(:\d+)?", name)):
        raise UsageError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)")
    if name.startswith("cuda") and not cuda_possible():
        raise UsageError(f"device '{name}' requested but no CUDA GPU is available (use --device cpu)")
    return name


def resolve_runtime(runtime: str | None, device: str) -> str:
    """``auto`` -> ONNX Runtime on the CPU, PyTorch on CUDA; an explicit name is kept."""
    runtime = (runtime or DEFAULT_RUNTIME).lower()
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime '{runtime}' (use {', '.join(RUNTIMES)})")
    if runtime == "auto":
        return "torch" if device.startswith("cuda") else "onnx"
    return runtime
