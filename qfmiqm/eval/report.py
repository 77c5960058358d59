"""Evaluation reports: files for one evaluation, and tables/plots for the N-split protocol.

One evaluation (:func:`write_evaluation_report`) turns a predictions table (path, mos,
prediction, optional distortion ``type``) into a predictions CSV, a metrics JSON, a Markdown
report, a prediction-vs-MOS scatter plot with the logistic fit and, when types are given, a
per-type SRCC table and bar plot.

For the protocol: :func:`aggregate_splits` (median/std per metric over splits),
:func:`paper_table` (methods x datasets, "SRCC / PLCC" medians), the cross-dataset train x test
matrix (:func:`cross_dataset_markdown`, :func:`cross_dataset_heatmap`) and :func:`ablation_table`
(paired per-split differences against a baseline with a Wilcoxon signed-rank test).

Every file is written to a temporary name in the target folder and renamed into place, so a
half-written file is never seen under its final name. Plots use matplotlib's Agg canvas
directly (no pyplot, no global backend switch).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from qfmiqm.errors import UsageError
from qfmiqm.eval.metrics import LogisticFit, MetricInputError, metrics_and_fit, plcc, srcc
from qfmiqm.files import atomic_path, jsonable, write_json_atomic, write_text_atomic

REQUIRED_COLUMNS = ("path", "mos", "prediction")
TYPE_COLUMN = "type"
#: Final file names of one evaluation report, by role.
REPORT_FILES = {
    "predictions": "predictions.csv",
    "metrics": "metrics.json",
    "markdown": "report.md",
    "scatter": "scatter.png",
    "per_type": "per_type_srcc.png",
}
#: Row labels of the overall metrics, in report order.
METRIC_LABELS = {
    "srcc": "SRCC",
    "krcc": "KRCC",
    "plcc": "PLCC",
    "plcc_fit": "PLCC (logistic fit)",
    "rmse": "RMSE",
    "rmse_fit": "RMSE (logistic fit)",
}
#: Smallest number of non-zero paired differences for which a two-sided exact Wilcoxon test can
#: reach p < 0.05 (its smallest p-value is 2 / 2**n).
MIN_WILCOXON_PAIRS = 6
#: Metrics where a smaller value is better (for wins/losses in the ablation table).
LOWER_IS_BETTER = frozenset({"rmse", "rmse_fit"})
#: Paired differences smaller than this count as ties (float noise between equal scores).
TIE_TOLERANCE = 1e-12
DPI = 120


# --------------------------------------------------------------------------- atomic writing


def save_figure_atomic(fig: Figure, path: str | os.PathLike) -> Path:
    """Render ``fig`` to PNG with the Agg canvas and write it atomically."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return Path(path)


# --------------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table: fixed digits, '—' when missing or NaN."""
    if value is None or (isinstance(value, (float, np.floating)) and not math.isfinite(value)):
        return "—"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; cells are used as given (format them first)."""
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), "|" + "|".join("---" for _ in headers) + "|", *map(line, rows)])


# --------------------------------------------------------------------------- one evaluation


@dataclass
class EvaluationReport:
    """What :func:`write_evaluation_report` computed and wrote."""

    metrics: dict[str, Any]
    fit: LogisticFit | None
    per_type: pd.DataFrame | None
    n_dropped: int
    files: dict[str, Path] = field(default_factory=dict)


def _checked_table(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows with finite mos and prediction (as floats), and how many rows were left out."""
    if not isinstance(table, pd.DataFrame):
        raise UsageError(f"predictions table must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise UsageError(
            f"predictions table lacks column(s) {', '.join(missing)} "
            f"(has {', '.join(map(str, table.columns)) or 'none'})"
        )
    clean = table.copy()
    for col in ("mos", "prediction"):
        clean[col] = pd.to_numeric(clean[col], errors="coerce")
    finite = np.isfinite(clean["mos"].to_numpy(float)) & np.isfinite(clean["prediction"].to_numpy(float))
    return clean[finite].reset_index(drop=True), int((~finite).sum())


