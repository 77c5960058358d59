"""The input policy: how an image of any size becomes what the network sees (its *views*).

One policy for scoring, evaluation, export and benchmarks, stored in the model card. Free of
torch, so that scoring with ONNX Runtime never imports it.

1. Images are kept at native resolution, because downscaling a whole photo erases the blur
   and compression artefacts a quality model must see (docs/input-policy.md).
2. Only when the shorter side exceeds ``max_short_side`` is the image downscaled (bicubic,
   antialiased) so that the shorter side equals it; images whose shorter side is below ``size``
   are upscaled so that it equals ``size``.
3. The layout (``LAYOUTS``) cuts the resized image into views:
   - ``whole``: the whole image in one pass; an image with a side above ``tile`` is cut into a
     grid of near-equal tiles that cover it exactly once. Cost is proportional to the pixels.
   - ``crops``: ``num_crops`` fixed ``size`` x ``size`` crops (1 = centre, 5 = corners + centre,
     k*k = an evenly spaced grid); they overlap on small photos.
   The image's score is the pixel-weighted mean of its views' scores.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from PIL import Image

from qfmiqm.errors import ImageError, UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_ASPECT_RATIO = 64
#: a tile of the ``whole`` layout may not be smaller than this many crop sizes per side, so that
#: no tile of a large image is smaller than the smallest image the policy accepts
MIN_TILE_IN_CROPS = 2


@dataclass(frozen=True)
class InputPolicy:
    """How an image becomes model input. Travels with the model in its card."""

    #: crop side in pixels; also the smallest shorter side (smaller images are upscaled to it)
    size: int = 224
    #: images whose shorter side is larger are downscaled (bicubic, antialiased) to it
    max_short_side: int = 1024
    #: ``crops`` layout: 1 = centre, 5 = four corners + centre, k*k = k x k grid
    num_crops: int = 5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: ``crops`` or ``whole`` (see LAYOUTS); cards written before layouts existed are ``crops``
    layout: str = "crops"
    #: ``whole`` layout: the longest side of one pass; larger images are tiled
    tile: int = 1024

    def __post_init__(self) -> None:
        if self.size < 16:
            raise UsageError(f"input size {self.size} is too small (minimum 16)")
        if self.max_short_side < self.size:
            raise UsageError(f"max_short_side {self.max_short_side} is smaller than the crop size {self.size}")
        if self.layout not in LAYOUTS:
            raise UsageError(f"input layout must be one of {', '.join(sorted(LAYOUTS))}, not '{self.layout}'")
        # only the whole layout tiles: a crops card (all cards before layouts) of a large crop
        # size keeps loading with the default tile it never uses
        if self.layout == "whole" and self.tile < MIN_TILE_IN_CROPS * self.size:
            raise UsageError(f"tile {self.tile} is smaller than {MIN_TILE_IN_CROPS} x the crop size {self.size}")
        if self.tile < 1:
            raise UsageError(f"tile {self.tile} must be a positive number of pixels")
        crop_offsets(self.num_crops, self.size + 1, self.size + 1, self.size)  # validates num_crops

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "InputPolicy":
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)

    def replace(self, **changes) -> "InputPolicy":
        return InputPolicy.from_dict({**self.to_dict(), **changes})

    def describe(self) -> str:
        """One phrase for reports: what the network sees of an image."""
        if self.layout == "whole":
            return f"whole image at native resolution (tiles of at most {self.tile} px)"
        return f"{self.num_crops} crop(s) of {self.size} px"


def keeps_native_size(height: int, width: int, policy: InputPolicy) -> bool:
    """Whether the policy uses an image of this size as it is (no resize)."""
    return policy.size <= min(height, width) <= policy.max_short_side


def resized_shape(height: int, width: int, policy: InputPolicy) -> tuple[int, int]:
    """(height, width) of an image of this size after the policy's resize."""
    short = min(height, width)
    if max(height, width) > MAX_ASPECT_RATIO * short:
        # upscaling a 1 x 50000 strip to a 224-pixel short side would need gigabytes
        raise ImageError(f"extreme aspect ratio ({width}x{height}; at most {MAX_ASPECT_RATIO}:1 is supported)")
    if keeps_native_size(height, width, policy):
        return height, width
    target = policy.size if short < policy.size else policy.max_short_side
    scale = target / short
    return max(policy.size, round(height * scale)), max(policy.size, round(width * scale))


