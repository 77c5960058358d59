"""Colour constants shared by the distortions, the statistics and the tone term; numpy only, so
that the torch-free scoring path can import it."""
from __future__ import annotations

import numpy as np

#: BT.601 luma weights (R, G, B): the luminance every contrast- and edge-based step uses.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
