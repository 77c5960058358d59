"""Datasets, public entry points: ``qfmiqm.datasets.load("koniq10k", root=...)``.

>>> import qfmiqm
>>> ds = qfmiqm.datasets.load("koniq10k", root="/data/iqa")   # or "my_labels.csv"
>>> ds.labels, ds.kind, ds.content                             # 0-100 higher-better labels
>>> for split in ds.splits(n=10, test_fraction=0.2, seed=0): ...
"""
from __future__ import annotations

from qfmiqm.data.datasets import CheckReport, IQADataset, OverviewRow, check, load, overview
from qfmiqm.data.registry import DATASETS, DatasetSpec, get_spec, list_datasets, resolve_root
from qfmiqm.data.splits import Split, SplitProtocol, SplitSet, load_splits, make_splits, save_splits

__all__ = [
    "load", "check", "overview", "list_datasets", "get_spec", "resolve_root", "DATASETS", "DatasetSpec",
    "IQADataset", "CheckReport", "OverviewRow", "Split", "SplitSet", "SplitProtocol",
    "make_splits", "save_splits", "load_splits",
]
