"""QFM-IQM's losses: pair mining, semantic noise, ascent step, distillation, DEIQT equivalence."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from qfmiqm.errors import UsageError
from qfmiqm.models.backbones import BackboneFeatures, create_backbone
from qfmiqm.models.card import DecoderConfig
from qfmiqm.models.features import feature_levels, from_levels, index_features, level_norms
from qfmiqm.models.qfm import QualityHead, QualityNet
from qfmiqm.train.distillation import ema_update, make_teacher
from qfmiqm.train.finetune import set_backbone_mode
from qfmiqm.train.losses import RegressionLoss, anchored_hinge, plcc_loss, rank_loss
from qfmiqm.train.matching import NO_PARTNER, matching_loss, mine_pairs, semantic_noise
from qfmiqm.train.objective import QFMConfig, QFMObjective
from qfmiqm.train.perturbation import adversarial_delta, ascent_direction
from qfmiqm.train.schema import build_train_config

DIMS = [24, 40, 112, 320]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _feats(n: int = 8, seed: int = 0, cls: bool = False) -> BackboneFeatures:
    g = torch.Generator().manual_seed(seed)
    maps = [torch.rand(n, c, 7, 7, generator=g) * 2 for c in DIMS]
    return BackboneFeatures(maps, torch.randn(n, DIMS[-1], generator=g) if cls else None)


def _head(seed: int = 0, gate: bool = True, cls: bool = False) -> QualityHead:
    torch.manual_seed(seed)
    return QualityHead(DIMS, DIMS[-1] if cls else None, DecoderConfig(width=64, gate=gate))


def _targets(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed + 100)) * 100


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


# --- pair mining ----------------------------------------------------------------------------


def test_pairs_have_close_quality_and_the_most_distant_semantics():
    y = torch.tensor([50.0, 52.0, 51.0, 80.0, 20.0, 30.0])
    d = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-0.8, 0.6], [-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # image 3 is semantically farthest from image 0 but 30 points away in quality: not allowed
    assert mine_pairs(y, d, tau=5.0).tolist() == [2, 2, 0, NO_PARTNER, NO_PARTNER, NO_PARTNER]
    assert mine_pairs(y, d, tau=10.0).tolist() == [2, 2, 0, NO_PARTNER, 5, 4]
    assert mine_pairs(y, d, tau=100.0)[0].item() == 3  # without the quality constraint it would be 3
    # an image is never its own partner, even alone in its quality band
    assert NO_PARTNER == mine_pairs(torch.tensor([1.0, 90.0]), torch.eye(2), tau=5.0)[0].item()


def test_semantic_noise_points_from_i_to_j_with_norm_rho_times_feature_norm():
    feats = _feats(cls=True)
    anchors, partners = torch.tensor([0, 3, 5]), torch.tensor([4, 1, 5 - 5])
    delta = semantic_noise(feats, anchors, partners, rho=0.2)
    for f_i, f_j, d in zip(feature_levels(index_features(feats, anchors)),
                           feature_levels(index_features(feats, partners)), feature_levels(delta)):
        torch.testing.assert_close(level_norms(d).flatten(), 0.2 * level_norms(f_i).flatten())
        cos = F.cosine_similarity((f_j - f_i).flatten(1), d.flatten(1))
        torch.testing.assert_close(cos, torch.ones_like(cos))


def test_matching_loss_is_zero_for_an_insensitive_model_and_counts_pairs():
    head = _head()
    feats, y = _feats(), torch.tensor([10.0, 11.0, 12.0, 50.0, 51.0, 90.0, 91.0, 30.0])
    cfg = QFMConfig(adv=False, kd=False, match_tau=2.0)
    _, logs = QFMObjective(cfg)(head, feats, y)
    assert logs["match_pairs"] == 7 and logs["match"] > 0  # only image 7 (30) has no partner
    with torch.no_grad():  # a constant model cannot move along any direction
        head.decoder.member_heads.zero_()
    _, logs = QFMObjective(cfg)(head, feats, y)
    assert logs["match"] == 0.0
    a, b = torch.tensor([1.0, -2.0]), torch.zeros(2)
    assert matching_loss(a, b, "abs").item() == 1.5 and matching_loss(a, b, "squared").item() == 2.5


# --- adversarial perturbation ---------------------------------------------------------------


@pytest.mark.parametrize("cls", [False, True])
def test_ascent_step_increases_the_loss_more_than_random_directions(cls):
    head, feats, y = _head(cls=cls), _feats(cls=cls), _targets()
    levels = [t.clone().requires_grad_() for t in feature_levels(head.pool(feats))]
    reg = RegressionLoss()
    loss = reg(head.score(from_levels(levels, feats)), y)
    delta = adversarial_delta(levels, ascent_direction(loss, levels), rho=0.05)
    for f, d in zip(levels, delta):
        torch.testing.assert_close(level_norms(d), 0.05 * level_norms(f.detach()))
    with torch.no_grad():
        def loss_at(deltas):
            return reg(head.score(from_levels([f + d for f, d in zip(levels, deltas)], feats)), y).item()

        adversarial = loss_at(delta)
        g = torch.Generator().manual_seed(0)
        random = []
        for _ in range(8):
            rnd = [torch.randn(d.shape, generator=g) for d in delta]
            random.append(loss_at([r * level_norms(d) / level_norms(r) for r, d in zip(rnd, delta)]))
    assert adversarial > loss.item()
    assert adversarial - loss.item() > 3 * max(abs(r - loss.item()) for r in random)
    # the objective reports the same: the perturbed loss is above the clean one
    _, logs = QFMObjective(QFMConfig(match=False, kd=False))(head, feats, y)
    assert logs["adv"] == pytest.approx(adversarial, rel=1e-4) and logs["adv"] > logs["reg"]


def test_absolute_ascent_radius():
    levels = [torch.randn(4, 3, 2, 2), torch.randn(4, 5)]
    grads = [torch.randn_like(t) for t in levels]
    for d in adversarial_delta(levels, grads, rho=0.5, scale="absolute"):
        torch.testing.assert_close(level_norms(d).flatten(), torch.full((4,), 0.5))


# --- the gate -------------------------------------------------------------------------------


def test_gate_is_differentiable_and_changes_under_training():
    head, feats, y = _head(), _feats(), _targets()
    before = [g.detach().clone() for g in head.gate.logits]
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    objective = QFMObjective(QFMConfig(kd=False, match_tau=30.0))
    for step in range(3):
        opt.zero_grad()
        loss, _ = objective(head, feats, y)
        loss.backward()
        if step == 0:
            assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in head.gate.logits)
        opt.step()
    for b, g in zip(before, head.gate.logits):
        assert (g.detach() - b).abs().max() > 1e-3


def test_gate_l1_closes_gates_the_loss_does_not_need():
    """The sparsity pressure lowers the gate where plain training leaves it open."""
    feats, y = _feats(), _targets()
    means = {}
    for l1 in (0.0, 5.0):
        head = _head()
        opt = torch.optim.AdamW([{"params": [p for n, p in head.named_parameters() if "gate" not in n]},
                                 {"params": list(head.gate.parameters()), "lr": 0.2}], lr=1e-3)
        objective = QFMObjective(QFMConfig.deiqt(gate_l1=l1))
        for _ in range(20):
            opt.zero_grad()
            loss, logs = objective(head, feats, y)
            loss.backward()
            opt.step()
        means[l1] = torch.cat(head.gate.gates()).mean().item()
        assert logs["gate_mean"] == pytest.approx(means[l1], abs=0.05)
    assert means[5.0] < means[0.0] - 0.2


def test_gate_l1_is_off_at_zero_and_refuses_negative_weights():
    head, feats, y = _head(), _feats(), _targets()
    base, _ = QFMObjective(QFMConfig.deiqt())(head, feats, y)
    same, _ = QFMObjective(QFMConfig.deiqt(gate_l1=0.0))(head, feats, y)
    more, _ = QFMObjective(QFMConfig.deiqt(gate_l1=1.0))(head, feats, y)
    gates = torch.cat(head.gate.gates()).mean()
    assert torch.equal(base, same) and torch.allclose(more, base + gates)
    with pytest.raises(UsageError, match="gate_l1"):
        QFMConfig(gate_l1=-1.0)


# --- DEIQT equivalence ----------------------------------------------------------------------


@pytest.mark.parametrize("gate", [False, True])
def test_all_components_off_is_exactly_the_deiqt_step(gate):
    head, feats, y = _head(gate=gate), _feats(), _targets()
    twin = copy.deepcopy(head)
    loss, logs = QFMObjective(QFMConfig.deiqt())(head, feats, y)
    loss.backward()
    plain = F.smooth_l1_loss(twin(feats), y)  # DEIQT: criterion = torch.nn.SmoothL1Loss()
    plain.backward()
    assert torch.equal(loss, plain) and set(logs) <= {"reg", "loss", "gate_mean", "gate_open"}
    ours, theirs = _grads(head), _grads(twin)
    assert ours.keys() == theirs.keys() and len(ours) == len(list(head.parameters()))
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


def test_all_off_with_a_live_backbone_is_the_plain_deiqt_step():
    torch.manual_seed(0)
    net = QualityNet(create_backbone("efficientnet_lite0", pretrained=False), DecoderConfig(width=64, gate=False))
    set_backbone_mode(net.backbone, "last_n", 1)
    net.train()
    twin = copy.deepcopy(net)
    x, y = torch.randn(4, 3, 96, 96), _targets(4)
    loss, _ = QFMObjective(QFMConfig.deiqt())(net.head, net.backbone(x), y)
    loss.backward()
    F.smooth_l1_loss(twin(x), y).backward()
    ours, theirs = _grads(net), _grads(twin)
    assert ours.keys() == theirs.keys() and any(k.startswith("backbone.") for k in ours)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


def test_qfm_on_a_live_backbone_runs_it_once_and_trains_only_its_trainable_blocks():
    torch.manual_seed(0)
    net = QualityNet(create_backbone("efficientnet_lite0", pretrained=False), DecoderConfig(width=64))
    set_backbone_mode(net.backbone, "last_n", 1)
    net.train()
    calls = []
    net.backbone.register_forward_hook(lambda *a: calls.append(1))
    x, y = torch.randn(4, 3, 96, 96), torch.tensor([40.0, 42.0, 70.0, 71.0])
    loss, logs = QFMObjective(QFMConfig(kd=False))(net.head, net.backbone(x), y)
    loss.backward()
    assert len(calls) == 1 and logs["match_pairs"] == 4
    with_grad = {k for k, p in net.backbone.model.named_parameters() if p.grad is not None}
    assert with_grad and all(k.startswith("blocks.6.") for k in with_grad)


# --- distillation ---------------------------------------------------------------------------


def test_distillation_with_zero_weight_changes_nothing_bit_for_bit():
    head, feats, y, extra = _head(), _feats(), _targets(), _feats(6, seed=1)
    teacher = make_teacher(head)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05)  # a teacher that disagrees with the student: L_kd > 0
    runs = {}
    for name, cfg, kwargs in [
        ("off", QFMConfig(kd=False), {}),
        ("zero", QFMConfig(kd=True, lambda_kd=0.0), {"extra_feats": extra, "teacher": teacher}),
        ("on", QFMConfig(kd=True, lambda_kd=0.5), {"extra_feats": extra, "teacher": teacher}),
    ]:
        student = copy.deepcopy(head)
        loss, logs = QFMObjective(cfg)(student, feats, y, **kwargs)
        loss.backward()
        runs[name] = (loss.detach(), _grads(student), logs)
    assert runs["zero"][2]["kd"] > 0  # the term was computed, only weighted by zero
    assert torch.equal(runs["off"][0], runs["zero"][0])
    for k, g in runs["off"][1].items():
        assert torch.equal(g, runs["zero"][1][k]), k
    assert any(not torch.equal(g, runs["on"][1][k]) for k, g in runs["off"][1].items())


def test_distillation_targets_come_from_the_teacher_or_the_caller():
    head, feats, y, extra = _head(), _feats(), _targets(), _feats(4, seed=2)
    teacher = make_teacher(head)
    cfg = QFMConfig(match=False, adv=False, lambda_kd=1.0)
    _, logs = QFMObjective(cfg)(head, feats, y, extra_feats=extra, teacher=teacher)
    assert logs["kd"] == pytest.approx(0.0, abs=1e-9)  # a teacher identical to the student agrees
    _, logs = QFMObjective(cfg)(head, feats, y, extra_feats=extra, extra_targets=torch.full((4,), 60.0))
    assert logs["kd"] > 1.0
    with pytest.raises(UsageError, match="teacher"):
        QFMObjective(cfg)(head, feats, y, extra_feats=extra)


def test_ema_update():
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0 = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, decay=0.9)
    for t, before, s in zip(teacher.parameters(), t0, student.parameters()):
        torch.testing.assert_close(t, 0.9 * before + 0.1 * s.detach())
    ema_update(teacher, student, decay=0.0)
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))
    frozen = make_teacher(student)
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training


# --- regression loss and config -------------------------------------------------------------


def test_regression_loss_terms():
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert plcc_loss(2 * y + 1, y).item() == pytest.approx(0.0, abs=1e-6)
    assert plcc_loss(-y, y).item() == pytest.approx(2.0, abs=1e-6)
    assert rank_loss(y, y).item() == 0.0 and rank_loss(-y, y).item() > 0
    assert rank_loss(y, y, margin=2.0).item() > 0  # ordered but closer than the margin
    pred = torch.tensor([1.5, 1.0, 3.5, 6.0])
    assert torch.equal(RegressionLoss()(pred, y), F.smooth_l1_loss(pred, y))
    assert RegressionLoss(plcc_weight=1.0, rank_weight=1.0)(pred, y) > RegressionLoss()(pred, y)


def test_config_validation_and_switches():
    assert not any((QFMConfig.deiqt().match, QFMConfig.deiqt().adv, QFMConfig.deiqt().kd))
    assert QFMConfig.from_dict(QFMConfig(match_tau=3.0).to_dict()) == QFMConfig(match_tau=3.0)
    with pytest.raises(UsageError, match="unknown qfm config key 'lambda_mtch'"):
        QFMConfig.from_dict({"lambda_mtch": 1.0})
    with pytest.raises(UsageError, match="match_distance"):
        QFMConfig(match_distance="l3")
    with pytest.raises(UsageError, match="lambda_adv"):
        QFMConfig(lambda_adv=-1.0)


def test_anchored_hinge_compares_each_pristine_leader_with_its_own_run_only():
    # a batch in anchored runs: [member of a run cut off before the batch] [A: 100, 94, 97]
    # [B: 100, 60, 80]; labels within 5 of the leader (97) are left out
    target = torch.tensor([50.0, 100, 94, 97, 100, 60, 80])
    pred = torch.tensor([99.0, 80, 79, 90, 70, 69, 60])
    # pairs counted: A-94 (80 - 79 = 1), B-60 (70 - 69 = 1), B-80 (70 - 60 = 10); margin 3
    expected = (2.0 + 2.0 + 0.0) / 3
    assert anchored_hinge(pred, target, margin=3.0, min_gap=5.0).item() == pytest.approx(expected)
    # the item before the first leader (scored 99, far above B's 70) is in no pair; across runs
    # nothing is compared (A's 80 above B's 70 would not matter either way)
    assert anchored_hinge(pred[1:], target[1:], margin=3.0, min_gap=5.0).item() == pytest.approx(expected)
    # no pair to rank: zero, and still a graph for backward
    lone = torch.tensor([1.0, 2.0], requires_grad=True)
    out = anchored_hinge(lone, torch.tensor([100.0, 99.0]), margin=3.0, min_gap=5.0)
    out.backward()
    assert out.item() == 0.0


def test_anchor_weight_needs_anchored_batches():
    with pytest.raises(UsageError, match="qfm.anchor_weight"):
        build_train_config({"data": {"dataset": "x.csv"}, "qfm": {"anchor_weight": 1.0}})
    build_train_config({"data": {"dataset": "x.csv", "group_size": 8, "group_anchor": True},
                        "qfm": {"anchor_weight": 1.0}})


def test_objective_adds_the_anchored_hinge_with_its_weight():
    head, feats = _head(), _feats()
    y = torch.tensor([100.0, 60, 70, 80, 100, 50, 65, 40])  # two anchored runs of 4
    base = QFMConfig.deiqt()
    with torch.no_grad():
        pred = head(feats)
    expected = anchored_hinge(pred, y, margin=50.0, min_gap=5.0).item()
    assert expected > 0  # an untrained head does not put the pristine items 50 points up
    loss0, logs0 = QFMObjective(base)(head, feats, y)
    loss1, logs1 = QFMObjective(dataclasses.replace(base, anchor_weight=2.0, anchor_margin=50.0))(head, feats, y)
    assert "anchor" not in logs0 and logs1["anchor"] == pytest.approx(expected, rel=1e-5)
    assert loss1.item() == pytest.approx(loss0.item() + 2.0 * expected, rel=1e-5)
