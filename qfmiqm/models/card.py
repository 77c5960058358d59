"""The model card: everything needed to rebuild, feed and interpret a model, stored as JSON
beside its safetensors weights (and inside them, as metadata)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qfmiqm.data.policy import InputPolicy
from qfmiqm.errors import WeightsError
from qfmiqm.files import write_text_atomic
from qfmiqm.models.tone import ToneTerm

CARD_FORMAT = 1


@dataclass(frozen=True)
class DecoderConfig:
    """Shape of the head between backbone and score: QFM channel gate + DEIQT panel decoder.

    DEIQT itself (ViT-S/16) is ``width=0, heads=6, grid=0, gate=False``: ViT tokens go to the
    decoder unprojected and unpooled. docs/method.md describes every key.
    """

    #: decoder width; backbone levels are projected to it (0: native, no projection)
    width: int = 128
    #: number of panel members (learnable queries), DEIQT: 6
    panel_size: int = 6
    #: transformer decoder layers, DEIQT: 1
    depth: int = 1
    #: attention heads, DEIQT: 6 (at width 384)
    heads: int = 4
    #: FFN hidden size as a multiple of the width, DEIQT: 4
    mlp_ratio: float = 4.0
    #: each CNN level is average-pooled to grid x grid tokens (0: keep the native grid)
    grid: int = 7
    #: the learned channel gate (QFM-IQM's adaptive feature selection); False: DEIQT
    gate: bool = True
    #: initial gate logit (sigmoid(3) ~ 0.95: open)
    gate_init: float = 3.0
    #: "shared": one bias-free linear head for all members (DEIQT's code); "separate": one each
    member_heads: str = "shared"


@dataclass(frozen=True)
class ScoreMapping:
    """Raw head output -> 0-100 (higher is better): ``clip(raw * scale + offset, lo, hi)``."""

    scale: float = 1.0
    offset: float = 0.0
    lo: float = 0.0
    hi: float = 100.0

    def apply(self, raw: float) -> float:
        return float(min(self.hi, max(self.lo, raw * self.scale + self.offset)))


@dataclass(frozen=True)
class ModelCard:
    name: str
    backbone: str
    trained: bool
    description: str = ""
    input: InputPolicy = field(default_factory=InputPolicy)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    score: ScoreMapping = field(default_factory=ScoreMapping)
    #: True when the weights file also holds the (fine-tuned) backbone
    includes_backbone: bool = False
    training_data: str = ""
    metrics: dict = field(default_factory=dict)
    limits: tuple[str, ...] = ()
    weights_sha256: str | None = None
    format: int = CARD_FORMAT
    #: image-level tone term added to the mean raw score of the crops (None: no such term)
    tone: ToneTerm | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input"] = self.input.to_dict()
        d["limits"] = list(self.limits)
        d["tone"] = self.tone.to_dict() if self.tone is not None else None
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict, source: str = "model card") -> "ModelCard":
        try:
            d = dict(d)
            d["input"] = InputPolicy.from_dict(d.get("input", {}))
            d["decoder"] = DecoderConfig(**d.get("decoder", {}))
            d["score"] = ScoreMapping(**d.get("score", {}))
            d["limits"] = tuple(d.get("limits", ()))
            d["tone"] = ToneTerm.from_dict(d["tone"]) if d.get("tone") is not None else None
            return cls(**d)
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"{source}: invalid model card ({exc})") from None

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ModelCard":
        p = Path(path)
        try:
            return cls.from_dict(json.loads(p.read_text(encoding="utf-8")), str(p))
        except FileNotFoundError:
            raise WeightsError(f"{p}: model card not found") from None
        except json.JSONDecodeError as exc:
            raise WeightsError(f"{p}: model card is not valid JSON ({exc.msg} at line {exc.lineno})") from None

    def write(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, self.to_json())
