"""Learning-rate schedules, per optimiser step (DEIQT uses timm's schedulers with
``t_in_epochs=False``): a linear warm-up from ``warmup_lr`` to ``lr``, then the schedule.

``step`` is timm's ``StepLRScheduler`` as DEIQT configures it: the decay counts from step 0
(not from the end of the warm-up), so with DEIQT's 3 warm-up epochs and decay every 3 epochs the
rate goes 2e-7 -> 2e-4 linearly over epochs 0-2, then 2e-5 (epochs 3-5), then 2e-6 (6-8).
Every schedule is floored at ``min_lr`` after the warm-up.
"""
from __future__ import annotations

import math
from typing import Callable

from qfmiqm.errors import UsageError


def _step(o, step: int, warm: int, total: int, spe: int) -> float:
    return o.lr * o.decay_rate ** (step // max(1, round(o.decay_epochs * spe)))


def _cosine(o, step: int, warm: int, total: int, spe: int) -> float:
    t = (step - warm) / max(1, total - warm)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + math.cos(math.pi * min(1.0, t)))


def _constant(o, step: int, warm: int, total: int, spe: int) -> float:
    return o.lr


#: schedule name -> lr after the warm-up, given (optim config, step, warm-up steps, total steps, steps/epoch)
SCHEDULES: dict[str, Callable[..., float]] = {"step": _step, "cosine": _cosine, "constant": _constant}


def lr_at(optim, step: int, steps_per_epoch: int) -> float:
    """The learning rate for optimiser step ``step`` (0-based) under ``optim`` (OptimConfig)."""
    if optim.schedule not in SCHEDULES:
        raise UsageError(f"config: 'optim.schedule' must be one of {sorted(SCHEDULES)}, not '{optim.schedule}'")
    warm = round(optim.warmup_epochs * steps_per_epoch)
    if step < warm:
        return optim.warmup_lr + (optim.lr - optim.warmup_lr) * step / warm
    total = optim.epochs * steps_per_epoch
    return max(optim.min_lr, SCHEDULES[optim.schedule](optim, step, warm, total, steps_per_epoch))
