"""Cached block inputs: last-N fine-tuning (the paper's setting b) at the speed of N blocks.

With ``model.finetune.mode: last_n`` the stem and the first blocks are frozen, so what they
compute for a given crop never changes. ``BlockInputCache`` stores, per crop (a bank of K random
training crops per image, the policy's test views), what the frozen part hands on:

* level 0: the activation entering the first trained block (e.g. 112 x 14 x 14 for
  EfficientNet-Lite0 with the last 2 stages trained, at 224 px);
* levels 1..: the feature levels the frozen part produces itself (outputs of frozen blocks,
  pixel levels), already grid-pooled as the feature cache stores them (the head's pooling is
  idempotent on them).

``BlockSplit.resume`` runs the trained blocks from level 0 and puts the backbone's levels back in
their order, so a training step runs only the trained blocks and the head. The split is found
by probing: forward hooks on the blocks tell which levels come out of which block; a probe then
checks that resuming from the block input reproduces the full forward (CNN backbones whose
blocks run in sequence: EfficientNet stages, ResNet layers). Random augmentation is fixed per
cached crop, as with the feature cache.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Callable, Optional

import torch
from torch import nn

from qfmiqm.errors import UsageError
from qfmiqm.models.backbones import Backbone, BackboneFeatures
from qfmiqm.models.qfm import QualityNet
from qfmiqm.train.cache import FeatureCache
from qfmiqm.train.feeding import TEACHER_ON_BLOCK_INPUTS, CachedFeeder, FeedContext
from qfmiqm.train.finetune import backbone_units

#: bumped when what the block-input cache stores changes
BLOCK_CACHE_FORMAT = 1
PROBE_SIZE = 64


class BlockSplit:
    """Where a last_n backbone splits into a frozen prefix (cached) and trained blocks (run)."""

    def __init__(self, backbone: Backbone, last_n: int, grid: int):
        if backbone.spec.kind != "cnn":
            raise UsageError(f"config: 'train.cache_block_inputs' supports CNN backbones, not "
                             f"{backbone.name} ({backbone.spec.kind}); set train.cache_block_inputs=false")
        _, names, _ = backbone_units(backbone)
        if last_n > len(names):
            raise UsageError(f"last_n={last_n} but {backbone.name} has {len(names)} blocks")
        self.backbone, self.grid = backbone, grid
        self.first = len(names) - last_n
        self.first_name = names[self.first]
        self.trained: list[nn.Module] = [backbone.model.get_submodule(n) for n in names[self.first:]]
        self._blocks = [backbone.model.get_submodule(n) for n in names]
        #: per backbone level: index into the trained blocks whose output it is, or None (frozen)
        self.level_source: list[Optional[int]] = []
        self._probe()

    @torch.no_grad()
    def _probe(self) -> None:
        """Map levels to trained blocks, then check that resuming reproduces the full forward."""
        x = torch.randn(2, 3, PROBE_SIZE, PROBE_SIZE, generator=torch.Generator().manual_seed(0))
        x = x.to(next(self.backbone.parameters()).device)
        outputs: list[tuple[torch.Tensor, int]] = []  # kept alive: matched by identity below
        hooks = [blk.register_forward_hook(lambda m, i, o, k=k: outputs.append((o, k)))
                 for k, blk in enumerate(self.trained)]
        was_training = self.backbone.training
        self.backbone.eval()  # no running-statistics updates from the probe
        try:
            full = self.backbone(x)
            self.level_source = [next((k for o, k in outputs if o is m), None) for m in full.maps]
            for h in hooks:
                h.remove()
            hooks = []
            got = self.resume(self.encode(x, pool=False))
        finally:
            for h in hooks:
                h.remove()
            self.backbone.train(was_training)
        ok = len(got.maps) == len(full.maps) and all(
            a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(got.maps, full.maps))
        if not ok or not any(s is not None for s in self.level_source):
            raise UsageError(f"config: 'train.cache_block_inputs': {self.backbone.name} does not run its blocks "
                             f"in sequence from {self.first_name}; set train.cache_block_inputs=false")

    def encode(self, x: torch.Tensor, pool: bool = True) -> BackboneFeatures:
        """What the cache stores for normalised crops ``x``: [block input, frozen levels (pooled)]."""
        captured: list[torch.Tensor] = []
        hook = self._blocks[self.first].register_forward_pre_hook(lambda m, args: captured.append(args[0]))
        try:
            full = self.backbone(x)
        finally:
            hook.remove()
        frozen = [m for m, s in zip(full.maps, self.level_source) if s is None]
        if pool and self.grid > 0:
            frozen = [m if m.shape[-2:] == (self.grid, self.grid) else nn.functional.adaptive_avg_pool2d(m, self.grid)
                      for m in frozen]
        return BackboneFeatures([captured[0], *frozen], None)

    def resume(self, cached: BackboneFeatures) -> BackboneFeatures:
        """The backbone's levels from a cached [block input, frozen levels]: runs the trained blocks."""
        return resume_levels(self.trained, self.level_source, cached)


