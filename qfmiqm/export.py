"""Exporting a model to ONNX: the engine behind ``qfmiqm export``.

The graph takes normalised crops (N, 3, S, S) float32 (S: the card's ``input.size``, normalised
as ``qfmiqm.data.transforms.normalize`` does) and returns raw head scores (N,), with a dynamic
batch dimension N. The model card travels in the file's ``metadata_props`` (``qfmiqm.card``),
so the .onnx file alone is enough to score it (``qfmiqm score --model F.onnx``). See docs/export.md.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from qfmiqm.errors import QfmiqmError, UsageError
from qfmiqm.files import atomic_path
from qfmiqm.models.backbones import BackboneFeatures
from qfmiqm.models.onnx_net import (
    INSTALL_HINT, ONNX_CARD_KEY, ONNX_VERSION_KEY, OnnxNet, first_line, import_onnxruntime, is_onnx_path,
)
from qfmiqm.models.qfm import QualityNet

FORMATS = ("onnx",)
#: ONNX opset of exported graphs (onnxruntime >= 1.18 runs it; LayerNormalization is native from 17)
ONNX_OPSET = 17
#: highest opset of torch.onnx.export(dynamo=False) (torch 2.14)
MAX_OPSET = 20
INPUT_NAME = "crops"
OUTPUT_NAME = "scores"
#: batch size of the dummy input the graph is traced with; 2 so that no size-1 axis is folded away
TRACE_BATCH = 2
#: batch size of the check run in onnxruntime right after export (differs from TRACE_BATCH on purpose)
CHECK_BATCH = 3
#: largest acceptable |ONNX - PyTorch| difference of the check run, in points of the 0-100 scale
CHECK_TOLERANCE = 0.01


class ExportError(QfmiqmError):
    """The exported graph could not be written, or does not compute what the model does."""


@dataclass(frozen=True)
class ExportResult:
    """What was written: the file, its opset, the model's name and crop size, and the largest
    difference between onnxruntime and PyTorch on the check batch (0-100 scale)."""

    path: Path
    model: str
    opset: int
    size: int
    max_abs_diff: float

    def summary(self) -> str:
        return (f"exported '{self.model}' to {self.path} (ONNX opset {self.opset}, input [N, 3, {self.size}, "
                f"{self.size}]; onnxruntime vs PyTorch: max |diff| {self.max_abs_diff:.2e} on the 0-100 scale)")


def _pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) averaging weights of ``adaptive_avg_pool`` along one axis, bins as PyTorch's."""
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        weights[i, start:end] = 1.0 / (end - start)
    return weights.float()


