#!/usr/bin/env bash
# Reproduce the paper's main table (QFM-IQM, ICML 2024, Table 1): one command per row.
#
#   tools/reproduce_paper.sh [-n] deiqt [DATASET ...]   # the DEIQT row
#   tools/reproduce_paper.sh [-n] qfm   [DATASET ...]   # the QFM-IQM row
#   tools/reproduce_paper.sh table                      # both rows, from the results so far
#
# A row runs the 10-split protocol (`qfmiqm protocol`, 80/20 splits, medians) with
# configs/<dataset>_<row>.yaml on each of the eight benchmarks, or on the DATASETs named
# (live csiq tid2013 kadid10k livec koniq10k livefb spaq). Rerunning resumes: finished splits
# are kept. Expected GPU times per command: docs/results.md ("Reproducing the paper's table").
#
# Environment:
#   QFMIQM_DATA       data root holding the benchmarks (docs/datasets.md); default ./datasets
#   BACKBONE_WEIGHTS  DeiT-III ViT-S/16 ImageNet weights file (docs/training.md); required
#   OUT               results folder (default results/paper): OUT/<dataset>_<row>/results.md
#   SPLITS            number of splits (default 10)
#   ALLOW_MISSING=1   train and test on the images present (a partial copy); otherwise each
#                     dataset is checked first and an incomplete one stops the row
# -n prints the commands and runs nothing.
set -euo pipefail

DATASETS_ALL=(live csiq tid2013 kadid10k livec koniq10k livefb spaq)
OUT=${OUT:-results/paper}
SPLITS=${SPLITS:-10}
DRY=0

usage() {
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

# run CMD...: print it (quoted, so it can be pasted), then run it unless -n
run() {
    printf '%q ' "$@"
    printf '\n'
    if [ "$DRY" -eq 0 ]; then "$@"; fi
}

# the table of both rows: median SRCC / PLCC per dataset, from each OUT/<dataset>_<row>/results.json
table() {
    python - "$OUT" "${DATASETS_ALL[@]}" <<'EOF'
import json, sys
from pathlib import Path

out, names = Path(sys.argv[1]), sys.argv[2:]
rows = {"deiqt": "DEIQT", "qfm": "QFM-IQM"}
print("| method | " + " | ".join(names) + " |")
print("|---|" + "---|" * len(names))
for row, title in rows.items():
    cells = []
    for name in names:
        file = out / f"{name}_{row}" / "results.json"
        if not file.is_file():
            cells.append("—")
            continue
        doc = json.loads(file.read_text())
        s = doc["summary"][f"{name}_{row}"]
        n = s["srcc"]["splits"]
        note = "" if n == doc["splits"] else f" ({n} splits)"
        cells.append(f"{s['srcc']['median']:.3f} / {s['plcc']['median']:.3f}{note}")
    print(f"| {title} | " + " | ".join(cells) + " |")
print("\nCells: median SRCC / PLCC over the splits (— = not run yet).")
EOF
}

while getopts "nh" opt; do
    case $opt in
        n) DRY=1 ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
ROW=$1
shift

case $ROW in
    table) table; exit 0 ;;
    deiqt|qfm) ;;
    *) echo "error: unknown row '$ROW' (deiqt, qfm or table)" >&2; exit 2 ;;
esac

NAMES=("$@")
[ ${#NAMES[@]} -gt 0 ] || NAMES=("${DATASETS_ALL[@]}")
for name in "${NAMES[@]}"; do
    [ -f "configs/${name}_${ROW}.yaml" ] || { echo "error: no configs/${name}_${ROW}.yaml (run from the repository root; datasets: ${DATASETS_ALL[*]})" >&2; exit 2; }
done
if [ "$DRY" -eq 0 ] && [ -z "${BACKBONE_WEIGHTS:-}" ]; then
    echo "error: set BACKBONE_WEIGHTS to the DeiT-III ViT-S/16 ImageNet weights file (docs/training.md)" >&2
    exit 2
fi

ROOT=${QFMIQM_DATA:-datasets}
EXTRA=(--set "data.root=$ROOT" --set "model.backbone_weights=${BACKBONE_WEIGHTS:-WEIGHTS}")
[ "${ALLOW_MISSING:-0}" = 1 ] && EXTRA+=(--set data.allow_missing=true)

for name in "${NAMES[@]}"; do
    # fail in seconds on a missing or damaged image, not hours into a run
    [ "${ALLOW_MISSING:-0}" = 1 ] || run qfmiqm datasets check "$name" --root "$ROOT"
    run qfmiqm protocol --config "configs/${name}_${ROW}.yaml" --splits "$SPLITS" \
        --out "$OUT/${name}_${ROW}" "${EXTRA[@]}"
done
[ "$DRY" -eq 1 ] || table
