"""Hyperparameter search on validation sides only: candidates x splits, ranked by median val SRCC.

``run_search`` trains a base config with each candidate's overrides on the training side of the
given splits of a protocol's split file and reads the validation side's metrics (the epoch the
run selects on it); the test sides are never evaluated (``eval.test=false``), so choosing the best
candidate cannot leak a test photo. Candidates: the base config itself, then a seeded random
draw from the grid (all of it when it is smaller than the budget). A finished run is never
recomputed: an interrupted search resumes where it stopped, as the protocol does.

Writes ``search.json`` (every candidate's overrides, per-split val metrics, medians, wall time)
and ``search.md`` (the ranking) into the output folder.
"""
from __future__ import annotations

import itertools
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from qfmiqm.data.datasets import load as load_dataset
from qfmiqm.data.splits import load_splits
from qfmiqm.errors import UsageError
from qfmiqm.eval.protocol import RESULT_FILE, _finished, _train
from qfmiqm.eval.report import write_json_atomic, write_text_atomic
from qfmiqm.train.schema import TrainConfig

Say = Callable[[str], None]
Grid = dict[str, list]


@dataclass
class SearchResult:
    out_dir: Path
    candidates: list[dict]  # {"overrides", "val": [per split], "median_val_srcc", "seconds"}, best first
    table: str

    @property
    def best(self) -> dict:
        return self.candidates[0]


def parse_param(text: str) -> tuple[str, list]:
    """``key=v1,v2,...`` -> (key, [values]); values parsed as YAML scalars (numbers, booleans)."""
    import yaml

    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise UsageError(f"--param '{text}': expected KEY=V1,V2,... e.g. qfm.match_tau=2,5,10")
    return key.strip(), [yaml.safe_load(v.strip()) for v in values.split(",") if v.strip()]


def draw_candidates(grid: Grid, budget: int, seed: int = 0) -> list[dict]:
    """The base config ({}), then up to ``budget - 1`` distinct grid points in a seeded random
    order (every point when the grid has fewer)."""
    if budget < 1:
        raise UsageError(f"--budget must be at least 1, got {budget}")
    keys = sorted(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    random.Random(seed).shuffle(points)
    return [{}] + points[:budget - 1]


def run_search(base: TrainConfig, grid: Grid, split_file: str | Path, split_indices: Sequence[int],
               out_dir: str | Path, budget: int, seed: int = 0, say: Say = print) -> SearchResult:
    """Train every candidate on the splits' training sides; rank by median validation SRCC."""
    split_file = Path(split_file)
    if not split_file.is_file():
        raise UsageError(f"{split_file}: no such split file (a protocol's splits.json)")
    d = base.data
    n_splits = len(load_splits(split_file, dataset=load_dataset(d.dataset, root=d.root, allow_missing=d.allow_missing),
                               allow_missing=d.allow_missing))
    bad = [i for i in split_indices if not 0 <= i < n_splits]
    if bad or not split_indices:
        raise UsageError(f"--split {list(split_indices)}: {split_file} holds splits 0..{n_splits - 1}")
    for key in grid:
        base.replace(**{key: grid[key][0]})  # a wrong key fails now, not after hours of training
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, overrides in enumerate(draw_candidates(grid, budget, seed)):
        vals, seconds = [], 0.0
        for i in split_indices:
            run_dir = out / f"cand{k:02d}" / f"split{i:02d}"
            record = _finished(run_dir, i)
            if record is None:
                say(f"[candidate {k}: {_describe(overrides)}] split {i}")
                cfg = base.replace(**overrides, **{"data.split": i, "data.n_splits": n_splits,
                                                   "data.split_file": str(split_file), "eval.test": False,
                                                   "eval.select": "val"})
                start = time.perf_counter()
                result = _train(cfg, run_dir, say)
                if not result.complete:
                    raise UsageError(f"{run_dir}: training stopped early (train.max_steps); rerun to continue")
                record = {"split": i, "val": result.metrics.get("val", {}), "overrides": overrides,
                          "seconds": time.perf_counter() - start}
                write_json_atomic(run_dir / RESULT_FILE, record)
            vals.append(record["val"])
            seconds += float(record.get("seconds", 0.0))
        srcc = [v["srcc"] for v in vals if "srcc" in v]
        rows.append({"candidate": k, "overrides": overrides, "val": vals, "seconds": seconds,
                     "median_val_srcc": statistics.median(srcc) if srcc else float("nan")})
    rows.sort(key=lambda r: -r["median_val_srcc"])
    table = search_table(rows, list(split_indices))
    write_json_atomic(out / "search.json", {"base_dataset": d.dataset, "split_file": str(split_file),
                                            "splits": list(split_indices), "budget": budget, "seed": seed,
                                            "grid": grid, "candidates": rows})
    write_text_atomic(out / "search.md", table)
    return SearchResult(out, rows, table)


def _describe(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "base config"


def search_table(rows: list[dict], splits: list[int]) -> str:
    """The ranking as Markdown: overrides, val SRCC per split, median, training time."""
    head = "| rank | candidate | " + " | ".join(f"val SRCC split {i}" for i in splits) + " | median | minutes |"
    lines = [head, "|" + "---|" * (len(splits) + 4)]
    for rank, r in enumerate(rows, 1):
        cells = [f"{v['srcc']:.4f}" if "srcc" in v else "-" for v in r["val"]]
        lines.append(f"| {rank} | {_describe(r['overrides'])} | " + " | ".join(cells)
                     + f" | {r['median_val_srcc']:.4f} | {r['seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"
