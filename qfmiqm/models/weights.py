"""Reading weight files safely.

safetensors is the format we write and prefer. ``.pth/.pt/.bin`` files are read with
``torch.load(weights_only=True)``, which cannot run code; a pickle that needs more than that is
refused unless the user passes ``trust_pickle`` (``--trust-pickle``). ``.npz`` archives are read
without pickle. Every failure is a one-line WeightsError naming the file.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from qfmiqm.errors import WeightsError
from qfmiqm.files import sha256_file  # noqa: F401 - re-exported

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
NPZ_SUFFIXES = (".npz",)

_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")


def read_state_dict(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a flat name -> tensor mapping from a .safetensors, .pth/.pt/.bin or .npz file."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: weights file not found")
    suffix = p.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        return _read_safetensors(p)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(p, trust_pickle)
    if suffix in NPZ_SUFFIXES:
        return _read_npz(p)
    raise WeightsError(
        f"{p}: unknown weights format '{suffix}' (use .safetensors, .pth/.pt/.bin or .npz)"
    )


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{p}: corrupted or truncated safetensors file ({_first_line(exc)})") from None


def _read_pickle(p: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise WeightsError(
                f"{p}: file holds Python objects beyond plain tensors and was not loaded; "
                "convert it to .safetensors or pass --trust-pickle if you trust its source"
            ) from None
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - any failure of an untrusted pickle is a bad file
            raise WeightsError(f"{p}: cannot read weights ({_first_line(exc2)})") from None
        del exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise WeightsError(f"{p}: corrupted or truncated weights file ({_first_line(exc)})") from None
    return _flatten_container(obj, p)


def _read_npz(p: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(str(p), allow_pickle=False) as data:
            return {k: torch.from_numpy(np.array(data[k])) for k in data.files}
    except (ValueError, OSError, EOFError) as exc:
        raise WeightsError(f"{p}: corrupted or unsafe .npz file ({_first_line(exc)})") from None


def _flatten_container(obj: object, p: Path) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the usual {'state_dict': ...} / {'model': ...} wrappers."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _CONTAINER_KEYS if k in obj), None)
            if inner is not None:
                obj = inner
                continue
        break
    raise WeightsError(f"{p}: no state dict (name -> tensor mapping) found in the file")


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a state dict requiring exactly matching names and shapes; explain the first mismatch."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. '{unexpected[0]}')")
        raise WeightsError(f"{source}: weights do not fit this model: " + ", ".join(parts))
    for name, tensor in own.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{source}: weights do not fit this model: '{name}' has shape "
                f"{tuple(state[name].shape)}, the model expects {tuple(tensor.shape)}"
            )
    module.load_state_dict(dict(state), strict=True)


def map_in_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], source_name: str
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors onto ``target`` names by position, checking count and shapes."""
    if len(source) != len(target):
        raise WeightsError(
            f"{source_name}: {len(source)} tensors cannot map onto the model's {len(target)}"
        )
    mapped = {}
    for i, ((s_name, s_val), (t_name, t_val)) in enumerate(zip(source.items(), target.items())):
        if tuple(s_val.shape) != tuple(t_val.shape):
            raise WeightsError(
                f"{source_name}: tensor #{i} '{s_name}' {tuple(s_val.shape)} does not line up with "
                f"'{t_name}' {tuple(t_val.shape)}"
            )
        mapped[t_name] = s_val
    return mapped


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
