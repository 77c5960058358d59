from __future__ import annotations

import numpy as np
import pytest

from qfmiqm.data.transforms import InputPolicy, crop_offsets, policy_crops, resize_for_policy
from qfmiqm.errors import ImageError, UsageError


def test_crop_layouts():
    assert crop_offsets(1, 300, 400, 224) == [(38, 88)]
    five = crop_offsets(5, 300, 400, 224)
    assert five[:4] == [(0, 0), (0, 176), (76, 0), (76, 176)] and five[4] == (38, 88)
    nine = crop_offsets(9, 300, 400, 224)
    assert len(nine) == 9 and nine[0] == (0, 0) and nine[-1] == (76, 176)
    with pytest.raises(UsageError):
        crop_offsets(3, 300, 400, 224)


def test_resize_policy_keeps_native_resolution_in_range():
    policy = InputPolicy(size=224, max_short_side=1024, num_crops=1)
    mid = np.zeros((500, 700, 3), np.uint8)
    assert resize_for_policy(mid, policy) is mid
    small = resize_for_policy(np.zeros((100, 50, 3), np.uint8), policy)
    assert small.shape == (448, 224, 3)
    big = resize_for_policy(np.zeros((3000, 4000, 3), np.uint8), policy)
    assert big.shape == (1024, 1365, 3)
    strip = resize_for_policy(np.zeros((10, 500, 3), np.uint8), policy)
    assert strip.shape[:2] == (224, 11200)
    with pytest.raises(ImageError, match="aspect ratio"):
        resize_for_policy(np.zeros((1, 5000, 3), np.uint8), policy)


def test_policy_crops_are_exact_pixels(chelsea_rgb):
    policy = InputPolicy(num_crops=5)
    crops = policy_crops(chelsea_rgb, policy)
    assert crops.shape == (5, 3, 224, 224) and crops.dtype.is_floating_point is False
    h, w = chelsea_rgb.shape[:2]
    np.testing.assert_array_equal(crops[0].permute(1, 2, 0).numpy(), chelsea_rgb[:224, :224])
    np.testing.assert_array_equal(crops[3].permute(1, 2, 0).numpy(), chelsea_rgb[h - 224:, w - 224:])


def test_policy_round_trips_through_dict():
    p = InputPolicy(size=224, max_short_side=768, num_crops=9)
    assert InputPolicy.from_dict(p.to_dict()) == p
    with pytest.raises(UsageError):
        InputPolicy(size=224, max_short_side=100)
