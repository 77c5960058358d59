"""Training epoch time with cached frozen-backbone features vs end to end, measured in one run.

    python benchmarks/cache_speed.py [--config configs/synthetic_qfm.yaml] [--epochs 2] [--images 4]

Builds a small synthetic set from the sample photos (``qfmiqm synth``: --images crops per photo
x 3 distortion types x 3 levels), then trains the same config twice on CPU:
  * end to end: every step decodes, crops and runs the frozen backbone (train.cache_features=false);
  * cached: the feature cache is filled first (timed separately), then a second run trains
    from the cache only (its epochs read nothing but cached tensors).
Prints the mean training-epoch time of each (steps only, evaluation excluded) and their ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from qfmiqm.bench import cpu_name

ROOT = Path(__file__).resolve().parents[1]


def _epoch_seconds(result) -> float:
    times = [row["seconds"] for row in result.history]
    return sum(times) / len(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "synthetic_qfm.yaml"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--images", type=int, default=4, help="crops cut from each sample photo")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    args = ap.parse_args()

    from qfmiqm.data.synth import SynthOptions, synthesize
    from qfmiqm.train.engine import run_training
    from qfmiqm.train.progress import Progress
    from qfmiqm.train.schema import load_train_config

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "syn", ROOT / "samples", SynthOptions(types=("gaussian_blur", "white_noise", "jpeg"),
                                                               levels=(1, 3, 5), size=256, crops=args.images),
                   workers=0)
        common = [f"data.dataset={tmp / 'syn' / 'labels.csv'}", f"optim.epochs={args.epochs}",
                  f"train.cache_dir={tmp / 'cache'}", "eval.test=false", *args.set]
        quiet = lambda: Progress(enabled=False)  # noqa: E731

        cfg = load_train_config(args.config, common + ["train.cache_features=false"])
        e2e = run_training(cfg, tmp / "e2e", progress=quiet())

        cfg = load_train_config(args.config, common + ["train.cache_features=true"])
        start = time.perf_counter()
        first = run_training(cfg, tmp / "cached1", progress=quiet())
        fill = first.cache
        second = run_training(cfg, tmp / "cached2", progress=quiet())
        total_first = time.perf_counter() - start

        n_train = len(e2e.history) and e2e.history[0]["step"] * cfg.optim.batch_size
        t_e2e, t_cached = _epoch_seconds(e2e), _epoch_seconds(second)
        print(f"hardware: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"config: {args.config} ({cfg.model.backbone} frozen, decoder width {cfg.model.decoder.width}, "
              f"grid {cfg.model.decoder.grid}); {n_train} training crops per epoch, batch {cfg.optim.batch_size}, "
              f"{args.epochs} epochs")
        print(f"cache fill (first cached run): {fill['crops_computed']} crops in {fill['seconds']:.1f} s; "
              f"second run reused {second.cache['crops_reused']} of {second.cache['crops_total']} crops "
              f"({second.cache['seconds']:.2f} s to load); both cached runs {total_first:.1f} s in all")
        print(f"epoch time end to end: {t_e2e:.3f} s")
        print(f"epoch time cached:     {t_cached:.3f} s")
        print(f"speed-up (end to end / cached): {t_e2e / t_cached:.1f}x")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
