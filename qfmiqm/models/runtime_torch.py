"""The PyTorch runtime: ``ScoringGraph`` on a CPU or CUDA device."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qfmiqm.models.graph import ScoringGraph


class TorchRuntime:
    """Runs a ``ScoringGraph`` in PyTorch (inference mode, channels-last on CUDA)."""

    name = "torch"

    def __init__(self, graph: ScoringGraph, device: str):
        self.device = device
        self.torch_device = torch.device(device)
        self.graph = graph.to(self.torch_device).eval()
        if self.torch_device.type == "cuda":
            self.graph = self.graph.to(memory_format=torch.channels_last)

    @property
    def net(self):
        """The ``QualityNet`` inside (backbone and head), for quality maps and diagnostics."""
        return self.graph.net

    def launch(self, views: Any) -> torch.Tensor:
        """Start the forward of uint8 views (N, H, W, 3) (asynchronous on a GPU); raw scores on the device."""
        x = torch.as_tensor(views).to(self.torch_device, non_blocking=True)
        with torch.inference_mode():
            return self.graph(x).float()

    def head_scores(self, views: Any) -> np.ndarray:
        return self.launch(views).cpu().double().numpy()
