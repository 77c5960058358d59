"""Fit the image-level tone term of a trained model (qfmiqm/train/tone.py) and write the model
with it: same head weights, the term in the card.

    python tools/fit_tone.py --model runs/default_model/best.safetensors \
        [--config configs/default_model.yaml] [--mildest 2] [--lam 3e-4] [--temperature 3] [--gap 0] \
        [--out runs/default_model/best_tone.safetensors]

It fits on every row of the config's ``data.dataset`` (the run's validation and test scenes
included: the held-out photos are elsewhere). The frozen head's scores come from the run's
feature cache (the mean of each image's ``train.crops_per_image`` cached crops, missing crops are
computed); the statistics are those of each image's policy views, as in scoring. On the 2-core dev VM: about 4 minutes for
the 21,216 images of the default recipe.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from qfmiqm.data.anchor import COLOUR_ONLY
from qfmiqm.data.datasets import load as load_dataset
from qfmiqm.errors import QfmiqmError
from qfmiqm.models.registry import load_net, resolve_model, save_model
from qfmiqm.models.tone import STATISTICS
from qfmiqm.train.cache import FeatureCache, resolve_cache_runtime
from qfmiqm.train.schema import load_train_config
from qfmiqm.train.tone import fit_tone_term, image_statistics, ordered_share, scene_pairs


def head_scores(net, card, cfg, ds) -> np.ndarray:
    """The frozen model's 0-100 scores of the training images, from the feature cache."""
    # the run's own cache: same runtime, same training crops (train_size), so nothing is recomputed
    runtime = resolve_cache_runtime(cfg.train.cache_runtime, torch.device("cpu"), False, net.backbone.spec.kind)
    cache = FeatureCache(cfg.train.cache_dir, net, card.input, cfg.data.hflip, cfg.train.cache_dtype,
                         compute_dtype=str(torch.float32), runtime=runtime)
    k = cfg.train.crops_per_image
    bank = cache.bank(ds, k, cfg.model.input.train_policy(card.input))
    out = []
    with torch.inference_mode():
        for start in range(0, len(ds), 512):
            idx = torch.arange(start, min(start + 512, len(ds)))
            out.append(net.head(bank.all_crops(idx, torch.device("cpu"))).view(-1, k).mean(dim=1))
    raw = torch.cat(out).double().numpy()
    return raw * card.score.scale + card.score.offset


def unseen_pairs(pairs: np.ndarray, run_dir: Path, ds, split: int) -> np.ndarray:
    """The pairs whose images are both outside the training side of the run's split."""
    from qfmiqm.data.splits import load_splits

    chosen = load_splits(run_dir, dataset=ds).splits[split]
    unseen = np.zeros(len(ds), dtype=bool)
    unseen[list(chosen.val) + list(chosen.test)] = True
    kept = pairs[unseen[pairs[:, 0]] & unseen[pairs[:, 1]]]
    if len(kept) == 0:
        raise QfmiqmError(f"{run_dir}: no (pristine, version) pair lies outside the run's training scenes")
    return kept


def cached_statistics(path: Path | None, ds, policy) -> np.ndarray:
    """The images' tone statistics, kept in ``path`` (when given) for the next fit."""
    if path is not None and path.is_file():
        stats = np.load(path)
        if stats.shape == (len(ds), len(STATISTICS)):
            return stats
    stats = image_statistics(ds, policy)
    if path is not None:
        from qfmiqm.files import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, stats)
    return stats


def main() -> None:
    try:
        fit()
    except QfmiqmError as exc:
        sys.exit(f"error: {exc}")


def fit() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="trained checkpoint (.safetensors) or zoo name")
    ap.add_argument("--config", default="configs/default_model.yaml", help="the config the model was trained with")
    ap.add_argument("--mildest", type=int, default=2, help="versions per scene and type paired with the pristine image (0: all)")
    ap.add_argument("--lam", type=float, default=3e-4, help="L2 penalty on the standardised weights")
    ap.add_argument("--temperature", type=float, default=3.0, help="score points per unit of the logistic loss")
    ap.add_argument("--gap", type=float, default=0.0,
                    help="points by which each pristine image should lead its paired versions (0: the right order only)")
    ap.add_argument("--skip-types", default=",".join(sorted(COLOUR_ONLY)),
                    help="distortion types not paired with the pristine image (default: the colour-only ones, "
                         "so the saturation statistic does not mark a black-and-white photo as degraded; '' for none)")
    ap.add_argument("--statistics", default=",".join(STATISTICS),
                    help=f"comma-separated statistics the term uses (default all: {','.join(STATISTICS)})")
    ap.add_argument("--stats-cache", type=Path, default=None,
                    help="a .npy file keeping the images' statistics between fits of the same data and input "
                         "policy (read when its shape fits, else computed and written)")
    ap.add_argument("--pairs-from", choices=("all", "unseen"), default="all",
                    help="scenes whose pairs fit the term: 'all', or 'unseen' by the head (the validation and "
                         "test scenes of the run's splits.json beside the model): the head orders its own training "
                         "scenes almost perfectly, so only scenes it never saw show what the term must correct")
    ap.add_argument("--out", type=Path, help="default: <model>_tone.safetensors beside the model")
    args = ap.parse_args()
    if args.mildest < 0 or args.lam < 0 or args.gap < 0 or args.temperature <= 0:
        sys.exit("error: --mildest, --lam and --gap must be >= 0, --temperature > 0")
    entry = resolve_model(args.model)
    if entry.card.tone is not None:  # the head's own scores are what the fit reads, so a refit replaces it
        print(f"{args.model}: replacing its tone term")
    cfg = load_train_config(args.config)
    net = load_net(entry)
    ds = load_dataset(cfg.data.dataset, root=cfg.data.root, allow_missing=cfg.data.allow_missing)
    skip = frozenset(t for t in args.skip_types.split(",") if t)
    pairs = scene_pairs(ds, mildest=args.mildest or None, skip_types=skip)
    if args.pairs_from == "unseen":
        pairs = unseen_pairs(pairs, entry.weights_path.parent, ds, cfg.data.split)
    scores = head_scores(net, entry.card, cfg, ds)
    stats = cached_statistics(args.stats_cache, ds, entry.card.input)
    statistics = [s for s in args.statistics.split(",") if s]
    term = fit_tone_term(stats, scores, pairs, lam=args.lam, temperature=args.temperature, statistics=statistics,
                         gap=args.gap)
    with_term = scores + term.of_statistics(stats)
    print(f"fitted on {len(pairs)} (pristine, version) pairs of {len(ds)} images ({cfg.data.dataset}); "
          f"pairs ordered: {ordered_share(scores, pairs):.1%} without the term, {ordered_share(with_term, pairs):.1%} with it")
    print("weights per standardised statistic: " + ", ".join(f"{n} {w:+.2f}" for n, w in zip(term.statistics, term.weights)))
    out = args.out or entry.weights_path.with_name(entry.weights_path.stem + "_tone.safetensors")
    fit = {"dataset": str(cfg.data.dataset), "pairs": len(pairs), "mildest": args.mildest, "lam": args.lam,
           "temperature": args.temperature, "gap": args.gap, "skip_types": sorted(skip), "statistics": list(term.statistics), "pairs_from": args.pairs_from, "train_pairs_ordered_without": ordered_share(scores, pairs),
           "train_pairs_ordered_with": ordered_share(with_term, pairs)}
    card = save_model(net, replace(entry.card, tone=term, metrics={**entry.card.metrics, "tone_fit": fit}), out)
    print(f"wrote {out} (sha256 {card.weights_sha256[:16]}...)")


if __name__ == "__main__":
    main()
