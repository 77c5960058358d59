"""Fitting a model's image-level tone term (qfmiqm/models/tone.py) after its head is trained.

The head is frozen; only the tone term's weights are learnt, from pairs of one scene's pristine
image and each of its distorted versions: a logistic pairwise loss on the margin the scores give
the pristine image, ``softplus(-(head_p - head_d + w . (z_p - z_d) - gap) / T)``, plus
``lam * |w|^2``. ``gap`` asks the pristine image to lead each paired version by that many points,
as the training's in-scene hinge does; 0 asks only for the right order.
Pairs the head already orders by many points cost nothing, so the term learns to correct what
the head cannot see (a global loss of contrast, docs/default-model.md) and, kept small by the L2
penalty, leaves the rest of the ranking alone. The statistics are standardised on the training
images, so the term averages to zero over them and the score mapping stays as it was.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from qfmiqm.data.datasets import IQADataset
from qfmiqm.data.images import open_image
from qfmiqm.data.policy import InputPolicy, policy_views
from qfmiqm.data.synth import PRISTINE_TYPE
from qfmiqm.errors import UsageError
from qfmiqm.models.tone import STATISTICS, ToneTerm, tone_statistics


class _StatisticsOf(Dataset):
    def __init__(self, paths: Sequence[str], policy: InputPolicy, max_pixels: int):
        self.paths, self.policy, self.max_pixels = list(paths), policy, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        img = open_image(self.paths[i], self.max_pixels, min_short_side=self.policy.max_short_side)
        return tone_statistics(policy_views(img, self.policy))


def image_statistics(ds: IQADataset, policy: InputPolicy, workers: int = 2) -> np.ndarray:
    """(len(ds), len(STATISTICS)) float64 tone statistics of every image of ``ds`` over its policy
    views (the dataset's own ``max_short_side`` applies, as in scoring)."""
    # the DataLoader is only a pool of decoding workers: batches stay numpy
    loader = DataLoader(_StatisticsOf(ds.paths, ds.policy(policy), ds.max_pixels), batch_size=64,
                        num_workers=workers, persistent_workers=False, collate_fn=np.stack)
    out = list(loader)
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, len(STATISTICS)))


def scene_pairs(ds: IQADataset, mildest: int | None = 2, skip_types: frozenset[str] = frozenset()) -> np.ndarray:
    """(P, 2) indices (pristine image, distorted version) within the scenes of a synthetic dataset.

    ``mildest``: keep, of each scene's versions of one distortion type, only the ``mildest`` best
    labelled (in a ``qfmiqm synth`` set: levels 1 and 2); None keeps every version. Mild versions
    are the pairs a head gets wrong (docs/default-model.md); the heavy ones it orders by tens of
    points would only dilute the loss. ``skip_types``: distortion types left out (the colour-only
    ones of qfmiqm.data.anchor: a black-and-white photo must not be taught as worse than its
    colour original through the saturation statistic).
    """
    if ds.content is None or ds.types is None:
        raise UsageError(f"{ds.name}: fitting a tone term needs a synthetic set with reference and type columns")
    pristine = {c: i for i, (c, t) in enumerate(zip(ds.content, ds.types)) if t == PRISTINE_TYPE}
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (c, t) in enumerate(zip(ds.content, ds.types)):
        if t != PRISTINE_TYPE and t not in skip_types and c in pristine:
            groups.setdefault((c, t), []).append(i)
    pairs = []
    for (c, _), versions in groups.items():
        versions = sorted(versions, key=lambda i: -ds.labels[i])[:mildest]
        pairs += [(pristine[c], i) for i in sorted(versions)]
    if not pairs:
        raise UsageError(f"{ds.name}: no scene has both a pristine image and a distorted version")
    return np.array(sorted(pairs), dtype=np.int64)


def fit_tone_term(stats: np.ndarray, head_scores: np.ndarray, pairs: np.ndarray, lam: float = 3e-4,
                  temperature: float = 3.0, max_iter: int = 200,
                  statistics: Sequence[str] = STATISTICS, gap: float = 0.0) -> ToneTerm:
    """The tone term minimising the pairwise loss of the module docstring (LBFGS, float64).

    ``stats``: (N, len(STATISTICS)); ``head_scores``: (N,) the frozen model's scores on the
    0-100 scale (the term is in the same points); ``pairs``: (P, 2) (better, worse) indices;
    ``statistics``: the names of the statistics the term uses (default all); ``gap``: the points
    by which the better image of a pair should lead (module docstring).
    """
    if stats.shape != (len(head_scores), len(STATISTICS)):
        raise ValueError(f"stats must be ({len(head_scores)}, {len(STATISTICS)}), got {stats.shape}")
    statistics = tuple(statistics)
    unknown = [s for s in statistics if s not in STATISTICS]
    if unknown or not statistics:
        raise UsageError(f"tone statistics {list(statistics)}: choose among {list(STATISTICS)}")
    stats = np.asarray(stats, dtype=np.float64)[:, [STATISTICS.index(s) for s in statistics]]
    mean, scale = stats.mean(axis=0), stats.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)  # a constant statistic gets no say, not a division by 0
    z = torch.from_numpy((stats - mean) / scale)
    dz = z[pairs[:, 0]] - z[pairs[:, 1]]
    head = torch.as_tensor(head_scores, dtype=torch.float64)
    margin = head[pairs[:, 0]] - head[pairs[:, 1]] - gap
    w = torch.zeros(len(statistics), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(margin + dz @ w) / temperature).mean() + lam * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return ToneTerm(mean=tuple(mean.tolist()), scale=tuple(scale.tolist()), weights=tuple(w.detach().tolist()),
                    statistics=statistics)


def ordered_share(scores: np.ndarray, pairs: np.ndarray) -> float:
    """Share of (better, worse) pairs whose scores put the better one strictly above."""
    return float(np.mean(scores[pairs[:, 0]] > scores[pairs[:, 1]]))
