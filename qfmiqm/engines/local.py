"""The local engine: this machine's processes, as ``qfmiqm score`` has always run.

Decoding runs in worker processes (``qfmiqm.data.feed.batches``: DataLoader workers, a crashing
decoder isolated to its file, a watchdog for a hung one) while the model scores the previous batch
in this process; results come in input order.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

from qfmiqm.engines.batch import ModelSpec
from qfmiqm.results import ScoreResult
from qfmiqm.scoring import DEFAULT_BATCH_SIZE


class LocalEngine:
    """Scores with a ``QualityModel`` loaded in this process (``QualityModel.iter_scores``)."""

    name = "local"

    def __init__(self, model: Any, workers: int | None = None):
        self.model = model
        self.workers = workers

    @classmethod
    def from_spec(cls, spec: ModelSpec, workers: int | None = None) -> "LocalEngine":
        return cls(spec.load(), workers=workers)

    def run(self, items: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE,
            progress: bool = False) -> Iterator[ScoreResult]:
        """One ``ScoreResult`` per item, in input order."""
        return self.model.iter_scores(items, batch_size=batch_size, workers=self.workers, progress=progress)
