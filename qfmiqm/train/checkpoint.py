"""Crash-safe checkpoints.

A checkpoint is a folder ``ckpt-<step>/`` holding safetensors files (model weights, optimizer
tensors, RNG states) and ``state.json`` (epoch, step, config hash, scalar state, and the sha256 of
every safetensors file). It is written under a temporary name and renamed into place, and
``state.json`` is written last: a folder that lacks it, or whose files do not match its hashes,
is a damaged checkpoint and is skipped with a message, never loaded.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from qfmiqm.files import write_json_atomic
from qfmiqm.models.weights import sha256_file

PREFIX = "ckpt-"
STATE_FILE = "state.json"


@dataclass
class Checkpoint:
    path: Path
    tensors: dict[str, dict[str, torch.Tensor]]  # file stem -> name -> tensor
    state: dict


def save_checkpoint(run_dir: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict,
                    keep: int = 2) -> Path:
    """Write ``ckpt-<step>`` atomically and prune older ones, keeping the newest ``keep``."""
    run_dir = Path(run_dir)
    final = run_dir / f"{PREFIX}{step:09d}"
    tmp = run_dir / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    hashes = {}
    for stem, named in tensors.items():
        path = tmp / f"{stem}.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in named.items()}, str(path))
        hashes[stem] = sha256_file(path)
    write_json_atomic(tmp / STATE_FILE, {**state, "step": step, "files": hashes}, durable=True, strict=False)
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(run_dir)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders, oldest first (by step)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def read_checkpoint(path: Path) -> Checkpoint:
    """Read and verify one checkpoint; raises ValueError saying what is wrong."""
    state_path = path / STATE_FILE
    if not state_path.is_file():
        raise ValueError("no state.json (the write was interrupted)")
    try:
        state = json.loads(state_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"state.json is not valid JSON ({exc.msg})") from None
    tensors = {}
    for stem, digest in state.get("files", {}).items():
        file = path / f"{stem}.safetensors"
        if not file.is_file():
            raise ValueError(f"{file.name} is missing")
        if sha256_file(file) != digest:
            raise ValueError(f"{file.name} does not match its recorded hash")
        tensors[stem] = load_file(str(file))
    return Checkpoint(path, tensors, state)


def latest_valid_checkpoint(run_dir: Path, report: Callable[[str], None] = print) -> Checkpoint | None:
    """The newest checkpoint that verifies; damaged ones are reported and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return read_checkpoint(path)
        except (ValueError, OSError) as exc:
            report(f"warning: skipping damaged checkpoint {path}: {exc}")
    return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
