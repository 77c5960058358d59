"""Feeding a scorer: inputs -> decoded, policy-cut batches, in input order, never raising for a
bad file. The worker management of scoring lives here, apart from the model.

``prepare_item`` is the per-file step (decode -> input policy -> tone statistics). ``batches``
runs it over a list of inputs, in this process (``workers=0``: no torch, no fork) or in
DataLoader worker processes, so that a file that crashes or hangs its decoder costs only its
own result: a dead worker's batch is decoded again one file per process to isolate the culprit.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from qfmiqm.data.images import to_rgb_array
from qfmiqm.data.policy import InputPolicy, policy_views, view_weights
from qfmiqm.errors import ImageError

#: ``workers``: Pillow in worker processes (the default: the same pixels on every machine);
#: ``device``: JPEGs decoded on the model's device (PyTorch runtime; nvJPEG on CUDA)
DECODE_MODES = ("workers", "device")
DEFAULT_DECODE = "workers"
#: A batch wait, or an isolated single decode, that takes longer than this is given up.
DECODE_TIMEOUT_S = 120.0


@dataclass
class Prepared:
    """One image ready for the network: its views (uint8 (h, w, 3)) and its tone statistics."""

    views: list[Any]
    stats: np.ndarray | None = None


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG file's bytes (1-D uint8 tensor), to be decoded and cut on the model's device."""

    data: Any


@dataclass(frozen=True)
class PrepareSpec:
    """What ``prepare_item`` needs to know; small and picklable, sent to worker processes."""

    policy: InputPolicy
    max_pixels: int
    #: the tone statistics function of the model's card, or None when it has no tone term
    statistics: Callable[[list[np.ndarray]], np.ndarray] | None = None
    #: hand JPEGs the device can decode as bytes (``--decode device``)
    direct_jpeg: bool = False


Decoded = tuple[int, "Prepared | EncodedJpeg | None", "str | None"]


def prepare_item(items: Sequence[Any], index: int, spec: PrepareSpec) -> Decoded:
    """(index, Prepared, None), (index, EncodedJpeg, None) for a JPEG left to the device, or
    (index, None, reason): never raises for a bad input."""
    try:
        if spec.direct_jpeg:
            from qfmiqm.data.device_decode import direct_jpeg_bytes

            if (data := direct_jpeg_bytes(items[index], spec.policy, spec.max_pixels)) is not None:
                return index, EncodedJpeg(data), None
        img = to_rgb_array(items[index], spec.max_pixels, min_short_side=spec.policy.max_short_side)
        views = policy_views(img, spec.policy)
        stats = spec.statistics(views) if spec.statistics is not None else None
        return index, Prepared(views, stats), None
    except ImageError as exc:
        return index, None, str(exc)
    except MemoryError:
        return index, None, "out of memory while decoding"
    except Exception as exc:  # noqa: BLE001 - a hostile file must not stop the batch
        return index, None, f"cannot use image ({type(exc).__name__}: {exc})"


@dataclass
class ViewGroup:
    """Views of one size from several images of a batch, stacked: (M, h, w, 3) uint8, with the
    position (in ``DecodedBatch.good``) of the image each view belongs to."""

    views: Any
    owners: list[int]


@dataclass
class DecodedBatch:
    """Decoded items of one batch, in input order: the views of the images that decoded, stacked
    by size (one block per size: one shared-memory transfer from a worker and one pinned copy,
    instead of one per image), their tone statistics, the bytes of the JPEGs left to the device
    decoder, and the reasons of the items that cannot be used."""

    indices: list[int]
    good: list[int]
    groups: list[ViewGroup]
    weights: list[np.ndarray]
    stats: np.ndarray | None
    errors: dict[int, str]
    #: the JPEG bytes left to the device decoder, concatenated into one block
    encoded: Any = None
    encoded_sizes: list[int] = field(default_factory=list)
    encoded_good: list[int] = field(default_factory=list)

    @classmethod
    def collate(cls, decoded: list[Decoded]) -> "DecodedBatch":
        good = [(i, p) for i, p, err in decoded if err is None and isinstance(p, Prepared)]
        jpegs = [(i, p.data) for i, p, err in decoded if err is None and isinstance(p, EncodedJpeg)]
        return cls(indices=[i for i, _, _ in decoded],
                   good=[i for i, _ in good],
                   groups=group_views([p.views for _, p in good]),
                   weights=[view_weights(p.views) for _, p in good],
                   stats=_stack_stats([p.stats for _, p in good]),
                   errors={i: err for i, _, err in decoded if err is not None},
                   encoded=_concat_for_transfer([d for _, d in jpegs]) if jpegs else None,
                   encoded_sizes=[int(d.numel()) for _, d in jpegs],
                   encoded_good=[i for i, _ in jpegs])

    def encoded_files(self) -> list[Any]:
        """The bytes of each JPEG left to the device decoder (views into one block)."""
        import torch

        return list(torch.split(self.encoded, self.encoded_sizes)) if self.encoded is not None else []

    def pin_memory(self) -> "DecodedBatch":
        # called by DataLoader's pinning thread (pin_memory=True on CUDA)
        for g in self.groups:
            g.views = g.views.pin_memory()
        return self


