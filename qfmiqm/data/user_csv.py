"""User datasets: any CSV/TSV with an image path column and a score column.

Delimiter and header are sniffed, common column names are recognised, and every problem is a
one-line UsageError naming the file and, where it applies, the line. The labels.csv written by
``qfmiqm synth`` (path, reference, type, level, score on 0-100) loads as a synthetic set with
content = reference, with no options.
"""
from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from qfmiqm.errors import UsageError

Column = Union[str, int, None]

# Recognised column names, best first (compared lower-case, with spaces and dashes as "_").
PATH_NAMES = ("path", "image", "image_path", "img_path", "filename", "file_name", "file", "img",
              "image_name", "img_name", "imagename", "dis_img_path", "distorted_image", "dist_img",
              "distorted", "name")
SCORE_NAMES = ("score", "mos", "dmos", "quality", "mos_zscore", "zscore", "z_score", "rating",
               "label", "mean_score", "subjective_score", "mean")
CONTENT_NAMES = ("reference", "ref", "ref_img_path", "ref_path", "ref_img", "reference_image",
                 "ref_name", "content", "pristine", "source_image")
TYPE_NAMES = ("type", "dis_type", "distortion", "distortion_type")

_DELIMITERS = ",\t;|"
_SAMPLE_BYTES = 64 * 1024


@dataclass(frozen=True)
class CsvTable:
    """The parsed columns of a user CSV, before score mapping and path checks."""

    file: Path
    paths: tuple[str, ...]  # as written (keys)
    raw_scores: tuple[float, ...]
    content: Optional[tuple[str, ...]]
    types: Optional[tuple[str, ...]]
    lines: tuple[int, ...]  # file line number of each row (for messages)
    score_column: str
    delimiter: str


def read_table(
    file: str | os.PathLike,
    path_column: Column = None,
    score_column: Column = None,
    content_column: Column = None,
    type_column: Column = None,
    delimiter: Optional[str] = None,
    require_scores: bool = True,
) -> CsvTable:
    """Parse a user CSV/TSV. Columns are names or 0-based indices; None = recognise by name."""
    f = Path(file)
    text = _read_text(f)
    delim = delimiter or _sniff_delimiter(f, text)
    rows = _split_rows(text, delim)
    if not rows:
        raise UsageError(f"{f}: no rows (empty file)")
    header = _header(rows[0][1], (path_column, score_column, content_column, type_column))
    body = rows[1:] if header is not None else rows
    if not body:
        raise UsageError(f"{f}: has a header but no data rows")
    width = max(len(cells) for _, cells in body)
    names = header if header is not None else [str(i) for i in range(width)]

    p_idx = _pick(f, names, path_column, PATH_NAMES, "path", default_index=0 if header is None else None)
    s_idx = _pick(f, names, score_column, SCORE_NAMES, "score",
                  default_index=1 if header is None and width > 1 else None, required=require_scores)
    c_idx = _pick(f, names, content_column, CONTENT_NAMES, "content", required=content_column is not None,
                  auto=header is not None)
    t_idx = _pick(f, names, type_column, TYPE_NAMES, "type", required=type_column is not None,
                  auto=header is not None)

    paths, scores, content, types, lines = [], [], [], [], []
    seen: dict[str, int] = {}
    for line, cells in body:
        path = _cell(f, line, cells, p_idx, names).strip()
        if not path:
            raise UsageError(f"{f}: line {line}: empty image path")
        if path in seen:
            raise UsageError(f"{f}: line {line}: duplicate path '{path}' (first on line {seen[path]})")
        seen[path] = line
        paths.append(path)
        lines.append(line)
        if s_idx is not None:
            scores.append(_number(f, line, _cell(f, line, cells, s_idx, names), names[s_idx]))
        if c_idx is not None:
            content.append(_cell(f, line, cells, c_idx, names).strip())
        if t_idx is not None:
            types.append(_cell(f, line, cells, t_idx, names).strip())
    return CsvTable(
        file=f, paths=tuple(paths), raw_scores=tuple(scores),
        content=tuple(content) if c_idx is not None else None,
        types=tuple(types) if t_idx is not None else None,
        lines=tuple(lines), score_column=names[s_idx] if s_idx is not None else "", delimiter=delim,
    )


def map_scores(table: CsvTable, score_range: Optional[Sequence[float]] = None,
               lower_better: Optional[bool] = None) -> list[float]:
    """Raw scores -> 0-100 higher-better. Without ``score_range`` the scores must already be 0-100."""
    f, scores = table.file, table.raw_scores
    if lower_better is None:
        if _norm(table.score_column) == "dmos":
            raise UsageError(f"{f}: score column '{table.score_column}' may be lower-is-better: "
                             "say which with lower_better=True or False")
        lower_better = False
    if score_range is None:
        lo, hi = 0.0, 100.0
        bad = [i for i, s in enumerate(scores) if not lo <= s <= hi]
        if bad:
            i = bad[0]
            raise UsageError(f"{f}: line {table.lines[i]}: score {scores[i]:g} is outside 0-100; "
                             "give the raw scale with score_range=(lo, hi)")
    else:
        lo, hi = (float(v) for v in score_range)
        if not hi > lo:
            raise UsageError(f"{f}: score_range must be (low, high) with low < high, got ({lo:g}, {hi:g})")
        for i, s in enumerate(scores):
            if not lo <= s <= hi:
                raise UsageError(f"{f}: line {table.lines[i]}: score {s:g} is outside score_range ({lo:g}, {hi:g})")
    mapped = [(s - lo) / (hi - lo) * 100.0 for s in scores]
    return [100.0 - m for m in mapped] if lower_better else mapped


