"""The data of one training run: the dataset, its split, the extra (unlabelled) images, and
training views whose every random choice is a function of (seed, epoch, position).

Nothing here draws from a global random generator: the order of an epoch, the crop and flip of
each item and the extra image paired with it are derived from explicit seeds, so a run killed
at any step and resumed from its checkpoint sees exactly the same batches as an uninterrupted
one, whatever the number of DataLoader workers.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from qfmiqm.data.datasets import IQADataset, load as load_dataset
from qfmiqm.data.splits import Split, SplitSet, load_splits
from qfmiqm.data.transforms import InputPolicy, RandomPolicyCrop
from qfmiqm.errors import UsageError

#: ``data.extra`` value meaning: other random crops of the training images, unlabelled
EXTRA_FROM_TRAIN = "train"


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@dataclass
class RunData:
    dataset: IQADataset
    splits: SplitSet
    split: Split
    train: IQADataset
    val: Optional[IQADataset]
    test: Optional[IQADataset]
    extra: Optional[IQADataset]

    def describe(self) -> str:
        p = self.splits.protocol
        return (f"{self.dataset.name} ({self.dataset.kind}): split {self.split.index} of {p.n} "
                f"(test {p.test_fraction:g}, val {p.val_fraction:g}, seed {p.seed}, by {self.splits.grouped_by}): "
                f"{len(self.split.train)} train, {len(self.split.val)} val, {len(self.split.test)} test images"
                + (f"; {self.dataset.dropped} missing image(s) dropped (data.allow_missing)" if self.dataset.dropped else ""))


def load_run_data(cfg) -> RunData:
    """Load and split the dataset named by ``cfg.data`` (TrainConfig); errors name the key."""
    d = cfg.data
    try:
        ds = load_dataset(d.dataset, root=d.root, allow_missing=d.allow_missing, max_short_side=d.max_short_side)
    except UsageError as exc:
        raise UsageError(f"config: 'data.dataset' = {d.dataset!r}: {exc}") from None
    if d.split_file:
        splits = load_splits(d.split_file, dataset=ds, allow_missing=d.allow_missing)
        if d.split >= len(splits):
            raise UsageError(f"config: 'data.split' = {d.split} but {d.split_file} holds {len(splits)} splits")
    else:
        splits = ds.splits(n=d.n_splits, test_fraction=d.test_fraction, val_fraction=d.val_fraction, seed=d.seed)
    split = splits[d.split]
    if not split.train:
        raise UsageError(f"config: split {d.split} of {d.dataset!r} has no training images")
    train = ds.subset(split.train)
    val = ds.subset(split.val) if split.val else None
    test = ds.subset(split.test) if split.test else None
    return RunData(ds, splits, split, train, val, test, load_extra(cfg, ds, train))


def load_extra(cfg, ds: IQADataset, train: IQADataset) -> Optional[IQADataset]:
    """The unlabelled images of ``data.extra`` (labels are ignored): a folder or a CSV."""
    extra = cfg.data.extra
    if extra is None:
        return None
    if extra == EXTRA_FROM_TRAIN:
        return train
    path = Path(extra)
    if path.is_dir():
        from qfmiqm.data.sources import expand_inputs

        files, _ = expand_inputs([str(path)], recursive=True)
        if not files:
            raise UsageError(f"config: 'data.extra' = {extra!r}: no images in that folder")
        return IQADataset(name=f"extra:{path.name}", paths=files, labels=np.zeros(len(files)), kind="authentic",
                          keys=files, max_short_side=ds.max_short_side)
    if not path.is_file():
        raise UsageError(f"config: 'data.extra' = {extra!r}: not 'train', a folder of images or a CSV file")
    try:
        out = load_dataset(str(path), root=cfg.data.extra_root, allow_missing=cfg.data.allow_missing)
    except UsageError as exc:
        raise UsageError(f"config: 'data.extra' = {extra!r}: {exc}") from None
    out.max_short_side = ds.max_short_side
    return out


# --- epoch plans -----------------------------------------------------------------------


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled with seed + epoch, padded to equal shards) that can start
    part-way into an epoch: ``start`` items of this rank's shard are skipped (resume)."""

    def __init__(self, n_items: int, world: int, rank: int, seed: int):
        super().__init__(range(n_items), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


class GroupedEpochSampler(EpochSampler):
    """``EpochSampler`` whose order comes in runs of ``group_size`` items of the same content, so a
    batch holds several versions of a few scenes (in-batch rank and matching pairs then compare
    like with like). A run is one shuffled chunk of a content group (a group's last chunk may be
    shorter); the runs are shuffled with seed + epoch and each process takes a contiguous slice.

    With ``anchors`` (True for a scene's pristine image) every run of a scene that has one starts
    with it, so every batch compares pristine images with their own distorted versions. The epoch
    keeps its length: the anchors take one slot per run, and the items that no longer fit wait
    for a later epoch (a different random subset each time)."""

    def __init__(self, groups: Sequence[str], n_items: int, world: int, rank: int, seed: int, group_size: int,
                 anchors: Optional[Sequence[bool]] = None):
        super().__init__(n_items, world, rank, seed)
        self.group_size = group_size
        _, self.group_ids = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
        self.anchors = np.asarray(anchors, dtype=bool) if anchors is not None else None

    def __iter__(self):
        rng = np.random.default_rng(derive_seed(self.seed, "groups", self.epoch))
        order = grouped_order(self.group_ids, len(self.dataset), self.group_size, rng, self.anchors)
        order = np.concatenate([order, order[: self.total_size - len(order)]])
        mine = order[self.rank * self.num_samples:(self.rank + 1) * self.num_samples]
        return iter(mine[self.start:].tolist())


def grouped_order(group_ids: np.ndarray, n_items: int, group_size: int, rng: np.random.Generator,
                  anchors: Optional[np.ndarray] = None) -> np.ndarray:
    """``n_items`` positions in runs of up to ``group_size`` items whose image (item % len(group_ids))
    shares a group id: a permutation of ``range(n_items)``, or, with ``anchors``, runs that each
    start with one of their group's anchor items (cut back to ``n_items`` positions)."""
    items = np.arange(n_items)
    image = items % len(group_ids)
    item_groups = group_ids[image]
    is_anchor = anchors[image] if anchors is not None else np.zeros(n_items, dtype=bool)
    runs = []
    for g in np.unique(group_ids):
        mine = item_groups == g
        members = rng.permutation(items[mine & ~is_anchor])
        heads = items[mine & is_anchor]
        if not len(heads) or not len(members):
            members = rng.permutation(items[mine])
            runs.extend(np.split(members, range(group_size, len(members), group_size)))
            continue
        step = max(1, group_size - 1)
        for chunk in np.split(members, range(step, len(members), step)):
            runs.append(np.concatenate([[rng.choice(heads)], chunk]))
    order = np.concatenate([runs[i] for i in rng.permutation(len(runs))])
    return order[:n_items]


def extra_order(n_extra: int, seed: int, epoch: int) -> np.ndarray:
    """Which extra image each position of an epoch is paired with (a permutation, cycled)."""
    return np.random.default_rng(derive_seed(seed, "extra", epoch)).permutation(n_extra)


class TrainCrops(Dataset):
    """Training items of one epoch for a live backbone: position k -> (uint8 crop (3,S,S), label
    [, uint8 crop of an extra image]). Image ``k % N``; the crop and flip come from a generator
    seeded by (seed, epoch, k), so an item is the same in any worker and after a resume."""

    def __init__(self, ds: IQADataset, policy: InputPolicy, hflip: float, repeats: int, seed: int,
                 extra: Optional[IQADataset] = None):
        self.gen = torch.Generator()
        crop = RandomPolicyCrop(policy, hflip=hflip, generator=self.gen)
        self.ds = ds.with_transform(crop)
        self.extra = extra.with_transform(crop) if extra is not None else None
        self.repeats, self.seed, self.epoch = repeats, seed, 0
        self._extra_order: Optional[np.ndarray] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._extra_order = extra_order(len(self.extra), self.seed, epoch) if self.extra is not None else None

    def __len__(self) -> int:
        return len(self.ds) * self.repeats

    def __getitem__(self, k: int):
        self.gen.manual_seed(derive_seed(self.seed, "crop", self.epoch, k))
        crop, label = self.ds[k % len(self.ds)]
        if self.extra is None:
            return crop, label
        self.gen.manual_seed(derive_seed(self.seed, "extra-crop", self.epoch, k))
        extra_crop, _ = self.extra[int(self._extra_order[k % len(self.extra)])]
        return crop, label, extra_crop


class EvalCrops(Dataset):
    """Evaluation items: position k -> (k, uint8 crops (K,3,S,S), label)."""

    def __init__(self, ds: IQADataset, policy: InputPolicy):
        self.ds = ds.with_transform(ds.eval_transform(policy))

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, k: int):
        crops, label = self.ds[k]
        return k, crops, label


def default_workers(requested: Optional[int]) -> int:
    return min(4, os.cpu_count() or 1) if requested is None else requested