class FixedSizeNet(nn.Module):
    """``QualityNet`` for crops of one fixed size, in operators every ONNX runtime has.

    The head's adaptive average pooling to the token grid is not exportable when the grid does
    not divide the feature map (EfficientNet-Lite0 at 224: 14x14 and 7x7 maps to 4x4); with the
    crop size fixed, it is a constant matrix product on each side, ``P_h @ map @ P_w^T``, which
    gives the same averages. Everything else is the network itself.
    """

    def __init__(self, net: QualityNet, size: int):
        super().__init__()
        self.net = net.eval()
        grid = net.head.grid
        with torch.no_grad():
            feats = net.backbone(torch.zeros(1, 3, size, size))
        self.pooled: list[bool] = []
        for i, m in enumerate(feats.maps):
            h, w = m.shape[-2:]
            pool = grid > 0 and (h, w) != (grid, grid)
            self.pooled.append(pool)
            if pool:
                self.register_buffer(f"pool_h{i}", _pool_matrix(h, grid))
                self.register_buffer(f"pool_w{i}", _pool_matrix(w, grid).t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.net.backbone(x)
        maps = [getattr(self, f"pool_h{i}") @ m @ getattr(self, f"pool_w{i}") if pool else m
                for i, (m, pool) in enumerate(zip(feats.maps, self.pooled))]
        return self.net.head.score(BackboneFeatures(maps, feats.cls_token))


def import_onnx() -> Any:
    """The ``onnx`` package, or a one-line UsageError telling how to install it."""
    try:
        import onnx
    except ImportError:
        raise UsageError(f"ONNX export needs the onnx and onnxruntime packages: {INSTALL_HINT}") from None
    import_onnxruntime()
    return onnx


def export_model(
    model: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str = "onnx",
    opset: int = ONNX_OPSET,
    backbone_weights: str | os.PathLike | None = None,
    trust_pickle: bool = False,
) -> ExportResult:
    """Export ``model`` (zoo name or .safetensors checkpoint) to ``out``, a ``.onnx`` file.

    The file appears under its final name only once it is complete and onnxruntime has
    reproduced PyTorch's scores on a check batch; otherwise nothing is left behind.
    """
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format '{fmt}' (supported: {', '.join(FORMATS)})")
    if not ONNX_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"ONNX opset {opset} is not supported (use {ONNX_OPSET} to {MAX_OPSET})")
    out = Path(out)
    if not is_onnx_path(out):
        raise UsageError(f"{out}: the output file must end in .onnx")
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; give the file to write")
    if is_onnx_path(model):
        raise UsageError(f"{model}: is already an ONNX model; export its .safetensors checkpoint or zoo name")
    onnx = import_onnx()
    from qfmiqm.scoring import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an untrained model exports all the same
        qm = load(model, device="cpu", backbone_weights=backbone_weights, trust_pickle=trust_pickle)
    card, size = qm.card, qm.card.input.size
    wrapped = FixedSizeNet(qm.net, size).eval()
    proto = onnx.load_model_from_string(_trace(wrapped, size, opset))
    exported_card = replace(card, weights_sha256=None)  # the hash is of the .safetensors file, not this one
    from qfmiqm import __version__

    _set_metadata(proto, {ONNX_CARD_KEY: exported_card.to_json(), ONNX_VERSION_KEY: __version__})
    proto.doc_string = f"qfmiqm model '{card.name}': normalised crops [N, 3, {size}, {size}] -> raw scores [N]"
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - onnx raises ValidationError and friends
        raise ExportError(f"the exported graph is not valid ONNX ({first_line(exc)})") from None
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp))
        diff = _check_against_torch(tmp, qm.net, card.score.scale, size)
    return ExportResult(out, card.name, opset, size, diff)


def _trace(wrapped: nn.Module, size: int, opset: int) -> bytes:
    """The TorchScript-based (legacy) exporter: no extra dependency and no dynamo tracing."""
    dummy = torch.randn(TRACE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # the fused attention kernel of nn.MultiheadAttention (inference fast path) has no ONNX form
        torch.backends.mha.set_fastpath_enabled(False)
        with warnings.catch_warnings(), torch.no_grad(), _native_stdout_silenced():
            warnings.simplefilter("ignore")  # tracer and deprecation notes, nothing actionable
            torch.onnx.export(
                wrapped, (dummy,), buf, dynamo=False, opset_version=opset, do_constant_folding=True,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types for unsupported ops
        raise ExportError(f"torch.onnx.export failed ({first_line(exc)})") from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return buf.getvalue()


@contextlib.contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null: on failure the exporter's C++ code prints the whole
    TorchScript graph (hundreds of kilobytes) there, around our one-line error."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _set_metadata(proto: Any, props: dict[str, str]) -> None:
    for key, value in props.items():
        for entry in proto.metadata_props:
            if entry.key == key:
                entry.value = value
                break
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value


def _check_against_torch(path: Path, net: nn.Module, scale: float, size: int) -> float:
    """Largest |ONNX - PyTorch| score difference (0-100 scale) between the file and the original
    network on a fixed random batch whose size differs from the traced one (so that a batch size
    baked into the graph fails here)."""
    x = torch.randn(CHECK_BATCH, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x).float()
    got = OnnxNet(path, "cpu")(x)
    if got.shape != expected.shape:
        raise ExportError(f"the exported graph gives shape {tuple(got.shape)} for a batch of {CHECK_BATCH}, "
                          f"expected {tuple(expected.shape)}")
    diff = float(np.abs((got - expected).numpy()).max()) * abs(scale)
    if not diff <= CHECK_TOLERANCE:
        raise ExportError(f"onnxruntime and PyTorch disagree by {diff:.3g} points (tolerance {CHECK_TOLERANCE})")
    return diff
