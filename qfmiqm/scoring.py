"""Scoring images with a loaded model: the engine behind ``qfmiqm score`` and ``QualityModel.score``.

Decoding and cropping run in DataLoader workers; a file that cannot be used becomes a
``ScoreResult`` with an error instead of an exception, so a batch always goes on.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from qfmiqm.data.device_decode import DEFAULT_DECODE, crops_on_device, direct_jpeg_bytes, resolve_decode
from qfmiqm.data.images import DEFAULT_MAX_PIXELS, to_rgb_array
from qfmiqm.data.transforms import InputPolicy, normalize, policy_crops
from qfmiqm.errors import ImageError, UsageError
from qfmiqm.models.card import ModelCard
from qfmiqm.models.onnx_net import OnnxNet, import_onnxruntime, is_onnx_path, onnx_device
from qfmiqm.models.qfm import QualityNet
from qfmiqm.models.registry import load_net, resolve_model

DEFAULT_BATCH_SIZE = 16
#: A batch wait, or an isolated single decode, that takes longer than this is given up.
DECODE_TIMEOUT_S = 120.0
#: decoded batches go to a CUDA device from pinned host memory
PIN_MEMORY = True


@dataclass(frozen=True)
class ScoreResult:
    """One input's outcome: a score, or the reason it has none."""

    path: str
    score: float | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG file's bytes (1-D uint8), to be decoded and cropped on the model's device."""

    data: torch.Tensor


class _CropDataset(Dataset):
    """Decodes and crops ``items[first:]`` (or, with ``direct_jpeg``, reads the bytes of JPEGs the
    device can decode itself); failures are returned as messages, never raised."""

    def __init__(self, items: Sequence[Any], policy: InputPolicy, max_pixels: int, first: int = 0,
                 direct_jpeg: bool = False):
        self.items, self.policy, self.max_pixels, self.first = items, policy, max_pixels, first
        self.direct_jpeg = direct_jpeg

    def __len__(self) -> int:
        return len(self.items) - self.first

    def __getitem__(self, offset: int) -> tuple[int, torch.Tensor | EncodedJpeg | None, str | None]:
        return decode_item(self.items, self.first + offset, self.policy, self.max_pixels, self.direct_jpeg)


def decode_item(items: Sequence[Any], index: int, policy: InputPolicy, max_pixels: int,
                direct_jpeg: bool = False) -> tuple[int, torch.Tensor | EncodedJpeg | None, str | None]:
    """(index, uint8 crops, None), (index, EncodedJpeg, None) when ``direct_jpeg`` and the device
    can decode the file as it is, or (index, None, reason): never raises for a bad input."""
    try:
        if direct_jpeg and (data := direct_jpeg_bytes(items[index], policy, max_pixels)) is not None:
            return index, EncodedJpeg(data), None
        img = to_rgb_array(items[index], max_pixels, min_short_side=policy.max_short_side)
        return index, policy_crops(img, policy), None
    except ImageError as exc:
        return index, None, str(exc)
    except MemoryError:
        return index, None, "out of memory while decoding"
    except Exception as exc:  # noqa: BLE001 - a hostile file must not stop the batch
        return index, None, f"cannot use image ({type(exc).__name__}: {exc})"


def _decode_in_child(conn, items, index, policy, max_pixels) -> None:
    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork; as in DataLoader workers
    i, crops, err = decode_item(items, index, policy, max_pixels)
    conn.send((i, None if crops is None else crops.numpy(), err))
    conn.close()


def decode_isolated(items: Sequence[Any], index: int, policy: InputPolicy, max_pixels: int,
                    timeout: float | None = None) -> tuple[int, torch.Tensor | None, str | None]:
    """Decode one item in a fresh process, so that a file that crashes or hangs the decoder
    costs only its own result."""
    timeout = DECODE_TIMEOUT_S if timeout is None else timeout
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_decode_in_child, args=(child, items, index, policy, max_pixels), daemon=True)
    proc.start()
    child.close()
    timed_out = False
    try:
        if parent.poll(timeout):
            i, crops, err = parent.recv()
            return i, None if crops is None else torch.from_numpy(crops), err
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


def _in_shared_memory_if_worker(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """An empty tensor of ``shape`` in shared memory when called in a DataLoader worker (as torch's
    own default_collate does: the batch then leaves the worker without another copy), else None."""
    if get_worker_info() is None:
        return None
    numel = math.prod(shape)
    return like.new(like.untyped_storage()._new_shared(numel * like.element_size())).view(shape)


def _stack_for_transfer(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack crops, in shared memory when in a worker."""
    return torch.stack(tensors, out=_in_shared_memory_if_worker(tensors[0], (len(tensors), *tensors[0].shape)))


