"""Reference speeds for ``qfmiqm bench``: the bare backbone in ONNX Runtime (the real CPU limit;
PyTorch eager is 2-3x slower on this depthwise-separable CNN) or in PyTorch eager, and the
classical peer BRISQUE, on the same images.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from qfmiqm.models.backbone_onnx import OrtBackbone, eval_mode
from qfmiqm.models.backbones import Backbone

RUNTIMES = ("onnx", "torch")


def same_size_batches(images: Sequence[np.ndarray], batch_size: int) -> Iterator[list[np.ndarray]]:
    """Runs of consecutive images of the same size, at most ``batch_size`` each."""
    batch: list[np.ndarray] = []
    for img in images:
        if batch and (img.shape != batch[0].shape or len(batch) == batch_size):
            yield batch
            batch = []
        batch.append(img)
    if batch:
        yield batch


def normalised(batch: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """RGB uint8 (H, W, 3) images of one size -> float32 (N, 3, H, W) normalised with mean/std."""
    x = np.stack(batch).astype(np.float32).transpose(0, 3, 1, 2)
    scale = (1.0 / (255.0 * np.asarray(std, np.float32))).reshape(1, 3, 1, 1)
    shift = (np.asarray(mean, np.float32) / np.asarray(std, np.float32)).reshape(1, 3, 1, 1)
    return np.ascontiguousarray(x * scale - shift)


def backbone_limit_ips(backbone: Backbone, images: Sequence[np.ndarray], runtime: str = "onnx",
                       threads: int | None = None, batch_size: int = 16) -> float:
    """Images/s of the bare backbone over every pixel of each RGB uint8 image (native resolution,
    consecutive same-size images batched) on CPU, in ONNX Runtime (``"onnx"``) or PyTorch eager
    (``"torch"``), with ``threads`` threads (default: torch.get_num_threads()). Normalisation is
    timed too, as in the score path; export and session set-up are not. One warm-up pass, one
    timed pass."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    if not images:
        raise ValueError("no images")
    threads = threads or torch.get_num_threads()
    saved_threads = torch.get_num_threads()
    forward: Callable[[np.ndarray], Any]
    with eval_mode(backbone):
        if runtime == "onnx":
            forward = OrtBackbone(backbone, threads)
        else:
            torch.set_num_threads(threads)

            def forward(x: np.ndarray) -> Any:
                with torch.inference_mode():
                    return backbone(torch.from_numpy(x))

        def one_pass() -> None:
            for batch in same_size_batches(images, batch_size):
                forward(normalised(batch, backbone.mean, backbone.std))

        try:
            one_pass()  # warm-up: ORT plans memory per new shape, PyTorch picks its kernels
            start = time.perf_counter()
            one_pass()
            elapsed = time.perf_counter() - start
        finally:
            torch.set_num_threads(saved_threads)
    return len(images) / elapsed


def brisque_scorer() -> Callable[[np.ndarray], float] | None:
    """BRISQUE's score of an RGB uint8 image (0 best, ~100 worst) from the ``brisque`` package,
    or None when it (or the OpenCV it imports) is not installed."""
    try:
        from brisque import BRISQUE
    except ImportError:  # brisque >= 0.2 raises ImportError too when OpenCV is missing
        return None

    class _Brisque(BRISQUE):  # type: ignore[misc]
        def scale_features(self, features: Any) -> Any:
            # brisque 0.2.0 keeps some features as 1-element arrays and calls float() on them:
            # deprecated since NumPy 1.25, a TypeError in NumPy 2.4
            return super().scale_features([np.asarray(f).item() for f in features])

    return _Brisque(url=False).score


def brisque_ips(paths: Sequence[str | os.PathLike]) -> float | None:
    """Images/s of BRISQUE on the image files, JPEG decoding included (as in our end-to-end
    figure), or None when the ``brisque`` package is not installed."""
    score = brisque_scorer()
    if score is None:
        return None
    if not paths:
        raise ValueError("no images")

    def one(path: str | os.PathLike) -> float:
        with Image.open(path) as im:
            return float(score(np.asarray(im.convert("RGB"))))

    one(paths[0])  # warm-up: scipy and libsvm load their lazy parts on first use
    start = time.perf_counter()
    for path in paths:
        one(path)
    return len(paths) / (time.perf_counter() - start)
