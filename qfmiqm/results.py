"""``ScoreResult``: one input's outcome, shared by the scoring engines and the output writers.

Kept free of heavy imports (no torch) so that writing and reading result files is cheap.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreResult:
    """One input's outcome: a score, or the reason it has none."""

    path: str
    score: float | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