def csv_name(file: str | os.PathLike) -> str:
    """A readable dataset name: the file stem, or the folder name for a generic labels.csv."""
    p = Path(file)
    if p.stem.lower() in ("labels", "label", "mos", "scores", "meta", "metadata") and p.resolve().parent.name:
        return p.resolve().parent.name
    return p.stem


def looks_like_table(name: str) -> bool:
    """True when ``name`` names a CSV/TSV file rather than a registry name."""
    return Path(name).suffix.lower() in (".csv", ".tsv", ".txt") or os.sep in name or "/" in name


# --- parsing helpers ------------------------------------------------------------------


def _read_text(f: Path) -> str:
    if not f.exists():
        raise UsageError(f"{f}: no such file")
    if f.is_dir():
        raise UsageError(f"{f}: is a directory, not a CSV file")
    try:
        raw = f.read_bytes()
    except OSError as exc:
        raise UsageError(f"{f}: cannot read ({exc.strerror})") from None
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise UsageError(f"{f}: not a text file")  # pragma: no cover - latin-1 decodes anything


def _sniff_delimiter(f: Path, text: str) -> str:
    if f.suffix.lower() == ".tsv":
        return "\t"
    sample = text[:_SAMPLE_BYTES]
    lines = [ln for ln in sample.splitlines() if ln.strip()][:50]
    try:
        delim = csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        first = lines[0] if lines else ""
        delim = next((d for d in _DELIMITERS if d in first), ",")
    # space-aligned tables (pyiqa's meta-info style) may hold a stray tab or none at all
    if any(delim not in ln for ln in lines) and all(len(ln.split()) >= 2 for ln in lines):
        return " "
    return delim


def _split_rows(text: str, delim: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each non-blank row; whitespace-separated when ``delim`` is ' '."""
    rows: list[tuple[int, list[str]]] = []
    if delim == " ":
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                rows.append((n, line.split()))
        return rows
    reader = csv.reader(text.splitlines(), delimiter=delim, skipinitialspace=True)
    start = 1
    for cells in reader:
        if any(c.strip() for c in cells):
            rows.append((start, cells))
        start = reader.line_num + 1
    return rows


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _header(first: list[str], explicit: Sequence[Column]) -> Optional[list[str]]:
    """The first row is a header when it names a known or requested column, or holds no number
    (a data row always holds its score)."""
    names = {_norm(c) for c in first}
    known = set(PATH_NAMES + SCORE_NAMES + CONTENT_NAMES + TYPE_NAMES)
    asked = {_norm(c) for c in explicit if isinstance(c, str) and not c.strip().isdigit()}
    if names & (known | asked) or not any(_is_number(c) for c in first):
        return [c.strip() for c in first]
    return None


def _pick(f: Path, names: list[str], wanted: Column, candidates: Sequence[str], role: str,
          default_index: Optional[int] = None, required: bool = True, auto: bool = True) -> Optional[int]:
    """Index of the column for ``role``: the requested one, else the first recognised name."""
    normed = [_norm(n) for n in names]
    if wanted is not None:
        if isinstance(wanted, str) and _norm(wanted) in normed:
            return normed.index(_norm(wanted))
        if isinstance(wanted, int) or (isinstance(wanted, str) and wanted.strip().isdigit()):
            idx = int(wanted)
            if 0 <= idx < len(names):
                return idx
        raise UsageError(f"{f}: no {role} column '{wanted}' (columns: {', '.join(names)})")
    if auto:
        for cand in candidates:
            if cand in normed:
                return normed.index(cand)
    if default_index is not None:
        return default_index
    if required:
        raise UsageError(f"{f}: no {role} column (looked for {', '.join(candidates[:6])}, ...; "
                         f"columns: {', '.join(names)}); name it with {role}_column=")
    return None


def _cell(f: Path, line: int, cells: list[str], idx: int, names: list[str]) -> str:
    if idx >= len(cells):
        raise UsageError(f"{f}: line {line}: missing column '{names[idx]}' ({len(cells)} cells)")
    return cells[idx]


def _number(f: Path, line: int, cell: str, column: str) -> float:
    try:
        value = float(cell.strip())
    except ValueError:
        raise UsageError(f"{f}: line {line}: {column} '{cell.strip()}' is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{f}: line {line}: {column} '{cell.strip()}' is not a finite number")
    return value
