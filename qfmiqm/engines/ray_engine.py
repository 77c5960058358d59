"""The Ray engine: the same scoring job on a Ray cluster, with Ray Data.

The inputs become a dataset of rows ``(index, path)`` in blocks of about one batch; the model runs
in a fixed pool of actors (``map_batches(QualityScorer, ...)``: one per GPU, or one per
``worker_cpus`` CPUs), each scoring whole batches with the same per-batch function as the local
engine (``qfmiqm.engines.batch.score_batch``); the results stream back to this process block by
block, in input order (Ray Data's ``preserve_order``), and become ``ScoreResult`` rows.

Each actor reads its inputs itself: a local path (which every node must see, e.g. a shared file
system) or a URI read through pyarrow (``s3://``, ``gs://``, ``file://``), so that an unreadable
object is a row with an error rather than a failed read task, and its row keeps the URI as given.

Faults: Ray restarts a dead actor and reruns its batch (Ray Data's defaults: unlimited actor
restarts and task retries); a rerun batch decodes each image in a process of its own, so a file
that crashes the decoder twice becomes an error row (``qfmiqm.ray``). Every input comes back
exactly once: each result carries its input's index, a repeated index is dropped, and an index
that never came back becomes an error row.
"""
from __future__ import annotations

import logging
import math
import os
import re
from typing import Any, Iterator, Sequence

from qfmiqm.data.uris import is_uri
from qfmiqm.engines.batch import ModelSpec
from qfmiqm.errors import QfmiqmError, UsageError
from qfmiqm.results import ScoreResult

#: Rows per input block at most this many blocks: more blocks than this get more rows each.
MAX_BLOCKS = 4096
#: The error of an input whose result never came back (should not happen: Ray reruns lost work).
LOST = "no result came back from the Ray job"
#: a line "qfmiqm.errors.UsageError: message" of a traceback that Ray carries as text
_OUR_ERROR = re.compile(r"^qfmiqm\.errors\.(\w+): (.+)$", re.MULTILINE)
INSTALL_HINT = 'the Ray engine needs Ray Data: pip install "qfmiqm[ray]"'


