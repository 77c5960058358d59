"""The ONNX Runtime runtime: an exported ``ScoringGraph`` in an onnxruntime session. No torch.

A graph written by ``qfmiqm export`` (or built into the cache, qfmiqm.models.onnx_cache) takes
uint8 views ``views`` (N, H, W, 3) of any size and returns raw head scores ``scores`` (N,); the
model card travels in its metadata (``qfmiqm.card``), so the file alone is enough to score.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from qfmiqm.errors import UsageError, WeightsError
from qfmiqm.models.card import ModelCard

#: metadata_props key that holds the model card (JSON) inside an exported ONNX file
ONNX_CARD_KEY = "qfmiqm.card"
#: metadata_props key with the qfmiqm version that wrote the file
ONNX_VERSION_KEY = "qfmiqm.version"
#: metadata_props key naming the graph's interface; files of another interface are refused
ONNX_GRAPH_KEY = "qfmiqm.graph"
#: the interface of today's graphs: uint8 views (N, H, W, 3) of any size -> raw head scores (N,)
GRAPH_FORMAT = "views-uint8-nhwc/2"
ONNX_SUFFIX = ".onnx"
INPUT_NAME = "views"
OUTPUT_NAME = "scores"
INSTALL_HINT = "pip install onnxruntime"


def is_onnx_path(model: str | os.PathLike) -> bool:
    """True when ``model`` names an ONNX file (by its suffix), whether or not it exists."""
    return Path(os.fspath(model)).suffix.lower() == ONNX_SUFFIX


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (onnx, onnxruntime and the exporter write pages)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def import_onnxruntime() -> Any:
    """onnxruntime, or a one-line UsageError telling how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(f"ONNX Runtime is not installed: {INSTALL_HINT}") from None
    return onnxruntime


def cuda_provider_available() -> bool:
    """Whether the installed onnxruntime can run on an NVIDIA GPU (onnxruntime-gpu)."""
    return "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()


def cpu_threads() -> int:
    """The cores this process may use (its affinity), as ONNX Runtime's intra-op threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _providers(device: str) -> list[str]:
    if device.startswith("cuda"):
        if not cuda_provider_available():
            raise UsageError(f"device '{device}': this onnxruntime cannot use the GPU "
                             "(install onnxruntime-gpu, use --runtime torch, or use --device cpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(path: Path, device: str = "cpu", threads: int | None = None) -> Any:
    """An onnxruntime session on ``path``; a missing or unreadable file is a one-line error."""
    ort = import_onnxruntime()
    if not path.is_file():
        raise UsageError(f"{path}: model file not found")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no provider or optimiser chatter on stderr
    options.intra_op_num_threads = threads or cpu_threads()
    providers = _providers(device)
    index = int(device.split(":")[1]) if ":" in device else 0
    provider_options = [{"device_id": index} if p == "CUDAExecutionProvider" else {} for p in providers]
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers,
                                    provider_options=provider_options)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for bad files
        raise WeightsError(f"{path}: corrupted or not an ONNX model ({first_line(exc)})") from None


def read_card(session: Any, path: Path) -> ModelCard:
    """The model card in a session's metadata, after checking the graph's interface."""
    meta = session.get_modelmeta().custom_metadata_map or {}
    if ONNX_CARD_KEY not in meta:
        raise WeightsError(f"{path}: no qfmiqm model card in the ONNX metadata "
                           f"(key '{ONNX_CARD_KEY}'); write the file with 'qfmiqm export'")
    if meta.get(ONNX_GRAPH_KEY) != GRAPH_FORMAT:
        raise WeightsError(f"{path}: written by an older qfmiqm (graph interface "
                           f"'{meta.get(ONNX_GRAPH_KEY, 'crops-float/1')}', this version reads '{GRAPH_FORMAT}'); "
                           "export it again with 'qfmiqm export'")
    try:
        return ModelCard.from_dict(json.loads(meta[ONNX_CARD_KEY]), str(path))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: model card in the ONNX metadata is not valid JSON ({exc.msg})") from None


class OnnxRuntime:
    """Runs an exported scoring graph in ONNX Runtime (CPU, or CUDA with onnxruntime-gpu)."""

    name = "onnx"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
        self.path = Path(path)
        self.device = device
        self._session = open_session(self.path, device, threads)
        self.card = read_card(self._session, self.path)
        inputs = self._session.get_inputs()
        if ([i.name for i in inputs] != [INPUT_NAME] or inputs[0].type != "tensor(uint8)"
                or len(inputs[0].shape) != 4):
            raise WeightsError(f"{self.path}: the graph does not take uint8 views [N, H, W, 3]")
        if OUTPUT_NAME not in [o.name for o in self._session.get_outputs()]:
            raise WeightsError(f"{self.path}: the graph does not return raw scores '{OUTPUT_NAME}' [N]")

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, in order of preference."""
        return list(self._session.get_providers())

    def head_scores(self, views: Any) -> np.ndarray:
        views = np.ascontiguousarray(np.asarray(views, dtype=np.uint8))
        (out,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: views})
        return out.reshape(-1).astype(np.float64)

    def __repr__(self) -> str:
        return f"OnnxRuntime({str(self.path)!r}, providers={self.providers})"
