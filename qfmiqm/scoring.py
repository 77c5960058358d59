"""Scoring images with a loaded model: the engine behind ``qfmiqm score`` and ``QualityModel.score``.

A ``QualityModel`` is a model card plus a runtime (qfmiqm.models.runtime: ONNX Runtime or
PyTorch). Per batch: decode -> input policy -> tone statistics (``qfmiqm.data.feed``, in this
process or in worker processes) -> the runtime's head scores per view -> the image's score (the
pixel-weighted mean over its views, plus the card's tone term, mapped to 0-100). A file that
cannot be used becomes a ``ScoreResult`` with an error instead of an exception, so a batch
always goes on.

Nothing here imports torch: with ONNX Runtime on the CPU, scoring one image never loads it.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import numpy as np

from qfmiqm.data.feed import (
    DECODE_MODES, DEFAULT_DECODE, DecodedBatch, PrepareSpec, batches, default_workers, group_views, prepare_isolated, prepare_item,
)
from qfmiqm.data.images import DEFAULT_MAX_PIXELS
from qfmiqm.data.policy import InputPolicy, view_weights
from qfmiqm.errors import ImageError, UsageError
from qfmiqm.models.card import ModelCard
from qfmiqm.models.runtime import DEFAULT_RUNTIME, Runtime, resolve_device, resolve_runtime
from qfmiqm.models.runtime_onnx import is_onnx_path
from qfmiqm.results import ScoreResult

DEFAULT_BATCH_SIZE = 16
#: decoded batches go to a CUDA device from pinned host memory
PIN_MEMORY = True

__all__ = ["QualityModel", "ScoreResult", "load", "default_workers", "DEFAULT_BATCH_SIZE"]


@dataclass
class _Launched:
    """A batch whose forward has been started: per view group, the runtime's pending output."""

    batch: DecodedBatch
    outputs: list[Any]


