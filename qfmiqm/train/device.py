"""Runtime choices of a training run: device, autocast dtype, compile, seeds, determinism.

Every choice that the config can get wrong fails here, before any work, naming its key.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
from typing import Callable, Optional

import numpy as np
import torch

from qfmiqm.errors import UsageError
from qfmiqm.train import ddp

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, info: ddp.DistInfo) -> torch.device:
    """``train.device`` as a torch device (``auto``: this rank's GPU when there is one, else CPU)."""
    if name == "auto":
        return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"config: 'train.device' = {name!r}: not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("config: 'train.device' is cuda but no CUDA GPU is available (use auto or cpu)")
        if dev.index is None:
            dev = torch.device(f"cuda:{info.local_rank}")
    return dev


def resolve_amp(name: str, device: torch.device, say: Callable[[str], None]) -> Optional[torch.dtype]:
    """``train.amp`` as an autocast dtype (None: float32)."""
    if name == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    if name == "fp16" and device.type != "cuda":
        raise UsageError("config: 'train.amp' = fp16 needs a CUDA GPU (its GradScaler); use bf16 or none on CPU")
    if name == "bf16" and device.type == "cpu":
        say("warning: train.amp=bf16 on CPU: supported, but usually slower than float32 on CPUs without AMX")
    return AMP_DTYPES[name]


def check_compile(enabled: bool, device: torch.device, say: Callable[[str], None]) -> None:
    """``train.compile`` on CPU needs a C++ compiler; fail now rather than at the first step."""
    if enabled and device.type != "cuda":
        if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("cc") is None:
            raise UsageError("config: 'train.compile' on CPU needs a C++ compiler (none found); set train.compile=false")
        say("warning: train.compile on CPU: compiling takes minutes and rarely pays off for short runs")


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """An autocast context for ``dtype`` (a no-op context for float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the model's initial weights depend on it)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """``train.deterministic``: deterministic kernels; otherwise let cuDNN pick the fastest."""
    if deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
