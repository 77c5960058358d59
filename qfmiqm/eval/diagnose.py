"""Semantic-noise diagnostic: how often are feature-space neighbours far apart in quality?

QFM-IQM's observation is that in an upstream (classification) feature space many images lie
close together yet differ a lot in quality. For each image we take its k nearest neighbours by
cosine similarity of pooled features and count the neighbour pairs whose quality differs by more
than a threshold. A feature space that carries quality has a low share; the same share over
*all* pairs (``baseline``) is what a space without any quality information would give. Run it
on the backbone's descriptors and on a head's gated ones to see what the gate selected.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from qfmiqm.errors import UsageError
from qfmiqm.files import atomic_path
from qfmiqm.models.backbones import BackboneFeatures
from qfmiqm.models.features import pooled_descriptor

DEFAULT_THRESHOLDS = (5.0, 10.0, 20.0, 30.0)  # quality points on the 0-100 scale


def _as_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float64)


def knn_indices(features, k: int) -> np.ndarray:
    """(N, D) -> (N, k) indices of each row's k nearest other rows by cosine similarity."""
    x = _as_array(features)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def semantic_noise_table(
    spaces: Mapping[str, object],
    labels,
    k: int = 5,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict:
    """For each named feature space (N, D): the share of (image, k-NN neighbour) pairs whose
    labels differ by more than each threshold, the mean |delta quality| to the neighbours, and the
    per-image share at the first threshold. ``baseline`` holds the same shares over all pairs."""
    y = _as_array(labels).reshape(-1)
    n = y.shape[0]
    if n < 2:
        raise UsageError("the semantic-noise diagnostic needs at least 2 images")
    k = min(k, n - 1)
    thr = np.asarray(list(thresholds), dtype=np.float64)
    all_pairs = np.abs(y[:, None] - y[None, :])[~np.eye(n, dtype=bool)]
    table = {
        "k": k, "n": n, "thresholds": thr.tolist(),
        "baseline": {"share": [(all_pairs > t).mean().item() for t in thr], "mean_abs_dq": all_pairs.mean().item()},
        "spaces": {},
    }
    for name, feats in spaces.items():
        f = _as_array(feats)
        if f.shape[0] != n:
            raise UsageError(f"feature space '{name}' has {f.shape[0]} rows for {n} labels")
        dq = np.abs(y[:, None] - y[knn_indices(f, k)])  # (N, k)
        table["spaces"][name] = {
            "share": [(dq > t).mean().item() for t in thr],
            "mean_abs_dq": dq.mean().item(),
            "per_image_share": (dq > thr[0]).mean(axis=1).tolist(),
        }
    return table


def diagnose_features(feats: BackboneFeatures, labels, head=None, k: int = 5,
                      thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict:
    """The table for the backbone's pooled descriptors and, given a QualityHead, its gated ones."""
    spaces = {"backbone": pooled_descriptor(head.pool(feats) if head is not None else feats)}
    if head is not None:
        spaces["gated"] = head.gated_descriptor(feats)
    return semantic_noise_table(spaces, labels, k=k, thresholds=thresholds)


def format_table(table: dict) -> str:
    """Plain-text rendering: one row per space, one column per threshold."""
    head = ["space"] + [f">{t:g}" for t in table["thresholds"]] + ["mean|dq|"]
    rows = [["all pairs"] + [f"{s:.3f}" for s in table["baseline"]["share"]] + [f"{table['baseline']['mean_abs_dq']:.2f}"]]
    for name, r in table["spaces"].items():
        rows.append([f"{name} {table['k']}-NN"] + [f"{s:.3f}" for s in r["share"]] + [f"{r['mean_abs_dq']:.2f}"])
    widths = [max(len(row[i]) for row in [head] + rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [head] + rows)


def plot_semantic_noise(table: dict, path: str | os.PathLike, title: str = "Semantic noise in feature neighbourhoods") -> Path:
    """Share of k-NN pairs beyond each quality threshold, per space, against the all-pairs
    baseline; saved as PNG (written to a temporary file, then renamed)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    path = Path(path)
    thr = table["thresholds"]
    fig = Figure(figsize=(5.5, 3.8), dpi=120)
    ax = fig.subplots()
    ax.plot(thr, table["baseline"]["share"], "k--", label="all pairs (no quality information)")
    for name, r in table["spaces"].items():
        ax.plot(thr, r["share"], marker="o", label=f"{name}: {table['k']}-NN")
    ax.set_xlabel("quality difference threshold")
    ax.set_ylabel("share of neighbour pairs beyond it")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
