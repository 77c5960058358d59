"""``qfmiqm evaluate`` and ``qfmiqm diagnose``: a trained model against a labelled dataset."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from qfmiqm.data.datasets import IQADataset
from qfmiqm.data.images import open_image
from qfmiqm.data.splits import load_splits
from qfmiqm.data.transforms import normalize, policy_crops
from qfmiqm.errors import UsageError
from qfmiqm.eval.diagnose import DEFAULT_THRESHOLDS, diagnose_features, plot_semantic_noise
from qfmiqm.eval.report import EvaluationReport, write_evaluation_report, write_json_atomic
from qfmiqm.models.backbones import BackboneFeatures
from qfmiqm.models.features import cat_features
from qfmiqm.scoring import QualityModel, load

SUBSETS = ("test", "train", "val", "all")


@dataclass
class Evaluation:
    report: EvaluationReport
    table: pd.DataFrame
    failed: int


def load_model_quietly(checkpoint: str | os.PathLike, device: str = "auto", **kwargs) -> QualityModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load(checkpoint, device=device, **kwargs)


def select_items(ds: IQADataset, split_file: str | os.PathLike | None, split_index: int, subset: str,
                 allow_missing: bool = False) -> IQADataset:
    """The part of ``ds`` to evaluate: all of it, or one side of one split of a split file."""
    if subset not in SUBSETS:
        raise UsageError(f"--subset must be one of {', '.join(SUBSETS)}, got '{subset}'")
    if split_file is None:
        if subset != "all" and subset != "test":
            raise UsageError(f"--subset {subset} needs --split-file")
        return ds
    splits = load_splits(split_file, dataset=ds, allow_missing=allow_missing)
    if not 0 <= split_index < len(splits):
        raise UsageError(f"{split_file}: split index {split_index} out of range (0-{len(splits) - 1})")
    if subset == "all":
        return ds
    return ds.subset(getattr(splits[split_index], subset))


def evaluate(
    model: QualityModel,
    ds: IQADataset,
    out_dir: str | os.PathLike,
    batch_size: int = 16,
    workers: int | None = None,
    progress: bool = False,
    on_error: Callable[[str, str], None] | None = None,
) -> Evaluation:
    """Score every image of ``ds`` with ``model`` and write the evaluation report into ``out_dir``."""
    model.card = replace(model.card, input=ds.policy(model.card.input))  # e.g. SPAQ's resize
    rows, failed = [], 0
    types = ds.types
    for i, result in enumerate(model.iter_scores(ds.paths, batch_size=batch_size, workers=workers,
                                                 progress=progress)):
        if not result.ok:
            failed += 1
            if on_error:
                on_error(result.path, result.error)
        row = {"path": result.path, "mos": float(ds.labels[i]),
               "prediction": np.nan if result.score is None else result.score}
        if types is not None:
            row["type"] = types[i]
        if result.error:
            row["error"] = result.error
        rows.append(row)
    table = pd.DataFrame(rows)
    if failed == len(rows):
        raise UsageError(f"none of the {len(rows)} images of '{ds.name}' could be scored")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    report = write_evaluation_report(table, out_dir, title=f"{model.name} on {ds.name}")
    return Evaluation(report, table, failed)


@torch.inference_mode()
def pooled_features(model: QualityModel, ds: IQADataset, batch_size: int = 16) -> BackboneFeatures:
    """Head-ready (grid-pooled, ungated) backbone features of each image's centre crop."""
    policy = ds.policy(model.card.input).replace(num_crops=1)
    head, backbone = model.net.head, model.net.backbone
    parts = []
    for start in range(0, len(ds), batch_size):
        crops = []
        for path in ds.paths[start:start + batch_size]:
            crops.append(policy_crops(open_image(path, min_short_side=policy.max_short_side), policy)[0])
        x = normalize(torch.stack(crops).to(model.device), policy)
        parts.append(head.pool(backbone(x)))
    return cat_features(parts)


def diagnose(model: QualityModel, ds: IQADataset, out_dir: str | os.PathLike, k: int = 5,
             thresholds: Sequence[float] = DEFAULT_THRESHOLDS, batch_size: int = 16) -> dict:
    """The semantic-noise table for the backbone's and the gated feature space; JSON + PNG in out_dir."""
    feats = pooled_features(model, ds, batch_size=batch_size)
    table = diagnose_features(feats, ds.labels, head=model.net.head, k=k, thresholds=thresholds)
    for space in table["spaces"].values():
        space["per_image_share"] = dict(zip(ds.paths, space["per_image_share"]))
    table.update({"model": model.name, "dataset": ds.name})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "diagnose.json", table)
    plot_semantic_noise(table, out / "diagnose.png", title=f"Semantic noise: {model.name} on {ds.name}")
    return table

