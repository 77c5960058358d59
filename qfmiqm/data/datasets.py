"""Datasets: benchmark sets from the registry and user CSVs, as one torch Dataset type.

``load(name_or_csv)`` finds the images, maps the labels to 0-100 (higher is better) and refuses
an incomplete set with one clear line (or drops the missing files with ``allow_missing``);
``check`` reports what is expected, found, missing and unreadable.
"""
from __future__ import annotations

import copy
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from struct import error as struct_error
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from qfmiqm.data.images import DEFAULT_MAX_PIXELS, open_image
from qfmiqm.data.registry import (
    DATASETS, KINDS, DatasetSpec, find_spec, label_rows, relative_path, resolve_root,
)
from qfmiqm.data.splits import SplitSet, split_dataset
from qfmiqm.data.transforms import InputPolicy, dataset_policy, eval_transform, train_transform
from qfmiqm.data.user_csv import csv_name, looks_like_table, map_scores, read_table
from qfmiqm.errors import ImageError, UsageError

Transform = Callable[[np.ndarray], Any]

#: How many missing paths a report or an error names.
FIRST_MISSING = 10


class IQADataset(Dataset):
    """Images with quality labels on our scale (0-100, higher is better).

    ``ds[i]`` -> (image, label): the decoded RGB uint8 array (H, W, 3) passed through
    ``transform`` when one is set, and a float32 scalar tensor.
    """

    def __init__(self, *, name: str, paths: Sequence[str], labels: Sequence[float], kind: str,
                 keys: Sequence[str], content: Optional[Sequence[str]] = None,
                 types: Optional[Sequence[str]] = None, raw_scores: Optional[Sequence[float]] = None,
                 transform: Optional[Transform] = None, max_short_side: Optional[int] = None,
                 spec: Optional[DatasetSpec] = None, folder: Optional[str] = None,
                 layout: Optional[str] = None, dropped: int = 0,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        if kind not in KINDS:
            raise UsageError(f"dataset kind must be one of {', '.join(KINDS)}, got '{kind}'")
        self.name, self.kind, self.spec = name, kind, spec
        self.paths = list(paths)
        self.keys = list(keys)
        self.labels = np.asarray(labels, dtype=np.float64)
        self.raw_scores = np.asarray(raw_scores if raw_scores is not None else labels, dtype=np.float64)
        self.content = list(content) if content is not None else None
        self.types = list(types) if types is not None else None
        self.max_short_side = max_short_side
        self.folder, self.layout, self.dropped = folder, layout, dropped
        self.max_pixels = max_pixels
        self.transform = _fit_transform(transform, max_short_side)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        path = self.paths[index]
        policy = getattr(self.transform, "policy", None)
        reduce_to = policy.max_short_side if isinstance(policy, InputPolicy) else None
        try:
            img = open_image(path, self.max_pixels, min_short_side=reduce_to)
        except ImageError as exc:
            raise ImageError(f"{path}: {exc}") from None
        if self.transform is not None:
            img = self.transform(img)
        return img, torch.tensor(self.labels[index], dtype=torch.float32)

    def __repr__(self) -> str:
        return f"IQADataset(name={self.name!r}, kind={self.kind!r}, images={len(self)}, dropped={self.dropped})"

    # --- protocol and transforms ---------------------------------------------------

    def splits(self, n: int = 10, test_fraction: float = 0.2, val_fraction: float = 0.0,
               seed: int = 0) -> SplitSet:
        """N train/(val/)test splits: content-disjoint when the set has reference images."""
        return split_dataset(self, n=n, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)

    def subset(self, indices: Sequence[int]) -> "IQADataset":
        """The items at ``indices``, as a dataset of the same kind (e.g. one side of a split)."""
        idx = [int(i) for i in indices]

        def pick(values: Optional[Sequence[Any]]) -> Optional[list[Any]]:
            return None if values is None else [values[i] for i in idx]

        out = copy.copy(self)
        out.paths, out.keys = pick(self.paths), pick(self.keys)
        out.labels, out.raw_scores = self.labels[idx], self.raw_scores[idx]
        out.content, out.types = pick(self.content), pick(self.types)
        return out

    def with_transform(self, transform: Optional[Transform]) -> "IQADataset":
        """The same items with another transform (e.g. train vs test views of one set)."""
        out = copy.copy(self)
        out.transform = _fit_transform(transform, self.max_short_side)
        return out

    def policy(self, policy: InputPolicy) -> InputPolicy:
        """A model's input policy with this dataset's preprocessing (its ``max_short_side``)."""
        return dataset_policy(policy, self.max_short_side)

    def train_transform(self, policy: InputPolicy, hflip: float = 0.5) -> Transform:
        """Random native-resolution crop + flip, with this dataset's preprocessing."""
        return train_transform(policy, hflip=hflip, max_short_side=self.max_short_side)

    def eval_transform(self, policy: InputPolicy) -> Transform:
        """The policy's deterministic crops, with this dataset's preprocessing."""
        return eval_transform(policy, max_short_side=self.max_short_side)


def _fit_transform(transform: Optional[Transform], max_short_side: Optional[int]) -> Optional[Transform]:
    """Policy-based transforms get the dataset's ``max_short_side`` (its preprocessing rule)."""
    policy = getattr(transform, "policy", None)
    if max_short_side is None or not isinstance(policy, InputPolicy):
        return transform
    fitted = dataset_policy(policy, max_short_side)
    if fitted == policy:
        return transform
    transform = copy.copy(transform)
    transform.policy = fitted
    return transform


# --- finding files ------------------------------------------------------------------


class _Finder:
    """Resolves relative paths one folder level at a time, exact name first, then ignoring
    case (archives differ: CSIQ's AWGN/awgn folders, TID2013's I01.BMP/i01.bmp). Each folder
    is listed once, so checking 40,000 paths costs a few folder listings."""

    def __init__(self) -> None:
        self._listings: dict[str, tuple[frozenset[str], dict[str, str]]] = {}

    def _listing(self, folder: str) -> tuple[frozenset[str], dict[str, str]]:
        hit = self._listings.get(folder)
        if hit is None:
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                names = []
            hit = (frozenset(names), {n.lower(): n for n in reversed(names)})
            self._listings[folder] = hit
        return hit

    def child(self, folder: str, name: str) -> Optional[str]:
        names, lower = self._listing(folder)
        if name in names:
            return os.path.join(folder, name)
        actual = lower.get(name.lower())
        return os.path.join(folder, actual) if actual is not None else None

    def find(self, base: str, rel: str) -> Optional[str]:
        current: Optional[str] = base
        for part in rel.split("/"):
            if part in ("", "."):
                continue
            current = self.child(current, part)
            if current is None:
                return None
        return current


@dataclass
class _Located:
    folder: str
    layout: Optional[str]
    expected: list[str]  # where each image should be (in the chosen layout)
    found: list[Optional[str]]  # where it is, or None


def _locate_benchmark(spec: DatasetSpec, root: Path, rows: Sequence[Any]) -> _Located:
    """Find the images in the registered layout that holds most of them (ties: the earlier).

    Every row is looked up in every layout, not a sample of rows: a partial copy (even one
    image) must be found in whichever documented layout it sits. Listings are cached and a
    layout whose literal folders are absent is skipped whole, so this stays cheap.
    """
    finder = _Finder()
    base = str(root)
    best_layout, best_found, best_hits = spec.layouts[0], None, 0
    for layout in spec.layouts:
        fixed = _fixed_part(layout)
        if fixed and finder.find(base, fixed) is None:
            continue  # none of its images can be there
        found = [finder.find(base, relative_path(spec, r.path, layout)) for r in rows]
        hits = sum(p is not None for p in found)
        if hits > best_hits:
            best_layout, best_found, best_hits = layout, found, hits
        if hits == len(rows):
            break  # complete: no later layout can hold more, and ties go to the earlier
    rels = [relative_path(spec, r.path, best_layout) for r in rows]
    fixed = _fixed_part(best_layout)
    # name missing files under the folders as they are spelt on disk, where those exist
    prefix = (finder.find(base, fixed) if fixed else base) or os.path.join(base, fixed)
    expected = [os.path.join(prefix, r[len(fixed):].lstrip("/")) for r in rels]
    top = best_layout.split("/", 1)[0]  # the dataset's folder: every layout starts with one
    folder = finder.child(base, top) or os.path.join(base, top)
    return _Located(folder, best_layout, expected, best_found or [None] * len(rows))


def _fixed_part(layout: str) -> str:
    """The folders a layout names literally, before its first placeholder: ``spaq/Dataset``."""
    head = layout.split("{", 1)[0]
    return head.rsplit("/", 1)[0] if "/" in head else ""


def _locate_csv(base: Path, paths: Sequence[str]) -> _Located:
    expected = [str(Path(p) if os.path.isabs(p) else base / p) for p in paths]
    return _Located(str(base), None, expected, [p if os.path.exists(p) else None for p in expected])


# --- loading -----------------------------------------------------------------------


def load(
    name_or_csv: str | os.PathLike,
    root: str | os.PathLike | None = None,
    allow_missing: bool = False,
    transform: Optional[Transform] = None,
    *,
    path_column: str | int | None = None,
    score_column: str | int | None = None,
    content_column: str | int | None = None,
    type_column: str | int | None = None,
    score_range: Optional[Sequence[float]] = None,
    lower_better: Optional[bool] = None,
    kind: Optional[str] = None,
    name: Optional[str] = None,
    delimiter: Optional[str] = None,
    max_short_side: Optional[int] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> IQADataset:
    """A benchmark by name (``root``: data root; default $QFMIQM_DATA, else ./datasets) or a
    user CSV/TSV (``root``: folder its relative paths start from; default the CSV's folder).

    Missing images raise UsageError unless ``allow_missing``, which drops them with a warning
    and records the count in ``dataset.dropped``. The column, range and kind options apply to
    CSV files only; ``max_short_side`` overrides a benchmark's preprocessing rule.
    """
    csv_opts = dict(path_column=path_column, score_column=score_column, content_column=content_column,
                    type_column=type_column, score_range=score_range, lower_better=lower_better,
                    kind=kind, delimiter=delimiter)
    spec = find_spec(str(name_or_csv)) if not isinstance(name_or_csv, os.PathLike) else None
    if spec is not None:
        given = [k for k, v in csv_opts.items() if v is not None]
        if given:
            raise UsageError(f"option(s) {', '.join(given)} apply to CSV datasets, not to '{spec.name}'")
        return _load_benchmark(spec, resolve_root(root), allow_missing, transform,
                               max_short_side if max_short_side is not None else spec.max_short_side,
                               name, max_pixels)
    _require_table(name_or_csv)
    return _load_csv(Path(name_or_csv), root, allow_missing, transform, max_short_side, name, max_pixels, **csv_opts)


def _require_table(name_or_csv: str | os.PathLike) -> None:
    text = str(name_or_csv)
    if not (isinstance(name_or_csv, os.PathLike) or looks_like_table(text) or Path(text).is_file()):
        raise UsageError(f"unknown dataset '{text}' (known: {', '.join(DATASETS)}; or give a CSV file)")


def _load_benchmark(spec: DatasetSpec, root: Path, allow_missing: bool, transform: Optional[Transform],
                    max_short_side: Optional[int], name: Optional[str], max_pixels: int) -> IQADataset:
    rows = label_rows(spec)
    located = _locate_benchmark(spec, root, rows)
    keep = _keep_found(spec.name, located, allow_missing, root_hint=True)
    labels = spec.to_score([rows[i].score for i in keep])
    return IQADataset(
        name=name or spec.name, kind=spec.kind, spec=spec,
        paths=[located.found[i] for i in keep], keys=[rows[i].path for i in keep], labels=labels,
        raw_scores=[rows[i].score for i in keep],
        content=[rows[i].reference for i in keep] if spec.content_column else None,
        types=[rows[i].type for i in keep], transform=transform, max_short_side=max_short_side,
        folder=located.folder, layout=located.layout, dropped=len(rows) - len(keep), max_pixels=max_pixels,
    )


def _load_csv(file: Path, root: str | os.PathLike | None, allow_missing: bool, transform: Optional[Transform],
              max_short_side: Optional[int], name: Optional[str], max_pixels: int, *, path_column, score_column,
              content_column, type_column, score_range, lower_better, kind, delimiter) -> IQADataset:
    table = read_table(file, path_column, score_column, content_column, type_column, delimiter)
    labels = map_scores(table, score_range, lower_better)
    base = Path(root).expanduser() if root is not None else table.file.parent
    located = _locate_csv(base, table.paths)
    ds_name = name or csv_name(file)
    keep = _keep_found(ds_name, located, allow_missing, root_hint=False)
    kind = kind or ("synthetic" if table.content is not None else "authentic")

    def pick(values: Optional[Sequence[Any]]) -> Optional[list[Any]]:
        return None if values is None else [values[i] for i in keep]

    return IQADataset(
        name=ds_name, kind=kind, paths=[located.found[i] for i in keep], keys=pick(table.paths),
        labels=pick(labels), raw_scores=pick(table.raw_scores), content=pick(table.content),
        types=pick(table.types), transform=transform, max_short_side=max_short_side,
        folder=str(base), dropped=len(table.paths) - len(keep), max_pixels=max_pixels,
    )


def _keep_found(name: str, located: _Located, allow_missing: bool, root_hint: bool) -> list[int]:
    """Indices of the images found; UsageError (or a warning with allow_missing) for the rest."""
    missing = [i for i, p in enumerate(located.found) if p is None]
    total = len(located.found)
    hint = ("set --root or QFMIQM_DATA; layouts in docs/datasets.md" if root_hint
            else "paths are relative to the CSV's folder unless a root is given")
    if len(missing) == total:
        where = located.folder if os.path.isdir(located.folder) else f"{located.folder} (no such folder)"
        raise UsageError(f"dataset '{name}': none of its {total} images found under {where}, "
                         f"e.g. {located.expected[0]} ({hint})")
    if missing and not allow_missing:
        raise UsageError(f"dataset '{name}': {len(missing)} of {total} images missing under {located.folder} "
                         f"(first: {located.expected[missing[0]]}); complete it, or allow_missing=True "
                         "to use the rest")
    if missing:
        warnings.warn(f"dataset '{name}': dropped {len(missing)} of {total} images that are missing "
                      f"(first: {located.expected[missing[0]]})", UserWarning, stacklevel=3)
    missing_set = set(missing)
    return [i for i in range(total) if i not in missing_set]


# --- completeness check --------------------------------------------------------------


@dataclass
class CheckReport:
    """What a dataset expects and what is on disk."""

    name: str
    kind: str
    folder: str
    layout: Optional[str]
    expected: int
    found: int
    missing: list[str] = field(default_factory=list)  # expected paths not on disk
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def complete(self) -> bool:
        return self.found == self.expected and not self.unreadable

    @property
    def first_missing(self) -> list[str]:
        return self.missing[:FIRST_MISSING]

    def summary(self) -> str:
        """One line: complete, or what is wrong."""
        if self.complete:
            return f"{self.name}: complete ({self.found} images under {self.folder})"
        if self.found == 0 and not os.path.isdir(self.folder):
            return (f"{self.name}: not found: no folder {self.folder} (set --root or QFMIQM_DATA; "
                    "expected layouts in docs/datasets.md)")
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} of {self.expected} images missing (first: {self.missing[0]})")
        if self.unreadable:
            path, reason = self.unreadable[0]
            parts.append(f"{len(self.unreadable)} unreadable (first: {path}: {reason})")
        return f"{self.name}: incomplete: " + "; ".join(parts)


def check(name_or_csv: str | os.PathLike, root: str | os.PathLike | None = None, *, decode: bool = False,
          workers: Optional[int] = None, path_column: str | int | None = None,
          delimiter: Optional[str] = None) -> CheckReport:
    """Count expected and found images, list the missing ones and the unreadable ones.

    Found files have their header read with Pillow (fast); ``decode=True`` decodes every
    image fully, which also catches truncated data.
    """
    spec = find_spec(str(name_or_csv)) if not isinstance(name_or_csv, os.PathLike) else None
    if spec is not None:
        rows = label_rows(spec)
        located = _locate_benchmark(spec, resolve_root(root), rows)
        name, kind = spec.name, spec.kind
    else:
        _require_table(name_or_csv)
        table = read_table(name_or_csv, path_column=path_column, delimiter=delimiter)
        base = Path(root).expanduser() if root is not None else table.file.parent
        located = _locate_csv(base, table.paths)
        name, kind = csv_name(name_or_csv), "synthetic" if table.content is not None else "authentic"
    present = [p for p in located.found if p is not None]
    missing = [e for e, p in zip(located.expected, located.found) if p is None]
    probe = _decode_problem if decode else _header_problem
    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if n_workers > 1 and len(present) > 16:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            problems = list(pool.map(probe, present))
    else:
        problems = [probe(p) for p in present]
    unreadable = [(p, why) for p, why in zip(present, problems) if why is not None]
    return CheckReport(name, kind, located.folder, located.layout, len(located.found), len(present),
                       missing, unreadable)


def _header_problem(path: str) -> Optional[str]:
    """Why ``path`` is not an image, from its file type and header only; None when fine."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot access file ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    if not os.access(path, os.R_OK):
        return "permission denied"
    try:
        with Image.open(path) as im:
            w, h = im.size
    except UnidentifiedImageError:
        return "not a recognised image format"
    except Image.DecompressionBombError:
        return "image too large (decompression bomb limit)"
    except (OSError, ValueError, SyntaxError, EOFError, struct_error) as exc:
        text = str(exc).strip()
        return f"cannot read image header ({text.splitlines()[0] if text else type(exc).__name__})"
    if w < 1 or h < 1:
        return f"image has no pixels ({w}x{h})"
    return None


def _decode_problem(path: str) -> Optional[str]:
    try:
        open_image(path)
    except ImageError as exc:
        return str(exc)
    except MemoryError:
        return "out of memory while decoding"
    return None


# --- overview ---------------------------------------------------------------------


@dataclass(frozen=True)
class OverviewRow:
    """One line of ``qfmiqm datasets list``."""

    name: str
    kind: str
    expected: int
    found: int
    location: str
    note: str = ""


def overview(root: str | os.PathLike | None = None) -> list[OverviewRow]:
    """Every benchmark, then the user CSVs under the root (``*.csv``, ``*.tsv``,
    ``*/labels.csv``), with images expected and found (existence only: fast)."""
    data_root = resolve_root(root)
    out = []
    for spec in DATASETS.values():
        located = _locate_benchmark(spec, data_root, label_rows(spec))
        found = sum(p is not None for p in located.found)
        out.append(OverviewRow(spec.name, spec.kind, len(located.found), found, located.folder))
    for file in _user_tables(data_root):
        try:
            table = read_table(file)
        except UsageError as exc:
            out.append(OverviewRow(csv_name(file), "?", 0, 0, str(file), str(exc)))
            continue
        located = _locate_csv(table.file.parent, table.paths)
        out.append(OverviewRow(csv_name(file), "synthetic" if table.content is not None else "authentic",
                               len(table.paths), sum(p is not None for p in located.found), str(file)))
    return out


def _user_tables(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    files = [p for pattern in ("*.csv", "*.tsv", "*/labels.csv") for p in sorted(root.glob(pattern))]
    return [p for p in files if p.is_file()]