def resume_levels(blocks, level_source: list[Optional[int]], cached: BackboneFeatures) -> BackboneFeatures:
    """Run ``blocks`` from the cached block input and put the backbone's levels back in order:
    a level whose ``level_source`` is None is a frozen one from the cache."""
    x, frozen = cached.maps[0], iter(cached.maps[1:])
    outs = []
    for blk in blocks:
        x = blk(x)
        outs.append(x)
    maps = [next(frozen) if s is None else outs[s] for s in level_source]
    return BackboneFeatures(maps, None)


class ResumedNet(nn.Module):
    """The trained blocks and the head as one network on cached block inputs: what an EMA
    teacher copies when the step never sees images (distillation on cached block inputs)."""

    def __init__(self, split: BlockSplit, head: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(split.trained)  # the backbone's own modules: shared, not copied
        self.head = head
        self.level_source = list(split.level_source)

    def forward(self, cached: BackboneFeatures) -> torch.Tensor:
        return self.head(resume_levels(self.blocks, self.level_source, cached))


class BlockInputCache(FeatureCache):
    """A FeatureCache whose entries are ``BlockSplit.encode`` of each crop (PyTorch runtime)."""

    def __init__(self, split: BlockSplit, *args, **kwargs):
        kwargs["runtime"] = "torch"  # the activations come from hooks on the PyTorch modules
        super().__init__(*args, **kwargs)
        self.split = split

    def namespace(self, policy) -> str:
        base = super().namespace(policy)
        key = f"{base}:block-inputs-{BLOCK_CACHE_FORMAT}:{self.split.first_name}"
        return hashlib.sha256(key.encode()).hexdigest()[:20]

    def _pooled(self, x: torch.Tensor) -> BackboneFeatures:
        ctx = self.autocast() if self.autocast else contextlib.nullcontext()
        with ctx:
            feats = self.split.encode(x)
        return BackboneFeatures([t.float() for t in feats.maps], None)


class BlockFeeder(CachedFeeder):
    """Cached block inputs; the step runs the trained blocks and the head."""

    cached = True

    def __init__(self, ctx: FeedContext, needs_eval: Callable[[str], bool]):
        super().__init__(ctx, needs_eval)
        m = ctx.cfg.model
        self.split = BlockSplit(ctx.net.backbone, m.finetune.last_n, ctx.net.head.grid)

    def _make_cache(self, **kwargs) -> FeatureCache:
        kwargs.pop("runtime", None)
        return BlockInputCache(self.split, **kwargs)

    def _cache_name(self) -> str:
        return f"block-input cache ({self.split.first_name} on)"

    def features(self, net: QualityNet, feats: BackboneFeatures) -> BackboneFeatures:
        return self.split.resume(feats)

    def distill_student(self, net: QualityNet) -> tuple[nn.Module, str]:
        """The EMA teacher copies the trained blocks with the head and runs on cached block inputs."""
        return ResumedNet(self.split, net.head), TEACHER_ON_BLOCK_INPUTS


def use_block_cache(choice: bool | str, mode: str, backbone_kind: str, teacher_needs_images: bool,
                    whole_images: bool = False) -> bool:
    """``train.cache_block_inputs``: ``auto`` -> on for last_n training of a CNN on crops, unless a
    distillation teacher needs the images (a trained checkpoint; an EMA teacher runs on the cached
    block inputs); ``True`` insists (a usage error where it cannot work); ``False`` -> off."""
    if choice is False:
        return False
    if choice == "auto":
        return mode == "last_n" and backbone_kind == "cnn" and not teacher_needs_images and not whole_images
    if mode != "last_n":
        raise UsageError(f"config: 'train.cache_block_inputs' needs model.finetune.mode=last_n, not '{mode}'")
    if teacher_needs_images:
        raise UsageError("config: 'train.cache_block_inputs' does not combine with distillation from a trained "
                         "checkpoint (distill.teacher): it needs the live images; use distill.teacher=ema")
    if whole_images:
        # a whole image's block input has the image's own size: the cached views cannot be stacked
        raise UsageError("config: 'train.cache_block_inputs' needs model.input.layout=crops, not whole")
    return True
