"""What a training checkpoint holds, and putting it back: the trained weights, the optimizer and
GradScaler state, the EMA teacher, every RNG state and the position in the data order.

``qfmiqm.train.checkpoint`` writes and reads the files; this module decides what goes in them,
so that a resumed run continues exactly where the interrupted one stopped.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from qfmiqm.errors import UsageError
from qfmiqm.models.qfm import QualityNet
from qfmiqm.train.checkpoint import Checkpoint, save_checkpoint
from qfmiqm.train.run_dir import finite, unfinite

#: the keys of the trainer's state dict that a checkpoint carries
POSITION_KEYS = ("epoch", "step_in_epoch", "global_step", "sums", "count", "epoch_seconds", "best", "history")


def initial_state() -> dict:
    """The trainer's state at the start of a run (epoch, position, running sums, selection, history)."""
    return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "sums": {}, "count": 0, "epoch_seconds": 0.0,
            "best": None, "history": []}


def trained_module(net: QualityNet, mode: str) -> nn.Module:
    """What a checkpoint stores: the whole net when the backbone trains, else the head alone."""
    return net if mode != "frozen" else net.head


def model_state(net: QualityNet, mode: str) -> dict[str, torch.Tensor]:
    """A CPU copy of the trained module's weights."""
    return {k: v.detach().cpu().clone() for k, v in trained_module(net, mode).state_dict().items()}


def load_model_state(net: QualityNet, mode: str, tensors: dict[str, torch.Tensor]) -> None:
    trained_module(net, mode).load_state_dict(tensors, strict=True)


def save_training_checkpoint(run_dir: Path, state: dict, weights: dict[str, torch.Tensor],
                             optimizer: torch.optim.Optimizer, scaler, teacher: Optional[nn.Module],
                             config_hash: str, world: int, keep: int) -> None:
    """Write ``ckpt-<global step>`` with everything needed to continue (call on rank 0 only)."""
    tensors = {"model": weights, "optim": {}, "rng": _rng_tensors()}
    optim_state = optimizer.state_dict()
    for idx, s in optim_state["state"].items():
        for key, value in s.items():
            if isinstance(value, torch.Tensor):
                tensors["optim"][f"{idx}/{key}"] = value
    groups = [dict(g) for g in optim_state["param_groups"]]
    if teacher is not None:
        tensors["teacher"] = {k: v.detach().cpu().clone() for k, v in teacher.state_dict().items()}
    if not tensors["optim"]:
        tensors.pop("optim")
    meta = {**{k: state[k] for k in POSITION_KEYS}, "config_hash": config_hash,
            "optim_groups": groups, "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "python_rng": _py_rng_state(), "numpy_rng": _np_rng_meta(), "world": world}
    save_checkpoint(run_dir, state["global_step"], tensors, finite(meta), keep=keep)


def restore_training_checkpoint(ckpt: Checkpoint, state: dict, net: QualityNet, mode: str,
                                optimizer: torch.optim.Optimizer, scaler, teacher: Optional[nn.Module],
                                world: int, device: torch.device) -> None:
    """Put a checkpoint back: weights, optimizer, teacher, scaler, RNG states, and ``state``'s position."""
    s = ckpt.state
    if s.get("world", 1) != world:
        raise UsageError(f"--resume: {ckpt.path} was written by {s.get('world', 1)} processes; resume with "
                         f"the same number (now {world}) so that the data order continues exactly")
    load_model_state(net, mode, ckpt.tensors["model"])
    per_idx: dict[int, dict] = {}
    for name, value in ckpt.tensors.get("optim", {}).items():
        idx, key = name.split("/", 1)
        per_idx.setdefault(int(idx), {})[key] = value.to(device) if key != "step" else value
    optimizer.load_state_dict({"state": per_idx, "param_groups": s["optim_groups"]})
    if teacher is not None and "teacher" in ckpt.tensors:
        teacher.load_state_dict(ckpt.tensors["teacher"])
    if s.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(s["scaler"])
    _restore_rng(ckpt.tensors.get("rng", {}), s)
    state.update({k: s[k] for k in POSITION_KEYS})
    state["best"] = unfinite(state["best"])


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """A short hash of weights (DDP replicas must agree on it)."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# --- RNG states ---------------------------------------------------------------------------------


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    out["numpy"] = torch.from_numpy(np.random.get_state()[1].astype(np.int64))
    return out


def _py_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _np_rng_meta() -> list:
    name, _, pos, has_gauss, cached = np.random.get_state()
    return [name, int(pos), int(has_gauss), float(cached)]


def _restore_rng(tensors: dict[str, torch.Tensor], state: dict) -> None:
    if "torch" in tensors:
        torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
    if "numpy" in tensors and state.get("numpy_rng"):
        name, pos, has_gauss, cached = state["numpy_rng"]
        np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    if state.get("python_rng"):
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))
