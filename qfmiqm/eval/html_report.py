"""Folder report: one self-contained HTML page for a score file (``qfmiqm report``, ``score --report``).

The page holds the counts, a score histogram (inline SVG), the worst and best images as small
JPEG thumbnails embedded as base64 (with their ``score --map`` overlays when a maps folder is given), the
median score per subfolder and the failures with their reasons. It needs no network and no
JavaScript, and its size does not grow with the number of rows beyond the capped tables: a
100k-row score file gives a page of a few hundred kilobytes.

Kept free of heavy imports (no torch, no matplotlib): only Pillow and the result readers.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import os
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence
from urllib.parse import quote, unquote, urlparse

from qfmiqm.errors import UsageError
from qfmiqm.eval.map_names import map_name
from qfmiqm.results import ScoreResult

#: Images shown in each of the worst and best lists.
TOP_N = 24
#: Longer side of a thumbnail, pixels; JPEG quality of the embedded thumbnails.
THUMB_SIDE = 200
THUMB_QUALITY = 70
#: Rows listed in the failures and subfolder tables (the counts above them are complete).
MAX_FAILURES = 200
MAX_FOLDERS = 200
#: Histogram bins over 0-100 (5 points each).
HIST_BINS = 20


@dataclass(frozen=True)
class ReportSummary:
    """What a written report holds: all rows, those with a score, those without one."""

    path: Path
    count: int
    scored: int
    failed: int
    size_bytes: int


# ----------------------------------------------------------------------------- reading rows


def read_scores(path: str | os.PathLike) -> list[ScoreResult]:
    """The rows of a score file (CSV, JSON, JSONL or Parquet as ``qfmiqm score`` writes them);
    a UsageError when it is missing or not such a file."""
    from qfmiqm.outputs import format_for, read_results

    format_for(path)  # a UsageError for an unknown suffix
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such score file")
    try:
        if format_for(path) == "csv":
            _check_csv_header(Path(path))
        return read_results(path)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise UsageError(f"{path}: not a qfmiqm score file ({type(exc).__name__}: {exc})") from None


def _check_csv_header(path: Path) -> None:
    """A ValueError unless the CSV's first line names a ``path`` column (a header-only or foreign
    CSV would otherwise read as a score file with no rows)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        header = next(csv.reader(fh), [])
    if "path" not in header:
        raise ValueError(f"no 'path' column in its header {header[:5]}")


def _has_score(row: ScoreResult) -> bool:
    """A row counts as scored when it has a score and no error (NaN is no score)."""
    return row.error is None and row.score is not None and row.score == row.score


# ----------------------------------------------------------------------------- finding files


@dataclass
class Locator:
    """Finds the image (and its map) behind a path of the score file, and links to it.

    Relative paths are tried against each of ``bases`` in order (the score file's folder, then
    the working directory); ``file://`` URIs are local files; other URIs are not looked up.
    """

    bases: Sequence[Path]
    report_dir: Path
    maps_dir: Path | None = None
    _found: dict[str, Path | None] = field(default_factory=dict)

    def image(self, path: str) -> Path | None:
        """The existing local file for ``path``, or None."""
        if path not in self._found:
            self._found[path] = self._lookup(path)
        return self._found[path]

    def _lookup(self, path: str) -> Path | None:
        if "://" in path:
            parsed = urlparse(path)
            if parsed.scheme != "file":
                return None
            path = unquote(parsed.path)
        if os.path.isabs(path):
            candidates = [path]
        else:
            candidates = [os.path.join(base, path) for base in self.bases]
        for candidate in candidates:
            # abspath, not resolve(): the map's file name hashes the path as scoring saw it
            if os.path.isfile(candidate):
                return Path(os.path.abspath(candidate))
        return None

    def map_file(self, path: str) -> Path | None:
        """The overlay ``score --map`` wrote for ``path``, when a maps folder is given and has it.

        Its name is ``<stem>.map.png``, or ``<stem>-<hash>.map.png`` when several scored files
        shared the stem (hash: the first 8 hex digits of the SHA-1 of the absolute path); the
        hashed name is tried first because it is the specific one.
        """
        if self.maps_dir is None:
            return None
        stem = PurePosixPath(path).stem
        names = [map_name(stem)]
        found = self.image(path)
        if found is not None:
            names.insert(0, map_name(stem, found))
        for name in names:
            candidate = self.maps_dir / name
            if candidate.is_file():
                return candidate
        return None

    def href(self, file: Path) -> str:
        """A link to ``file`` relative to the report, so the page and the photos can move together."""
        return quote(os.path.relpath(file, self.report_dir).replace(os.sep, "/"))


