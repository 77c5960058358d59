"""Feeding the training step and evaluation: from live images or from cached features.

A feeder knows where the inputs of one step come from and how they become backbone features:

* ``LiveFeeder``: decoded images, cropped by the training policy (DataLoader workers); the step
  runs the whole backbone.
* ``CachedFeeder``: frozen-backbone features from the on-disk cache (``qfmiqm.train.cache``);
  the step runs the head only.

Both yield ``(inputs, targets, extra)`` batches in the order of the epoch's sampler, and both
predict the raw (uncentred) scores of this rank's share of an evaluation split.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from qfmiqm.data.transforms import InputPolicy, normalize
from qfmiqm.errors import UsageError
from qfmiqm.models.backbones import BackboneFeatures
from qfmiqm.models.qfm import QualityNet
from qfmiqm.train import ddp
from qfmiqm.train.cache import CachedFeatures, FeatureCache, resolve_cache_runtime
from qfmiqm.train.data import (
    EXTRA_FROM_TRAIN, EpochSampler, EvalCrops, GroupedEpochSampler, RunData, TrainCrops, derive_seed, extra_order,
)
from qfmiqm.train.device import autocast
from qfmiqm.train.schema import TrainConfig

Batch = tuple[object, torch.Tensor, Optional[object]]  # inputs, centred targets, extra (distillation) inputs

#: what a distillation teacher is called on (``distill_student``): the crops, the backbone's
#: features (a head), or cached block inputs (the trained blocks and the head)
TEACHER_ON_IMAGES, TEACHER_ON_FEATURES, TEACHER_ON_BLOCK_INPUTS = "images", "features", "block_inputs"


@dataclass
class FeedContext:
    """What every feeder needs to know about the run."""

    cfg: TrainConfig
    data: RunData
    net: QualityNet
    device: torch.device
    amp: Optional[torch.dtype]
    #: subtracted from training labels (data.center_targets)
    offset: float
    workers: int
    #: the evaluation policy (base policy + the dataset's preprocessing) and the training one
    policy: InputPolicy
    train_policy: InputPolicy
    #: the backbone's own policy (the feature cache's namespace is keyed on it)
    base_policy: InputPolicy
    kd_active: bool
    rank: int = 0
    world: int = 1


class LiveFeeder:
    """Training crops decoded on the fly; the step runs the backbone on them."""

    cached = False

    def __init__(self, ctx: FeedContext):
        self.ctx = ctx

    def setup(self, say: Callable[[str], None]) -> None:
        """Nothing to prepare: images are decoded as the epoch goes."""

    def features(self, net: QualityNet, x: torch.Tensor) -> BackboneFeatures:
        """Backbone features of a batch of crops (called inside the step's forward)."""
        return net.backbone(normalize(x, self.ctx.policy))

    def distill_student(self, net: QualityNet) -> tuple[nn.Module, str]:
        """What an EMA teacher copies: the whole network when the backbone trains, else the head."""
        if self.ctx.cfg.model.finetune.mode != "frozen":
            return net, TEACHER_ON_IMAGES
        return net.head, TEACHER_ON_FEATURES

    def batches(self, sampler: EpochSampler, epoch: int) -> Iterator[Batch]:
        """The epoch's batches from ``sampler``'s position on."""
        c = self.ctx
        view = TrainCrops(c.data.train, c.train_policy, c.cfg.data.hflip, c.cfg.data.repeats, c.cfg.train.seed,
                          extra=c.data.extra if c.kd_active else None)
        view.set_epoch(epoch)
        loader = DataLoader(view, batch_size=c.cfg.optim.batch_size, sampler=sampler, drop_last=True,
                            num_workers=c.workers, pin_memory=c.device.type == "cuda",
                            multiprocessing_context="fork" if c.workers and os.name != "nt" else None)
        for batch in loader:
            x = batch[0].to(c.device, non_blocking=True)
            y = batch[1].to(c.device, non_blocking=True) - c.offset
            extra = batch[2].to(c.device, non_blocking=True) if len(batch) > 2 else None
            yield x, y, extra

    def predict(self, split: str, ds, mine: list[int]) -> dict[int, float]:
        """Raw scores (mean over the policy's test views) of the images ``mine`` of ``ds``."""
        c = self.ctx
        out: dict[int, float] = {}
        loader = DataLoader(EvalCrops(ds, c.policy), sampler=mine, batch_size=self._eval_batch(),
                            num_workers=c.workers, pin_memory=c.device.type == "cuda")
        for idx, crops, _ in loader:
            n, k = crops.shape[:2]
            x = normalize(crops.to(c.device).flatten(0, 1), c.policy)
            with autocast(c.device, c.amp):
                raw = c.net(x)
            for j, v in zip(idx.tolist(), raw.float().view(n, k).mean(1).tolist()):
                out[j] = v
        return out

    def _eval_batch(self) -> int:
        """Images per validation batch: whole-image views differ in size, so they go one at a time."""
        if self.ctx.policy.layout == "whole":
            return 1
        return max(1, self.ctx.cfg.eval.batch_size // self.ctx.policy.num_crops)

    def stats(self) -> dict:
        return {}


class CachedFeeder:
    """Frozen-backbone features from the feature cache; the step runs the head alone."""

    cached = True

    def __init__(self, ctx: FeedContext, needs_eval: Callable[[str], bool]):
        self.ctx, self.needs_eval = ctx, needs_eval
        self.cache: Optional[FeatureCache] = None

    def setup(self, say: Callable[[str], None]) -> None:
        """Compute the missing cached features (bank, evaluation views, distillation bank) and load them."""
        c, t = self.ctx, self.ctx.cfg.train
        self.cache = self._make_cache(
            root=t.cache_dir, net=c.net, policy=c.base_policy, hflip=c.cfg.data.hflip, dtype=t.cache_dtype,
            device=c.device, autocast=(lambda: autocast(c.device, c.amp)) if c.amp else None, workers=c.workers,
            batch_size=c.cfg.eval.batch_size, rank=c.rank, world=c.world, barrier=ddp.barrier,
            log=say, compute_dtype=str(c.amp or torch.float32),
        )
        train_policy = c.cfg.model.input.train_policy(c.base_policy)
        self.bank = self.cache.bank(c.data.train, t.crops_per_image, train_policy)
        self.eval_feats = {name: self.cache.eval(ds) for name, ds in (("val", c.data.val), ("test", c.data.test))
                           if ds is not None and self.needs_eval(name)}
        if c.kd_active:
            self.extra_bank = self.bank if c.cfg.data.extra == EXTRA_FROM_TRAIN \
                else self.cache.bank(c.data.extra, t.crops_per_image, train_policy)
        s = self.cache.stats.to_dict()
        say(f"{self._cache_name()}: {s['crops_reused']} of {s['crops_total']} crops reused, "
            f"{s['crops_computed']} computed ({s['seconds']:.1f} s)")

    def _make_cache(self, **kwargs) -> FeatureCache:
        c = self.ctx
        runtime = resolve_cache_runtime(c.cfg.train.cache_runtime, c.device, bool(c.amp), c.net.backbone.spec.kind)
        return FeatureCache(runtime=runtime, **kwargs)

    def _cache_name(self) -> str:
        return "feature cache"

    def features(self, net: QualityNet, feats: BackboneFeatures) -> BackboneFeatures:
        """The batch's backbone features: the cached ones as they are."""
        return feats

    def distill_student(self, net: QualityNet) -> tuple[nn.Module, str]:
        """What an EMA teacher copies: the head, on cached features."""
        return net.head, TEACHER_ON_FEATURES

    def batches(self, sampler: EpochSampler, epoch: int) -> Iterator[Batch]:
        """The epoch's batches: one crop of each item's bank, picked by (seed, epoch, position)."""
        c = self.ctx
        seed, n, k = c.cfg.train.seed, len(c.data.train), self.bank.n_crops
        total = n * c.cfg.data.repeats
        crops = np.random.default_rng(derive_seed(seed, "bank-pick", epoch)).integers(0, k, size=total)
        labels = torch.as_tensor(c.data.train.labels - c.offset, dtype=torch.float32)
        if c.kd_active:
            n_extra = self.extra_bank.n_images
            e_order = extra_order(n_extra, seed, epoch)
            e_crops = np.random.default_rng(derive_seed(seed, "extra-pick", epoch)).integers(
                0, self.extra_bank.n_crops, size=total)
        positions = np.fromiter(iter(sampler), dtype=np.int64)
        bs = c.cfg.optim.batch_size
        for b in range(len(positions) // bs):
            pos = positions[b * bs:(b + 1) * bs]
            images = torch.from_numpy(pos % n)
            feats = self.bank.gather(images, torch.from_numpy(crops[pos]), c.device)
            extra = None
            if c.kd_active:
                extra = self.extra_bank.gather(torch.from_numpy(e_order[pos % n_extra]),
                                               torch.from_numpy(e_crops[pos]), c.device)
            yield feats, labels[images].to(c.device), extra

    def predict(self, split: str, ds, mine: list[int]) -> dict[int, float]:
        """Raw scores of the images ``mine``: the head on their cached test views."""
        c = self.ctx
        feats: CachedFeatures = self.eval_feats[split]
        k = feats.n_crops
        step = max(1, c.cfg.eval.batch_size // k)
        out: dict[int, float] = {}
        for i in range(0, len(mine), step):
            idx = torch.tensor(mine[i:i + step])
            with autocast(c.device, c.amp):
                raw = c.net.head(self.features(c.net, feats.all_crops(idx, c.device)))
            for j, v in zip(idx.tolist(), raw.float().view(len(idx), k).mean(1).tolist()):
                out[j] = v
        return out

    def stats(self) -> dict:
        return self.cache.stats.to_dict() if self.cache is not None else {}


# --- the epoch's order ---------------------------------------------------------------------------


def epoch_sampler(cfg: TrainConfig, data: RunData, rank: int, world: int) -> EpochSampler:
    """This rank's sampler over images x data.repeats (grouped by content when data.group_size)."""
    d, n_items = cfg.data, len(data.train) * cfg.data.repeats
    if not d.group_size:
        return EpochSampler(n_items, world, rank, cfg.train.seed)
    if data.train.content is None:
        raise UsageError(f"config: 'data.group_size' needs a dataset with a content (reference) column; "
                         f"{data.train.name} has none")
    anchors = None
    if d.group_anchor:
        types = data.train.types
        if types is None or "pristine" not in types:
            raise UsageError(f"config: 'data.group_anchor' needs pristine images (type 'pristine', as in "
                             f"'qfmiqm synth' sets) in the training set; {data.train.name} has none")
        anchors = [t == "pristine" for t in types]
    return GroupedEpochSampler(data.train.content, n_items, world, rank, cfg.train.seed, d.group_size, anchors)


def steps_per_epoch(cfg: TrainConfig, data: RunData, world: int) -> int:
    """Optimiser steps per epoch on each rank (the last incomplete batch is dropped)."""
    n = len(data.train) * cfg.data.repeats
    per_rank = math.ceil(n / world)
    steps = per_rank // cfg.optim.batch_size
    if steps < 1:
        raise UsageError(f"config: 'optim.batch_size' = {cfg.optim.batch_size} is larger than the "
                         f"{per_rank} training items per process (images x data.repeats / processes)")
    return steps
