"""How often a model scores a whole photo above its level-1 distorted versions, using the same
four distortions as tests/test_default_model.py (blur, noise, JPEG, contrast loss), on every photo
of a folder: by default the photos held out of the default model's training.

    python tools/pristine_order.py [--model default] [--photos datasets/pristine/heldout] [--level 1]

Prints, per distortion, how many photos score above their distorted version, the photos where
contrast loss helps most, and the same count split by the share of near-white (clipped) pixels.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_default_model import DISTORTIONS  # noqa: E402 - the test's own distortions

import qfmiqm  # noqa: E402

PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg"}


def clipped_share(img: Image.Image) -> float:
    """Share of pixels whose brightest channel is at least 250."""
    return float((np.asarray(img).max(axis=2) >= 250).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--photos", default="datasets/pristine/heldout")
    ap.add_argument("--level", type=int, default=1, choices=range(1, 6))
    args = ap.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = qfmiqm.load(args.model, device="cpu")
    rows = []
    for path in sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in PHOTO_SUFFIXES):
        img = Image.open(path).convert("RGB")
        scores = model.score([img] + [fn(img, args.level) for fn in DISTORTIONS.values()])
        rows.append((path.name, clipped_share(img), scores[0], dict(zip(DISTORTIONS, scores[1:]))))
    if not rows:
        sys.exit(f"no photos in {args.photos}")
    total = sum(sum(s0 > s for s in d.values()) for _, _, s0, d in rows)
    print(f"{args.model}: pristine above level {args.level}, of {len(rows)} photos: "
          + ", ".join(f"{k} {sum(s0 > d[k] for _, _, s0, d in rows)}" for k in DISTORTIONS)
          + f"; {total} of {len(rows) * len(DISTORTIONS)} in all")
    for name, clip, s0, d in sorted(rows, key=lambda r: r[3]["contrast"] - r[2], reverse=True)[:5]:
        print(f"  {name[:32]:32s} clipped {clip:5.1%} pristine {s0:5.1f} "
              + " ".join(f"{k} {v:5.1f}" for k, v in d.items()))
    for label, keep in (("clipped < 2 %", lambda c: c < 0.02), ("clipped >= 2 %", lambda c: c >= 0.02)):
        group = [r for r in rows if keep(r[1])]
        print(f"  {label}: contrast loss scores above the pristine photo in "
              f"{sum(r[3]['contrast'] > r[2] for r in group)} of {len(group)}")


if __name__ == "__main__":
    main()