def describe_item(item: Any, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    kind = type(item).__name__
    names = {"Image": "PIL image", "ndarray": "array", "Tensor": "tensor"}
    return f"<{names.get(kind, kind)} #{index}>"


class QualityModel:
    """A ready-to-use quality model: ``m.score(image_or_list) -> float | list[float]``.

    Scores are on a 0-100 scale, higher is better.
    """

    def __init__(self, runtime: Runtime, card: ModelCard, max_pixels: int = DEFAULT_MAX_PIXELS,
                 decode: str = DEFAULT_DECODE):
        self.runtime = runtime
        self.card = card
        self.max_pixels = max_pixels
        self.decode = decode
        self._check_decode()

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def device(self) -> str:
        return self.runtime.device

    @property
    def policy(self) -> InputPolicy:
        return self.card.input

    @property
    def net(self):
        """The PyTorch ``QualityNet`` (backbone + head); only with the torch runtime."""
        if self.runtime.name != "torch":
            raise UsageError(f"model '{self.name}' runs in ONNX Runtime: its network modules need "
                             "runtime='torch' (--runtime torch)")
        return self.runtime.net

    def __repr__(self) -> str:
        return (f"QualityModel(name={self.name!r}, backbone={self.card.backbone!r}, "
                f"runtime={self.runtime.name!r}, device={self.device!r})")

    def _check_decode(self) -> None:
        if self.decode not in DECODE_MODES:
            raise UsageError(f"decode must be one of {', '.join(DECODE_MODES)}, got '{self.decode}'")
        if self.decode == DEFAULT_DECODE:
            return
        if self.runtime.name != "torch":
            raise UsageError("--decode device needs the PyTorch runtime (--runtime torch)")
        import torch

        from qfmiqm.data.device_decode import resolve_decode

        resolve_decode(self.decode, torch.device(self.device))  # an unknown or unavailable mode fails here

    @property
    def decodes_on_device(self) -> bool:
        """Whether JPEG files are decoded on the model's device (see ``decode``, docs/speed.md)."""
        return self.decode == "device"

    def prepare_spec(self, direct_jpeg: bool = False) -> PrepareSpec:
        """What the per-file step needs: the policy, the pixel limit, the tone statistics."""
        from qfmiqm.models.tone import tone_statistics

        return PrepareSpec(self.policy, self.max_pixels, tone_statistics if self.card.tone is not None else None,
                           direct_jpeg)

    # --- the per-batch function: prepared views -> raw scores ----------------------------------

    def raw_scores_of(self, prepared: Sequence[Any]) -> np.ndarray:
        """``Prepared`` images (views + tone statistics) -> raw scores (N,): the pixel-weighted mean
        of the head's scores over each image's views, plus the card's tone term."""
        batch = DecodedBatch.collate([(i, p, None) for i, p in enumerate(prepared)])
        return self._raw(batch, [self.runtime.head_scores(g.views) for g in batch.groups])

    def raw_scores(self, images: Sequence[Any]) -> np.ndarray:
        """Images (paths, arrays, ...) -> raw scores (N,), in this process; raises on a bad image."""
        spec = self.prepare_spec()
        prepared = []
        for i in range(len(images)):
            _, p, err = prepare_item(images, i, spec)
            if err is not None:
                raise ImageError(f"{describe_item(images[i], i)}: {err}")
            prepared.append(p)
        return self.raw_scores_of(prepared)

    def _raw(self, batch: DecodedBatch, outputs: list[Any]) -> np.ndarray:
        n = len(batch.good)
        per_view: list[list[float]] = [[] for _ in range(n)]
        for group, out in zip(batch.groups, outputs):
            for owner, s in zip(group.owners, np.asarray(_fetch(out), dtype=np.float64)):
                per_view[owner].append(float(s))
        raw = np.array([float(np.dot(w, s)) for w, s in zip(batch.weights, per_view)], dtype=np.float64)
        if self.card.tone is not None and n:
            raw = raw + self.card.tone.of_statistics(batch.stats)
        return raw

    def map_score(self, raw: float) -> float:
        return self.card.score.apply(float(raw))

    def quality_map(self, image: Any) -> np.ndarray:
        """The local quality map of one image: float32 (rows, cols) on the 0-100 scale, one value
        per 32 x 32-pixel backbone cell of the policy-resized image, each the model's score of
        the 224-pixel neighbourhoods around it (docs/quality-maps.md). Runs in PyTorch; a model
        in ONNX Runtime loads its PyTorch twin for it once. Raises ImageError on a bad image."""
        from qfmiqm.eval.quality_map import quality_map

        return quality_map(self, image, with_score=False).values

    # --- many inputs ---------------------------------------------------------------------------

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
            workers = default_workers(len(items), batch_size, self.device, self.runtime.name)
        if workers < 0:
            raise UsageError(f"workers must be 0 or more, got {workers}")
        bar = _progress_bar(len(items)) if progress and len(items) > batch_size else None
        spec = self.prepare_spec(direct_jpeg=self.decodes_on_device)
        pin = PIN_MEMORY and self.device.startswith("cuda") and workers > 0
        pending: _Launched | None = None
        try:
            # a batch's scores are read back only after the next batch is launched, so that the
            # host prepares batch i+1 while a GPU still computes batch i
            for batch in batches(items, spec, batch_size, workers, pin_memory=pin):
                launched = self._launch(items, batch, spec)
                if pending is not None:
                    yield from self._finish(items, pending)
                    if bar is not None:
                        bar.advance(len(pending.batch.indices))
                pending = launched
            if pending is not None:
                yield from self._finish(items, pending)
        finally:
            if bar is not None:
                bar.stop()

    def _launch(self, items: Sequence[Any], batch: DecodedBatch, spec: PrepareSpec) -> _Launched:
        if batch.encoded is not None:
            batch = self._decode_on_device(items, batch, spec)
        launch = getattr(self.runtime, "launch", self.runtime.head_scores)
        return _Launched(batch, [launch(g.views) for g in batch.groups])

    def _decode_on_device(self, items: Sequence[Any], batch: DecodedBatch, spec: PrepareSpec) -> DecodedBatch:
        """Decode the batch's JPEG bytes on the device and merge their views into the batch; a JPEG
        the device decoder refuses goes to Pillow in a separate process."""
        import torch

        from qfmiqm.data.device_decode import views_on_device

        on_device = views_on_device(batch.encoded_files(), self.policy, torch.device(self.device))
        errors = dict(batch.errors)
        views_of = {i: [torch.as_tensor(v).to(self.device, non_blocking=True) for v in vs]
                    for i, vs in _views_by_image(batch).items()}
        stats_of = dict(zip(batch.good, batch.stats)) if batch.stats is not None else {}
        for i, views in zip(batch.encoded_good, on_device):
            if views is None:
                _, p, err = prepare_isolated(items, i, spec)
                if p is None:
                    errors[i] = err or "cannot decode image data"
                    continue
                views = [torch.as_tensor(v).to(self.device) for v in p.views]
                stats = p.stats
            else:
                stats = spec.statistics([v.cpu().numpy() for v in views]) if spec.statistics else None
            views_of[i] = views
            if stats is not None:
                stats_of[i] = stats
        good = [i for i in batch.indices if i in views_of]
        return DecodedBatch(batch.indices, good, group_views([views_of[i] for i in good]),
                            [view_weights(views_of[i]) for i in good],
                            np.stack([stats_of[i] for i in good]) if stats_of and good else None, errors)

    def _finish(self, items: Sequence[Any], launched: _Launched) -> Iterator[ScoreResult]:
        batch = launched.batch
        scores: dict[int, float] = {}
        if batch.good:
            raw = self._raw(batch, launched.outputs)
            scores = {i: self.map_score(r) for i, r in zip(batch.good, raw)}
        for i in batch.indices:
            yield ScoreResult(describe_item(items[i], i), scores.get(i), batch.errors.get(i))

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


def _views_by_image(batch: DecodedBatch) -> dict[int, list[Any]]:
    """The views of each decoded image of a batch, unstacked from their groups."""
    views: dict[int, list[Any]] = {i: [] for i in batch.good}
    for group in batch.groups:
        for owner, v in zip(group.owners, group.views):
            views[batch.good[owner]].append(v)
    return views


def _fetch(output: Any) -> np.ndarray:
    """A runtime's output as a numpy array (reads a GPU result back: where the host waits)."""
    if isinstance(output, np.ndarray):
        return output
    return output.detach().cpu().double().numpy()


def load(
    model: str | os.PathLike = "default",
    device: str | Any | None = "auto",
    backbone_weights: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode: str = DEFAULT_DECODE,
    runtime: str = DEFAULT_RUNTIME,
    threads: int | None = None,
) -> QualityModel:
    """Load a model by zoo name, checkpoint path or exported ``.onnx`` file, ready to score.

    ``runtime``: ``auto`` (ONNX Runtime on the CPU, PyTorch on CUDA), ``onnx`` or ``torch``; a
    ``.safetensors`` model's ONNX graph is built once into the cache (qfmiqm.models.onnx_cache).
    ``decode``: where JPEG files are decoded: ``workers`` (Pillow in worker processes, the
    default) or ``device`` (the model's device, PyTorch runtime: nvJPEG on CUDA; docs/speed.md).
    ``threads``: ONNX Runtime's intra-op threads (default: every core this process may use).
    """
    dev = resolve_device(device)
    if is_onnx_path(model):
        if resolve_runtime(runtime, dev) == "torch" and (runtime or "auto").lower() != "auto":
            raise UsageError(f"{model}: an ONNX file runs in ONNX Runtime; use --runtime auto or onnx")
        return _load_onnx_file(model, dev, max_pixels, decode, threads)
    from qfmiqm.models.registry import resolve_model

    entry = resolve_model(model)
    # decoding on the device hands decoded tensors to PyTorch: auto picks it then
    name = resolve_runtime("torch" if decode == "device" and (runtime or "auto") == "auto" else runtime, dev)
    if name == "onnx":
        from qfmiqm.models.onnx_cache import cached_graph
        from qfmiqm.models.runtime_onnx import OnnxRuntime

        path = cached_graph(entry, os.fspath(backbone_weights) if backbone_weights else None, trust_pickle)
        rt: Runtime = OnnxRuntime(path, dev, threads)
    else:
        rt = _torch_runtime(entry, dev, backbone_weights, trust_pickle)
    if not entry.card.trained:
        warnings.warn(untrained_warning(entry.card), UserWarning, stacklevel=2)
    return QualityModel(rt, entry.card, max_pixels=max_pixels, decode=decode)


def _torch_runtime(entry, device: str, backbone_weights, trust_pickle: bool) -> Runtime:
    from qfmiqm.models.graph import ScoringGraph
    from qfmiqm.models.registry import load_net
    from qfmiqm.models.runtime_torch import TorchRuntime

    net = load_net(entry, backbone_weights=os.fspath(backbone_weights) if backbone_weights else None,
                   trust_pickle=trust_pickle)
    return TorchRuntime(ScoringGraph(net, entry.card.input), device)


def _load_onnx_file(path: str | os.PathLike, device: str, max_pixels: int, decode: str,
                    threads: int | None = None) -> QualityModel:
    """An ONNX file from ``qfmiqm export``: the graph runs in onnxruntime, the card comes from
    the file's metadata; decoding, views, tone term and score mapping are as for any model."""
    from qfmiqm.models.runtime_onnx import OnnxRuntime

    rt = OnnxRuntime(path, device, threads)
    if not rt.card.trained:
        warnings.warn(untrained_warning(rt.card), UserWarning, stacklevel=3)
    return QualityModel(rt, rt.card, max_pixels=max_pixels, decode=decode)


def with_policy(model: QualityModel, **changes: Any) -> QualityModel:
    """The same model and runtime with its card's input policy changed (e.g. ``num_crops``)."""
    card = replace(model.card, input=model.card.input.replace(**changes))
    return QualityModel(model.runtime, card, max_pixels=model.max_pixels, decode=model.decode)


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
