"""Decoding JPEG files on the model's device (nvJPEG on a CUDA GPU) instead of in Pillow workers
(``--decode device``; the default stays ``workers``).

On a GPU the host cannot decode, crop, share and copy about 750 KB of crops per image as fast as
the backbone consumes them (docs/speed.md). With device decoding the workers only read each
file's bytes (tens of KB), the device decodes whole batches (``torchvision.io.decode_jpeg``) and
the crops are cut where the model runs.

Only files whose pixels need nothing but decoding take this path: baseline or progressive JPEG
in RGB or greyscale, no EXIF rotation, and a size the input policy uses as it is (no resize).
Every other input is decoded by Pillow in the workers as before, so the two paths give the same
crops: bit for bit on CPU (both use libjpeg-turbo), within nvJPEG's rounding on CUDA.
"""
from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from qfmiqm.data.images import _check_file, _check_pixel_count
from qfmiqm.data.policy import MAX_ASPECT_RATIO, InputPolicy, cut_views, keeps_native_size
from qfmiqm.errors import UsageError

from qfmiqm.data.feed import DECODE_MODES, DEFAULT_DECODE  # noqa: E402,F401 - their home is the feed
#: EXIF tag 274: orientation. Values 2-8 mean Pillow would rotate or mirror the pixels.
_ORIENTATION = 274


def resolve_decode(mode: str, device: torch.device) -> bool:
    """True when JPEG files should be decoded on ``device`` under decode ``mode``."""
    if mode not in DECODE_MODES:
        raise UsageError(f"decode must be one of {', '.join(DECODE_MODES)}, got '{mode}'")
    if mode == "device" and not device_decoder_available(device):
        raise UsageError(f"JPEG decoding on {device} is not available in this torchvision "
                         "(use --decode workers)")
    return mode == "device"


def _decode_jpegs(encoded: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    # torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec; when they are
    # gone the probe below fails and ``--decode device`` says so
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        return list(decode_jpeg(list(encoded), mode=ImageReadMode.RGB, device=device))


@functools.lru_cache(maxsize=None)
def _probe(device: str) -> bool:
    try:
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (120, 30, 200)).save(buf, format="JPEG")
        _decode_jpegs([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], device)
        return True
    except Exception:  # noqa: BLE001 - any failure means: decode in workers
        return False


def device_decoder_available(device: torch.device) -> bool:
    """Whether torchvision can decode JPEG on ``device`` (on CUDA: built with nvJPEG)."""
    return _probe(str(device))


def direct_jpeg_bytes(item: Any, policy: InputPolicy, max_pixels: int) -> torch.Tensor | None:
    """The file's bytes (1-D uint8) when ``item`` is a JPEG file the device can decode into
    exactly the pixels the policy would crop; None when it must be decoded by Pillow.

    Reads only the header to decide; any doubt (other format, CMYK, EXIF rotation, a size that
    needs resizing, a header Pillow cannot read) sends the file to the Pillow path, which also
    words the error for files that are not usable at all.
    """
    if not isinstance(item, (str, os.PathLike)):
        return None
    path = Path(item)
    try:
        _check_file(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                    return None
                _check_pixel_count(im.size, max_pixels)
                if _needs_resize(im.size, policy) or im.getexif().get(_ORIENTATION, 1) in range(2, 9):
                    return None
        data = path.read_bytes()
    except Exception:  # noqa: BLE001 - the Pillow path reports the reason
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _needs_resize(size: tuple[int, int], policy: InputPolicy) -> bool:
    # an extreme aspect ratio is refused by the Pillow path, which words the reason
    w, h = size
    return not keeps_native_size(h, w, policy) or max(w, h) > MAX_ASPECT_RATIO * min(w, h)


def views_on_device(encoded: Sequence[torch.Tensor], policy: InputPolicy,
                    device: torch.device) -> list[list[torch.Tensor] | None]:
    """Decode JPEG bytes on ``device`` and cut the policy's views there: per input, the uint8 views
    (h, w, 3) on the device, or None where the device decoder refused the file (the caller then
    decodes it with Pillow, which either manages or words the reason).

    The batch is decoded in one call; when that fails, file by file, so that one bad file costs
    only its own result.
    """
    try:
        images: list[torch.Tensor | None] = list(_decode_jpegs(encoded, device))
    except RuntimeError:
        images = []
        for data in encoded:
            try:
                images.append(_decode_jpegs([data], device)[0])
            except RuntimeError:
                images.append(None)
    return [None if img is None else cut_views(img.permute(1, 2, 0), policy) for img in images]
