"""The QFM-IQM training objective: one call per batch for the training engine.

    L = L_reg + lambda_match * L_match + lambda_adv * L_adv + lambda_kd * L_kd

on backbone features, so the same call serves a live (fine-tuned) backbone and cached features
of a frozen one. The clean forward is done once and reused: its loss gives the ascent direction
and its predictions anchor the matching loss; both perturbed batches go through the head in one
forward. The backbone never runs twice. With ``match``, ``adv`` and ``kd`` off the step is
exactly DEIQT's: ``smooth_l1(head(feats), y)``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from qfmiqm.errors import UsageError
from qfmiqm.models.backbones import BackboneFeatures
from qfmiqm.models.features import (
    batch_size, cat_features, feature_levels, from_levels, index_features, map_levels, pooled_descriptor,
)
from qfmiqm.models.qfm import QualityHead
from qfmiqm.train.distillation import Teacher, pseudo_labels
from qfmiqm.train.losses import RegressionLoss, anchored_hinge
from qfmiqm.train.matching import MATCH_DISTANCES, matching_loss, mine_pairs, semantic_noise
from qfmiqm.train.perturbation import ADV_SCALES, adversarial_delta, ascent_direction

#: which features pairs are mined on: the backbone's (ungated) or the gated ones the decoder sees
MATCH_SPACES = {
    "backbone": lambda head, pooled: pooled_descriptor(pooled),
    "gated": lambda head, pooled: pooled_descriptor(head.select(pooled)),
}


@dataclass(frozen=True)
class QFMConfig:
    """Switches and constants of the QFM-IQM objective (docs/method.md). Score-valued constants
    (reg_beta, rank_margin, match_tau) are in the units of the targets; the defaults assume the
    contract's 0-100 scale, on which DEIQT's smooth-L1 (beta 1) is computed too."""

    # L_reg
    reg_beta: float = 1.0            # smooth-L1 beta (DEIQT: torch default 1.0)
    plcc_weight: float = 0.0         # weight of 1 - PLCC (0: off)
    rank_weight: float = 0.0         # weight of the pairwise rank hinge (0: off)
    rank_margin: float = 0.0         # hinge margin of the rank loss
    anchor_weight: float = 0.0       # weight of the in-scene hinge, pristine above its versions (0: off;
                                     # needs data.group_anchor; qfmiqm.train.losses.anchored_hinge)
    anchor_margin: float = 3.0       # its margin
    anchor_gap: float = 5.0          # versions labelled within this of the pristine image are left out
    # quality-aware feature matching
    match: bool = True
    lambda_match: float = 1.0
    match_tau: float = 5.0           # max |y_i - y_j| of a pair (5 points on 0-100)
    match_rho: float = 0.1           # ||delta_ij|| = match_rho * ||F_i||, per level
    match_distance: str = "abs"      # "abs" | "squared"
    match_space: str = "backbone"    # "backbone" | "gated": where semantic distance is measured
    # adversarial perturbation of the upstream features
    adv: bool = True
    lambda_adv: float = 1.0
    adv_rho: float = 0.05            # step radius (relative: times ||F_i||, per level)
    adv_scale: str = "relative"      # "relative" | "absolute"
    # distillation
    kd: bool = True                  # active when the batch brings extra features
    lambda_kd: float = 1.0
    ema_decay: float = 0.999         # for an EMA teacher (qfmiqm.train.distillation.ema_update)
    # feature selection
    gate_l1: float = 0.0             # weight of the mean gate value (a sparsity pressure; 0: off)

    def __post_init__(self) -> None:
        for key, table in (("match_distance", MATCH_DISTANCES), ("match_space", MATCH_SPACES),
                           ("adv_scale", ADV_SCALES)):
            if getattr(self, key) not in table:
                raise UsageError(f"qfm.{key} must be one of {sorted(table)}, not '{getattr(self, key)}'")
        for key in ("lambda_match", "lambda_adv", "lambda_kd", "match_tau", "match_rho", "adv_rho",
                    "reg_beta", "plcc_weight", "rank_weight", "gate_l1", "anchor_weight", "anchor_gap"):
            if getattr(self, key) < 0:
                raise UsageError(f"qfm.{key} must be >= 0, not {getattr(self, key)}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise UsageError(f"qfm.ema_decay must be in [0, 1], not {self.ema_decay}")

    @classmethod
    def deiqt(cls, **changes) -> "QFMConfig":
        """All three QFM components off: the DEIQT objective."""
        return cls(**{"match": False, "adv": False, "kd": False, **changes})

    @classmethod
    def from_dict(cls, d: dict) -> "QFMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown qfm config key '{unknown[0]}' (known: {', '.join(sorted(known))})")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def regression_loss(self) -> RegressionLoss:
        return RegressionLoss(self.reg_beta, self.plcc_weight, self.rank_weight, self.rank_margin)


class QFMObjective:
    """``QFMObjective(cfg)(head, feats, targets, ...) -> (loss, logs)``; call ``loss.backward()``."""

    def __init__(self, cfg: QFMConfig | None = None):
        self.cfg = cfg or QFMConfig()
        self.reg = self.cfg.regression_loss()

    def __call__(
        self,
        head: QualityHead,
        feats: BackboneFeatures,
        targets: torch.Tensor,
        extra_feats: BackboneFeatures | None = None,
        teacher: Teacher | None = None,
        extra_targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss on a labelled batch (``feats``, ``targets`` (B,)) and, for distillation, on extra
        features scored by ``teacher`` (or carrying precomputed ``extra_targets``)."""
        cfg = self.cfg
        with record_function("qfm.clean_forward"):
            pooled = head.pool(feats)
            if cfg.adv:  # the ascent step needs dL/dF, also on cached features that carry no graph
                pooled = map_levels(lambda t: t if t.requires_grad else t.detach().requires_grad_(), pooled)
            pred = head.score(pooled)
            targets = targets.to(pred.dtype).reshape(-1)
            reg = self.reg(pred, targets)
        loss = reg
        logs: dict[str, torch.Tensor | float] = {"reg": reg}
        if cfg.anchor_weight:
            anchor = anchored_hinge(pred, targets, cfg.anchor_margin, cfg.anchor_gap)
            loss = loss + cfg.anchor_weight * anchor
            logs["anchor"] = anchor

        perturbed: list[BackboneFeatures] = []
        if cfg.match:
            with record_function("qfm.mine_pairs"):
                with torch.no_grad():
                    partners = mine_pairs(targets, MATCH_SPACES[cfg.match_space](head, pooled), cfg.match_tau)
                anchors = torch.nonzero(partners >= 0).flatten()
                logs["match_pairs"] = float(anchors.numel())
                if anchors.numel():
                    delta = semantic_noise(pooled, anchors, partners[anchors], cfg.match_rho)
                    perturbed.append(map_levels(torch.add, index_features(pooled, anchors), delta))
        if cfg.adv:
            with record_function("qfm.ascent_grad"):
                levels = feature_levels(pooled)
                delta = adversarial_delta(levels, ascent_direction(reg, levels), cfg.adv_rho, cfg.adv_scale)
                perturbed.append(from_levels([f + d for f, d in zip(levels, delta)], pooled))

        if perturbed:
            with record_function("qfm.perturbed_forward"):
                out = head.score(cat_features(perturbed) if len(perturbed) > 1 else perturbed[0])
                out = out.split([batch_size(p) for p in perturbed])
                if cfg.match and logs["match_pairs"]:
                    match = matching_loss(out[0], pred[anchors], cfg.match_distance)
                    loss = loss + cfg.lambda_match * match
                    logs["match"] = match
                if cfg.adv:
                    adv = self.reg(out[-1], targets)
                    loss = loss + cfg.lambda_adv * adv
                    logs["adv"] = adv
        if cfg.match and "match" not in logs:
            logs["match"] = 0.0  # no pair of close quality in this batch

        if cfg.kd and extra_feats is not None:
            with record_function("qfm.distillation_forward"):
                if extra_targets is None:
                    if teacher is None:
                        raise UsageError("distillation needs a teacher or extra_targets for the extra images")
                    extra_targets = pseudo_labels(teacher, extra_feats)
                student = head(extra_feats)
                kd = self.reg(student, extra_targets.to(student.dtype).reshape(-1).detach())
            loss = loss + cfg.lambda_kd * kd
            logs["kd"] = kd

        if head.gate is not None:
            gates = torch.cat(head.gate.gates())
            if cfg.gate_l1:
                # network-slimming style: every channel pays to stay open, so the gate keeps the
                # channels the losses need and closes the rest (the projection after it cannot
                # undo a closed gate for free: its weights are decayed)
                gate_cost = gates.mean()
                loss = loss + cfg.gate_l1 * gate_cost
            logs["gate_mean"] = gates.detach().mean()
            logs["gate_open"] = (gates.detach() > 0.5).float().mean()
        logs["loss"] = loss
        return loss, {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in logs.items()}
