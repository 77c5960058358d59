"""A backbone's feature maps in ONNX Runtime, for any image size: the CPU's real limit for the
bench (qfmiqm.bench_limits) and the fast path of the training feature cache (qfmiqm.train.cache).
PyTorch eager is 2-3x slower on CPU for depthwise-separable CNNs such as EfficientNet-Lite."""
from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qfmiqm.export import ONNX_OPSET
from qfmiqm.models.backbones import Backbone
from qfmiqm.models.runtime_onnx import open_session

INPUT_NAME = "image"


class _Maps(nn.Module):
    """The backbone's feature maps as a plain tuple, the form the ONNX exporter takes."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone(x).maps)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class OrtBackbone:
    """A Backbone's feature maps from ONNX Runtime on CPU; ``self(x)`` takes normalised float32
    NCHW of any batch size, height and width and returns the maps (ViT class tokens are left out)."""

    def __init__(self, backbone: Backbone, threads: int | None = None):
        n_maps = len(backbone.feature_dims)
        outputs = [f"map{i}" for i in range(n_maps)]
        axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        axes.update({name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in outputs})
        # traced on a non-square batch of 2 so that no size of 1 or H == W gets baked in
        dummy = torch.zeros(2, 3, 193, 225)
        with tempfile.TemporaryDirectory() as tmp, eval_mode(backbone):
            path = Path(tmp) / "backbone.onnx"
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer and deprecation notes, nothing actionable
                torch.onnx.export(_Maps(backbone), (dummy,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                                  do_constant_folding=True, input_names=[INPUT_NAME], output_names=outputs,
                                  dynamic_axes=axes)
            # the session reads the whole file here, so the temporary folder can go
            self.session = open_session(path, "cpu", threads or torch.get_num_threads())

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {INPUT_NAME: x})
