#!/usr/bin/env bash
# The candidate successor of the default model (configs/default_model_anchored.yaml): needs
# datasets/pristine from tools/collect_photos.py (as tools/build_default_model.sh). About 45 min
# on the 2-core CPU: synth 15 min, feature caching 10 min, 30 epochs 12 min, tone fit 5 min.
# Its labels take KADID's cells by level index (--match index), as when it was measured (docs/labels.md).
set -euo pipefail
cd "$(dirname "$0")/.."
qfmiqm synth --src datasets/pristine/train --out datasets/synth_all --max-side 1024 --size 288 --crops 1 --seed 0
qfmiqm synth --src datasets/pristine/train --out datasets/synth_pristine --max-side 1024 --size 288 --crops 10 \
  --seed 7 --types white_noise --levels 1
python tools/make_default_train.py datasets/synth_all datasets/synth_pristine datasets/default_train_all.csv
python tools/anchor_labels.py datasets/default_train_all.csv datasets/default_train_anchored.csv --match index
qfmiqm synth --src datasets/pristine/heldout --out datasets/synth_heldout --max-side 1024 --size 288 --crops 1 --seed 1 \
  --types kadid
python tools/anchor_labels.py datasets/synth_heldout/labels.csv datasets/synth_heldout/labels_anchored.csv --match index
qfmiqm train --config configs/default_model_anchored.yaml "$@"
python tools/fit_tone.py --model runs/default_anchored/best.safetensors --config configs/default_model_anchored.yaml \
  --out runs/default_anchored/best_tone.safetensors
