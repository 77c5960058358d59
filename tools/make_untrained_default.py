"""Write the UNTRAINED placeholder 'default' model into the package zoo.

It exists so that the scoring pipeline works end to end before a trained model ships; its card
says trained=false and every command that uses it warns. Run: python tools/make_untrained_default.py
"""
from __future__ import annotations

import torch

from qfmiqm.models.card import ModelCard
from qfmiqm.models.registry import build_net, save_model, zoo_dir
from qfmiqm.models.card import ScoreMapping


def main() -> None:
    torch.manual_seed(0)
    card = ModelCard(
        name="default",
        backbone="efficientnet_lite0",
        trained=False,
        description="UNTRAINED placeholder head on the ImageNet EfficientNet-Lite0 backbone; "
                    "scores are not quality estimates.",
        score=ScoreMapping(scale=100.0, offset=50.0),
        training_data="none (untrained)",
        limits=("untrained: scores carry no quality information",),
    )
    net = build_net(card)
    card = save_model(net, card, zoo_dir() / "default.safetensors")
    print(f"wrote {zoo_dir() / 'default.safetensors'} sha256={card.weights_sha256}")


if __name__ == "__main__":
    main()