def import_ray() -> Any:
    """``ray`` with ``ray.data``, or a UsageError saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


class RayEngine:
    """Scores on a Ray cluster: the one at ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``),
    else a local Ray started for the run and stopped after it; when this process is already
    connected (``ray.init`` was called), that cluster is used and left running.

    ``device``: ``cpu``, ``cuda`` (GPU actors) or ``auto`` (GPUs when the cluster has any).
    ``num_workers``: model actors (default: the cluster's GPUs / ``worker_gpus``, or on CPU its
    CPUs / ``worker_cpus``). ``worker_cpus``: CPUs reserved per actor (default 1), also its model's
    CPU threads. ``worker_gpus``: GPU share per actor (default 1; 0.5 puts two actors on a GPU).
    """

    name = "ray"

    def __init__(self, spec: ModelSpec, address: str | None = None, num_workers: int | None = None,
                 worker_cpus: float | None = None, worker_gpus: float | None = None, quiet: bool = True):
        import_ray()
        if spec.decode != "workers":
            raise UsageError("--decode device works with --engine local only")
        if str(spec.device).startswith("cuda:"):
            raise UsageError(f"--device {spec.device}: with --engine ray use --device cuda (Ray gives each "
                             "model worker one GPU)")
        if spec.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"unknown device '{spec.device}' (use auto, cpu or cuda with --engine ray)")
        if num_workers is not None and num_workers < 1:
            raise UsageError(f"--num-workers must be at least 1, got {num_workers}")
        if worker_cpus is not None and worker_cpus <= 0:
            raise UsageError(f"--worker-cpus must be more than 0, got {worker_cpus}")
        if worker_gpus is not None and not 0 < worker_gpus <= 1:
            raise UsageError(f"--worker-gpus must be in (0, 1], got {worker_gpus}")
        if worker_gpus is not None and spec.device == "cpu":
            raise UsageError("--worker-gpus needs --device cuda or auto")
        self.spec = spec
        self.address = address
        self.num_workers = num_workers
        self.worker_cpus = worker_cpus
        self.worker_gpus = worker_gpus
        self.quiet = quiet

    @classmethod
    def from_spec(cls, spec: ModelSpec, **options: Any) -> "RayEngine":
        return cls(spec, **options)

    def run(self, items: Sequence[str], batch_size: int = 16, progress: bool = False) -> Iterator[ScoreResult]:
        """One ``ScoreResult`` per item, in input order, as the cluster finishes them."""
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        if not items:
            return
        ray = import_ray()
        started = self._connect(ray)
        data_logger = logging.getLogger("ray.data")
        level = data_logger.level
        if self.quiet:  # Ray Data's notes on each run ("Starting execution...") stay in its log files
            data_logger.setLevel(logging.ERROR)
        try:
            yield from self._run(ray, list(items), batch_size, progress)
        finally:
            data_logger.setLevel(level)
            if started:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Join or start a cluster; True when this call started (and so must stop) Ray."""
        if ray.is_initialized():
            return False
        address = self.address or "local"
        try:
            # quiet: the workers' output stays in Ray's log files (their stdout would mix with the
            # CSV that 'qfmiqm score' prints); a bad file is a row, a failed job one error line
            ray.init(address=address, include_dashboard=False if address == "local" else None,
                     logging_level=logging.ERROR if self.quiet else logging.INFO, log_to_driver=not self.quiet)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UsageError(f"cannot connect to the Ray cluster at '{address}' ({_first_line(exc)})") from None
        return True

    def resources(self, ray: Any) -> tuple[str, int, dict[str, float]]:
        """(device of each actor, number of actors, Ray resources of each actor)."""
        total = ray.cluster_resources()
        gpus, cpus = float(total.get("GPU", 0)), float(total.get("CPU", 0))
        use_gpu = self.spec.device == "cuda" or (self.spec.device == "auto" and gpus >= 1)
        if self.spec.device == "cuda" and gpus < 1:
            raise UsageError("--device cuda: the Ray cluster has no GPU (use --device cpu)")
        per_actor_cpus = self.worker_cpus or 1.0
        if use_gpu:
            share = self.worker_gpus or 1
            return "cuda", self.num_workers or max(1, int(gpus / share)), {"num_gpus": share, "num_cpus": per_actor_cpus}
        return "cpu", self.num_workers or max(1, int(cpus // per_actor_cpus)), {"num_cpus": per_actor_cpus}

    def _run(self, ray: Any, items: list[str], batch_size: int, progress: bool) -> Iterator[ScoreResult]:
        from qfmiqm.ray import QualityScorer

        device, workers, per_actor = self.resources(ray)
        kwargs = {"model": self.spec.model, "device": device, "runtime": self.spec.runtime,
                  "max_pixels": self.spec.max_pixels, "num_crops": self.spec.num_crops,
                  "backbone_weights": self.spec.backbone_weights, "trust_pickle": self.spec.trust_pickle}
        blocks = min(MAX_BLOCKS, math.ceil(len(items) / batch_size))
        # the actors may run elsewhere, in another working folder: they get absolute paths
        rows = [{"index": i, "path": p if is_uri(p) else os.path.abspath(p)} for i, p in enumerate(items)]
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        del rows
        ds = ds.map_batches(QualityScorer, fn_constructor_kwargs=kwargs, batch_size=batch_size,
                            compute=ray.data.ActorPoolStrategy(size=min(workers, blocks)), **per_actor)
        ds.context.execution_options.preserve_order = True
        ds.context.enable_progress_bars = progress
        seen = bytearray(len(items))
        try:
            for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for index, score, error in zip(block["index"].tolist(), block["score"].tolist(),
                                               block["error"].tolist()):
                    if seen[index]:
                        continue  # a rerun's duplicate: each input is reported once
                    seen[index] = 1
                    # a block whose rows all scored may bring its error column back as nulls (NaN)
                    error = error if isinstance(error, str) and error else None
                    yield ScoreResult(items[index], None if error else float(score), error)
        except QfmiqmError:
            raise
        except Exception as exc:  # noqa: BLE001 - Ray wraps everything: find ours, else one line
            raise _as_user_error(exc) from None
        for index in (i for i, done in enumerate(seen) if not done):
            yield ScoreResult(items[index], None, LOST)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _as_user_error(exc: BaseException) -> QfmiqmError:
    """Our own error (raised in an actor, e.g. a model that does not load there) if Ray's
    exception wraps one, or names one in the traceback it carries, else the Ray failure in one line."""
    from qfmiqm import errors

    seen = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, QfmiqmError):
            return type(cause)(*cause.args)
        for text in (getattr(cause, "error_msg", None), str(cause)):
            found = _OUR_ERROR.findall(text or "")
            if found and isinstance(getattr(errors, found[-1][0], None), type):
                kind = getattr(errors, found[-1][0])
                if issubclass(kind, QfmiqmError):
                    return kind(found[-1][1].strip())
        inner = getattr(cause, "cause", None)
        cause = inner if isinstance(inner, BaseException) else (cause.__cause__ or cause.__context__)
    return QfmiqmError(f"the Ray job failed: {type(exc).__name__}: {_first_line(exc)}")
