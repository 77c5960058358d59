"""Level-wise helpers over ``BackboneFeatures`` (a list of maps plus an optional class token).

QFM-IQM perturbs, pairs and pools backbone features level by level. These helpers treat the
class token as one more level, so every loss works the same on CNN maps and ViT tokens, on
live backbone outputs and on cached tensors.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from qfmiqm.models.backbones import BackboneFeatures


def feature_levels(feats: BackboneFeatures) -> list[torch.Tensor]:
    """The maps, then the class token when there is one."""
    return list(feats.maps) + ([feats.cls_token] if feats.cls_token is not None else [])


def from_levels(levels: Sequence[torch.Tensor], like: BackboneFeatures) -> BackboneFeatures:
    """Inverse of ``feature_levels`` for features shaped like ``like``."""
    n_maps = len(like.maps)
    return BackboneFeatures(list(levels[:n_maps]), levels[n_maps] if like.cls_token is not None else None)


def map_levels(fn: Callable[..., torch.Tensor], *feats: BackboneFeatures) -> BackboneFeatures:
    """Apply ``fn`` level by level to one or more features of the same layout."""
    return from_levels([fn(*ts) for ts in zip(*(feature_levels(f) for f in feats))], feats[0])


def index_features(feats: BackboneFeatures, index: torch.Tensor | slice) -> BackboneFeatures:
    return map_levels(lambda t: t[index], feats)


def cat_features(parts: Sequence[BackboneFeatures]) -> BackboneFeatures:
    """Concatenate along the batch dimension."""
    return from_levels([torch.cat(ts) for ts in zip(*(feature_levels(p) for p in parts))], parts[0])


def detach_features(feats: BackboneFeatures) -> BackboneFeatures:
    return map_levels(torch.Tensor.detach, feats)


def batch_size(feats: BackboneFeatures) -> int:
    return feature_levels(feats)[0].shape[0]


def level_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of one level, shaped to broadcast against it: (B, 1, ...)."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def pooled_descriptor(feats: BackboneFeatures) -> torch.Tensor:
    """g(F): per level, the spatial mean (maps) or the token itself (class token), L2-normalised,
    then concatenated -> (B, sum of channels). Cosine similarity of two descriptors is then the
    mean of the per-level cosine similarities, so no level dominates by its magnitude."""
    parts = [F.normalize(m.mean(dim=(2, 3)), dim=1) for m in feats.maps]
    if feats.cls_token is not None:
        parts.append(F.normalize(feats.cls_token, dim=1))
    return torch.cat(parts, dim=1) / len(parts) ** 0.5
