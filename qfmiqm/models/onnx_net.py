"""Scoring with an exported ``.onnx`` file: ``OnnxNet`` stands in for ``QualityNet``.

An ONNX file written by ``qfmiqm export`` holds the whole network (normalised crops
(N, 3, S, S) float32 -> raw head scores (N,)) and the model card in its metadata, so the file
alone is enough to score. ``OnnxNet`` runs it in onnxruntime behind the small part of the
``nn.Module`` interface that ``QualityModel`` uses (``to``, ``eval``, calling it on a tensor).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from qfmiqm.errors import UsageError, WeightsError
from qfmiqm.models.card import ModelCard

#: metadata_props key that holds the model card (JSON) inside an exported ONNX file
ONNX_CARD_KEY = "qfmiqm.card"
#: metadata_props key with the qfmiqm version that wrote the file
ONNX_VERSION_KEY = "qfmiqm.version"
ONNX_SUFFIX = ".onnx"
INSTALL_HINT = 'pip install "qfmiqm[onnx]"'


class NoTorchModuleError(UsageError, AttributeError):
    """A PyTorch-only part (backbone, head) was asked of an ONNX model. Being an AttributeError
    too, ``hasattr(net, "backbone")`` is simply False; uncaught, it is a one-line usage error."""


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
        raise UsageError(f"ONNX models need onnxruntime: {INSTALL_HINT}") from None
    return onnxruntime


def cuda_provider_available() -> bool:
    """Whether the installed onnxruntime can run on an NVIDIA GPU (onnxruntime-gpu)."""
    return "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()


def _providers(device: torch.device) -> list[str]:
    if device.type == "cuda" and cuda_provider_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _provider_options(providers: list[str], device: torch.device) -> list[dict]:
    return [{"device_id": device.index or 0} if p == "CUDAExecutionProvider" else {} for p in providers]


class OnnxNet:
    """An exported network in an onnxruntime session: ``net(x)`` maps normalised float32 crops
    (N, 3, S, S) to raw scores (N,), like ``QualityNet``. Runs on the CPU, or on the GPU when
    moved to a CUDA device and onnxruntime has the CUDA execution provider."""

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu"):
        self.path = Path(path)
        self.device = torch.device(device)
        self._session = _open_session(self.path, self.device)
        self.card = _card_from_session(self._session, self.path)
        self.input_name = _check_signature(self._session, self.card, self.path)

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, in order of preference."""
        return list(self._session.get_providers())

    def to(self, device: torch.device | str | None = None, *args: Any, **kwargs: Any) -> "OnnxNet":
        """Move to ``device`` (a new session when the execution provider changes). Other
        arguments of ``nn.Module.to`` (dtype, ``memory_format``) do not apply and are ignored."""
        if device is None or isinstance(device, torch.dtype):
            return self
        device = torch.device(device)
        if _providers(device) != _providers(self.device):
            self._session = _open_session(self.path, device)
        self.device = device
        return self

    def eval(self) -> "OnnxNet":
        """Inference is all an ONNX graph does; returns self, as ``nn.Module.eval``."""
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised crops (N, 3, S, S) -> raw scores (N,) float32, on the device of ``x``."""
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self._session.run(None, {self.input_name: arr})
        return torch.from_numpy(out).reshape(-1).to(x.device)

    def __repr__(self) -> str:
        return f"OnnxNet({str(self.path)!r}, providers={self.providers})"

    @property
    def backbone(self) -> Any:
        raise NoTorchModuleError(f"{self.path}: an ONNX model has no PyTorch backbone; "
                                 "use the .safetensors model for this")

    @property
    def head(self) -> Any:
        raise NoTorchModuleError(f"{self.path}: an ONNX model has no PyTorch head; "
                                 "use the .safetensors model for this")


def _open_session(path: Path, device: torch.device) -> Any:
    ort = import_onnxruntime()
    if not path.is_file():
        raise UsageError(f"{path}: model file not found")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no provider or optimiser chatter on stderr
    options.intra_op_num_threads = max(1, torch.get_num_threads())  # as many threads as torch uses
    providers = _providers(device)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers,
                                    provider_options=_provider_options(providers, device))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for bad files
        raise WeightsError(f"{path}: corrupted or not an ONNX model ({first_line(exc)})") from None


def _card_from_session(session: Any, path: Path) -> ModelCard:
    meta = session.get_modelmeta().custom_metadata_map or {}
    if ONNX_CARD_KEY not in meta:
        raise WeightsError(f"{path}: no qfmiqm model card in the ONNX metadata "
                           f"(key '{ONNX_CARD_KEY}'); write the file with 'qfmiqm export'")
    try:
        return ModelCard.from_dict(json.loads(meta[ONNX_CARD_KEY]), str(path))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: model card in the ONNX metadata is not valid JSON ({exc.msg})") from None


def _check_signature(session: Any, card: ModelCard, path: Path) -> str:
    """The input's name, after checking that the graph takes (N, 3, S, S) and gives (N,)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise WeightsError(f"{path}: expected one input and one output, the graph has "
                           f"{len(inputs)} and {len(outputs)}")
    shape = list(inputs[0].shape)
    s = card.input.size
    if len(shape) != 4 or shape[1:] != [3, s, s] or inputs[0].type != "tensor(float)":
        raise WeightsError(f"{path}: the graph takes {inputs[0].type} {shape}, the card's input "
                           f"policy needs float crops [N, 3, {s}, {s}]")
    return inputs[0].name


def onnx_device(requested: str | torch.device | None, resolved: torch.device) -> torch.device:
    """Where an ONNX model runs. CUDA needs onnxruntime's CUDA provider (onnxruntime-gpu):
    without it ``auto`` falls back to the CPU and an explicit CUDA device is a usage error."""
    if resolved.type != "cuda" or cuda_provider_available():
        return resolved
    if requested is None or str(requested) == "auto":
        return torch.device("cpu")
    raise UsageError(f"device '{requested}': this onnxruntime cannot use the GPU "
                     "(install onnxruntime-gpu, or use --device cpu)")
