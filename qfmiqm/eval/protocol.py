"""The papers' N-split protocol, cross-dataset tests and ablations, each in one call.

``run_protocol``: for each of N splits (80/20, content-disjoint for synthetic sets) train on the
train side and test on the test side, for one or several configs (methods) on the SAME splits;
report median and std of SRCC/PLCC over splits in a paper-style table, and, with several
methods, the paired per-split differences against the first with a Wilcoxon test.

Everything lands in one folder, and a finished split is never recomputed: an interrupted
protocol resumes at the first unfinished split (and that split resumes from its checkpoint).

``run_cross``: train on each dataset (split 0's train side), test every trained model on every
dataset; the SRCC matrix is written as Markdown and as a heatmap.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from qfmiqm.data.datasets import load as load_dataset
from qfmiqm.data.splits import SPLITS_FILENAME, load_splits, save_splits
from qfmiqm.errors import UsageError
from qfmiqm.eval.report import (
    ablation_table, aggregate_splits, cross_dataset_heatmap, cross_dataset_markdown, paper_table,
    write_json_atomic, write_text_atomic,
)
from qfmiqm.train.schema import TrainConfig

RESULT_FILE = "result.json"
Say = Callable[[str], None]


@dataclass
class Method:
    """One row of the protocol table: a name and its training config."""

    name: str
    cfg: TrainConfig


@dataclass
class ProtocolResult:
    out_dir: Path
    dataset: str
    per_split: dict[str, list[dict]]  # method -> test metrics of each split
    summary: dict[str, dict] = field(default_factory=dict)  # method -> aggregate_splits(...)
    table: str = ""


def _train(cfg: TrainConfig, run_dir: Path, say: Say):
    from qfmiqm.train.engine import run_training

    resume = run_dir.exists() and any(run_dir.iterdir())
    if resume:
        say(f"resuming {run_dir}")
    return run_training(cfg, run_dir=run_dir, resume=resume)


def _finished(run_dir: Path, index: int | None = None) -> dict | None:
    """The split's record, or None to (re)run it. A run finished outside the protocol (a split
    trained by hand with ``qfmiqm train``, in parallel) leaves the run's own result.json, which
    carries its metrics under "metrics": its record is built from them."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a damaged record: recompute (the run itself resumes from its checkpoint)
    if "metrics" in record:
        if not record.get("complete"):
            return None
        metrics = record["metrics"]
        return {"split": index, "test": metrics.get("test", {}), "val": metrics.get("val", {}),
                "best_model": record.get("best_model")}
    return record


def count_references(ds) -> int:
    """Distinct reference photos of a dataset: its content groups (synthetic sets), else its
    images (an authentic set's photos are each their own content)."""
    return len(set(ds.content)) if ds.content is not None else len(ds)


def _shared_splits(cfg: TrainConfig, n_splits: int, out_dir: Path) -> tuple[Path, int]:
    """Draw the splits once (or reuse the protocol's file) so every method sees the same ones;
    also returns the dataset's number of reference photos."""
    path = out_dir / SPLITS_FILENAME
    d = cfg.data
    ds = load_dataset(d.dataset, root=d.root, allow_missing=d.allow_missing)
    if path.is_file():
        splits = load_splits(path, dataset=ds, allow_missing=d.allow_missing)
        if len(splits) != n_splits:
            raise UsageError(f"{path}: holds {len(splits)} splits, --splits asks for {n_splits}; "
                             "use another --out or the same --splits")
        return path, count_references(ds)
    if d.split_file:
        splits = load_splits(d.split_file, dataset=ds, allow_missing=d.allow_missing)
    else:
        splits = ds.splits(n=n_splits, test_fraction=d.test_fraction, val_fraction=d.val_fraction, seed=d.seed)
    if len(splits) < n_splits:
        raise UsageError(f"{d.split_file}: holds {len(splits)} splits, fewer than --splits {n_splits}")
    save_splits(splits, path)
    return path, count_references(ds)


