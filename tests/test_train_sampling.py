"""Epoch plans: batches grouped by content, and the gate's own parameter group."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qfmiqm.models.backbones import create_backbone
from qfmiqm.models.card import DecoderConfig
from qfmiqm.models.qfm import QualityNet
from qfmiqm.train.data import EpochSampler, GroupedEpochSampler, grouped_order
from qfmiqm.train.finetune import trainable_param_groups

#: 6 scenes x 8 versions, shuffled so that grouping cannot come from the input order
GROUPS = np.random.default_rng(3).permutation(np.repeat([f"ref{i}" for i in range(6)], 8))


def _runs(order: np.ndarray, size: int) -> list[set[str]]:
    return [set(GROUPS[order[i:i + size] % len(GROUPS)]) for i in range(0, len(order), size)]


def test_grouped_order_is_a_permutation_in_runs_of_one_scene():
    ids = np.unique(GROUPS, return_inverse=True)[1]
    order = grouped_order(ids, len(GROUPS), 4, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(len(GROUPS)))
    assert all(len(run) == 1 for run in _runs(order, 4))
    # a plain shuffle almost never does that
    plain = np.random.default_rng(0).permutation(len(GROUPS))
    assert sum(len(run) == 1 for run in _runs(plain, 4)) < len(GROUPS) // 4


def test_grouped_order_covers_repeats_and_short_groups():
    ids = np.array([0, 0, 0, 1, 2, 2])
    order = grouped_order(ids, 12, 4, np.random.default_rng(1))  # data.repeats = 2
    assert sorted(order.tolist()) == list(range(12))
    runs = np.split(order, np.flatnonzero(np.diff(ids[order % 6])) + 1)
    assert max(len(r) for r in runs) >= 4


def test_anchored_runs_start_with_their_scenes_pristine_image():
    ids = np.random.default_rng(4).permutation(np.repeat(np.arange(6), 7))  # pristine + 6 versions
    anchors = np.zeros(len(ids), dtype=bool)
    for g in range(6):
        anchors[np.flatnonzero(ids == g)[0]] = True
    order = grouped_order(ids, len(ids), 4, np.random.default_rng(0), anchors)
    assert len(order) == len(ids)
    runs = [order[i:i + 4] for i in range(0, len(order), 4)]
    for run in runs[:-1]:
        assert anchors[run[0]] and not anchors[run[1:]].any() and len(set(ids[run])) == 1
    # anchors recur in every run; the others are not repeated within the epoch
    others = order[~anchors[order]]
    assert len(set(others.tolist())) == len(others)


def test_grouped_sampler_shards_resumes_and_reshuffles_per_epoch():
    shards = [GroupedEpochSampler(GROUPS, len(GROUPS), world=2, rank=r, seed=0, group_size=4) for r in (0, 1)]
    for s in shards:
        s.set_epoch(0)
    first = [np.array(list(s)) for s in shards]
    assert sorted(np.concatenate(first).tolist()) == list(range(len(GROUPS)))
    assert all(len(run) == 1 for order in first for run in _runs(order, 4))
    shards[0].start = 5
    assert list(shards[0]) == first[0][5:].tolist() and len(shards[0]) == len(first[0]) - 5
    shards[0].start = 0
    shards[0].set_epoch(1)
    assert list(shards[0]) != first[0].tolist()
    assert len(shards[0]) == len(EpochSampler(len(GROUPS), 2, 0, 0))


def test_gate_has_its_own_parameter_group():
    torch.manual_seed(0)
    net = QualityNet(create_backbone("efficientnet_lite0", pretrained=False), DecoderConfig(gate=True))
    groups = {g["name"]: g["params"] for g in trainable_param_groups(net, "frozen")}
    assert set(groups) == {"head", "gate"}
    assert {id(p) for p in groups["gate"]} == {id(p) for p in net.head.gate.parameters()}
    assert len(groups["head"]) + len(groups["gate"]) == len(list(net.head.parameters()))
    net = QualityNet(create_backbone("efficientnet_lite0", pretrained=False), DecoderConfig(gate=False))
    assert [g["name"] for g in trainable_param_groups(net, "frozen")] == ["head"]