class Thumbnails:
    """Base64 JPEG thumbnails as ``data:`` URIs, made once per file (many rows may share one)."""

    def __init__(self, side: int = THUMB_SIDE, quality: int = THUMB_QUALITY):
        self.side, self.quality = side, quality
        self._cache: dict[Path, tuple[str | None, str | None]] = {}

    def get(self, file: Path) -> tuple[str | None, str | None]:
        """(data URI, None), or (None, reason) when the file cannot be read as an image."""
        if file not in self._cache:
            try:
                self._cache[file] = (self._make(file), None)
            except Exception as exc:  # noqa: BLE001 - one bad file shows a placeholder, not a crash
                self._cache[file] = (None, f"cannot read ({type(exc).__name__})")
        return self._cache[file]

    def _make(self, file: Path) -> str:
        from PIL import Image, ImageOps

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # large-image warnings: only a thumbnail is made
            with Image.open(file) as im:
                im.draft("RGB", (self.side * 2, self.side * 2))  # JPEG: decode at a reduced scale
                im = ImageOps.exif_transpose(im)
                if im.mode in ("RGBA", "LA", "PA", "P"):
                    im = im.convert("RGBA")
                    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(white, im)  # transparency on white, as scoring does
                im = im.convert("RGB")
                im.thumbnail((self.side, self.side), Image.Resampling.BICUBIC, reducing_gap=2.0)
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=self.quality, optimize=True)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------- summaries


def pick_extremes(scored: Sequence[ScoreResult], n: int = TOP_N) -> tuple[list[ScoreResult], list[ScoreResult]]:
    """The ``n`` lowest-scored rows (worst first) and the ``n`` highest (best first), never the
    same row in both: with fewer than ``2n`` rows the best list holds only those not in the worst."""
    ordered = sorted(scored, key=lambda r: (r.score, r.path))
    worst = ordered[:n]
    rest = ordered[len(worst):]
    best = rest[::-1][:n]
    return worst, best


def histogram(scores: Iterable[float], bins: int = HIST_BINS) -> list[int]:
    """Counts per equal-width bin over 0-100; scores outside the range go to the end bins."""
    counts = [0] * bins
    for s in scores:
        counts[min(bins - 1, max(0, int(s * bins / 100.0)))] += 1
    return counts


def _parent(path: str) -> str:
    """The folder part of a path or URI as written in the score file ('' for a bare name)."""
    return path.rsplit("/", 1)[0] if "/" in path.rstrip("/") else ""


@dataclass(frozen=True)
class FolderStats:
    """One subfolder's row in the medians table."""

    folder: str
    images: int
    failed: int
    median: float | None


def folder_medians(rows: Iterable[ScoreResult]) -> list[FolderStats]:
    """Median score per folder (the folder part of each path), lowest median first; folders
    where nothing was scored come last."""
    scores: dict[str, list[float]] = {}
    failed: dict[str, int] = {}
    for row in rows:
        key = _parent(row.path)
        scores.setdefault(key, [])
        failed.setdefault(key, 0)
        if _has_score(row):
            scores[key].append(row.score)
        else:
            failed[key] += 1
    stats = [FolderStats(k, len(v) + failed[k], failed[k], statistics.median(v) if v else None)
             for k, v in scores.items()]
    return sorted(stats, key=lambda s: (s.median is None, s.median or 0.0, s.folder))