def _concat_for_transfer(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate 1-D byte tensors, in shared memory when in a worker."""
    return torch.cat(tensors, out=_in_shared_memory_if_worker(tensors[0], (sum(t.numel() for t in tensors),)))


@dataclass
class DecodedBatch:
    """Decoded items of one batch, in input order: the crops of the items that decoded, stacked
    into one tensor (one shared-memory transfer from a worker and one pinned copy, instead of one
    per image), the bytes of the JPEGs left to the device decoder, concatenated likewise, and the
    reasons of the items that cannot be used."""

    indices: list[int]
    crops: torch.Tensor | None
    good: list[int]
    errors: dict[int, str]
    encoded: torch.Tensor | None = None
    encoded_sizes: list[int] = field(default_factory=list)
    encoded_good: list[int] = field(default_factory=list)

    @classmethod
    def collate(cls, decoded: list[tuple[int, torch.Tensor | EncodedJpeg | None, str | None]]) -> "DecodedBatch":
        good = [(i, c) for i, c, err in decoded if err is None and not isinstance(c, EncodedJpeg)]
        jpegs = [(i, c.data) for i, c, err in decoded if err is None and isinstance(c, EncodedJpeg)]
        return cls(indices=[i for i, _, _ in decoded],
                   crops=_stack_for_transfer([c for _, c in good]) if good else None,
                   good=[i for i, _ in good],
                   errors={i: err for i, _, err in decoded if err is not None},
                   encoded=_concat_for_transfer([d for _, d in jpegs]) if jpegs else None,
                   encoded_sizes=[d.numel() for _, d in jpegs],
                   encoded_good=[i for i, _ in jpegs])

    def encoded_files(self) -> list[torch.Tensor]:
        """The bytes of each JPEG left to the device decoder (views into one block)."""
        return list(torch.split(self.encoded, self.encoded_sizes)) if self.encoded is not None else []

    def pin_memory(self) -> "DecodedBatch":
        # called by DataLoader's pinning thread (pin_memory=True on CUDA); the JPEG bytes are
        # read by the decoder on the host, so they stay where they are
        crops = self.crops.pin_memory() if self.crops is not None else None
        return replace(self, crops=crops)


@dataclass
class _Launched:
    """A batch whose forward has been started: raw outputs (on the device) in ``order``."""

    indices: list[int]
    order: list[int]
    raw: torch.Tensor | None
    errors: dict[int, str]


def _is_worker_failure(exc: RuntimeError) -> bool:
    return "DataLoader worker" in str(exc)


def _guarded(loader: DataLoader, timeout: float) -> Iterator[list]:
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


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' requested but no CUDA GPU is available (use --device cpu)")
    return dev


def default_workers(n_items: int, batch_size: int, device: torch.device | str = "cpu") -> int:
    """Decoding runs in worker processes (so a file that crashes the decoder costs only its own
    result), as many as there are batches to overlap. On CPU at most 4, since the model's forward
    needs the cores too; on a GPU decoding is the bottleneck, so all cores but one decode."""
    if n_items <= 1:
        return 0
    batches = -(-n_items // batch_size)
    cores = os.cpu_count() or 1
    cap = max(1, cores - 1) if torch.device(device).type == "cuda" else min(4, cores)
    return max(1, min(cap, batches))


def describe_item(item: Any, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, Image.Image):
        return f"<PIL image #{index}>"
    if isinstance(item, np.ndarray):
        return f"<array #{index}>"
    if isinstance(item, torch.Tensor):
        return f"<tensor #{index}>"
    return f"<{type(item).__name__} #{index}>"


class QualityModel:
    """A ready-to-use quality model: ``m.score(image_or_list) -> float | list[float]``.

    Scores are on a 0-100 scale, higher is better.
    """

    def __init__(self, net: QualityNet | OnnxNet, card: ModelCard, device: torch.device,
                 max_pixels: int = DEFAULT_MAX_PIXELS, decode: str = DEFAULT_DECODE):
        self.net = net.to(device).eval()
        self.card = card
        self.device = device
        self.max_pixels = max_pixels
        self.decode = decode
        resolve_decode(decode, device)  # an unknown or unavailable mode fails here, not mid-batch
        if device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def policy(self) -> InputPolicy:
        return self.card.input

    def __repr__(self) -> str:
        return f"QualityModel(name={self.name!r}, backbone={self.card.backbone!r}, device={str(self.device)!r})"

    @property
    def decodes_on_device(self) -> bool:
        """Whether JPEG files are decoded on the model's device (see ``decode``, docs/speed.md)."""
        return resolve_decode(self.decode, self.device)

    def network_input(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 crops (..., 3, S, S) -> normalised float crops on the model's device, in the
        memory layout its network runs fastest with."""
        x = normalize(crops.to(self.device, non_blocking=True), self.policy)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def raw_scores(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 crops (N, K, 3, S, S) of N images -> raw scores (N,): the mean head output over the K
        crops, plus the card's image-level tone term when it has one (qfmiqm/models/tone.py)."""
        return self._raw_on_device(crops).cpu()

    @torch.inference_mode()
    def _raw_on_device(self, crops: torch.Tensor) -> torch.Tensor:
        n, k = crops.shape[:2]
        crops = crops.to(self.device, non_blocking=True)
        raw = self.net(self.network_input(crops.flatten(0, 1))).float().view(n, k).mean(dim=1)
        return raw + self.tone_term(crops)

    def tone_term(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 crops (N, K, 3, S, S) of N images -> the card's image-level tone term (N,), in raw
        score points on the crops' device; zeros for a model without one."""
        if self.card.tone is None:
            return torch.zeros(crops.shape[0], device=crops.device)
        return self.card.tone(crops)

    def iter_scores(
        self,
        items: Sequence[Any],
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int | None = None,
        progress: bool = False,
    ) -> Iterator[ScoreResult]:
        """Score every item in order, yielding one ScoreResult per item as batches complete."""
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        if workers is None:
            workers = default_workers(len(items), batch_size, self.device)
        if workers < 0:
            raise UsageError(f"workers must be 0 or more, got {workers}")
        bar = _progress_bar(len(items)) if progress and len(items) > batch_size else None
        pending: _Launched | None = None
        try:
            # a batch's scores are read back only after the next batch is launched, so that the
            # host prepares batch i+1 while the device still computes batch i
            for batch in self._decoded_batches(items, batch_size, workers):
                launched = self._launch(items, batch)
                if pending is not None:
                    yield from self._finish(items, pending)
                    if bar is not None:
                        bar.advance(len(pending.indices))
                pending = launched
            if pending is not None:
                yield from self._finish(items, pending)
        finally:
            if bar is not None:
                bar.stop()

    def _decoded_batches(self, items: Sequence[Any], batch_size: int, workers: int) -> Iterator[DecodedBatch]:
        """Decoded batches in input order. When a worker process dies (a file crashed or hung its
        decoder), the next batch is decoded one file per process to isolate the culprit, and a
        fresh pool of workers takes over after it."""
        done = 0
        direct_jpeg = self.decodes_on_device
        while done < len(items):
            loader = DataLoader(
                _CropDataset(items, self.policy, self.max_pixels, first=done, direct_jpeg=direct_jpeg),
                batch_size=batch_size,
                num_workers=workers, collate_fn=DecodedBatch.collate, pin_memory=PIN_MEMORY and self.device.type == "cuda",
                multiprocessing_context="fork" if workers else None,
            )
            try:
                for batch in _guarded(loader, DECODE_TIMEOUT_S):
                    done += len(batch.indices)
                    yield batch
            except RuntimeError as exc:
                if not _is_worker_failure(exc):
                    raise
                stop = min(done + batch_size, len(items))
                batch = [decode_isolated(items, i, self.policy, self.max_pixels) for i in range(done, stop)]
                done = stop
                yield DecodedBatch.collate(batch)

    def _launch(self, items: Sequence[Any], batch: DecodedBatch) -> "_Launched":
        """Start the forward of one batch (asynchronous on a GPU): the worker-decoded crops and the
        JPEGs decoded here on the device; a JPEG the device decoder refuses goes to Pillow."""
        order, parts = list(batch.good), []
        if batch.crops is not None:
            parts.append(batch.crops.to(self.device, non_blocking=True))
        errors = dict(batch.errors)
        if batch.encoded is not None:
            on_device = crops_on_device(batch.encoded_files(), self.policy, self.device)
            for i, crops in zip(batch.encoded_good, on_device):
                if crops is None:
                    _, crops, err = decode_isolated(items, i, self.policy, self.max_pixels)
                    if crops is None:
                        errors[i] = err or "cannot decode image data"
                        continue
                order.append(i)
                parts.append(crops.to(self.device).unsqueeze(0))
        raw = self._raw_on_device(torch.cat(parts)) if parts else None
        return _Launched(batch.indices, order, raw, errors)

    def _finish(self, items: Sequence[Any], launched: "_Launched") -> Iterator[ScoreResult]:
        scores: dict[int, float] = {}
        if launched.raw is not None:
            raw = launched.raw.cpu().tolist()
            scores = {i: self.card.score.apply(float(r)) for i, r in zip(launched.order, raw)}
        for i in launched.indices:
            yield ScoreResult(describe_item(items[i], i), scores.get(i), launched.errors.get(i))

    def score(self, images: Any, batch_size: int = DEFAULT_BATCH_SIZE, workers: int = 0) -> float | list[float]:
        """Score one image (path, PIL image, ndarray, tensor) or a list of them.

        Raises ImageError naming the first input that cannot be scored.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        results = list(self.iter_scores(items, batch_size=batch_size, workers=workers))
        for r in results:
            if not r.ok:
                raise ImageError(f"{r.path}: {r.error}")
        values = [r.score for r in results]
        return values[0] if single else values


def load(
    model: str | os.PathLike = "default",
    device: str | torch.device | None = "auto",
    backbone_weights: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode: str = DEFAULT_DECODE,
) -> QualityModel:
    """Load a model by zoo name, checkpoint path or exported ``.onnx`` file, ready to score.

    ``decode``: where JPEG files are decoded: ``workers`` (Pillow in worker processes, the
    default) or ``device`` (the model's device: nvJPEG on CUDA; docs/speed.md).
    """
    if is_onnx_path(model):
        return _load_onnx(model, device, max_pixels, decode)
    entry = resolve_model(model)
    dev = resolve_device(device)
    net = load_net(entry, backbone_weights=os.fspath(backbone_weights) if backbone_weights else None,
                   trust_pickle=trust_pickle)
    if not entry.card.trained:
        warnings.warn(untrained_warning(entry.card), UserWarning, stacklevel=2)
    return QualityModel(net, entry.card, dev, max_pixels=max_pixels, decode=decode)


def _load_onnx(path: str | os.PathLike, device: str | torch.device | None, max_pixels: int,
               decode: str = DEFAULT_DECODE) -> QualityModel:
    """An ONNX file from ``qfmiqm export``: the graph runs in onnxruntime, the card comes from
    the file's metadata; decoding, crops and score mapping are the same as for PyTorch models."""
    import_onnxruntime()
    dev = onnx_device(device, resolve_device(device))
    net = OnnxNet(path, dev)
    if not net.card.trained:
        warnings.warn(untrained_warning(net.card), UserWarning, stacklevel=3)
    return QualityModel(net, net.card, dev, max_pixels=max_pixels, decode=decode)


def untrained_warning(card: ModelCard) -> str:
    return f"model '{card.name}' is marked UNTRAINED in its card: its scores are not quality estimates"


def _progress_bar(total: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    bar = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, transient=False)
    task = bar.add_task("score", total=total)
    bar.start()

    class _Bar:
        def advance(self, n: int) -> None:
            bar.advance(task, n)

        def stop(self) -> None:
            bar.stop()

    return _Bar()

