"""Turning the user's PATH arguments (files, folders, globs) into a list of files to score."""
from __future__ import annotations

import glob
import os

from qfmiqm.data.uris import expand_uri, is_uri

#: Extensions picked up when a folder is scanned. Files named explicitly are always tried,
#: whatever their extension, so a valid image with a wrong extension still gets scored.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm"}
)

_GLOB_CHARS = set("*?[")


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def expand_inputs(args: list[str], recursive: bool = False) -> tuple[list[str], int]:
    """Expand files, folders and glob patterns into an ordered list of paths without duplicates,
    and the number of duplicates dropped (the same file named twice is scored once).

    Paths that do not exist are kept, so that the caller reports each of them as a failure.
    Folders yield their image files (sorted; subfolders only with ``recursive``). Symbolic
    links to folders are not followed during recursion, which makes link loops harmless.
    URIs (``s3://bucket/prefix``, ``file:///data``) are listed the same way through pyarrow
    (``qfmiqm.data.uris``); they take no glob patterns.
    """
    out: list[str] = []
    seen: set[str] = set()
    duplicates = 0

    def add(path: str) -> None:
        nonlocal duplicates
        key = path if is_uri(path) else os.path.normpath(os.path.abspath(path))
        if key in seen:
            duplicates += 1
        else:
            seen.add(key)
            out.append(path)

    for arg in args:
        if is_uri(arg):
            for path in expand_uri(arg, recursive):
                add(path)
        elif os.path.isdir(arg):
            found = _scan_folder(arg, recursive)
            for path in found:
                add(path)
            if not found and is_image_name(arg):
                add(arg)  # 'x.jpg' that is a folder: surely meant as a file, so report it
        elif not os.path.lexists(arg) and _GLOB_CHARS & set(arg):
            for path in sorted(glob.glob(arg, recursive=recursive)):
                if os.path.isdir(path):
                    continue
                add(path)
        else:
            add(arg)
    return out, duplicates


def _scan_folder(folder: str, recursive: bool) -> list[str]:
    found: list[str] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        found.extend(os.path.join(root, f) for f in sorted(files) if is_image_name(f))
        if not recursive:
            break
    return found

