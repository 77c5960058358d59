"""Distillation to expand the data (QFM-IQM, component 3).

A teacher gives pseudo-labels to extra images the labels do not cover (an unlabelled folder,
the synthetic set, strong augmentations of training images); the student fits them:

    L_kd = L_reg(f_student(F_extra), f_teacher(F_extra)),   weighted by lambda_kd.

The teacher is any callable from ``BackboneFeatures`` to scores: an exponential moving average
of the student head (``make_teacher`` + ``ema_update``), or the head of a trained checkpoint
(``load_teacher``). With a live backbone whose teacher is a whole network, compute the
pseudo-labels on the images yourself and pass them as ``extra_targets`` to the objective.
"""
from __future__ import annotations

import copy
import os
from typing import Callable

import torch
from torch import nn

from qfmiqm.models.backbones import BackboneFeatures
from qfmiqm.models.features import detach_features

Teacher = Callable[[BackboneFeatures], torch.Tensor]


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student`` to be moved by ``ema_update``."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student for floating parameters and buffers;
    other buffers (counters) are copied."""
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameters")
    torch._foreach_lerp_(t_params, [p.detach() for p in s_params], 1.0 - decay)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        if tb.is_floating_point():
            tb.lerp_(sb, 1.0 - decay)
        else:
            tb.copy_(sb)


@torch.no_grad()
def pseudo_labels(teacher: Teacher, extra_feats: BackboneFeatures) -> torch.Tensor:
    """The teacher's scores on the extra images (no gradient)."""
    return teacher(detach_features(extra_feats)).detach()


def load_teacher(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The frozen head of a trained model (zoo name or checkpoint) as a teacher on features."""
    from qfmiqm.models.registry import load_net, resolve_model

    net = load_net(resolve_model(name_or_path)).to(device)
    return make_teacher(net.head)
