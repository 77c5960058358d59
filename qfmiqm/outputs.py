"""Writers for score results: CSV, JSON and JSON Lines, written row by row and flushed, and
Parquet, written in row groups (see ``ParquetResultWriter`` for how it survives a kill).

Every output file has the columns path, score, error (error empty when the image was scored).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import IO, Iterable, Iterator

from qfmiqm.errors import UsageError
from qfmiqm.results import ScoreResult

FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
COLUMNS = ("path", "score", "error")
# Rows per Parquet row group (and part file): bounds the memory held, and what a kill can lose.
PARQUET_ROW_GROUP = 1024


def format_for(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    try:
        return FORMATS[suffix]
    except KeyError:
        raise UsageError(
            f"{path}: unknown output format '{suffix or '(none)'}' (use .csv, .json, .jsonl or .parquet)"
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


def _pyarrow():
    """(pyarrow, pyarrow.parquet), imported only when Parquet is used: it is a heavy import."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UsageError("Parquet output needs pyarrow (pip install pyarrow)") from None
    return pyarrow, pyarrow.parquet


def _parquet_schema():
    pa, _ = _pyarrow()
    return pa.schema([("path", pa.string()), ("score", pa.float64()), ("error", pa.string())])


def _parquet_score(score: float | None) -> float | None:
    # NaN is "no score", as in CSV; 4 decimals like the CSV and JSON outputs.
    return None if score is None or math.isnan(score) else round(score, 4)


