"""Do the frozen backbone features tell a pristine image from its mildest distorted versions, and
does the model's head use what they carry?

For each distortion type, a logistic-regression probe learns "pristine or level L" from the
upstream features F the head reads (``head.pool`` of the backbone, averaged over the input
policy's crops) on the scenes of one synthetic set, and is tested on the scenes of another; so
does one probe for all the listed types together. On the same test pairs the model's own scores
are compared. Both are judged per scene: is the
pristine image rated above its own level-L version (the question the default-model test asks)?

    python tools/feature_probe.py [--model default] [--train datasets/synth_default]
        [--test datasets/synth_heldout] [--level 1] [--types gaussian_blur,jpeg,...] [--max-scenes N]

On the 2-core dev VM: about 5 minutes for the 156 + 36 scenes.
"""
from __future__ import annotations

import argparse
import collections
import csv
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

import qfmiqm
from qfmiqm.data.images import open_image
from qfmiqm.data.policy import policy_views, view_weights

DEFAULT_TYPES = "gaussian_blur,lens_blur,jpeg,jpeg2000,white_noise,contrast_change"


def versions_by_scene(root: Path) -> dict[str, dict[tuple[str, int], Path]]:
    """labels.csv of a synthetic set -> {reference: {(type, level): image path}}."""
    labels = root / "labels.csv"
    if not labels.is_file():
        sys.exit(f"error: {labels}: not found (a set made by `qfmiqm synth`)")
    scenes: dict[str, dict[tuple[str, int], Path]] = collections.defaultdict(dict)
    with open(labels, newline="") as f:
        for row in csv.DictReader(f):
            scenes[row["reference"]][(row["type"], int(row["level"]))] = root / row["path"]
    return scenes


class FeatureReader:
    """Pooled upstream features and the model's score of one image, each computed once."""

    def __init__(self, model: qfmiqm.QualityModel):
        self.model = model
        self.cache: dict[Path, tuple[np.ndarray, float]] = {}

    @torch.inference_mode()
    def __call__(self, path: Path) -> tuple[np.ndarray, float]:
        if path not in self.cache:
            views = policy_views(open_image(path), self.model.policy)
            graph = self.model.runtime.graph
            pooled = [graph.pooled(graph.normalised(torch.from_numpy(np.array(v))[None])) for v in views]
            weights = view_weights(views)
            # the pixel-weighted mean of each level's pooled grid over the views, as one vector
            feature = torch.cat([sum(w * p.maps[lv][0].float() for w, p in zip(weights, pooled)).flatten()
                                 for lv in range(len(pooled[0].maps))]).numpy()
            raw = float(self.model.raw_scores([path])[0])
            self.cache[path] = (feature, self.model.map_score(raw))
        return self.cache[path]


def pairs(scenes: dict, kind: str, level: int, read: FeatureReader) -> tuple[np.ndarray, np.ndarray]:
    """Per scene having both: features (n, 2, D) and scores (n, 2) of (pristine, version)."""
    feats, scores = [], []
    for versions in scenes.values():
        if ("pristine", 0) in versions and (kind, level) in versions:
            (fp, sp), (fd, sd) = read(versions[("pristine", 0)]), read(versions[(kind, level)])
            feats.append([fp, fd])
            scores.append([sp, sd])
    return np.array(feats), np.array(scores)


def fit_probe(x_pairs: np.ndarray, c: float = 0.05) -> Callable[[np.ndarray], np.ndarray]:
    """L2-regularised logistic regression, pristine (1) against version (0), on (n, 2, D) pairs of
    standardised features (scikit-learn's objective with C = ``c``); returns the logit function."""
    x = torch.from_numpy(x_pairs.reshape(-1, x_pairs.shape[-1])).double()
    y = torch.tensor([1.0, 0.0], dtype=torch.float64).repeat(len(x_pairs))
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    z = (x - mean) / std
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        opt.zero_grad()
        with torch.enable_grad():
            loss = c * F.binary_cross_entropy_with_logits(z @ w + b, y, reduction="sum") + 0.5 * w @ w
            loss.backward()
        return loss

    opt.step(objective)
    w, b = w.detach(), b.detach()
    return lambda x_new: (((torch.from_numpy(x_new).double() - mean) / std) @ w + b).numpy()


def rated_above(probe: Callable[[np.ndarray], np.ndarray], x_pairs: np.ndarray) -> int:
    """In how many pairs the probe finds the pristine image more pristine than its version."""
    logit = probe(x_pairs)
    return int((logit[:, 0] > logit[:, 1]).sum())


def share(k: int, n: int) -> str:
    return f"{k:3d}/{n:<3d} ({k / n:4.0%})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--train", type=Path, default=Path("datasets/synth_default"))
    ap.add_argument("--test", type=Path, default=Path("datasets/synth_heldout"))
    ap.add_argument("--level", type=int, default=1, choices=range(1, 6))
    ap.add_argument("--types", default=DEFAULT_TYPES)
    ap.add_argument("--max-scenes", type=int, default=None, help="use the first N scenes of each set (a quick look)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_grad_enabled(False)
    read = FeatureReader(qfmiqm.load(args.model, device="cpu", runtime="torch"))
    train, test = (dict(sorted(versions_by_scene(root).items())[:args.max_scenes]) for root in (args.train, args.test))
    print(f"probe trained on {args.train} ({len(train)} scenes), tested on {args.test} ({len(test)} scenes); "
          f"pristine vs level {args.level}")
    kinds = args.types.split(",")
    data = {kind: (pairs(train, kind, args.level, read), pairs(test, kind, args.level, read)) for kind in kinds}
    data = {kind: d for kind, d in data.items() if len(d[0][0]) and len(d[1][0])}
    if not data:
        sys.exit(f"error: no scene of both sets has a pristine image and a level-{args.level} version of "
                 f"{args.types}")
    # one probe for all the types together is the fair comparison with the model, which has to
    # rank the pristine image above every kind of version with one function
    x_all = np.concatenate([d[0][0] for d in data.values()])
    shared = fit_probe(x_all)
    print(f"{'type':18s} {'n':>4s}  pristine rated above its version by: a probe per type / one probe for "
          f"all types / the model (median score gap)")
    for kind, ((x_train, _), (x_test, s_test)) in data.items():
        n = len(x_test)
        per_type = rated_above(fit_probe(x_train), x_test)
        together = rated_above(shared, x_test)
        model = int((s_test[:, 0] > s_test[:, 1]).sum())
        gap = float(np.median(s_test[:, 0] - s_test[:, 1]))
        print(f"{kind:18s} {n:4d}  {share(per_type, n)}  {share(together, n)}  {share(model, n)} ({gap:+.2f})",
              flush=True)

if __name__ == "__main__":
    main()
