"""The input policy (qfmiqm.data.policy): views of the ``crops`` and ``whole`` layouts, tiling,
validation and the card round trip. Pure numpy: no torch, no model."""
from __future__ import annotations

import json

import numpy as np
import pytest

from qfmiqm.data.policy import (
    LAYOUTS, InputPolicy, policy_views, resize_for_policy, tile_bounds, view_boxes, view_weights, whole_boxes,
)
from qfmiqm.errors import UsageError
from qfmiqm.models.card import ModelCard
from qfmiqm.models.registry import zoo_dir


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("length,tile", [(1, 1024), (224, 1024), (1024, 1024), (1025, 1024), (1400, 1024),
                                         (2048, 1024), (2049, 1024), (3001, 448), (5000, 999), (7, 2)])
def test_tile_bounds_cover_a_length_once_with_near_equal_pieces(length, tile):
    bounds = tile_bounds(length, tile)
    assert len(bounds) == -(-length // tile)  # the fewest pieces that fit
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous: no gap, no overlap
    sizes = [end - start for start, end in bounds]
    assert all(0 < s <= tile for s in sizes)
    assert max(sizes) - min(sizes) <= 1


def _coverage(boxes, height: int, width: int) -> np.ndarray:
    seen = np.zeros((height, width), dtype=np.int32)
    for y0, x0, y1, x1 in boxes:
        seen[y0:y1, x0:x1] += 1
    return seen


def test_whole_layout_tiles_a_large_image_once():
    policy = InputPolicy(layout="whole", tile=1024)
    img = _image(933, 1400)  # 1400 x 933: native size (short side <= 1024), wider than a tile
    assert resize_for_policy(img, policy) is img
    boxes = view_boxes(933, 1400, policy)
    assert boxes == [(0, 0, 933, 700), (0, 700, 933, 1400)]  # 2 columns x 1 row
    assert (_coverage(boxes, 933, 1400) == 1).all()

    views = policy_views(img, policy)
    assert [v.shape for v in views] == [(933, 700, 3), (933, 700, 3)]
    assert all(v.dtype == np.uint8 and v.flags.c_contiguous for v in views)
    assert sum(v.shape[0] * v.shape[1] for v in views) == 933 * 1400
    np.testing.assert_array_equal(np.concatenate(views, axis=1), img)  # the exact pixels, once each
    weights = view_weights(views)
    assert weights.sum() == pytest.approx(1.0) and weights == pytest.approx([0.5, 0.5])


def test_whole_layout_grid_and_unequal_tiles_weigh_by_pixels():
    policy = InputPolicy(layout="whole", tile=448)
    img = _image(1000, 601)  # short side 601: native; 3 rows x 2 columns of tiles
    views = policy_views(img, policy)
    boxes = whole_boxes(1000, 601, policy)
    assert len(views) == len(boxes) == 3 * 2
    assert all(max(v.shape[:2]) <= 448 for v in views)
    assert (_coverage(boxes, 1000, 601) == 1).all()
    areas = np.array([v.shape[0] * v.shape[1] for v in views])
    assert areas.sum() == 1000 * 601
    weights = view_weights(views)
    assert weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(weights, areas / areas.sum())
    assert len(set(areas.tolist())) > 1  # 333/334 x 300/301 tiles: weights follow the pixels


def test_whole_layout_downscales_a_huge_image_before_tiling():
    policy = InputPolicy(layout="whole", tile=1024, max_short_side=1024)
    views = policy_views(_image(1500, 3000), policy)  # short side 1500 -> 1024: 1024 x 2048
    assert sum(v.shape[0] * v.shape[1] for v in views) == 1024 * 2048
    assert [v.shape[:2] for v in views] == [(1024, 1024), (1024, 1024)]


def test_small_image_is_upscaled_to_one_whole_view():
    policy = InputPolicy(layout="whole")
    views = policy_views(_image(80, 100), policy)  # 100 x 80 -> short side 224
    assert len(views) == 1
    assert views[0].shape == (224, 280, 3)
    assert view_weights(views).tolist() == [1.0]


def test_crops_layout_is_unchanged():
    policy = InputPolicy()
    assert policy.layout == "crops" and policy.num_crops == 5
    img = _image(333, 500)
    views = policy_views(img, policy)
    assert [v.shape for v in views] == [(224, 224, 3)] * 5
    np.testing.assert_array_equal(views[0], img[:224, :224])  # top left
    np.testing.assert_array_equal(views[3], img[-224:, -224:])  # bottom right
    np.testing.assert_array_equal(views[4], img[54:278, 138:362])  # centre
    assert view_weights(views) == pytest.approx([0.2] * 5)
    small = policy_views(_image(80, 100), policy)  # upscaled, then cropped: overlapping crops
    assert [v.shape for v in small] == [(224, 224, 3)] * 5
    one = policy_views(img, InputPolicy(num_crops=1))
    assert len(one) == 1 and one[0].shape == (224, 224, 3)
    assert len(policy_views(img, InputPolicy(num_crops=9))) == 9


def test_policy_validation():
    assert set(LAYOUTS) == {"crops", "whole"}
    with pytest.raises(UsageError, match="layout"):
        InputPolicy(layout="mosaic")
    with pytest.raises(UsageError, match="tile 447"):
        InputPolicy(layout="whole", tile=447)  # below 2 x the crop size of 224
    assert InputPolicy(layout="whole", tile=448).tile == 448
    with pytest.raises(UsageError, match="tile 200"):
        InputPolicy(size=112, layout="whole", tile=200)
    with pytest.raises(UsageError, match="tile 0"):
        InputPolicy(tile=0)
    # the crops layout never tiles: a large crop size keeps loading with the default tile
    # (cards written before layouts existed have no tile), and becomes whole only with a fit tile
    large = InputPolicy(size=600)
    assert large.tile == 1024 and len(policy_views(_image(700, 800), large)) == 5
    with pytest.raises(UsageError, match="tile 1024"):
        large.replace(layout="whole")
    assert large.replace(layout="whole", tile=1200).tile == 1200
    with pytest.raises(UsageError, match="num_crops"):
        InputPolicy(num_crops=3)
    with pytest.raises(UsageError, match="too small"):
        InputPolicy(size=8)
    with pytest.raises(UsageError, match="max_short_side"):
        InputPolicy(max_short_side=100)


def test_policy_round_trips_through_dict_and_json():
    policy = InputPolicy(size=256, max_short_side=900, num_crops=9, layout="whole", tile=600)
    d = policy.to_dict()
    assert d["layout"] == "whole" and d["tile"] == 600 and isinstance(d["mean"], list)
    assert InputPolicy.from_dict(d) == policy
    assert InputPolicy.from_dict(json.loads(json.dumps(d))) == policy
    assert policy.replace(layout="crops") == InputPolicy(size=256, max_short_side=900, num_crops=9, tile=600)
    with pytest.raises(UsageError):
        policy.replace(tile=100)


def test_old_card_without_layout_loads_as_crops():
    d = json.loads((zoo_dir() / "default.json").read_text())
    d["input"].pop("layout", None)
    d["input"].pop("tile", None)
    card = ModelCard.from_dict(d)
    assert card.input.layout == "crops" and card.input.tile == InputPolicy().tile
    assert InputPolicy.from_dict({"size": 224, "num_crops": 5}).layout == "crops"
    assert InputPolicy.from_dict({"size": 640, "max_short_side": 1024}).layout == "crops"  # an old large-crop card
    # and the round trip of a card keeps the new fields
    whole = ModelCard.from_dict({**card.to_dict(), "input": card.input.replace(layout="whole", tile=512).to_dict()})
    assert ModelCard.from_dict(json.loads(whole.to_json())).input == card.input.replace(layout="whole", tile=512)
