"""Torch transforms over the input policy (qfmiqm.data.policy): crops as tensors, normalisation,
and the dataset transforms (random crops for training, the policy's views for testing)."""
from __future__ import annotations

import numpy as np
import torch

from qfmiqm.data.policy import (  # noqa: F401 - re-exported: the policy's home is qfmiqm.data.policy
    IMAGENET_MEAN, IMAGENET_STD, MAX_ASPECT_RATIO, InputPolicy, crop_offsets, keeps_native_size, policy_views,
    resize_for_policy,
)
from qfmiqm.errors import UsageError


def policy_crops(img: np.ndarray, policy: InputPolicy) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> uint8 tensor (K, 3, size, size) of the policy's crops.

    Kept as uint8 so that workers hand over a quarter of the bytes; ``normalize`` turns it into
    the backbone's input on the target device.
    """
    img = resize_for_policy(img, policy)
    h, w = img.shape[:2]
    return cut_crops(img, crop_offsets(policy.num_crops, h, w, policy.size), policy.size)


def validation_views(img: np.ndarray, policy: InputPolicy) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> uint8 (K, 3, h, w): what training-time validation scores of an image.

    ``crops`` layout: the policy's crops, exactly as scoring. ``whole`` layout: the whole resized
    image as one view when it fits one tile, else its centred tile-sized region; scoring covers
    such an image with several tiles, but in-training validation needs one view per image (a
    fixed number of cached views), so it scores the centre only. Only model selection sees this.
    """
    if policy.layout == "crops":
        return policy_crops(img, policy)
    img = resize_for_policy(img, policy)
    h, w = img.shape[:2]
    th, tw = min(h, policy.tile), min(w, policy.tile)
    y, x = (h - th) // 2, (w - tw) // 2
    view = np.array(img[y:y + th, x:x + tw])  # a writable copy: torch.from_numpy warns on read-only arrays
    return torch.from_numpy(view).permute(2, 0, 1).unsqueeze(0).contiguous()


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
        return validation_views(img, self.policy)

    def __repr__(self) -> str:
        return (f"PolicyCrops(size={self.policy.size}, max_short_side={self.policy.max_short_side}, "
                f"num_crops={self.policy.num_crops})")


def train_transform(policy: InputPolicy, hflip: float = 0.5, max_short_side: int | None = None) -> RandomPolicyCrop:
    """Random native-resolution crop + horizontal flip (see RandomPolicyCrop)."""
    return RandomPolicyCrop(policy, hflip=hflip, max_short_side=max_short_side)


def eval_transform(policy: InputPolicy, max_short_side: int | None = None) -> PolicyCrops:
    """The policy's deterministic crops (centre or multi-crop), for validation and testing."""
    return PolicyCrops(policy, max_short_side=max_short_side)
