"""Pristine crops that have clipped pixels: undistorted examples of crushed blacks, blown
highlights and saturated colours, labelled 100.

The synthetic distortions that clip (contrast raised, mean shifted, oversaturated) teach a model
that a channel at 0 or 255 is a defect; many good photos have such pixels (coffee: 15 % of its
pixels have a channel at 5 or below), and a model that learned the rule scores their
contrast-reduced versions higher (docs/default-model.md). These crops are the counter-examples.

    python tools/clipped_crops.py [--src datasets/pristine/train] [--out datasets/synth_clipped]
        [--per-photo 6] [--tries 16] [--min-share 0.05] [--size 288] [--max-side 1024] [--seed 31]

Each photo is downscaled to ``--max-side`` (bicubic), ``--tries`` random ``--size`` crops are
drawn, and up to ``--per-photo`` of those with at least ``--min-share`` of their pixels clipped
(some channel <= 5 or >= 250) are written to ``OUT/reference/`` with a ``labels.csv`` of
pristine rows (the layout of a ``qfmiqm synth`` set, so ``tools/make_default_train.py`` takes it
as a further set).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from qfmiqm.files import write_text_atomic

PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg"}


def clipped_share(rgb: np.ndarray) -> float:
    """Share of pixels with some channel at 5 or below, or at 250 or above."""
    return float(((rgb.min(axis=2) <= 5) | (rgb.max(axis=2) >= 250)).mean())


def downscaled(path: Path, max_side: int) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    return np.asarray(img)


def clipped_crops(rgb: np.ndarray, rng: np.random.Generator, size: int, tries: int, keep: int,
                  min_share: float) -> list[np.ndarray]:
    """Up to ``keep`` of ``tries`` random crops with at least ``min_share`` clipped pixels.
    All ``tries`` positions are drawn whatever is kept, so each photo uses the same draws."""
    out = []
    for _ in range(tries):
        y = rng.integers(0, rgb.shape[0] - size + 1)
        x = rng.integers(0, rgb.shape[1] - size + 1)
        crop = rgb[y:y + size, x:x + size]
        if clipped_share(crop) >= min_share and len(out) < keep:
            out.append(crop)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=Path("datasets/pristine/train"))
    ap.add_argument("--out", type=Path, default=Path("datasets/synth_clipped"))
    ap.add_argument("--per-photo", type=int, default=6)
    ap.add_argument("--tries", type=int, default=16)
    ap.add_argument("--min-share", type=float, default=0.05)
    ap.add_argument("--size", type=int, default=288)
    ap.add_argument("--max-side", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=31)
    args = ap.parse_args()
    if not args.src.is_dir():
        sys.exit(f"error: {args.src}: not a folder of photos (tools/collect_photos.py makes one)")
    photos = sorted(p for p in args.src.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        sys.exit(f"error: {args.src}: no .png/.jpg photos in it")
    (args.out / "reference").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    rows, sources = ["path,reference,type,level,score"], 0
    for photo in photos:
        rgb = downscaled(photo, args.max_side)
        if min(rgb.shape[:2]) < args.size:
            continue
        crops = clipped_crops(rgb, rng, args.size, args.tries, args.per_photo, args.min_share)
        sources += bool(crops)
        for k, crop in enumerate(crops):
            name = f"reference/{photo.stem}_k{k:02d}.png"
            Image.fromarray(crop).save(args.out / name)
            rows.append(f"{name},{name},pristine,0,100.0")
    write_text_atomic(args.out / "labels.csv", "\n".join(rows) + "\n")
    print(f"{len(rows) - 1} clipped pristine crops from {sources} of {len(photos)} photos -> {args.out / 'labels.csv'}")


if __name__ == "__main__":
    main()
