"""The split protocol: N random train/test splits (80/20 by default), reproducible and saved.

* Sets with a content key (synthetic sets: the reference image) are split by content: every
  image of one reference goes to the same side, so no test picture's content was seen in
  training. Sets without one (authentic sets) are split image by image.
* Split ``i`` of a protocol with seed ``s`` uses ``numpy.random.default_rng(s + i)``.
* An optional validation part (``val_fraction`` of the whole set) is carved out of the train side.
* A split file (JSON) holds the dataset name, protocol, the item keys (paths as listed) and the
  index lists, so results can be reproduced and the file re-applied to the same dataset later.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from qfmiqm.errors import UsageError
from qfmiqm.files import write_text_atomic

SPLITS_FILENAME = "splits.json"
FORMAT = "qfmiqm-splits/1"


@dataclass(frozen=True)
class SplitProtocol:
    """How splits are drawn. The defaults are the papers' protocol: 10 x 80/20."""

    n: int = 10
    test_fraction: float = 0.2
    val_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise UsageError(f"number of splits must be at least 1, got {self.n}")
        if not 0.0 < self.test_fraction < 1.0:
            raise UsageError(f"test_fraction must be between 0 and 1, got {self.test_fraction}")
        if not 0.0 <= self.val_fraction < 1.0 or self.test_fraction + self.val_fraction >= 1.0:
            raise UsageError(f"val_fraction {self.val_fraction} + test_fraction {self.test_fraction} "
                             "must leave a train part (sum below 1)")


@dataclass(frozen=True)
class Split:
    """One split: sorted index lists into the dataset (val may be empty)."""

    index: int
    seed: int
    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]