def group_views(per_image: list[list[Any]]) -> list[ViewGroup]:
    """Stack the views of several images by size, remembering whose each view is."""
    by_shape: dict[tuple, tuple[list, list[int]]] = {}
    for owner, views in enumerate(per_image):
        for v in views:
            stacked, owners = by_shape.setdefault(tuple(v.shape), ([], []))
            stacked.append(v)
            owners.append(owner)
    return [ViewGroup(_stack_for_transfer(vs), owners) for vs, owners in by_shape.values()]


def _stack_stats(stats: list[np.ndarray | None]) -> np.ndarray | None:
    return None if not stats or stats[0] is None else np.stack(stats)


def _in_worker() -> bool:
    """Whether this runs in a DataLoader worker (which has torch loaded)."""
    if "torch" not in sys.modules:
        return False
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None


def _shared_tensor(like: Any, shape: tuple[int, ...]) -> Any:
    """An empty uint8 tensor of ``shape`` in shared memory (as torch's own default_collate makes
    in a worker): a batch built into it leaves the worker without another copy."""
    return like.new(like.untyped_storage()._new_shared(math.prod(shape) * like.element_size())).view(shape)


def _stack_for_transfer(views: list[Any]) -> Any:
    """Stack views (numpy arrays, or tensors on a device): one block, in shared memory in a worker."""
    if _in_worker():
        import torch

        like = torch.empty(0, dtype=torch.uint8)
        out = _shared_tensor(like, (len(views), *views[0].shape))
        np.stack(views, out=out.numpy())  # straight from the (read-only) decoded arrays: one copy
        return out
    if "torch" in sys.modules and isinstance(views[0], sys.modules["torch"].Tensor):
        return sys.modules["torch"].stack(views)
    return np.stack(views)


def _concat_for_transfer(tensors: list[Any]) -> Any:
    """Concatenate 1-D byte tensors, in shared memory in a worker."""
    import torch

    out = _shared_tensor(tensors[0], (sum(int(t.numel()) for t in tensors),)) if _in_worker() else None
    return torch.cat(tensors, out=out)


# --- one file per process: the isolation of a decoder that crashes or hangs -------------------


def _prepare_in_child(conn, items, index, spec) -> None:
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)  # the parent's OpenMP pool does not survive fork
    conn.send(prepare_item(items, index, spec))
    conn.close()


def prepare_isolated(items: Sequence[Any], index: int, spec: PrepareSpec, timeout: float | None = None) -> Decoded:
    """``prepare_item`` in a fresh process, so that a file that crashes or hangs the decoder
    costs only its own result."""
    timeout = DECODE_TIMEOUT_S if timeout is None else timeout
    spec = PrepareSpec(spec.policy, spec.max_pixels, spec.statistics)  # Pillow, never the device
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_prepare_in_child, args=(child, items, index, spec), daemon=True)
    proc.start()
    child.close()
    timed_out = False
    try:
        if parent.poll(timeout):
            return parent.recv()
        timed_out = True
    except (EOFError, OSError):
        pass
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        parent.close()
    if timed_out:
        return index, None, f"decoding took longer than {timeout:.0f} s"
    if proc.exitcode is not None and proc.exitcode < 0:
        return index, None, f"the image decoder crashed on this file (signal {signal.Signals(-proc.exitcode).name})"
    if proc.exitcode not in (0, None):
        return index, None, f"the image decoder crashed on this file (exit code {proc.exitcode})"
    return index, None, "the image decoder stopped without a result"


# --- batches, in this process or in worker processes -----------------------------------------


