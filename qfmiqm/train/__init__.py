"""Training: losses, feature perturbation, distillation, backbone modes and the training loop.

The training step calls ``qfmiqm.train.objective.QFMObjective(QFMConfig(...))(head, feats, targets,
extra_feats=..., teacher=...)``; ``qfmiqm.train.finetune.set_backbone_mode`` decides what of the
backbone trains. docs/method.md has the equations and every config key.
"""