@dataclass(frozen=True)
class SplitSet:
    """The N splits of one dataset under one protocol; iterate it to get each Split."""

    dataset: str
    protocol: SplitProtocol
    grouped_by: str  # "content" (reference image) or "image"
    keys: tuple[str, ...]  # item identifiers the indices refer to
    splits: tuple[Split, ...]

    def __len__(self) -> int:
        return len(self.splits)

    def __iter__(self) -> Iterator[Split]:
        return iter(self.splits)

    def __getitem__(self, i: int) -> Split:
        return self.splits[i]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "dataset": self.dataset,
            "protocol": asdict(self.protocol),
            "grouped_by": self.grouped_by,
            "n_items": len(self.keys),
            "keys": list(self.keys),
            "splits": [{"index": s.index, "seed": s.seed, "train": list(s.train), "val": list(s.val),
                        "test": list(s.test)} for s in self.splits],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "split file") -> "SplitSet":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise UsageError(f"{source}: not a qfmiqm split file (expected format '{FORMAT}')")
        try:
            keys = tuple(str(k) for k in d["keys"])
            splits = tuple(
                Split(int(s["index"]), int(s["seed"]), _indices(s["train"], len(keys)),
                      _indices(s.get("val", []), len(keys)), _indices(s["test"], len(keys)))
                for s in d["splits"]
            )
            return cls(str(d["dataset"]), SplitProtocol(**d["protocol"]), str(d["grouped_by"]), keys, splits)
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{source}: malformed split file ({type(exc).__name__}: {exc})") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` (a .json file, or a folder: <folder>/splits.json) atomically."""
        return save_splits(self, path)

    def align(self, dataset: Any, allow_missing: bool = False) -> "SplitSet":
        """The same splits as indices into ``dataset`` (matched by key). Items of the split
        file that the dataset lacks are an error, or dropped with ``allow_missing``."""
        keys = tuple(dataset.keys)
        if keys == self.keys:
            return self
        position = {k: i for i, k in enumerate(keys)}
        absent = [k for k in self.keys if k not in position]
        if absent and not allow_missing:
            raise UsageError(f"split file for '{self.dataset}': {len(absent)} of its {len(self.keys)} images are "
                             f"not in dataset '{getattr(dataset, 'name', '?')}' (first: {absent[0]})")

        def remap(idx: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(sorted(position[self.keys[i]] for i in idx if self.keys[i] in position))

        splits = tuple(Split(s.index, s.seed, remap(s.train), remap(s.val), remap(s.test)) for s in self.splits)
        return SplitSet(self.dataset, self.protocol, self.grouped_by, keys, splits)


def make_splits(
    n_items: int,
    content: Optional[Sequence[str]] = None,
    protocol: SplitProtocol = SplitProtocol(),
    dataset: str = "",
    keys: Optional[Sequence[str]] = None,
) -> SplitSet:
    """Draw ``protocol.n`` splits of ``n_items`` items; content-disjoint when ``content`` is given."""
    if content is not None and len(content) != n_items:
        raise ValueError(f"content has {len(content)} entries for {n_items} items")
    keys = tuple(keys) if keys is not None else tuple(str(i) for i in range(n_items))
    if len(keys) != n_items:
        raise ValueError(f"keys has {len(keys)} entries for {n_items} items")
    if content is not None:
        groups = sorted(set(content))
        member = {g: i for i, g in enumerate(groups)}
        group_of = np.array([member[c] for c in content], dtype=np.int64)
        units, unit_name = len(groups), "reference images"
    else:
        group_of = np.arange(n_items, dtype=np.int64)
        units, unit_name = n_items, "images"
    needed = 3 if protocol.val_fraction > 0 else 2
    if units < needed:
        raise UsageError(f"dataset '{dataset}' has {units} {unit_name}; a split needs at least {needed}")
    splits = []
    for i in range(protocol.n):
        seed = protocol.seed + i
        test_u, val_u = _draw(units, protocol, seed)
        side = np.zeros(units, dtype=np.int8)  # 0 train, 1 val, 2 test
        side[val_u], side[test_u] = 1, 2
        item_side = side[group_of]
        splits.append(Split(i, seed, *(tuple(int(j) for j in np.flatnonzero(item_side == k)) for k in (0, 1, 2))))
    return SplitSet(dataset, protocol, "content" if content is not None else "image", keys, tuple(splits))


def _draw(units: int, protocol: SplitProtocol, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which units (groups or items) go to test and to validation."""
    order = np.random.default_rng(seed).permutation(units)
    n_test = min(max(1, round(protocol.test_fraction * units)), units - 1)
    n_val = 0
    if protocol.val_fraction > 0:
        n_val = min(max(1, round(protocol.val_fraction * units)), units - n_test - 1)
    return order[:n_test], order[n_test:n_test + n_val]


def split_dataset(dataset: Any, n: int = 10, test_fraction: float = 0.2, val_fraction: float = 0.0,
                  seed: int = 0) -> SplitSet:
    """The protocol applied to a dataset (anything with ``name``, ``keys``, ``content``)."""
    protocol = SplitProtocol(n=n, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
    return make_splits(len(dataset.keys), dataset.content, protocol, dataset.name, dataset.keys)


def save_splits(splits: SplitSet, path: str | os.PathLike) -> Path:
    """Write a split file atomically; ``path`` may be a folder (results folder -> splits.json)."""
    target = Path(path)
    if target.is_dir() or target.suffix.lower() != ".json":
        target = target / SPLITS_FILENAME
    write_text_atomic(target, json.dumps(splits.to_dict(), separators=(",", ":")) + "\n")
    return target


def load_splits(path: str | os.PathLike, dataset: Any = None, allow_missing: bool = False) -> SplitSet:
    """Read a split file (or <folder>/splits.json); aligned to ``dataset`` when one is given."""
    p = Path(path)
    if p.is_dir():
        p = p / SPLITS_FILENAME
    if not p.is_file():
        raise UsageError(f"{p}: no such split file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{p}: cannot read split file ({type(exc).__name__}: {exc})") from None
    splits = SplitSet.from_dict(data, source=str(p))
    return splits.align(dataset, allow_missing) if dataset is not None else splits


def _indices(values: Sequence[Any], n: int) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if any(not 0 <= v < n for v in out):
        raise ValueError(f"index out of range 0..{n - 1}")
    return out
