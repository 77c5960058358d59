"""One optimiser step: the forward as a module (so DDP sees one forward per backward), the
learning rate of the step, backward, clipping, the optimizer and GradScaler, the EMA teacher."""
from __future__ import annotations

import inspect
import math
from typing import Optional

import torch
from torch import nn

from qfmiqm.data.transforms import InputPolicy, normalize
from qfmiqm.errors import QfmiqmError
from qfmiqm.models.qfm import QualityNet
from qfmiqm.train.build import build_optimizer
from qfmiqm.train.distillation import ema_update
from qfmiqm.train.feeding import TEACHER_ON_FEATURES, TEACHER_ON_IMAGES
from qfmiqm.train.device import autocast
from qfmiqm.train.objective import QFMObjective
from qfmiqm.train.schedule import lr_at
from qfmiqm.train.schema import TrainConfig


class TrainingDiverged(QfmiqmError):
    """The loss became NaN or infinite."""


class TrainStep(nn.Module):
    """One training forward: the feeder's inputs -> backbone features -> QFM objective. Wrapped in
    DistributedDataParallel under torchrun; the objective's extra head passes (perturbed batches,
    the adversarial input gradient) happen inside this forward, so DDP's gradient hooks fire
    once per backward as it expects."""

    def __init__(self, net: QualityNet, objective: QFMObjective, policy: InputPolicy, feeder):
        super().__init__()
        self.net = net
        self.objective = objective
        self.policy = policy
        self._feeder = [feeder]  # a list: kept out of the module tree and its attribute hooks
        # (teacher, what it is called on: feeding.TEACHER_ON_*); kept out of the module tree
        self._teacher: list = [None, TEACHER_ON_FEATURES]

    def set_teacher(self, teacher: Optional[nn.Module], called_on: str) -> None:
        self._teacher = [teacher, called_on]

    def forward(self, inputs, targets: torch.Tensor, extra=None):
        teacher, called_on = self._teacher
        feeder = self._feeder[0]
        feats = feeder.features(self.net, inputs)
        extra_feats = feeder.features(self.net, extra) if extra is not None else None
        extra_targets, teacher_fn = None, None
        if extra_feats is not None and teacher is not None:
            if called_on == TEACHER_ON_FEATURES:
                teacher_fn = teacher
            else:
                with torch.no_grad():
                    teacher_in = normalize(extra, self.policy) if called_on == TEACHER_ON_IMAGES else extra
                    extra_targets = teacher(teacher_in).float()
        return self.objective(self.net.head, feats, targets, extra_feats=extra_feats, teacher=teacher_fn,
                              extra_targets=extra_targets)


class Stepper:
    """Owns the optimizer, the GradScaler and the (DDP-wrapped) step module; ``step`` trains one batch."""

    def __init__(self, cfg: TrainConfig, net: QualityNet, param_groups: list[dict], feeder, policy: InputPolicy,
                 teacher: Optional[nn.Module], ema_student: Optional[nn.Module], teacher_called_on: str,
                 device: torch.device, amp: Optional[torch.dtype], ddp_enabled: bool):
        self.cfg, self.net, self.device, self.amp = cfg, net, device, amp
        self.teacher, self.ema_student = teacher, ema_student
        self.optimizer = build_optimizer(param_groups, cfg.optim)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
        self.module = TrainStep(net, QFMObjective(cfg.qfm), policy, feeder)
        self.module.set_teacher(teacher, teacher_called_on)
        if cfg.train.compile:
            self._compile(feeder.cached)
        self.model = wrap_ddp(self.module, device) if ddp_enabled else self.module

    def _compile(self, cached: bool) -> None:
        head = self.net.head
        head.adapter.compile()
        head.decoder.compile()
        if not cached:
            self.net.backbone.compile()

    def set_lr(self, global_step: int, steps_per_epoch: int) -> float:
        """The schedule's learning rate at ``global_step``, scaled per group; returns the base rate."""
        lr = lr_at(self.cfg.optim, global_step, steps_per_epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        return lr

    def step(self, batch, lr: float, where: str) -> dict[str, float]:
        """Forward, backward and update on ``batch``; returns the logged values (loss terms, lr,
        grad_norm when clipping). ``where`` names the step in a divergence error."""
        o = self.cfg.optim
        inputs, targets, extra = batch
        with autocast(self.device, self.amp):
            loss, logs = self.model(inputs, targets, extra)
        if not math.isfinite(logs["loss"]) and self.amp is not torch.float16:
            raise TrainingDiverged(f"the loss became {logs['loss']} at {where}; lower optim.lr or check the "
                                   f"data (last checkpoint kept)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if o.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, o.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.teacher is not None and self.ema_student is not None:
            ema_update(self.teacher, self.ema_student, self.cfg.qfm.ema_decay)
        logs["lr"] = lr
        return logs


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel without per-forward buffer syncing."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # buffers (BatchNorm statistics of a fine-tuned CNN) are synced from rank 0 before each
    # evaluation and checkpoint (ddp.broadcast_module), not at every forward
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)
