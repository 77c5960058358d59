"""Inputs named by URI (``s3://``, ``gs://``, ``file://``, ...): read through pyarrow filesystems.

``qfmiqm score`` accepts them beside local paths on either engine: ``expand_uri`` lists a folder
(prefix) URI the way a local folder is scanned, ``read_uri`` fetches one object's bytes, which are
then decoded exactly as a local file would be (``qfmiqm.data.images.decode_image_bytes``), so a
URI and a local copy of the same file get the same score. Problems reading one object become that
input's error (``ImageError``), with the same words as for a local file where they apply.

pyarrow is imported only when a URI is actually used.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from qfmiqm.errors import ImageError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
#: An object larger than this is refused before it is read into memory (a local file is decoded
#: lazily instead, with only its pixel count limited).
MAX_URI_BYTES = 1 << 30


def is_uri(value: Any) -> bool:
    """Whether ``value`` is a string of the form ``scheme://...``."""
    return isinstance(value, str) and _URI.match(value) is not None


@functools.lru_cache(maxsize=32)
def _filesystem(root: str, pid: int) -> tuple[Any, str]:
    """(pyarrow filesystem, its path of the root) for ``scheme://netloc/[?options]``, made once
    per process (an S3 or GCS client is costly to build; a forked decoding worker, ``pid``, makes
    its own rather than use its parent's)."""
    from pyarrow import fs

    filesystem, base = fs.FileSystem.from_uri(root)
    return filesystem, base.rstrip("/")


def _split(uri: str) -> tuple[Any, str, str, str]:
    """(filesystem, path inside it, the filesystem's path of the URI's root, the URI's root):
    a path ``base + rest`` under the root has the URI ``root + quote(rest)``."""
    parts = urlsplit(uri)
    root = f"{parts.scheme}://{parts.netloc}"
    try:
        filesystem, base = _filesystem(root + "/" + (f"?{parts.query}" if parts.query else ""), os.getpid())
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise ImageError(f"cannot open its filesystem ({_first_line(exc)})") from None
    return filesystem, base + unquote(parts.path), base, root


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def read_uri(uri: str, max_bytes: int = MAX_URI_BYTES) -> bytes:
    """The bytes of the object at ``uri``; raises ImageError with a one-line reason."""
    from pyarrow import fs

    filesystem, path, _, _ = _split(uri)
    try:
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.NotFound:
            raise ImageError("no such file")
        if info.type == fs.FileType.Directory:
            raise ImageError("is a directory, not an image file")
        if info.size == 0:
            raise ImageError("empty file (0 bytes)")
        if info.size is not None and info.size > max_bytes:
            raise ImageError(f"file too large ({info.size:,} bytes; limit {max_bytes:,})")
        with filesystem.open_input_stream(path) as stream:
            data = stream.read(max_bytes + 1)
    except ImageError:
        raise
    except PermissionError:
        raise ImageError("permission denied") from None
    except Exception as exc:  # noqa: BLE001 - network and storage errors of any filesystem
        raise ImageError(f"cannot read file ({_first_line(exc)})") from None
    if len(data) > max_bytes:
        raise ImageError(f"file too large (more than {max_bytes:,} bytes)")
    return data


def expand_uri(uri: str, recursive: bool = False) -> list[str]:
    """A folder (prefix) URI -> the URIs of its image files, sorted (subfolders only with
    ``recursive``); any other URI -> ``[uri]`` (it is reported when it cannot be read)."""
    from pyarrow import fs

    from qfmiqm.data.sources import is_image_name

    try:
        filesystem, path, base, root = _split(uri)
        if filesystem.get_file_info(path).type != fs.FileType.Directory:
            return [uri]
        listed = filesystem.get_file_info(fs.FileSelector(path, recursive=recursive))
    except Exception:  # noqa: BLE001 - unreachable, no credentials...: the row will say why
        return [uri]
    found = sorted(i.path for i in listed if i.type == fs.FileType.File and is_image_name(i.path))
    query = urlsplit(uri).query
    return [root + quote(p[len(base):]) + (f"?{query}" if query else "") for p in found]
