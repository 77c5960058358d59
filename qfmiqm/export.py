"""Exporting a model to ONNX: the engine behind ``qfmiqm export`` and the ONNX Runtime cache.

The graph (qfmiqm.models.graph.ScoringGraph) takes uint8 views (N, H, W, 3) with dynamic N, H
and W, normalises them itself and returns raw head scores (N,). The model card travels in the
file's ``metadata_props`` (``qfmiqm.card``), so the .onnx file alone is enough to score it
(``qfmiqm score --model F.onnx``); the tone term and the score mapping are applied from the card
(qfmiqm.scoring). See docs/export.md.
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
from qfmiqm.models.card import ModelCard
from qfmiqm.models.registry import ModelEntry
from qfmiqm.models.graph import ScoringGraph
from qfmiqm.models.runtime_onnx import (
    GRAPH_FORMAT, INPUT_NAME, ONNX_CARD_KEY, ONNX_GRAPH_KEY, ONNX_VERSION_KEY, OUTPUT_NAME, OnnxRuntime, first_line,
    import_onnxruntime, is_onnx_path,
)

FORMATS = ("onnx",)
#: ONNX opset of exported graphs (onnxruntime >= 1.18 runs it; LayerNormalization is native from 17)
ONNX_OPSET = 17
#: highest opset of torch.onnx.export(dynamo=False) (torch 2.14)
MAX_OPSET = 20
#: batch, height, width of the dummy views the graph is traced with (no axis of size 1, none equal)
TRACE_SHAPE = (2, 256, 320)
#: shape of the check run in onnxruntime right after export (differs from TRACE_SHAPE on purpose)
CHECK_SHAPE = (3, 231, 287)
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
        return (f"exported '{self.model}' to {self.path} (ONNX opset {self.opset}, input uint8 views [N, H, W, 3]; "
                f"onnxruntime vs PyTorch: max |diff| {self.max_abs_diff:.2e} on the 0-100 scale)")


def import_onnx() -> Any:
    """The ``onnx`` package, or a one-line UsageError telling how to install it."""
    try:
        import onnx
    except ImportError:
        raise UsageError("ONNX export needs the onnx package: pip install onnx") from None
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
    from qfmiqm.models.registry import resolve_model

    return export_entry(resolve_model(model), out, opset, backbone_weights, trust_pickle)


def export_entry(entry: ModelEntry, out: str | os.PathLike, opset: int = ONNX_OPSET,
                 backbone_weights: str | os.PathLike | None = None, trust_pickle: bool = False) -> ExportResult:
    """Export a resolved model (zoo entry or checkpoint) to ``out``."""
    from qfmiqm.models.registry import load_net

    net = load_net(entry, backbone_weights=os.fspath(backbone_weights) if backbone_weights else None,
                   trust_pickle=trust_pickle)
    return export_graph(ScoringGraph(net, entry.card.input), entry.card, out, opset)


def export_graph(graph: ScoringGraph, card: ModelCard, out: str | os.PathLike, opset: int = ONNX_OPSET) -> ExportResult:
    """Write ``graph`` with ``card`` in its metadata to ``out`` atomically, once onnxruntime has
    reproduced PyTorch's scores on views of a size the graph was not traced with."""
    onnx = import_onnx()
    out = Path(out)
    if card.input.layout == "whole" and not takes_any_size(card):
        raise ExportError("a whole-image layout needs a CNN backbone with a pooled token grid (decoder grid > 0)")
    proto = onnx.load_model_from_string(_trace(graph.eval(), opset, view_shapes(card)[0]))
    exported_card = replace(card, weights_sha256=None)  # the hash is of the .safetensors file, not this one
    from qfmiqm import __version__

    _set_metadata(proto, {ONNX_CARD_KEY: exported_card.to_json(), ONNX_VERSION_KEY: __version__,
                          ONNX_GRAPH_KEY: GRAPH_FORMAT})
    proto.doc_string = f"qfmiqm model '{card.name}': uint8 views [N, H, W, 3] -> raw head scores [N]"
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - onnx raises ValidationError and friends
        raise ExportError(f"the exported graph is not valid ONNX ({first_line(exc)})") from None
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp))
        diff = _check_against_torch(tmp, graph, card)
    return ExportResult(out, card.name, opset, card.input.size, diff)


def takes_any_size(card: ModelCard) -> bool:
    """Whether the model's network takes views of any height and width: a CNN whose maps are
    pooled to a fixed token grid. A ViT (fixed position embeddings) or an unpooled head (grid 0)
    takes only ``size`` x ``size`` crops."""
    from qfmiqm.models.backbones import get_backbone_spec

    return card.decoder.grid > 0 and get_backbone_spec(card.backbone).kind != "vit"


def view_shapes(card: ModelCard) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(batch, height, width) of the trace and of the check run: sizes the policy never makes
    when the network takes any size (so that a size baked into the graph fails the check), else
    the crop size, the only one such a network is ever given."""
    if takes_any_size(card):
        return TRACE_SHAPE, CHECK_SHAPE
    s = card.input.size
    return (TRACE_SHAPE[0], s, s), (CHECK_SHAPE[0], s, s)


def _trace(wrapped: nn.Module, opset: int, shape: tuple[int, int, int] = TRACE_SHAPE) -> bytes:
    """The TorchScript-based (legacy) exporter: no extra dependency and no dynamo tracing."""
    n, h, w = shape
    dummy = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
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
                dynamic_axes={INPUT_NAME: {0: "batch", 1: "height", 2: "width"}, OUTPUT_NAME: {0: "batch"}},
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


def _check_against_torch(path: Path, graph: nn.Module, card: ModelCard) -> float:
    """Largest |ONNX - PyTorch| score difference (0-100 scale) between the file and the graph on
    fixed random views whose batch size, height and width differ from the traced ones (so that a
    size baked into the graph fails here; see ``view_shapes``)."""
    n, h, w = view_shapes(card)[1]
    x = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = graph(x).double().numpy()
    got = OnnxRuntime(path, "cpu").head_scores(x.numpy())
    if got.shape != expected.shape:
        raise ExportError(f"the exported graph gives shape {got.shape} for a batch of {n}, expected {expected.shape}")
    diff = float(np.abs(got - expected).max()) * abs(card.score.scale)
    if not diff <= CHECK_TOLERANCE:
        raise ExportError(f"onnxruntime and PyTorch disagree by {diff:.3g} points (tolerance {CHECK_TOLERANCE})")
    return diff