def batches(items: Sequence[Any], spec: PrepareSpec, batch_size: int, workers: int,
            pin_memory: bool = False) -> Iterator[DecodedBatch]:
    """Decoded batches of ``items`` in input order."""
    if workers == 0:
        for start in range(0, len(items), batch_size):
            stop = min(start + batch_size, len(items))
            yield DecodedBatch.collate([prepare_item(items, i, spec) for i in range(start, stop)])
        return
    yield from _worker_batches(items, spec, batch_size, workers, pin_memory)


class _PrepareDataset:
    """``prepare_item`` over ``items[first:]``, as a map-style dataset for DataLoader."""

    def __init__(self, items: Sequence[Any], spec: PrepareSpec, first: int = 0):
        self.items, self.spec, self.first = items, spec, first

    def __len__(self) -> int:
        return len(self.items) - self.first

    def __getitem__(self, offset: int) -> Decoded:
        return prepare_item(self.items, self.first + offset, self.spec)


def _worker_batches(items: Sequence[Any], spec: PrepareSpec, batch_size: int, workers: int,
                    pin_memory: bool) -> Iterator[DecodedBatch]:
    """When a worker process dies (a file crashed or hung its decoder), the next batch is decoded
    one file per process to isolate the culprit, and a fresh pool of workers takes over after it."""
    from torch.utils.data import DataLoader

    done = 0
    while done < len(items):
        loader = DataLoader(_PrepareDataset(items, spec, first=done), batch_size=batch_size, num_workers=workers,
                            collate_fn=DecodedBatch.collate, pin_memory=pin_memory, multiprocessing_context="fork")
        try:
            for batch in _guarded(loader, DECODE_TIMEOUT_S):
                done += len(batch.indices)
                yield batch
        except RuntimeError as exc:
            if "DataLoader worker" not in str(exc):
                raise
            stop = min(done + batch_size, len(items))
            batch = [prepare_isolated(items, i, spec) for i in range(done, stop)]
            done = stop
            yield DecodedBatch.collate(batch)


def _guarded(loader: Any, timeout: float) -> Iterator[Any]:
    """Iterate a DataLoader so that worker failures surface only from the iteration itself.

    PyTorch's SIGCHLD handler raises "worker killed" wherever the main thread happens to be
    (inside the model, or in the caller writing results); it is silenced while we iterate, and
    the loader's own liveness check (every few seconds) reports the dead worker instead. A
    watchdog kills the workers when one batch takes longer than ``timeout``, which turns a hung
    decoder into the same, recoverable failure.
    """
    it = iter(loader)
    workers = list(getattr(it, "_workers", []))
    restore = _silence_sigchld() if workers else None
    watchdog = _Watchdog(workers, timeout) if workers else None
    try:
        while True:
            if watchdog:
                watchdog.start_wait()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                if watchdog:
                    watchdog.end_wait()
            yield batch
    finally:
        if watchdog:
            watchdog.stop()
        del it  # shuts the workers down before the handler comes back
        if restore:
            restore()


def _silence_sigchld():
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return lambda: signal.signal(signal.SIGCHLD, previous)


class _Watchdog:
    """Kills the worker processes when a single wait for a batch exceeds the timeout."""

    def __init__(self, workers: list, timeout: float):
        self.workers, self.timeout = workers, timeout
        self._since: float | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def start_wait(self) -> None:
        self._since = time.monotonic()

    def end_wait(self) -> None:
        self._since = None

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(1.0):
            since = self._since
            if since is not None and time.monotonic() - since > self.timeout:
                for w in self.workers:
                    if w.is_alive():
                        os.kill(w.pid, signal.SIGKILL)
                return


def default_workers(n_items: int, batch_size: int, device: str = "cpu", runtime: str = "torch") -> int:
    """Decoding worker processes for a job (0: decode in this process).

    ONNX Runtime on a CPU: none. Its forward uses every core, and a decoding process that takes one
    away in the middle of a parallel loop stalls the others: on the 2-core dev VM, 500 x 375
    JPEGs went from 28 img/s in-process to 21 with one worker and 15 with two (docs/speed.md).
    ``--workers N`` still buys isolation from a decoder that crashes or hangs, at that cost.
    PyTorch on a CPU: at most 4, as many as there are batches to overlap. On a GPU decoding is the
    bottleneck, so all cores but one decode."""
    if n_items <= 1 or (runtime == "onnx" and not str(device).startswith("cuda")):
        return 0
    n_batches = -(-n_items // batch_size)
    cores = os.cpu_count() or 1
    cap = max(1, cores - 1) if str(device).startswith("cuda") else min(4, cores)
    return max(1, min(cap, n_batches))
