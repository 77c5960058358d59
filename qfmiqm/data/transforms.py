"""The input policy: how an image of any size becomes the model's fixed-size crops.

One policy for scoring, evaluation, export and benchmarks, stored in the model card:

1. Images are kept at native resolution, because downscaling a whole photo erases the blur
   and compression artefacts a quality model must see (docs/input-policy.md).
2. Only when the shorter side exceeds ``max_short_side`` is the image downscaled (bicubic,
   antialiased) so that the shorter side equals it; images smaller than the crop size are
   upscaled so that the shorter side equals the crop size.
3. ``num_crops`` deterministic crops of ``size`` x ``size`` are taken: 1 = centre,
   5 = four corners + centre, k*k = an evenly spaced k x k grid. The score is their mean.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from qfmiqm.errors import ImageError, UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_ASPECT_RATIO = 64


@dataclass(frozen=True)
class InputPolicy:
    """How an image becomes model input. Travels with the model in its card."""

    size: int = 224
    max_short_side: int = 1024
    num_crops: int = 5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.size < 16:
            raise UsageError(f"input size {self.size} is too small (minimum 16)")
        if self.max_short_side < self.size:
            raise UsageError(f"max_short_side {self.max_short_side} is smaller than the crop size {self.size}")
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


def keeps_native_size(height: int, width: int, policy: InputPolicy) -> bool:
    """Whether the policy uses an image of this size as it is (no resize)."""
    return policy.size <= min(height, width) <= policy.max_short_side


def resize_for_policy(img: np.ndarray, policy: InputPolicy) -> np.ndarray:
    """Rescale an RGB uint8 image so that size <= shorter side <= max_short_side."""
    h, w = img.shape[:2]
    short = min(h, w)
    if max(h, w) > MAX_ASPECT_RATIO * short:
        # upscaling a 1 x 50000 strip to a 224-pixel short side would need gigabytes
        raise ImageError(f"extreme aspect ratio ({w}x{h}; at most {MAX_ASPECT_RATIO}:1 is supported)")
    if keeps_native_size(h, w, policy):
        return img
    target = policy.size if short < policy.size else policy.max_short_side
    scale = target / short
    new_w, new_h = max(policy.size, round(w * scale)), max(policy.size, round(h * scale))
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


def policy_crops(img: np.ndarray, policy: InputPolicy) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> uint8 tensor (K, 3, size, size) of the policy's crops.

    Kept as uint8 so that workers hand over a quarter of the bytes; ``normalize`` turns it into
    the backbone's input on the target device.
    """
    img = resize_for_policy(img, policy)
    h, w = img.shape[:2]
    return cut_crops(img, crop_offsets(policy.num_crops, h, w, policy.size), policy.size)


def cut_crops(img: np.ndarray, offsets: list[tuple[int, int]], size: int) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> uint8 tensor (K, 3, size, size) of the crops at top-left ``offsets``."""
    crops = [img[y:y + size, x:x + size] for y, x in offsets]
    return torch.from_numpy(np.ascontiguousarray(np.stack(crops))).permute(0, 3, 1, 2).contiguous()


def normalize(crops_uint8: torch.Tensor, policy: InputPolicy) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 normalised with the backbone's mean and std."""
    x = crops_uint8.float().div_(255.0)
    mean = torch.tensor(policy.mean, device=x.device, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(policy.std, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


# --- dataset transforms: random crops for training, the policy's crops for testing ---------


def dataset_policy(policy: InputPolicy, max_short_side: int | None = None) -> InputPolicy:
    """``policy`` with a dataset's own ``max_short_side`` (e.g. SPAQ: 512); never below the crop size."""
    if max_short_side is None:
        return policy
    target = max(policy.size, int(max_short_side))
    return policy if target == policy.max_short_side else policy.replace(max_short_side=target)


class RandomPolicyCrop:
    """Training transform: RGB uint8 (H, W, 3) -> uint8 tensor (3, size, size).

    The image is resized by the same rule as at test time (``resize_for_policy``), so training
    sees native-resolution pixels; then one random ``size`` crop, flipped left-right with
    probability ``hflip``. Randomness comes from torch (seeded per DataLoader worker).
    """

    def __init__(self, policy: InputPolicy, hflip: float = 0.5, max_short_side: int | None = None,
                 generator: torch.Generator | None = None):
        if not 0.0 <= hflip <= 1.0:
            raise UsageError(f"hflip probability must be in [0, 1], got {hflip}")
        self.policy = dataset_policy(policy, max_short_side)
        self.hflip = hflip
        self.generator = generator

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        img = resize_for_policy(img, self.policy)
        h, w = img.shape[:2]
        s = self.policy.size
        y = int(torch.randint(0, h - s + 1, (1,), generator=self.generator))
        x = int(torch.randint(0, w - s + 1, (1,), generator=self.generator))
        crop = img[y:y + s, x:x + s]
        if self.hflip > 0 and float(torch.rand(1, generator=self.generator)) < self.hflip:
            crop = crop[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).contiguous()

    def __repr__(self) -> str:
        return f"RandomPolicyCrop(size={self.policy.size}, max_short_side={self.policy.max_short_side}, hflip={self.hflip})"


class PolicyCrops:
    """Test transform: RGB uint8 (H, W, 3) -> uint8 tensor (K, 3, size, size), the policy's
    deterministic crops (exactly what scoring uses)."""

    def __init__(self, policy: InputPolicy, max_short_side: int | None = None):
        self.policy = dataset_policy(policy, max_short_side)

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        return policy_crops(img, self.policy)

    def __repr__(self) -> str:
        return (f"PolicyCrops(size={self.policy.size}, max_short_side={self.policy.max_short_side}, "
                f"num_crops={self.policy.num_crops})")


def train_transform(policy: InputPolicy, hflip: float = 0.5, max_short_side: int | None = None) -> RandomPolicyCrop:
    """Random native-resolution crop + horizontal flip (see RandomPolicyCrop)."""
    return RandomPolicyCrop(policy, hflip=hflip, max_short_side=max_short_side)


def eval_transform(policy: InputPolicy, max_short_side: int | None = None) -> PolicyCrops:
    """The policy's deterministic crops (centre or multi-crop), for validation and testing."""
    return PolicyCrops(policy, max_short_side=max_short_side)
