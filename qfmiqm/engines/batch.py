"""What every engine shares: how to load the model (``ModelSpec``, small and picklable, so a remote
worker can load the same model) and the per-batch function ``score_batch``.

``score_batch`` is the scoring step of one batch as both engines do it: ``prepare_item`` per input
(decode -> input policy -> tone statistics, never raising), the model's raw scores for the inputs
that decoded (``QualityModel.raw_scores_of``), ``map_score`` to 0-100, and the error text of the
rest. The local engine runs exactly these steps in ``QualityModel.iter_scores`` (with decoding in
worker processes, pipelined with the model), the Ray engine runs ``score_batch`` in each model
actor; so a file gets the same score and the same error text on either engine.

Nothing here imports torch or ray.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

from qfmiqm.data.feed import DEFAULT_DECODE, PrepareSpec, prepare_isolated, prepare_item
from qfmiqm.data.images import DEFAULT_MAX_PIXELS
from qfmiqm.errors import UsageError
from qfmiqm.results import ScoreResult


@dataclass(frozen=True)
class ModelSpec:
    """How to load the scoring model: the options of ``qfmiqm.load`` plus ``num_crops``."""

    model: str = "default"
    device: str = "auto"
    runtime: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode: str = DEFAULT_DECODE
    num_crops: int | None = None
    backbone_weights: str | None = None
    trust_pickle: bool = False

    def load(self, threads: int | None = None, quiet: bool = True) -> Any:
        """The ``QualityModel``. ``threads``: the CPU threads of its runtime (ONNX Runtime's
        intra-op threads, or torch's on the CPU); default: every core this process may use.
        ``quiet`` drops the 'UNTRAINED' UserWarning (the caller reports it once)."""
        from qfmiqm.scoring import load, with_policy

        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore", UserWarning)
            # ONNX Runtime's session opens with its threads (one session, not one then another)
            m = load(self.model, device=self.device, backbone_weights=self.backbone_weights,
                     trust_pickle=self.trust_pickle, max_pixels=self.max_pixels, decode=self.decode,
                     runtime=self.runtime, threads=threads)
        if threads is not None and m.device == "cpu" and m.runtime.name == "torch":
            import torch

            torch.set_num_threads(threads)
        if self.num_crops is not None:
            m = with_policy(m, layout="crops", num_crops=self.num_crops)
        return m

    def card(self) -> Any | None:
        """The model card without loading the network (usage errors now, before any work
        starts elsewhere), or None for an ``.onnx`` file (its card is inside the graph)."""
        from qfmiqm.data.feed import DECODE_MODES
        from qfmiqm.models.runtime import resolve_runtime
        from qfmiqm.models.runtime_onnx import is_onnx_path

        resolve_runtime(self.runtime, "cpu")  # an unknown runtime fails here
        if self.decode not in DECODE_MODES:
            raise UsageError(f"decode must be one of {', '.join(DECODE_MODES)}, got '{self.decode}'")
        if is_onnx_path(self.model):
            if not os.path.isfile(self.model):
                raise UsageError(f"{self.model}: model file not found")
            return None
        from qfmiqm.models.registry import resolve_model

        card = resolve_model(self.model).card
        if self.num_crops is not None:
            card.input.replace(layout="crops", num_crops=self.num_crops)  # raises for a bad value
        return card


def score_batch(model: Any, items: Sequence[Any], names: Sequence[str], spec: PrepareSpec | None = None,
                isolate: bool = False) -> list[ScoreResult]:
    """Score one batch: ``items`` (paths, URIs, file bytes, images) -> one ``ScoreResult`` each,
    named by ``names``, in order. Never raises for a bad input: it becomes a row with an error.

    ``isolate`` decodes each input in a fresh process (``prepare_isolated``), so that a file that
    crashes the decoder costs only its own row (the Ray engine does so when a batch is rerun after
    its worker died).
    """
    spec = spec if spec is not None else model.prepare_spec()
    prepare = prepare_isolated if isolate else prepare_item
    decoded = [prepare(items, i, spec) for i in range(len(items))]
    good = [(i, p) for i, p, err in decoded if err is None and p is not None]
    scores: dict[int, float] = {}
    if good:
        raw = model.raw_scores_of([p for _, p in good])
        scores = {i: model.map_score(r) for (i, _), r in zip(good, raw)}
    errors = {i: err or "cannot use image" for i, p, err in decoded if i not in scores}
    return [ScoreResult(str(names[i]), scores.get(i), errors.get(i)) for i in range(len(items))]