def common_folder(folders: Sequence[str]) -> str:
    """The longest common leading run of '/'-separated parts of ``folders`` ('' if none)."""
    if not folders:
        return ""
    split = [f.split("/") for f in folders]
    common = []
    for parts in zip(*split):
        if any(p != parts[0] for p in parts):
            break
        common.append(parts[0])
    return "/".join(common)


# ----------------------------------------------------------------------------- HTML pieces

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#666;margin:0 0 16px;word-break:break-all}
.stats{display:flex;flex-wrap:wrap;gap:10px}
.stat{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:80px}
.stat b{display:block;font-size:20px}.stat span{color:#666;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px;margin:0;width:max-content;max-width:420px}
.pics{display:flex;gap:4px;align-items:flex-start}
.pics img{display:block;max-width:200px;max-height:200px;border-radius:3px}
.ph{width:150px;height:100px;display:flex;align-items:center;justify-content:center;text-align:center;
background:repeating-linear-gradient(45deg,#eee,#eee 8px,#e4e4e4 8px,#e4e4e4 16px);color:#777;font-size:12px;border-radius:3px}
figcaption{margin-top:4px;font-size:12px;max-width:404px;word-break:break-all}
.score{display:inline-block;min-width:38px;text-align:center;font-weight:bold;color:#fff;border-radius:3px;padding:0 4px;margin-right:4px}
.name{font-weight:600}.dir{color:#777}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:9px;background:#4a7;border-radius:2px;vertical-align:middle}
.note{color:#666;font-size:12px}
svg text{font:11px system-ui,sans-serif;fill:#444}
"""


def _e(text: object) -> str:
    """Escaped text for element content and quoted attributes."""
    return html.escape(str(text), quote=True)


def _colour(score: float) -> str:
    """Red (0) through amber to green (100), dark enough for white text."""
    hue = max(0.0, min(100.0, score)) * 1.2
    return f"hsl({hue:.0f},65%,38%)"


def _fmt(score: float | None) -> str:
    """A score with one decimal, or a dash for none."""
    return "–" if score is None else f"{score:.1f}"


def histogram_svg(counts: Sequence[int], width: int = 640, height: int = 200) -> str:
    """An inline SVG bar chart of ``counts`` over 0-100, axis ticks every 20 points."""
    left, bottom, top = 40, 24, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max(counts) if counts and max(counts) > 0 else 1
    bw = plot_w / len(counts)
    step = 100.0 / len(counts)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="score histogram">']
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>')
    for i, c in enumerate(counts):
        h = plot_h * c / peak
        x = left + i * bw
        lo = i * step
        parts.append(f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                     f'fill="{_colour(lo + step / 2)}"><title>{lo:g}–{lo + step:g}: {c}</title></rect>')
    for tick in range(0, 101, 20):
        x = left + plot_w * tick / 100
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle">{tick}</text>')
    parts.append(f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{peak}</text>')
    parts.append(f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>')
    parts.append("</svg>")
    return "".join(parts)


def _picture(file: Path | None, thumbs: Thumbnails, locator: Locator, alt: str, missing: str) -> str:
    """A thumbnail linked to the original file, or a placeholder saying why there is none."""
    if file is None:
        return f'<div class="ph">{_e(missing)}</div>'
    uri, reason = thumbs.get(file)
    if uri is None:
        return f'<div class="ph">{_e(reason)}</div>'
    return f'<a href="{_e(locator.href(file))}"><img src="{uri}" alt="{_e(alt)}"></a>'


def _card(row: ScoreResult, thumbs: Thumbnails, locator: Locator) -> str:
    """One image of the worst/best lists: thumbnail, its map if any, score and name."""
    name = PurePosixPath(row.path).name or row.path
    pics = [_picture(locator.image(row.path), thumbs, locator, name, "image not found")]
    map_file = locator.map_file(row.path)
    if map_file is not None:
        pics.append(_picture(map_file, thumbs, locator, f"map of {name}", "map not readable"))
    folder = _parent(row.path)
    return (f'<figure class="card"><div class="pics">{"".join(pics)}</div><figcaption>'
            f'<span class="score" style="background:{_colour(row.score)}">{row.score:.1f}</span>'
            f'<span class="name" title="{_e(row.path)}">{_e(name)}</span>'
            + (f'<br><span class="dir">{_e(folder)}</span>' if folder else "")
            + "</figcaption></figure>")


def _grid(rows: Sequence[ScoreResult], thumbs: Thumbnails, locator: Locator, empty: str) -> str:
    """The cards of ``rows``, or the ``empty`` note when there are none."""
    if not rows:
        return f'<p class="note">{_e(empty)}</p>'
    return '<div class="grid">' + "".join(_card(r, thumbs, locator) for r in rows) + "</div>"


def _stats_block(rows: Sequence[ScoreResult], scored: Sequence[float]) -> str:
    """The counts and the score statistics as a row of boxes."""
    items = [("images", f"{len(rows):,}"), ("scored", f"{len(scored):,}"),
             ("failed", f"{len(rows) - len(scored):,}")]
    if scored:
        items += [("median", _fmt(statistics.median(scored))), ("mean", _fmt(statistics.fmean(scored))),
                  ("min", _fmt(min(scored))), ("max", _fmt(max(scored)))]
    cells = "".join(f'<div class="stat"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in items)
    return f'<div class="stats">{cells}</div>'


def _folders_table(rows: Sequence[ScoreResult]) -> str:
    """Median per folder, names shortened to the part below their common folder."""
    stats = folder_medians(rows)
    root = common_folder([s.folder for s in stats]) if len(stats) > 1 else ""
    body = []
    for s in stats[:MAX_FOLDERS]:
        shown = s.folder[len(root):].lstrip("/") if root else s.folder
        bar = f'<span class="bar" style="width:{max(0.0, min(100.0, s.median)):.0f}px"></span> ' if s.median is not None else ""
        body.append(f'<tr><td title="{_e(s.folder)}">{_e(shown or "(top)")}</td><td class="n">{s.images:,}</td>'
                    f'<td class="n">{s.failed:,}</td><td>{bar}{_fmt(s.median)}</td></tr>')
    caption = f'<p class="note">Folders under <code>{_e(root)}</code>, lowest median first.</p>' if root else \
        '<p class="note">Lowest median first.</p>'
    more = (f'<p class="note">… and {len(stats) - MAX_FOLDERS:,} more folders not listed.</p>'
            if len(stats) > MAX_FOLDERS else "")
    return (caption + "<table><tr><th>folder</th><th>images</th><th>failed</th><th>median score</th></tr>"
            + "".join(body) + "</table>" + more)


def _failures_table(failed: Sequence[ScoreResult]) -> str:
    """The failed rows and their reasons, at most ``MAX_FAILURES`` of them."""
    if not failed:
        return '<p class="note">None: every image was scored.</p>'
    body = "".join(f"<tr><td>{_e(r.path)}</td><td>{_e(r.error or 'no score')}</td></tr>"
                   for r in failed[:MAX_FAILURES])
    more = (f'<p class="note">… and {len(failed) - MAX_FAILURES:,} more failures not listed.</p>'
            if len(failed) > MAX_FAILURES else "")
    return f"<table><tr><th>path</th><th>reason</th></tr>{body}</table>{more}"


def render_report(rows: Sequence[ScoreResult], locator: Locator, source: str = "",
                  thumbs: Thumbnails | None = None) -> str:
    """The report page for ``rows`` as one HTML string."""
    from qfmiqm import __version__

    thumbs = thumbs or Thumbnails()
    ok = [r for r in rows if _has_score(r)]
    failed = [r for r in rows if not _has_score(r)]
    scores = [r.score for r in ok]
    worst, best = pick_extremes(ok)
    title = f"Quality report: {Path(source).name}" if source else "Quality report"
    # The policy forbids every fetch: the page can only show what it carries (a check that it is
    # self-contained); links to the original files still work, they are navigations.
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    sub = (f"{_e(source)} · " if source else "") + f"scores 0–100, higher is better · qfmiqm {_e(__version__)}"
    return "".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f'<h1>{_e(title)}</h1><p class="sub">{sub}</p>',
        _stats_block(rows, scores),
        "<h2>Score histogram</h2>", histogram_svg(histogram(scores)),
        f"<h2>Worst {len(worst)}</h2>", _grid(worst, thumbs, locator, "No image was scored."),
        f"<h2>Best {len(best)}</h2>" if best else "<h2>Best</h2>",
        _grid(best, thumbs, locator, "Every scored image is in the list above." if ok else "No image was scored."),
        "<h2>Median per folder</h2>", _folders_table(rows),
        f"<h2>Failures ({len(failed):,})</h2>", _failures_table(failed),
        "</body></html>\n",
    ])


# ----------------------------------------------------------------------------- writing


def check_report_path(out: str | os.PathLike) -> Path:
    """The report's path; a UsageError now (before any scoring) if it cannot be a file."""
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"report '{out}' is a folder; give a file name such as report.html")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"report '{out}': cannot write into '{parent}'")
    return out


def check_maps_dir(maps_dir: str | os.PathLike | None) -> Path | None:
    """The maps folder as a Path; a UsageError when it is given but is not a folder."""
    if maps_dir is None:
        return None
    if not Path(maps_dir).is_dir():
        raise UsageError(f"--maps '{maps_dir}': no such folder")
    return Path(maps_dir)


def write_report(rows: Sequence[ScoreResult], out: str | os.PathLike, bases: Sequence[str | os.PathLike],
                 maps_dir: str | os.PathLike | None = None, source: str = "") -> ReportSummary:
    """Write the report for ``rows`` to ``out`` (atomically); relative paths are looked up under
    each of ``bases`` in order; ``maps_dir`` holds ``score --map`` overlays."""
    from qfmiqm.files import write_text_atomic

    out = check_report_path(out)
    locator = Locator([Path(b) for b in bases], out.parent.absolute(),
                      Path(maps_dir) if maps_dir is not None else None)
    page = render_report(rows, locator, source)
    try:
        write_text_atomic(out, page)
    except OSError as exc:
        raise UsageError(f"report '{out}': cannot write ({exc.strerror or exc})") from None
    scored = sum(1 for r in rows if _has_score(r))
    return ReportSummary(out, len(rows), scored, len(rows) - scored, out.stat().st_size)


def report_from_file(scores: str | os.PathLike, out: str | os.PathLike,
                     maps_dir: str | os.PathLike | None = None) -> ReportSummary:
    """``qfmiqm report``: the report of a score file. Relative paths in it are looked up under
    the score file's folder, then the working directory."""
    maps = check_maps_dir(maps_dir)
    check_report_path(out)
    rows = read_scores(scores)
    bases = [Path(scores).absolute().parent, Path.cwd()]
    return write_report(rows, out, bases, maps, source=str(scores))


class RecordingEngine:
    """Wraps a scoring engine and keeps every result it yields (``score --report`` without
    ``--output``: the rows went to stdout, so the report is built from these)."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.results: list[ScoreResult] = []

    def run(self, *args, **kwargs) -> Iterator[ScoreResult]:
        for result in self._engine.run(*args, **kwargs):
            self.results.append(result)
            yield result

    def __getattr__(self, name: str):
        return getattr(self._engine, name)
