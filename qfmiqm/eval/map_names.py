"""The file names ``score --map`` gives its overlays, shared with the HTML report.

Torch-free on purpose: the report (qfmiqm.eval.html_report) finds the maps by these names
without importing the map module, which needs torch.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Iterable

MAP_SUFFIX = ".map.png"
DATA_SUFFIX = ".map.npy"


def path_digest(path: str | os.PathLike) -> str:
    """The first 8 hex digits of the SHA-1 of the file's absolute, normalised path."""
    return hashlib.sha1(os.fsencode(os.path.normpath(os.path.abspath(path)))).hexdigest()[:8]


def map_name(stem: str, hashed_path: str | os.PathLike | None = None) -> str:
    """``<stem>.map.png``, or ``<stem>-<digest of hashed_path>.map.png`` for a shared stem."""
    if hashed_path is None:
        return stem + MAP_SUFFIX
    return f"{stem}-{path_digest(hashed_path)}{MAP_SUFFIX}"


def map_filenames(paths: Iterable[str]) -> dict[str, str]:
    """File names for the maps of ``paths``: ``<stem>.map.png``; stems that occur more than once
    (same name in several folders, or ``a.jpg`` and ``a.png``) all get ``<stem>-<hash>.map.png``
    (``path_digest``)."""
    paths = list(paths)
    stems = Counter(Path(p).stem for p in paths)
    return {p: map_name(Path(p).stem, p if stems[Path(p).stem] > 1 else None) for p in paths}