def run_protocol(methods: Sequence[Method], n_splits: int, out_dir: str | os.PathLike,
                 say: Say = print) -> ProtocolResult:
    """Train and test every method on the same ``n_splits`` splits; write the tables."""
    if not methods:
        raise UsageError("protocol needs at least one config")
    if n_splits < 1:
        raise UsageError(f"--splits must be at least 1, got {n_splits}")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise UsageError(f"two configs share the method name '{next(n for n in names if names.count(n) > 1)}'")
    datasets = {m.cfg.data.dataset for m in methods}
    if len(datasets) != 1:
        raise UsageError(f"all configs of one protocol must train on the same dataset, got {sorted(datasets)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split_file, references = _shared_splits(methods[0].cfg, n_splits, out)
    dataset = methods[0].cfg.data.dataset
    per_split: dict[str, list[dict]] = {}
    for method in methods:
        per_split[method.name] = []
        for i in range(n_splits):
            run_dir = out / method.name / f"split{i:02d}"
            record = _finished(run_dir, i)
            if record is None:
                say(f"[{method.name}] split {i + 1}/{n_splits}")
                cfg = method.cfg.replace(**{"data.split": i, "data.n_splits": n_splits,
                                            "data.split_file": str(split_file)})
                result = _train(cfg, run_dir, say)
                if not result.complete:
                    raise UsageError(f"{run_dir}: training stopped early (train.max_steps); rerun to continue")
                record = {"split": i, "test": result.metrics.get("test", {}), "val": result.metrics.get("val", {}),
                          "best_model": str(result.best_model) if result.best_model else None}
                write_json_atomic(run_dir / RESULT_FILE, record)
            else:
                say(f"[{method.name}] split {i + 1}/{n_splits}: done earlier")
            per_split[method.name].append(record["test"])
    return _write_protocol_report(out, dataset, per_split, n_splits, references)


def _dataset_label(dataset: str) -> str:
    """A short name for the tables: a benchmark's name; a synth set's folder (``.../labels.csv``);
    else the table file's stem."""
    path = Path(dataset)
    if path.suffix not in (".csv", ".tsv", ".txt"):
        return dataset
    return path.parent.name if path.stem == "labels" else path.stem


def _write_protocol_report(out: Path, dataset: str, per_split: dict[str, list[dict]], n_splits: int,
                           references: int) -> ProtocolResult:
    summary = {name: aggregate_splits(rows) for name, rows in per_split.items()}
    label = _dataset_label(dataset)
    table = paper_table({name: {label: agg} for name, agg in summary.items()}, [label])
    parts = [f"# Protocol: {label}, {n_splits} splits, {references} reference photos\n",
             "Cells: median SRCC / PLCC over the splits, on each split's test side "
             "(medians, stds and means of every metric are in results.json).\n", table]
    per_split_rows = ["| method | split | SRCC | PLCC |", "|---|---|---|---|"]
    for name, rows in per_split.items():
        per_split_rows += [f"| {name} | {i} | {r.get('srcc', float('nan')):.4f} | {r.get('plcc', float('nan')):.4f} |"
                           for i, r in enumerate(rows)]
    parts += ["\n## Per split\n", "\n".join(per_split_rows) + "\n"]
    document = {"dataset": dataset, "splits": n_splits, "references": references, "summary": summary, "per_split": per_split}
    if len(per_split) > 1:
        baseline = next(iter(per_split))
        ablation = ablation_table(per_split, baseline=baseline, metric="srcc")
        parts += [f"\n## Paired differences against {baseline} (SRCC, Wilcoxon signed-rank over splits)\n",
                  ablation.to_markdown()]
        document["ablation"] = ablation.to_dict()
    text = "\n".join(parts)
    write_text_atomic(out / "results.md", text)
    write_json_atomic(out / "results.json", document)
    return ProtocolResult(out, dataset, per_split, summary, text)


def run_cross(method: Method, datasets: Sequence[str], out_dir: str | os.PathLike, say: Say = print,
              batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Train ``method`` on each dataset (split 0's train side) and test on every dataset
    (the own dataset on split 0's test side, the others whole); returns matrix[train][test]."""
    from qfmiqm.eval.evaluate import evaluate, load_model_quietly

    if len(datasets) < 2:
        raise UsageError("--cross needs at least two datasets, e.g. --cross live,csiq,tid2013")
    out = Path(out_dir)
    matrix: dict[str, dict[str, float]] = {}
    models = {}
    for name in datasets:
        run_dir = out / "cross" / _slug(name)
        record = _finished(run_dir)
        if record is None:
            say(f"[cross] training on {name}")
            cfg = method.cfg.replace(**{"data.dataset": name, "data.split": 0})
            result = _train(cfg, run_dir, say)
            record = {"best_model": str(result.best_model), "test": result.metrics.get("test", {})}
            write_json_atomic(run_dir / RESULT_FILE, record)
        models[name] = record
    cfg = method.cfg
    for train_name, record in models.items():
        matrix[train_name] = {}
        for test_name in datasets:
            if test_name == train_name:
                matrix[train_name][test_name] = record["test"].get("srcc", float("nan"))
                continue
            cell_dir = out / "cross" / _slug(train_name) / f"on_{_slug(test_name)}"
            cached = _cell(cell_dir)
            if cached is None:
                say(f"[cross] {train_name} -> {test_name}")
                ds = load_dataset(test_name, root=cfg.data.root, allow_missing=cfg.data.allow_missing)
                model = load_model_quietly(record["best_model"], device=cfg.train.device)
                cached = evaluate(model, ds, cell_dir, batch_size=batch_size).report.metrics["srcc"]
            matrix[train_name][test_name] = cached
    write_text_atomic(out / "cross.md", "# Cross-dataset SRCC (rows: trained on, columns: tested on)\n\n"
                      + cross_dataset_markdown(matrix, tests=list(datasets)))
    write_json_atomic(out / "cross.json", matrix)
    cross_dataset_heatmap(matrix, out / "cross.png", tests=list(datasets))
    return matrix


def _cell(cell_dir: Path) -> float | None:
    path = cell_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["metrics"]["srcc"]
    except (json.JSONDecodeError, KeyError):
        return None


def _slug(name: str) -> str:
    p = Path(name)
    return p.parent.name if p.suffix.lower() in (".csv", ".tsv", ".txt") else name
