"""Scoring engines: where the scoring job of ``qfmiqm score`` runs, behind one small interface.

- ``local`` (``LocalEngine``): this machine; decoding in worker processes, the model in this one
  (``QualityModel.iter_scores`` over ``qfmiqm.data.feed``).
- ``ray`` (``RayEngine``): a Ray cluster, or a local Ray; model actors scoring whole batches with
  Ray Data (``qfmiqm.engines.ray_engine``, ``qfmiqm.ray.QualityScorer``).

Both load the model from the same ``ModelSpec`` and score with the same per-batch steps
(``qfmiqm.engines.batch``), so a file gets the same score and the same error text on either. An
engine never raises for a bad file: it yields a ``ScoreResult`` with an error.
"""
from __future__ import annotations

from typing import Any, Iterator, Protocol, Sequence

from qfmiqm.engines.batch import ModelSpec, score_batch
from qfmiqm.errors import UsageError
from qfmiqm.results import ScoreResult


class Engine(Protocol):
    """Runs a scoring job: every input yields exactly one ``ScoreResult``, streamed as it is done."""

    name: str

    def run(self, items: Sequence[str], batch_size: int = 16, progress: bool = False) -> Iterator[ScoreResult]:
        ...


def _local() -> type:
    from qfmiqm.engines.local import LocalEngine

    return LocalEngine


def _ray() -> type:
    from qfmiqm.engines.ray_engine import RayEngine

    return RayEngine


#: engine name -> a function returning its class (imported on first use); each class has
#: ``from_spec(spec: ModelSpec, **options)`` and ``run(items, batch_size, progress)``
ENGINES = {"local": _local, "ray": _ray}


def create_engine(name: str, spec: ModelSpec, **options: Any) -> Engine:
    """``create_engine("ray", ModelSpec("default"), address="auto")``; options as the engine's
    constructor takes them (local: ``workers``; ray: ``address``, ``num_workers``, ``worker_cpus``, ``worker_gpus``)."""
    if name not in ENGINES:
        raise UsageError(f"unknown engine '{name}' (use {' or '.join(ENGINES)})")
    return ENGINES[name]().from_spec(spec, **options)


__all__ = ["Engine", "ENGINES", "ModelSpec", "create_engine", "score_batch"]
