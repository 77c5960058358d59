"""Writers for score results: CSV, JSON and JSON Lines, written row by row and flushed.

Every output file has the columns path, score, error (error empty when the image was scored).
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import IO, Iterable

from qfmiqm.errors import UsageError
from qfmiqm.scoring import ScoreResult

FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
COLUMNS = ("path", "score", "error")


def format_for(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    try:
        return FORMATS[suffix]
    except KeyError:
        raise UsageError(
            f"{path}: unknown output format '{suffix or '(none)'}' (use .csv, .json or .jsonl)"
        ) from None


def _score_text(score: float | None) -> str:
    return "" if score is None or math.isnan(score) else f"{score:.4f}"


class ResultWriter:
    """Writes results incrementally; ``close()`` finishes the file (JSON needs its closing ']')."""

    def __init__(self, stream: IO[str], fmt: str, with_error: bool = True, append: bool = False):
        self.stream, self.fmt, self.with_error = stream, fmt, with_error
        self.count = 0
        if fmt == "csv":
            self._csv = csv.writer(stream, lineterminator="\n")
            if not append:
                self._csv.writerow(COLUMNS if with_error else COLUMNS[:2])
        elif fmt == "json":
            stream.write("[")
        stream.flush()

    def write(self, result: ScoreResult) -> None:
        if self.fmt == "csv":
            row = [result.path, _score_text(result.score)]
            self._csv.writerow(row + [result.error or ""] if self.with_error else row)
        else:
            record = {"path": result.path, "score": None if result.score is None else round(result.score, 4),
                      "error": result.error}
            text = json.dumps(record, ensure_ascii=False)
            if self.fmt == "json":
                text = ("\n  " if self.count == 0 else ",\n  ") + text
            else:
                text += "\n"
            self.stream.write(text)
        self.count += 1
        self.stream.flush()

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("\n]\n" if self.count else "]\n")
        self.stream.flush()


def open_writer(output: str | None, append: bool = False) -> tuple[ResultWriter, IO[str]]:
    """A writer on the output file, or stdout CSV with only path,score when ``output`` is None."""
    if output is None:
        return ResultWriter(sys.stdout, "csv", with_error=False), sys.stdout
    fmt = format_for(output)
    try:
        stream = open(output, "a" if append else "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise UsageError(f"{output}: cannot write output ({exc.strerror})") from None
    return ResultWriter(stream, fmt, append=append), stream


def prepare_resume(output: str) -> dict[str, ScoreResult]:
    """Rows already in ``output``, keyed by path, after cutting off a half-written last line.

    A run killed mid-write leaves at most one incomplete line; it is removed so the file can
    be appended to. JSON arrays cannot be continued safely, so --resume needs CSV or JSONL.
    """
    fmt = format_for(output)
    p = Path(output)
    if not p.exists() or p.stat().st_size == 0:
        return {}
    if fmt == "json":
        raise UsageError(f"{output}: --resume works with .csv or .jsonl outputs, not .json")
    data = p.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(p, "r+b") as f:
            f.truncate(len(complete))
    if not complete:
        return {}
    try:
        rows = read_results(p)
    except (ValueError, KeyError) as exc:
        raise UsageError(f"{output}: cannot resume, the file is not a qfmiqm output ({exc})") from None
    return {r.path: r for r in rows}


def read_results(path: str | os.PathLike) -> list[ScoreResult]:
    """Parse an output file back (used by --resume and by tests)."""
    fmt = format_for(path)
    text = Path(path).read_text(encoding="utf-8")
    if fmt == "csv":
        rows = list(csv.DictReader(text.splitlines()))
        return [ScoreResult(r["path"], float(r["score"]) if r.get("score") else None, r.get("error") or None)
                for r in rows]
    records: Iterable[dict] = json.loads(text) if fmt == "json" else (
        json.loads(line) for line in text.splitlines() if line.strip())
    return [ScoreResult(r["path"], r.get("score"), r.get("error")) for r in records]
