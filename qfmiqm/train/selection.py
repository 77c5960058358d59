"""Evaluation and model selection: the metrics of a split, keeping the best epoch (by
eval.select) as ``best/ckpt-<step>`` and ``best.safetensors``, and the run's final metrics."""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import numpy as np
import torch

from qfmiqm.data.transforms import InputPolicy
from qfmiqm.eval.metrics import MetricInputError, MetricWarning, all_metrics
from qfmiqm.models.card import ScoreMapping
from qfmiqm.models.qfm import QualityNet
from qfmiqm.models.registry import save_model
from qfmiqm.train import ddp
from qfmiqm.train.build import training_card
from qfmiqm.train.checkpoint import list_checkpoints, read_checkpoint, save_checkpoint
from qfmiqm.train.data import RunData
from qfmiqm.train.run_dir import BEST_MODEL, RunDir
from qfmiqm.train.schema import TrainConfig

METRIC_KEYS = ("srcc", "plcc", "krcc", "rmse", "plcc_fit")
#: eval.select -> the row column it maximises (None: the last evaluated epoch wins)
SELECT_COLUMNS = {"val": "val_srcc", "test": "test_srcc", "last": None}


def selection_splits(select: str) -> tuple[str, ...]:
    """The splits evaluated at an epoch end."""
    return ("val", "test") if select == "test" else ("val",)


def needs_eval(cfg: TrainConfig, name: str) -> bool:
    """Whether split ``name`` is ever evaluated (so its cached views are needed)."""
    if name == "val":
        return True
    return cfg.eval.test or cfg.eval.select == "test"


class Selector:
    """Evaluates splits with the feeder's predictions and keeps the best model."""

    def __init__(self, cfg: TrainConfig, data: RunData, net: QualityNet, feeder, run_dir: RunDir,
                 rank: int, world: int, offset: float, name: str, policy: InputPolicy, config_hash: str):
        self.cfg, self.data, self.net, self.feeder, self.run_dir = cfg, data, net, feeder, run_dir
        self.rank, self.world, self.offset, self.name = rank, world, offset, name
        self.policy, self.hash = policy, config_hash

    # --- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, split: str) -> dict:
        """n and METRIC_KEYS on ``split`` (NaN metrics when it is too small for correlations)."""
        ds = self.data.val if split == "val" else self.data.test
        if ds is None:
            return {}
        preds = self.predict(split, ds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            try:
                m = all_metrics(preds, ds.labels)
            except MetricInputError:  # too few images for a correlation
                m = {"n": len(ds), **{k: float("nan") for k in METRIC_KEYS}}
        return {k: float(m[k]) for k in ("n", *METRIC_KEYS) if k in m}

    def predict(self, split: str, ds) -> np.ndarray:
        """Scores of every image of ``ds``: each rank predicts its share, all ranks get them all."""
        mine = list(range(self.rank, len(ds), self.world))
        self.net.eval()
        try:
            out = self.feeder.predict(split, ds, mine)
        finally:
            self.net.train()
        merged: dict[int, float] = {}
        for part in ddp.all_gather_objects(out):
            merged.update(part)
        return np.array([merged[i] for i in range(len(ds))], dtype=np.float64) + self.offset

    # --- selection ---------------------------------------------------------------------------

    def maybe_select(self, state: dict, epoch: int, row: dict, weights: Callable[[], dict]) -> None:
        """Keep this epoch's model when it beats the best so far (``weights``: its state dict)."""
        select = self.cfg.eval.select
        key = SELECT_COLUMNS[select]
        best = state["best"]
        score = row.get(key, float("nan")) if key else float(epoch)
        score = -math.inf if not math.isfinite(score) else score
        if best is not None and score <= best["score"] and select != "last":
            return
        state["best"] = {"epoch": epoch + 1, "score": score, "step": state["global_step"],
                         "val": {k[4:]: row[k] for k in row if k.startswith("val_")}}
        if self.run_dir.is_main:
            save_checkpoint(self.run_dir.best_dir, state["global_step"], {"model": weights()},
                            {"epoch": epoch + 1, "config_hash": self.hash, "best": state["best"]}, keep=1)
            self.export(state["best"], test=None)
        ddp.barrier()

    def load_best(self, load: Callable[[dict], None]) -> None:
        """Reload the selected model's weights (``load`` puts a state dict back)."""
        ckpt = read_checkpoint(list_checkpoints(self.run_dir.best_dir)[-1])
        load(ckpt.tensors["model"])

    def method(self) -> str:
        q = self.cfg.qfm
        return "QFM-IQM" if (q.match or q.adv or q.kd or self.cfg.model.decoder.gate) else "DEIQT"

    def export(self, best: dict, test: Optional[dict]) -> None:
        """best.safetensors with its card: the selected epoch's metrics (and test ones at the end)."""
        d, cfg = self.data, self.cfg
        metrics = {"selected_on": cfg.eval.select, "epoch": best["epoch"], "val": best["val"]}
        if test is not None:
            metrics["test"] = test
        limits = []
        if cfg.eval.select == "test":
            limits.append("epoch selected on the test split (as DEIQT's code does): test metrics are optimistic")
        card = training_card(
            cfg, name=self.name, policy=self.policy, trained=True,
            description=f"{self.method()} ({cfg.model.backbone}, backbone {cfg.model.finetune.mode}) trained with "
                        f"qfmiqm train on {d.dataset.name}",
            training_data=d.describe() + f"; run {self.run_dir.path.name}, config hash {self.hash}",
            metrics=metrics, limits=tuple(limits), score=ScoreMapping(offset=self.offset),
        )
        save_model(self.net, card, self.run_dir.path / BEST_MODEL)

    def final_metrics(self, state: dict, load: Callable[[dict], None]) -> dict:
        """Reload the selected model, test it (eval.test) and re-export; the run's metrics."""
        cfg, best = self.cfg, state["best"]
        test = None
        if best is not None:
            self.load_best(load)
            if cfg.eval.test and self.data.test is not None:
                test = self.evaluate("test")
                if self.run_dir.is_main:
                    self.export(best, test)
        return {"best_epoch": best["epoch"] if best else None, "selected_on": cfg.eval.select,
                "val": best["val"] if best else {}, "test": test or {},
                "last": state["history"][-1] if state["history"] else {}}
