"""The ONNX graph of a named model or checkpoint, built once into the user's cache folder.

``qfmiqm.load(..., runtime="onnx")`` on a ``.safetensors`` model needs its graph as an ONNX file.
It is exported on first use (PyTorch is imported then, and only then) into
``$QFMIQM_CACHE`` (else ``$XDG_CACHE_HOME/qfmiqm``, else ``~/.cache/qfmiqm``), under a name keyed
by everything that shapes the graph: the model card, the weights file's sha256, the qfmiqm, ONNX
Runtime and graph-format versions. A changed model or upgraded runtime gets a new file; a stale
one is never picked up.

The file is written atomically, and a sidecar ``.sha256`` holding its digest is written after it:
a file whose digest does not match (truncated, corrupted, half-copied) is rebuilt, never trusted.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from qfmiqm.errors import QfmiqmError, UsageError
from qfmiqm.files import sha256_file, write_text_atomic
from qfmiqm.models.registry import ModelEntry, verified_digest
from qfmiqm.models.runtime_onnx import GRAPH_FORMAT, import_onnxruntime

CACHE_ENV = "QFMIQM_CACHE"


def cache_dir() -> Path:
    """Where built graphs live (created on demand)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qfmiqm"


def graph_key(entry: ModelEntry) -> str:
    """A digest of everything the graph depends on."""
    from qfmiqm import __version__

    weights = verified_digest(entry)  # the file as it is now: a replaced or damaged file is refused
    parts = [entry.card.to_json(), weights, __version__, import_onnxruntime().__version__, GRAPH_FORMAT]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def graph_path(entry: ModelEntry) -> Path:
    return cache_dir() / "onnx" / f"{entry.card.name}-{graph_key(entry)}.onnx"


def is_intact(path: Path) -> bool:
    """Whether ``path`` and its digest sidecar exist and agree."""
    sidecar = path.with_name(path.name + ".sha256")
    try:
        return sidecar.read_text().strip() == sha256_file(path)
    except OSError:
        return False


def cached_graph(entry: ModelEntry, backbone_weights: str | None = None, trust_pickle: bool = False,
                 rebuild: bool = False) -> Path:
    """The intact cached graph of ``entry``, exported now when missing, stale or corrupt."""
    path = graph_path(entry)
    if not rebuild and is_intact(path):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{path.parent}: cannot create the ONNX cache folder ({exc.strerror}); "
                         f"set {CACHE_ENV} to a writable folder, or use --runtime torch") from None
    from qfmiqm.export import export_entry

    try:
        export_entry(entry, path, backbone_weights=backbone_weights, trust_pickle=trust_pickle)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the ONNX graph ({exc.strerror}); set {CACHE_ENV} to a "
                         "writable folder, or use --runtime torch") from None
    except QfmiqmError:
        raise
    write_text_atomic(path.with_name(path.name + ".sha256"), sha256_file(path) + "\n")
    return path

