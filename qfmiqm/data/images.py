"""Decoding any supported image input into one canonical form: an RGB uint8 array (H, W, 3).

Every input type (path, PIL image, numpy array, torch tensor) goes through ``to_rgb_array``
so the same picture yields the same pixels, and therefore the same score, however it arrived.
"""
from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from struct import error as struct_error
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from qfmiqm.data.uris import is_uri, read_uri
from qfmiqm.errors import ImageError

#: Default decoding limit (pixels). Above it a file is refused before its pixels are read,
#: which protects memory from decompression bombs. 100 Mpx covers every camera we know of.
DEFAULT_MAX_PIXELS = 100_000_000

ImageInput = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray | torch.Tensor


def open_image(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, min_short_side: int | None = None
) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3), EXIF orientation applied.

    ``min_short_side`` lets JPEG files decode at a reduced scale (1/2, 1/4, 1/8) as long as the
    shorter side stays at least that large, which keeps huge photos cheap in time and memory.
    Raises ImageError with a one-line reason for anything that is not a usable image.
    """
    p = Path(path)
    _check_file(p)
    return _decode(p, max_pixels, min_short_side)


def decode_image_bytes(
    data: bytes | bytearray | memoryview, max_pixels: int = DEFAULT_MAX_PIXELS, min_short_side: int | None = None
) -> np.ndarray:
    """An image file's bytes (read from a URI, or a ``bytes`` column) -> RGB uint8 (H, W, 3),
    decoded exactly as ``open_image`` decodes the same file from disk."""
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    return _decode(io.BytesIO(data), max_pixels, min_short_side)


def _decode(source: Path | io.BytesIO, max_pixels: int, min_short_side: int | None) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on palettes, EXIF...
            with Image.open(source) as im:
                _check_pixel_count(im.size, max_pixels)
                im.seek(0)  # first frame of animations and multi-page files
                if min_short_side and im.format == "JPEG":
                    _reduce_jpeg_decoding(im, min_short_side)
                return pil_to_rgb_array(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image too large (more than {max_pixels:,} pixels)") from None
    except OSError as exc:  # truncated or corrupted data
        raise ImageError(f"cannot decode image data ({_short(exc)})") from None
    except (ValueError, SyntaxError, EOFError, struct_error) as exc:
        raise ImageError(f"cannot decode image data ({_short(exc)})") from None


def _check_file(p: Path) -> None:
    """Explain, in words, why a path is not a readable regular file."""
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageError("broken symbolic link" if p.is_symlink() else "no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError("symbolic link loop") from None
        raise ImageError(f"cannot access file ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError("not a regular file")
    if not os.access(p, os.R_OK):
        raise ImageError("permission denied")
    if st.st_size == 0:
        raise ImageError("empty file (0 bytes)")


def _reduce_jpeg_decoding(im: Image.Image, min_short_side: int) -> None:
    w, h = im.size
    scale = 1
    while scale < 8 and min(w, h) // (scale * 2) >= min_short_side:
        scale *= 2
    if scale > 1:
        im.draft("RGB", (w // scale, h // scale))


def _check_pixel_count(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise ImageError(f"image too large ({w}x{h} = {w * h:,} pixels; limit {max_pixels:,})")
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def pil_to_rgb_array(im: Image.Image) -> np.ndarray:
    """PIL image in any mode -> RGB uint8 (H, W, 3), EXIF orientation applied.

    Transparency is composited over white, because that is how viewers show it.
    16-bit and float modes are rescaled to 8 bits rather than clipped.
    """
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def array_to_rgb_array(arr: np.ndarray) -> np.ndarray:
    """numpy image -> RGB uint8 (H, W, 3).

    Accepts (H, W), (H, W, 1), (H, W, 3), (H, W, 4); uint8 as is, floats in [0, 1],
    uint16 in [0, 65535]. Channels-first (3, H, W) arrays are accepted too.
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[2] not in (1, 3, 4):
        a = np.moveaxis(a, 0, 2)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ImageError(f"array of shape {tuple(np.shape(arr))} is not an image (H, W[, C])")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageError(f"array of shape {tuple(a.shape)} has no pixels")
    a = _to_uint8(a)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        alpha = a[:, :, 3:4].astype(np.float32) / 255.0
        a = (a[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(a)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError("array contains NaN or infinite values")
        if a.min() < 0.0 or a.max() > 1.0:
            raise ImageError("float arrays must hold values in [0, 1]")
        return (a * 255.0 + 0.5).astype(np.uint8)
    if a.dtype == np.uint16:
        return (a.astype(np.float64) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise ImageError("integer arrays must hold values in [0, 255]")
        return a.astype(np.uint8)
    raise ImageError(f"unsupported array dtype {a.dtype}")


def to_rgb_array(
    obj: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS, min_short_side: int | None = None
) -> np.ndarray:
    """Any supported input -> RGB uint8 (H, W, 3).

    Strings of the form ``scheme://...`` are URIs read through pyarrow (``qfmiqm.data.uris``);
    ``bytes`` are an image file's contents. Tensors follow torchvision's convention: (C, H, W)
    or (B=1, C, H, W), float in [0, 1] or uint8 in [0, 255].
    """
    if isinstance(obj, str) and is_uri(obj):
        return decode_image_bytes(read_uri(obj), max_pixels, min_short_side)
    if isinstance(obj, (str, os.PathLike)):
        return open_image(obj, max_pixels, min_short_side)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return decode_image_bytes(obj, max_pixels, min_short_side)
    if isinstance(obj, Image.Image):
        _check_pixel_count(obj.size, max_pixels)
        return pil_to_rgb_array(obj)
    if isinstance(obj, np.ndarray):
        return array_to_rgb_array(obj)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None
    if torch is not None and isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        elif t.ndim != 2:
            raise ImageError(f"tensor of shape {tuple(obj.shape)} is not an image (C, H, W)")
        return array_to_rgb_array(t.numpy())
    raise ImageError(f"cannot score an object of type {type(obj).__name__}")