def per_type_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """SRCC and PLCC per distortion type (columns type, n, srcc, plcc), sorted by type name.

    A type with fewer than 2 images or constant scores gets NaN; no warning per type, since the
    table itself shows it.
    """
    rows = []
    for name, group in table.groupby(table[TYPE_COLUMN].astype(str), sort=True):
        p, m = group["prediction"].to_numpy(float), group["mos"].to_numpy(float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                s, r = srcc(p, m), plcc(p, m)
            except MetricInputError:
                s = r = math.nan
        rows.append({"type": name, "n": len(group), "srcc": s, "plcc": r})
    return pd.DataFrame(rows, columns=["type", "n", "srcc", "plcc"])


def _scatter_figure(table: pd.DataFrame, metrics: Mapping[str, Any], fit: LogisticFit | None, title: str) -> Figure:
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    x, y = table["prediction"].to_numpy(float), table["mos"].to_numpy(float)
    if TYPE_COLUMN in table.columns:
        types = table[TYPE_COLUMN].astype(str)
        names = sorted(types.unique())
        cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
        for i, name in enumerate(names):
            sel = (types == name).to_numpy()
            ax.scatter(x[sel], y[sel], s=12, alpha=0.7, color=cmap(i % cmap.N), label=name)
        ax.legend(fontsize="x-small", ncol=2, markerscale=1.5, loc="best")
    else:
        ax.scatter(x, y, s=12, alpha=0.6, color="tab:blue", label="images")
    if fit is not None:
        xs = np.linspace(x.min(), x.max(), 256)
        ax.plot(xs, fit(xs), color="black", lw=2, label=f"{fit.kind} fit")
    ax.set_xlabel("prediction")
    ax.set_ylabel("MOS")
    ax.set_title(f"{title}\nSRCC {fmt(metrics['srcc'])}   PLCC {fmt(metrics['plcc'])}   "
                 f"PLCC fit {fmt(metrics['plcc_fit'])}", fontsize="medium")
    ax.grid(alpha=0.3)
    return fig


def _per_type_figure(per_type: pd.DataFrame, title: str) -> Figure:
    shown = per_type.sort_values("srcc", na_position="first")
    fig = Figure(figsize=(6, 1.2 + 0.32 * len(shown)))
    ax = fig.subplots()
    values = shown["srcc"].to_numpy(float)
    ax.barh(shown["type"], np.nan_to_num(values, nan=0.0),
            color=["tab:gray" if not math.isfinite(v) else ("tab:green" if v >= 0 else "tab:red") for v in values])
    for i, v in enumerate(values):
        ax.text(0 if not math.isfinite(v) else v, i, f" {fmt(v) if math.isfinite(v) else 'n/a'}", va="center", fontsize="x-small")
    low = min(0.0, float(np.nanmin(values)) if np.isfinite(values).any() else 0.0)
    ax.set_xlim(low - 0.05 if low < 0 else 0.0, 1.08)
    ax.set_xlabel("SRCC")
    ax.set_title(f"{title}: SRCC per distortion type", fontsize="medium")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _report_markdown(title: str, metrics: Mapping[str, Any], fit: LogisticFit | None,
                     per_type: pd.DataFrame | None, n_dropped: int) -> str:
    parts = [f"# {title}", ""]
    note = f"{metrics['n']} images"
    if n_dropped:
        note += f" ({n_dropped} row(s) without a finite prediction and MOS left out)"
    parts += [note + ".", "", markdown_table(["metric", "value"],
                                              [[label, fmt(metrics[k], 4)] for k, label in METRIC_LABELS.items()])]
    if fit is None:
        parts += ["", "No mapping fitted: predictions or MOS are constant."]
    elif fit.kind == "logistic":
        b = ", ".join(f"β{i + 1} = {v:.4g}" for i, v in enumerate(fit.params))
        parts += ["", f"Fitted mapping: 4-parameter logistic ({b})."]
    else:
        parts += ["", f"Fitted mapping: linear fallback (slope {fit.params[0]:.4g}, intercept {fit.params[1]:.4g})."]
    parts += ["", f"![prediction vs MOS]({REPORT_FILES['scatter']})"]
    if per_type is not None:
        rows = [[r.type, r.n, fmt(r.srcc), fmt(r.plcc)] for r in per_type.itertuples()]
        parts += ["", "## SRCC per distortion type", "", markdown_table(["type", "n", "SRCC", "PLCC"], rows),
                  "", f"![SRCC per type]({REPORT_FILES['per_type']})"]
    return "\n".join(parts) + "\n"


def write_evaluation_report(table: pd.DataFrame, out_dir: str | os.PathLike,
                            title: str = "Evaluation") -> EvaluationReport:
    """Compute the metrics of one predictions table and write the report files into ``out_dir``.

    ``table`` needs columns path, mos, prediction; a ``type`` column adds the per-type SRCC.
    Rows whose mos or prediction is missing/non-finite (e.g. images that failed) are kept in the
    CSV but left out of the metrics, and counted in the report.
    """
    clean, n_dropped = _checked_table(table)
    metrics, fit = metrics_and_fit(clean["prediction"], clean["mos"])
    per_type = per_type_metrics(clean) if TYPE_COLUMN in clean.columns else None
    out = Path(out_dir)
    files = {role: out / name for role, name in REPORT_FILES.items()}
    if per_type is None:
        files.pop("per_type")

    ordered = [*REQUIRED_COLUMNS, *([TYPE_COLUMN] if TYPE_COLUMN in table.columns else [])]
    columns = ordered + [c for c in table.columns if c not in ordered]
    with atomic_path(files["predictions"]) as tmp:
        table[columns].to_csv(tmp, index=False)
    document: dict[str, Any] = {
        "title": title,
        "metrics": metrics,
        "fit": None if fit is None else {"kind": fit.kind, "params": list(fit.params)},
        "n_dropped": n_dropped,
    }
    if per_type is not None:
        document["per_type"] = {r.type: {"n": r.n, "srcc": r.srcc, "plcc": r.plcc} for r in per_type.itertuples()}
    write_json_atomic(files["metrics"], document)
    write_text_atomic(files["markdown"], _report_markdown(title, metrics, fit, per_type, n_dropped))
    save_figure_atomic(_scatter_figure(clean, metrics, fit, title), files["scatter"])
    if per_type is not None:
        save_figure_atomic(_per_type_figure(per_type, title), files["per_type"])
    return EvaluationReport(metrics, fit, per_type, n_dropped, files)


# --------------------------------------------------------------------------- N-split protocol


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def aggregate_splits(per_split: Sequence[Mapping[str, Any]], ddof: int = 0) -> dict[str, dict[str, float]]:
    """Per metric over splits: median, std, mean and the number of splits with a finite value.

    Non-numeric entries (e.g. ``fit``) are skipped; NaN values (an undefined metric on one split)
    are left out of that metric's statistics rather than turning them all into NaN. ``ddof=0``
    matches ``np.std`` as used in the IQA literature's reported ± values.
    """
    if not per_split:
        raise UsageError("no splits to aggregate")
    keys = list(dict.fromkeys(k for split in per_split for k, v in split.items() if _is_number(v)))
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = np.array([float(s[key]) for s in per_split if _is_number(s.get(key))], dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            out[key] = {"median": math.nan, "std": math.nan, "mean": math.nan, "splits": 0}
            continue
        std = float(np.std(values, ddof=ddof)) if values.size > ddof else math.nan
        out[key] = {"median": float(np.median(values)), "std": std, "mean": float(values.mean()),
                    "splits": int(values.size)}
    return out


def _cell_value(cell: Any, metric: str) -> float:
    """A metric's value from a float, a metrics dict or an :func:`aggregate_splits` dict (median)."""
    if cell is None:
        return math.nan
    if _is_number(cell):
        return float(cell)
    value = cell.get(metric) if isinstance(cell, Mapping) else None
    if isinstance(value, Mapping):
        value = value.get("median")
    return float(value) if _is_number(value) else math.nan


def _columns(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    return list(dict.fromkeys(c for row in rows.values() for c in row))


def paper_table(results: Mapping[str, Mapping[str, Any]], datasets: Sequence[str] | None = None, *,
                plcc_key: str = "plcc", digits: int = 3, bold_best: bool = True) -> str:
    """Markdown table like the papers': rows = methods, columns = datasets, cells "SRCC / PLCC".

    ``results[method][dataset]`` is an :func:`aggregate_splits` result (medians are shown) or a
    plain metrics dict. ``plcc_key`` picks raw ("plcc") or logistic-fitted ("plcc_fit") PLCC.
    With ``bold_best`` the best SRCC and the best PLCC of each column are bold.
    """
    datasets = _columns(results, datasets)
    values = {(method, ds, key): _cell_value(row.get(ds), key)
              for method, row in results.items() for ds in datasets for key in ("srcc", plcc_key)}

    def best(ds: str, key: str) -> float:
        column = [v for (_, d, k), v in values.items() if d == ds and k == key and math.isfinite(v)]
        return max(column) if column else math.nan

    def shown(method: str, ds: str, key: str) -> str:
        v = values[(method, ds, key)]
        text = fmt(v, digits)
        return f"**{text}**" if bold_best and math.isfinite(v) and round(v, digits) == round(best(ds, key), digits) else text

    plcc_label = "PLCC" if plcc_key == "plcc" else f"PLCC ({plcc_key})"
    headers = ["Method", *(f"{ds} (SRCC / {plcc_label})" for ds in datasets)]
    rows = [[method, *(f"{shown(method, ds, 'srcc')} / {shown(method, ds, plcc_key)}" for ds in datasets)]
            for method in results]
    return markdown_table(headers, rows)


def cross_dataset_frame(matrix: Mapping[str, Mapping[str, Any]], metric: str = "srcc",
                        tests: Sequence[str] | None = None) -> pd.DataFrame:
    """Train x test values (medians where cells are aggregates) as a DataFrame; missing = NaN."""
    tests = _columns(matrix, tests)
    data = [[_cell_value(row.get(test), metric) for test in tests] for row in matrix.values()]
    return pd.DataFrame(data, index=pd.Index(list(matrix), name="train"),
                        columns=pd.Index(tests, name="test"), dtype=float)


def cross_dataset_markdown(matrix: Mapping[str, Mapping[str, Any]], metric: str = "srcc",
                           digits: int = 3, tests: Sequence[str] | None = None) -> str:
    """Markdown train (rows) x test (columns) matrix of one metric."""
    frame = cross_dataset_frame(matrix, metric, tests)
    headers = [f"train \\ test ({metric.upper()})", *map(str, frame.columns)]
    rows = [[train, *(fmt(v, digits) for v in frame.loc[train])] for train in frame.index]
    return markdown_table(headers, rows)


def cross_dataset_heatmap(matrix: Mapping[str, Mapping[str, Any]], path: str | os.PathLike,
                          metric: str = "srcc", tests: Sequence[str] | None = None) -> Path:
    """Annotated heatmap PNG of the train x test matrix, written atomically."""
    frame = cross_dataset_frame(matrix, metric, tests)
    values = frame.to_numpy(float)
    fig = Figure(figsize=(1.6 + 1.1 * frame.shape[1], 1.2 + 0.8 * frame.shape[0]))
    ax = fig.subplots()
    finite = values[np.isfinite(values)]
    low = min(0.0, float(finite.min())) if finite.size else 0.0
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=low, vmax=1.0, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, fmt(v), ha="center", va="center", fontsize="small",
                color="black" if math.isfinite(v) and v > low + 0.6 * (1 - low) else "white")
    ax.set_xticks(range(frame.shape[1]), frame.columns, rotation=30, ha="right")
    ax.set_yticks(range(frame.shape[0]), frame.index)
    ax.set_xlabel("test")
    ax.set_ylabel("train")
    ax.set_title(f"cross-dataset {metric.upper()}", fontsize="medium")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return save_figure_atomic(fig, path)


@dataclass
class AblationRow:
    """One variant against the baseline; differences are variant − baseline, split by split.

    wins/losses count splits where the variant is better/worse (lower is better for RMSE).
    """

    variant: str
    splits: int
    median: float
    std: float
    diffs: list[float]
    diff_median: float
    wins: int
    ties: int
    losses: int
    p_value: float
    note: str


@dataclass
class AblationTable:
    """Result of :func:`ablation_table`; ``to_markdown()`` for reports, ``to_dict()`` for JSON."""

    baseline: str
    metric: str
    rows: list[AblationRow]

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "metric": self.metric, "rows": [vars(r) for r in self.rows]}

    def to_markdown(self, digits: int = 3) -> str:
        name = self.metric.upper()
        headers = ["variant", f"{name} median", "std", f"Δ median vs {self.baseline}",
                   "wins / ties / losses", "Wilcoxon p", "note"]
        rows = [[r.variant, fmt(r.median, digits), fmt(r.std, digits),
                 "—" if r.variant == self.baseline else f"{r.diff_median:+.{digits}f}",
                 "—" if r.variant == self.baseline else f"{r.wins} / {r.ties} / {r.losses}",
                 _fmt_p(r.p_value), r.note] for r in self.rows]
        return markdown_table(headers, rows)


def _split_values(values: Sequence[Any], metric: str) -> np.ndarray:
    return np.array([_cell_value(v, metric) for v in values], dtype=float)


def _wilcoxon(diffs: np.ndarray) -> tuple[float, str]:
    """Two-sided paired Wilcoxon signed-rank p-value over non-tied splits, or NaN and why not."""
    nonzero = diffs[diffs != 0]
    if nonzero.size == 0:
        return math.nan, "identical to the baseline on every split; no test"
    if nonzero.size < MIN_WILCOXON_PAIRS:
        return math.nan, (f"too few splits with a difference ({nonzero.size}) for a Wilcoxon test; "
                          f"need at least {MIN_WILCOXON_PAIRS}")
    with warnings.catch_warnings():  # scipy notes when ties force the normal approximation
        warnings.simplefilter("ignore")
        p = float(stats.wilcoxon(nonzero).pvalue)
    ties = diffs.size - nonzero.size
    return p, f"{ties} tied split(s) left out of the test" if ties else ""


def ablation_table(per_split: Mapping[str, Sequence[Any]], baseline: str, metric: str = "srcc",
                   ddof: int = 0) -> AblationTable:
    """Compare each variant with ``baseline`` split by split.

    ``per_split[variant]`` lists one value per split, in the same split order for every variant:
    floats or metrics dicts (``metric`` is read from them). Splits where either side is NaN are
    left out of the pairing (and noted).
    """
    if baseline not in per_split:
        raise UsageError(f"baseline '{baseline}' is not among the variants ({', '.join(per_split)})")
    base = _split_values(per_split[baseline], metric)
    rows = []
    for variant, values in per_split.items():
        vals = _split_values(values, metric)
        if vals.size != base.size:
            raise UsageError(f"variant '{variant}' has {vals.size} splits but baseline '{baseline}' has "
                             f"{base.size}; differences are paired by split")
        finite_vals = vals[np.isfinite(vals)]
        median = float(np.median(finite_vals)) if finite_vals.size else math.nan
        std = float(np.std(finite_vals, ddof=ddof)) if finite_vals.size > ddof else math.nan
        paired = np.isfinite(vals) & np.isfinite(base)
        diffs = vals[paired] - base[paired]
        diffs[np.abs(diffs) <= TIE_TOLERANCE] = 0.0
        better = -diffs if metric in LOWER_IS_BETTER else diffs
        notes = []
        if variant == baseline:
            p, notes = math.nan, ["baseline"]
        else:
            p, why = _wilcoxon(diffs)
            notes.append(why)
        if (~paired).any():
            notes.append(f"{int((~paired).sum())} split(s) with NaN left out")
        rows.append(AblationRow(
            variant=variant, splits=int(vals.size), median=median, std=std,
            diffs=[float(d) for d in diffs],
            diff_median=float(np.median(diffs)) if diffs.size else math.nan,
            wins=int((better > 0).sum()), ties=int((diffs == 0).sum()), losses=int((better < 0).sum()),
            p_value=p, note="; ".join(n for n in notes if n),
        ))
    return AblationTable(baseline, metric, rows)


__all__ = [
    "REPORT_FILES", "EvaluationReport", "write_evaluation_report", "per_type_metrics",
    "aggregate_splits", "paper_table", "cross_dataset_frame", "cross_dataset_markdown",
    "cross_dataset_heatmap", "ablation_table", "AblationTable", "AblationRow",
    "atomic_path", "write_text_atomic", "write_json_atomic", "save_figure_atomic", "jsonable",
    "markdown_table", "fmt",
]
