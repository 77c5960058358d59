"""Named models that ship inside the package (the model zoo) and checkpoint files.

A model is a card (JSON) plus safetensors weights. Zoo models live in ``qfmiqm/models/zoo/``
as ``NAME.json`` + ``NAME.safetensors``; any other checkpoint is a ``.safetensors`` file whose
card sits beside it (same stem, ``.json``) or inside its metadata.
"""
from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from qfmiqm.errors import UsageError, WeightsError
from qfmiqm.files import atomic_path
from qfmiqm.models.card import ModelCard
from qfmiqm.files import sha256_file

if TYPE_CHECKING:
    from qfmiqm.models.qfm import QualityNet

CARD_METADATA_KEY = "qfmiqm_card"


def zoo_dir() -> Path:
    return Path(str(resources.files("qfmiqm.models") / "zoo"))


@dataclass(frozen=True)
class ModelEntry:
    """One model the user can name: its card and where its weights are."""

    card: ModelCard
    weights_path: Path

    @property
    def weights_present(self) -> bool:
        from qfmiqm.models.backbones import get_backbone_spec

        backbone_ok = self.card.includes_backbone or get_backbone_spec(self.card.backbone).weights_offline
        return self.weights_path.is_file() and backbone_ok


def zoo_entries() -> dict[str, ModelEntry]:
    entries = {}
    for card_path in sorted(zoo_dir().glob("*.json")):
        card = ModelCard.read(card_path)
        entries[card.name] = ModelEntry(card, card_path.with_suffix(".safetensors"))
    return entries


def list_models(pattern: str = "*") -> list[str]:
    """Names usable in ``qfmiqm.load`` (shell-style ``pattern`` filter, as in pyiqa)."""
    return [n for n in zoo_entries() if fnmatch.fnmatch(n, pattern)]


def resolve_model(name_or_path: str | os.PathLike) -> ModelEntry:
    """A zoo name or a checkpoint path -> ModelEntry, with a clear error otherwise."""
    key = os.fspath(name_or_path)
    zoo = zoo_entries()
    if key in zoo:
        return zoo[key]
    p = Path(key)
    if p.suffix.lower() == ".safetensors" or p.exists():
        if not p.is_file():
            raise UsageError(f"{p}: model file not found")
        if p.suffix.lower() != ".safetensors":
            raise UsageError(f"{p}: models are loaded from .safetensors checkpoints (with a .json card) "
                             "or .onnx files written by 'qfmiqm export'")
        return ModelEntry(read_checkpoint_card(p), p)
    raise UsageError(f"unknown model '{key}' (known: {', '.join(zoo) or 'none'}; or a .safetensors checkpoint path)")


def read_checkpoint_card(path: Path) -> ModelCard:
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        return ModelCard.read(sidecar)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:  # metadata only: no torch needed
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path}: corrupted or truncated safetensors file ({exc})") from None
    if CARD_METADATA_KEY not in meta:
        raise WeightsError(f"{path}: no model card: put it beside the weights as {sidecar.name}")
    return ModelCard.from_dict(json.loads(meta[CARD_METADATA_KEY]), str(path))


def build_net(card: ModelCard, backbone_weights: str | None = None, trust_pickle: bool = False,
              pretrained_backbone: bool = True) -> QualityNet:
    """An untrained-head network of the card's shape, backbone with ImageNet weights."""
    from qfmiqm.models.backbones import create_backbone
    from qfmiqm.models.qfm import QualityNet

    backbone = create_backbone(
        card.backbone, weights=backbone_weights, trust_pickle=trust_pickle,
        pretrained=pretrained_backbone and not card.includes_backbone,
    )
    return QualityNet(backbone, card.decoder)


def verified_digest(entry: ModelEntry) -> str:
    """The sha256 of the entry's weights file, after checking it against the card's record."""
    if not entry.weights_path.is_file():
        raise WeightsError(f"{entry.weights_path}: weights of model '{entry.card.name}' not found")
    digest = sha256_file(entry.weights_path)
    if entry.card.weights_sha256 and digest != entry.card.weights_sha256:
        raise WeightsError(f"{entry.weights_path}: checksum mismatch; the file is corrupted or was replaced")
    return digest


def load_net(entry: ModelEntry, backbone_weights: str | None = None, trust_pickle: bool = False) -> QualityNet:
    """Build the network of a card and load its weights, checking the checksum when recorded."""
    card = entry.card
    verified_digest(entry)
    from qfmiqm.models.weights import load_strict, read_state_dict

    net = build_net(card, backbone_weights, trust_pickle)
    state = read_state_dict(entry.weights_path)
    target = net if card.includes_backbone else net.head
    if not card.includes_backbone:
        state = {k.removeprefix("head."): v for k, v in state.items()}
    load_strict(target, state, str(entry.weights_path))
    return net.eval()


def save_model(net: QualityNet, card: ModelCard, path: str | os.PathLike) -> ModelCard:
    """Write weights (+ card in metadata) and the sidecar card atomically; returns the final card."""
    from safetensors.torch import save_file

    path = Path(path)
    card = replace(card, weights_sha256=None)  # a file cannot carry its own hash
    module = net if card.includes_backbone else net.head
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={CARD_METADATA_KEY: card.to_json()})
    card = replace(card, weights_sha256=sha256_file(path))
    card.write(path.with_suffix(".json"))
    return card

