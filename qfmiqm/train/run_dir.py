"""The run directory of a training run: its files, its lock, and the resume check.

    config.yaml  splits.json  metrics.csv  events/  train.log  ckpt-<step>/
    best/ckpt-<step>/  best.safetensors (+ best.json)  result.json (written last)

Only rank 0 writes; the other ranks read what it wrote after a barrier.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from qfmiqm.data.splits import save_splits
from qfmiqm.errors import UsageError
from qfmiqm.files import write_json_atomic, write_text_atomic
from qfmiqm.train import ddp
from qfmiqm.train.checkpoint import Checkpoint, latest_valid_checkpoint, list_checkpoints
from qfmiqm.train.config import to_plain
from qfmiqm.train.schema import TrainConfig

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
RESULT_FILE = "result.json"
BEST_DIR = "best"
BEST_MODEL = "best.safetensors"
EVENTS_DIR = "events"
LOG_FILE = "train.log"
LOCK_FILE = ".lock"


class RunDir:
    """One run's directory: ``prepare`` locks it and finds the checkpoint to resume from; the
    ``write_*`` methods write its files (rank 0 only)."""

    def __init__(self, path: Path, cfg: TrainConfig, config_hash: str, is_main: bool,
                 say: Callable[[str], None]):
        self.path, self.cfg, self.hash, self.is_main, self.say = path, cfg, config_hash, is_main, say
        self._lock: Optional[_RunLock] = None

    @property
    def best_dir(self) -> Path:
        return self.path / BEST_DIR

    def is_complete(self) -> bool:
        """Whether result.json is there (a finished run)."""
        return (self.path / RESULT_FILE).is_file()

    def prepare(self, resume: bool, attach_log: Callable[[Path], None]) -> Optional[Checkpoint]:
        """Create and lock the directory; return the checkpoint to resume from (or None)."""
        rd = self.path
        has_run = rd.is_dir() and (bool(list_checkpoints(rd)) or self.is_complete())
        if has_run and not resume:
            raise UsageError(f"{rd}: a run already exists there; pass --resume to continue it, or choose another --out")
        if self.is_main:
            rd.mkdir(parents=True, exist_ok=True)
            self._lock = _lock_run_dir(rd)
        ddp.barrier()
        if self.is_main:
            attach_log(rd / LOG_FILE)
        if not resume or self.is_complete():
            return None  # fresh start, or a complete run (returned as is)
        ckpt = latest_valid_checkpoint(rd, report=self.say)
        if ckpt is None:
            self.say(f"note: no checkpoint to resume in {rd}; starting from the beginning")
            return None
        if ckpt.state.get("config_hash") != self.hash:
            raise UsageError(f"--resume: the config differs from the one {rd} was trained with "
                             f"({_config_diff(rd / CONFIG_FILE, self.cfg)}); resume with the same config")
        return ckpt

    def close(self) -> None:
        """Release the lock (the OS releases it anyway when the process dies)."""
        if self._lock is not None:
            self._lock.close()

    def read_result(self) -> dict:
        return json.loads((self.path / RESULT_FILE).read_text())

    def best_model(self) -> Optional[Path]:
        """best.safetensors when it has been written."""
        p = self.path / BEST_MODEL
        return p if p.is_file() else None

    def write_static(self, splits) -> None:
        """config.yaml (every key, defaults included) and splits.json."""
        if not self.is_main:
            return
        text = yaml.safe_dump(to_plain(self.cfg), sort_keys=False)
        write_text_atomic(self.path / CONFIG_FILE, text, durable=True)
        save_splits(splits, self.path)

    def write_metrics(self, rows: list[dict]) -> None:
        """metrics.csv, one row per epoch (columns: the union of the rows' keys, in order)."""
        if not self.is_main:
            return
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns)
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        write_text_atomic(self.path / METRICS_FILE, buf.getvalue(), durable=True)

    def write_result(self, result: dict) -> None:
        write_json_atomic(self.path / RESULT_FILE, finite(result), durable=True, strict=False)


def tensorboard_writer(run_dir: Path, purge_step: Optional[int], say: Callable[[str], None]):
    """A SummaryWriter on events/ (None when tensorboard is not installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        say("note: tensorboard is not installed: no events/ (pip install tensorboard)")
        return None
    return SummaryWriter(str(run_dir / EVENTS_DIR), purge_step=purge_step)


def finite(obj: Any) -> Any:
    """JSON-safe: NaN/inf floats become strings "nan"/"inf"/"-inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def unfinite(obj: Any) -> Any:
    """The inverse of ``finite``."""
    if isinstance(obj, str) and obj in ("nan", "inf", "-inf"):
        return float(obj)
    if isinstance(obj, dict):
        return {k: unfinite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unfinite(v) for v in obj]
    return obj


def _config_diff(saved_file: Path, cfg: TrainConfig) -> str:
    """The first few keys that differ between the saved config.yaml and ``cfg``."""
    from qfmiqm.train.schema import OPERATIONAL_KEYS

    try:
        saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "its config.yaml is unreadable"
    now = to_plain(cfg)
    diffs = []
    for section, values in now.items():
        for key, value in (values.items() if isinstance(values, dict) else []):
            dotted = f"{section}.{key}"
            if dotted in OPERATIONAL_KEYS:
                continue
            old = (saved.get(section) or {}).get(key, "<absent>")
            if old != value:
                diffs.append(f"{dotted}: {old!r} -> {value!r}")
    return "; ".join(diffs[:3]) or "the defaults changed"


class _RunLock:
    def __init__(self, fh):
        self.fh = fh

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()


def _lock_run_dir(run_dir: Path) -> Optional[_RunLock]:
    """An exclusive lock on the run dir, released by the OS when the process dies (even kill -9).
    A POSIX record lock (lockf), not flock: forked DataLoader workers do not inherit it, so an
    orphaned worker of a killed run cannot keep the directory locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    fh = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.lockf(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise UsageError(f"{run_dir}: another process is training in this run directory") from None
    return _RunLock(fh)
