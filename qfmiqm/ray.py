"""qfmiqm in a Ray Data pipeline: ``QualityScorer``, a callable class for ``Dataset.map_batches``.

    import ray
    from qfmiqm.ray import QualityScorer

    ds = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)
    ds = ds.map_batches(QualityScorer, fn_constructor_kwargs={"model": "default"},
                        concurrency=4, batch_size=16)
    ds.write_parquet("s3://bucket/scores/")          # columns: path, score, error

Each batch needs a ``path`` column; with a ``bytes`` column (``read_binary_files``) the images are
decoded from those bytes, else each actor reads ``path`` itself (a local path that every node can
see, or a URI that pyarrow reads: ``s3://``, ``gs://``, ``file://``). Two columns are added:
``score`` (float, 0-100, NaN when the image could not be scored) and ``error`` (None, or the
reason, in the same words as ``qfmiqm score``). The ``bytes`` column is dropped from the output
unless ``keep_bytes=True``. A bad file is a row with an error, never a failed task. See
docs/distributed.md.

A model actor that dies (a file that crashes the image decoder, a killed process) is restarted by
Ray and the batch it held is run again, this time decoding each image in a process of its own: a
file that crashes the decoder twice becomes a row with an error ("the image decoder crashed on
this file ..."), and the rest of its batch is scored. A batch whose actor dies even so is given up
with an error on each of its rows, so that no batch is retried forever.

This module imports ray only inside a Ray worker; ``QualityScorer`` also works as a plain callable.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from qfmiqm.data.images import DEFAULT_MAX_PIXELS
from qfmiqm.engines.batch import ModelSpec, score_batch
from qfmiqm.errors import UsageError
from qfmiqm.results import ScoreResult

__all__ = ["QualityScorer"]

#: The error of every row of a batch on which the scoring actor died although its images were
#: decoded in separate processes (the model, or the machine, is at fault: not one file).
GIVEN_UP = "the scoring worker died twice on this batch, even with each image decoded in its own process"


class QualityScorer:
    """Scores a batch of a Ray dataset: columns ``path`` (and optionally ``bytes``) in, ``score``
    and ``error`` added. Arguments as for ``qfmiqm.load`` and ``qfmiqm score``:

    - ``model``: zoo name, ``.safetensors`` checkpoint or ``.onnx`` file (a file must exist on
      every node that runs an actor);
    - ``device``: ``auto`` (the actor's GPU when Ray gave it one, ``num_gpus=1``), ``cpu`` or
      ``cuda``; ``runtime``: ``auto`` (ONNX Runtime on CPU, PyTorch on CUDA), ``onnx``, ``torch``;
    - ``threads``: the model's CPU threads; default: the CPUs Ray assigned to the actor
      (``num_cpus``), or every core outside Ray;
    - ``max_pixels``, ``num_crops``, ``backbone_weights``, ``trust_pickle``: as the CLI flags.
    """

    def __init__(self, model: str = "default", *, device: str = "auto", runtime: str = "auto",
                 max_pixels: int = DEFAULT_MAX_PIXELS, num_crops: int | None = None,
                 backbone_weights: str | None = None, trust_pickle: bool = False,
                 threads: int | None = None, keep_bytes: bool = False):
        if str(device).startswith("cuda:"):
            raise UsageError(f"device '{device}': in Ray, use device='cuda' and num_gpus=1 (Ray picks the GPU)")
        spec = ModelSpec(model=os.fspath(model), device=device, runtime=runtime, max_pixels=max_pixels,
                         num_crops=num_crops, backbone_weights=backbone_weights, trust_pickle=trust_pickle)
        self.model = spec.load(threads=threads if threads is not None else _assigned_cpus())
        self.prepare_spec = self.model.prepare_spec()
        self.keep_bytes = keep_bytes
        self._ledger = _CrashLedger.for_this_actor()

    def __repr__(self) -> str:
        return f"QualityScorer({self.model!r})"

    def __call__(self, batch: Any) -> Any:
        """A batch as ``dict[str, np.ndarray]`` (Ray's default) or a pandas DataFrame."""
        if "path" not in batch:
            raise UsageError("QualityScorer needs a 'path' column (with read_binary_files: include_paths=True)")
        names = [str(p) for p in batch["path"]]
        items: list[Any] = list(batch["bytes"]) if "bytes" in batch else names
        key = _batch_key(names)
        deaths = self._ledger.begin(key) if self._ledger else 0
        try:
            if deaths >= 2:
                results = [ScoreResult(n, None, GIVEN_UP) for n in names]
            else:
                results = score_batch(self.model, items, names, self.prepare_spec, isolate=deaths >= 1)
        finally:
            if self._ledger:
                self._ledger.end(key)
        scores = np.array([math.nan if r.score is None else r.score for r in results], dtype=np.float64)
        errors = np.array([r.error for r in results], dtype=object)
        if isinstance(batch, dict):
            out = {k: v for k, v in batch.items() if self.keep_bytes or k != "bytes"}
            out["score"], out["error"] = scores, errors
            return out
        out = batch if self.keep_bytes or "bytes" not in batch else batch.drop(columns=["bytes"])
        return out.assign(score=scores, error=errors)


def _batch_key(names: list[str]) -> str:
    return hashlib.sha1("\0".join(names).encode("utf-8", "surrogatepass")).hexdigest()


def _assigned_cpus() -> int | None:
    """The CPUs Ray assigned to this actor (at least 1), or None outside a Ray worker."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return max(1, int(cpus)) if cpus else None


class _CrashLedger:
    """Which batches an actor was scoring when it died, so that its next incarnation (Ray restarts
    a dead actor with the same actor id and reruns the batch) knows to decode them in isolation.

    One small JSON file per actor in the node's temp folder, ``{batch key: deaths}``: the batches
    in flight (counted as if the actor died now) and those that were in flight when an earlier
    incarnation died and have not come back yet. It is removed whenever it would be empty, so a
    run without deaths leaves nothing behind. A restart on another node starts with no record
    (that was a lost node, not a crashing file).
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        try:
            self._pending: dict[str, int] = {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            self._pending = {}
        self._in_flight: dict[str, int] = {}

    @classmethod
    def for_this_actor(cls) -> "_CrashLedger | None":
        ray = sys.modules.get("ray")
        if ray is None or not ray.is_initialized():
            return None
        actor = ray.get_runtime_context().get_actor_id()
        if not actor:
            return None
        folder = Path(tempfile.gettempdir()) / f"qfmiqm-ray-{os.getuid()}"
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder / f"{actor}.json")

    def begin(self, key: str) -> int:
        """How many earlier incarnations died with this batch in flight."""
        with self._lock:
            deaths = self._pending.pop(key, 0)
            self._in_flight[key] = deaths + 1
            self._save()
        return deaths

    def end(self, key: str) -> None:
        with self._lock:
            self._in_flight.pop(key, None)
            self._save()

    def _save(self) -> None:
        record = {**self._pending, **self._in_flight}
        if not record:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.path)