def resize_for_policy(img: np.ndarray, policy: InputPolicy) -> np.ndarray:
    """Rescale an RGB uint8 image so that size <= shorter side <= max_short_side."""
    h, w = img.shape[:2]
    new_h, new_w = resized_shape(h, w, policy)
    if (new_h, new_w) == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.BICUBIC, reducing_gap=None))


def crop_offsets(num_crops: int, height: int, width: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of the policy's deterministic crops (1, 5 or k*k)."""
    max_y, max_x = height - size, width - size
    if max_y < 0 or max_x < 0:
        raise ValueError(f"image {height}x{width} is smaller than the crop size {size}")
    if num_crops == 1:
        return [(max_y // 2, max_x // 2)]
    if num_crops == 5:
        return [(0, 0), (0, max_x), (max_y, 0), (max_y, max_x), (max_y // 2, max_x // 2)]
    k = math.isqrt(num_crops)
    if k * k != num_crops or k < 1:
        raise UsageError(f"num_crops must be 1, 5 or a square number (4, 9, 16, ...), got {num_crops}")
    ys = [round(i * max_y / (k - 1)) for i in range(k)]
    xs = [round(i * max_x / (k - 1)) for i in range(k)]
    return [(y, x) for y in ys for x in xs]


def tile_bounds(length: int, tile: int) -> list[tuple[int, int]]:
    """[start, end) of the fewest near-equal pieces of at most ``tile`` that cover ``length`` once."""
    n = -(-length // tile)
    cuts = [round(i * length / n) for i in range(n + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


Box = tuple[int, int, int, int]  # top, left, bottom, right of a view in the resized image


def crop_boxes(height: int, width: int, policy: InputPolicy) -> list[Box]:
    s = policy.size
    return [(y, x, y + s, x + s) for y, x in crop_offsets(policy.num_crops, height, width, s)]


def whole_boxes(height: int, width: int, policy: InputPolicy) -> list[Box]:
    return [(y0, x0, y1, x1) for y0, y1 in tile_bounds(height, policy.tile) for x0, x1 in tile_bounds(width, policy.tile)]


#: layout name -> (resized height, width, policy) -> the boxes of its views
LAYOUTS: dict[str, Callable[[int, int, InputPolicy], list[Box]]] = {
    "crops": crop_boxes,
    "whole": whole_boxes,
}


def view_boxes(height: int, width: int, policy: InputPolicy) -> list[Box]:
    """Where the views of an image of this (resized) size lie in it."""
    return LAYOUTS[policy.layout](height, width, policy)


def cut_views(img, policy: InputPolicy) -> list:
    """The views of an already resized (H, W, 3) image: slices, so it cuts arrays and tensors alike."""
    return [img[y0:y1, x0:x1] for y0, x0, y1, x1 in view_boxes(img.shape[0], img.shape[1], policy)]


def policy_views(img: np.ndarray, policy: InputPolicy) -> list[np.ndarray]:
    """RGB uint8 (H, W, 3) -> the views the network scores: C-contiguous (h, w, 3) uint8 arrays."""
    return [np.ascontiguousarray(v) for v in cut_views(resize_for_policy(img, policy), policy)]


def view_weights(views: list[np.ndarray]) -> np.ndarray:
    """Each view's share of the image's score: its share of the pixels (equal for crops)."""
    areas = np.array([v.shape[0] * v.shape[1] for v in views], dtype=np.float64)
    return areas / areas.sum()