def _fsync(path: Path) -> None:
    """Make ``path`` (a file, or a folder's entries after a rename) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_parquet_atomically(tables: Iterable, target: Path) -> None:
    """Write ``tables`` (one row group each) to a temp file, fsync it, then rename it to ``target``:
    ``target`` is either absent or complete, never half-written."""
    _, pq = _pyarrow()
    tmp = target.with_name(f".{target.name}.tmp")
    with pq.ParquetWriter(tmp, _parquet_schema(), write_page_checksum=True) as writer:
        for table in tables:
            writer.write_table(table)
    _fsync(tmp)
    os.replace(tmp, target)
    _fsync(target.parent)


def _open_parquet(path: Path):
    """A ``ParquetFile`` with our columns whose pages all read back with valid checksums (read
    one row group at a time, so memory stays bounded); raises ValueError/OSError otherwise."""
    _, pq = _pyarrow()
    parquet = pq.ParquetFile(path, page_checksum_verification=True)
    if not parquet.schema_arrow.equals(_parquet_schema()):
        raise ValueError(f"columns {parquet.schema_arrow.names}, expected {list(COLUMNS)}")
    for _ in _row_groups(parquet):
        pass
    return parquet


def _row_groups(parquet) -> Iterator:
    return (parquet.read_row_group(i) for i in range(parquet.num_row_groups))


def _parquet_results(parquet) -> Iterator[ScoreResult]:
    for table in _row_groups(parquet):
        columns = [table.column(name).to_pylist() for name in COLUMNS]
        yield from (ScoreResult(path, score, error) for path, score, error in zip(*columns))


_PART = re.compile(r"part-(\d+)\.parquet")


def _parts_dir(output: str | os.PathLike) -> Path:
    return Path(f"{output}.parts")


def _part_files(parts: Path) -> list[tuple[int, Path]]:
    """Part files by number; temp files (``.part-N.parquet.tmp``) do not match the pattern."""
    if not parts.is_dir():
        return []
    found = ((_PART.fullmatch(p.name), p) for p in parts.iterdir())
    return sorted((int(m.group(1)), p) for m, p in found if m)


def _complete_parts(parts: Path) -> Iterator:
    """The readable part files (``ParquetFile``), in order; damaged ones are skipped, so their
    rows count as not written and --resume scores them again."""
    for _, path in _part_files(parts):
        try:
            yield _open_parquet(path)
        except (ValueError, OSError):
            continue


class ParquetResultWriter:
    """Streams results to ``FILE.parquet`` so that a killed run loses at most one row group.

    A Parquet file is unreadable until its footer is written, so every ``PARQUET_ROW_GROUP`` rows
    go to a complete part file ``FILE.parquet.parts/part-NNNNNN.parquet`` (temp file, fsync,
    rename). ``close()`` merges the parts in order into ``FILE.parquet`` the same way and removes
    the folder. While ``FILE.parquet`` exists it holds every row and any parts folder is stale.
    """

    def __init__(self, output: str | os.PathLike, append: bool = False):
        _pyarrow()  # fail now, not after the first row group has been scored
        self.output, self.parts = Path(output), _parts_dir(output)
        self.count = 0
        self._rows: list[ScoreResult] = []
        self._closed = False
        if self.parts.exists() and (not append or self.output.exists()):
            shutil.rmtree(self.parts)  # a fresh run, or parts already merged into FILE.parquet
        if not append:
            self.output.unlink(missing_ok=True)  # a fresh run replaces the old file, as CSV's "w"
        self.parts.mkdir(exist_ok=True)
        self.output.with_name(f".{self.output.name}.tmp").unlink(missing_ok=True)  # a killed merge
        if self.output.exists():
            # resuming a finished file: its rows become part 0, the new rows follow
            os.replace(self.output, self.parts / "part-000000.parquet")
            _fsync(self.parts)
        self._next = max((n for n, _ in _part_files(self.parts)), default=-1) + 1

    def write(self, result: ScoreResult) -> None:
        self._rows.append(result)
        self.count += 1
        if len(self._rows) >= PARQUET_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        pa, _ = _pyarrow()
        table = pa.table({"path": [r.path for r in self._rows],
                          "score": [_parquet_score(r.score) for r in self._rows],
                          "error": [r.error for r in self._rows]}, schema=_parquet_schema())
        _write_parquet_atomically([table], self.parts / f"part-{self._next:06d}.parquet")
        self._next += 1
        self._rows.clear()

    def close(self) -> None:
        """Write the last rows and merge the parts into FILE.parquet; a second call does nothing
        (the CLI closes both the writer and its 'stream', which is this object)."""
        if self._closed:
            return
        self._closed = True
        self._flush()
        tables = (table for part in _complete_parts(self.parts) for table in _row_groups(part))
        _write_parquet_atomically(tables, self.output)
        shutil.rmtree(self.parts)


def open_writer(output: str | None, append: bool = False
                ) -> tuple[ResultWriter | ParquetResultWriter, IO[str] | ParquetResultWriter]:
    """A writer on the output file, or stdout CSV with only path,score when ``output`` is None.

    The second item is what the caller closes after the writer: the open file, or for Parquet
    the writer itself (closing it twice is harmless).
    """
    if output is None:
        return ResultWriter(sys.stdout, "csv", with_error=False), sys.stdout
    fmt = format_for(output)
    if fmt == "parquet":
        try:
            writer = ParquetResultWriter(output, append=append)
        except OSError as exc:
            raise UsageError(f"{output}: cannot write output ({exc.strerror})") from None
        return writer, writer
    try:
        stream = open(output, "a" if append else "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise UsageError(f"{output}: cannot write output ({exc.strerror})") from None
    return ResultWriter(stream, fmt, append=append), stream


def prepare_resume(output: str) -> dict[str, ScoreResult]:
    """Rows already in ``output``, keyed by path, after cutting off a half-written last line.

    A run killed mid-write leaves at most one incomplete line; it is removed so the file can
    be appended to. JSON arrays cannot be continued safely, so --resume needs CSV, JSONL or
    Parquet. A Parquet run killed before its end has no FILE.parquet yet: its rows are those of
    the complete part files (temp and damaged ones are ignored).
    """
    fmt = format_for(output)
    p = Path(output)
    if fmt == "parquet" and not p.exists():
        return {r.path: r for part in _complete_parts(_parts_dir(output)) for r in _parquet_results(part)}
    if not p.exists() or p.stat().st_size == 0:
        return {}
    if fmt == "json":
        raise UsageError(f"{output}: --resume works with .csv or .jsonl outputs, not .json")
    if fmt != "parquet":
        data = p.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with open(p, "r+b") as f:
                f.truncate(len(complete))
        if not complete:
            return {}
    try:
        rows = read_results(p)
    except (ValueError, KeyError, OSError) as exc:
        raise UsageError(f"{output}: cannot resume, the file is not a qfmiqm output ({exc})") from None
    return {r.path: r for r in rows}


def read_results(path: str | os.PathLike) -> list[ScoreResult]:
    """Parse an output file back (used by --resume and by tests)."""
    fmt = format_for(path)
    if fmt == "parquet":
        return list(_parquet_results(_open_parquet(Path(path))))
    text = Path(path).read_text(encoding="utf-8")
    if fmt == "csv":
        rows = list(csv.DictReader(text.splitlines()))
        return [ScoreResult(r["path"], float(r["score"]) if r.get("score") else None, r.get("error") or None)
                for r in rows]
    records: Iterable[dict] = json.loads(text) if fmt == "json" else (
        json.loads(line) for line in text.splitlines() if line.strip())
    return [ScoreResult(r["path"], r.get("score"), r.get("error")) for r in records]
