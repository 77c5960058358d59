"""Can whole-image tonal statistics, without any reference, tell a pristine photo from its
contrast-reduced version? (docs/default-model.md: the model's per-crop features cannot.)

A logistic-regression probe (tools/feature_probe.py's fit, C = 0.1) learns "pristine or contrast
reduced" from 9 luminance and colour statistics of the whole image, on the scenes of a synthetic
set whose level-1 or level-2 ``contrast_change`` lowers the contrast (the synthetic type raises it
half the time); it is tested on the reductions of another set's scenes and on whole photos
against their 70 % contrast version (the distortion of tests/test_default_model.py).

    python tools/tone_probe.py [--train datasets/synth_default] [--test datasets/synth_heldout]
        [--photos datasets/pristine/heldout] [--levels 1,2] [--c 0.1]

On the 2-core dev VM: about 15 seconds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))
from feature_probe import fit_probe, rated_above, share, versions_by_scene  # noqa: E402
from test_default_model import DISTORTIONS  # noqa: E402 - the test's own contrast loss

from qfmiqm.data.colour import LUMA  # noqa: E402

STATISTICS = ("luma_std", "range_1_99", "range_5_95", "p1", "p99", "luma_mean", "local_std_mean",
              "local_std_median", "saturation")
PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg"}


def tonal_statistics(img: Image.Image) -> np.ndarray:
    """The 9 STATISTICS of an image, on the 0-255 scale (7x7 windows for the local ones)."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    y = rgb @ LUMA
    p1, p5, p95, p99 = np.percentile(y, [1, 5, 95, 99])
    mean = ndimage.uniform_filter(y, 7)
    local_std = np.sqrt(np.maximum(ndimage.uniform_filter(y * y, 7) - mean * mean, 0.0))
    return np.array([y.std(), p99 - p1, p95 - p5, p1, p99, y.mean(), local_std.mean(), np.median(local_std),
                     (rgb.max(axis=2) - rgb.min(axis=2)).mean()])


def reduction_pairs(root: Path, levels: list[int]) -> np.ndarray:
    """(n, 2, 9) statistics of (pristine, contrast-reduced version) for every scene and level
    whose ``contrast_change`` version has a lower luminance spread than its pristine image."""
    pairs = []
    for versions in versions_by_scene(root).values():
        changed = [versions[("contrast_change", level)] for level in levels if ("contrast_change", level) in versions]
        if ("pristine", 0) not in versions or not changed:
            continue  # a pristine-only scene (e.g. extra pristine crops) is not read at all
        pristine = tonal_statistics(Image.open(versions[("pristine", 0)]))
        for path in changed:
            version = tonal_statistics(Image.open(path))
            if version[0] < pristine[0]:
                pairs.append([pristine, version])
    return np.array(pairs).reshape(-1, 2, len(STATISTICS))


def photo_pairs(folder: Path, keep_level: int = 1) -> np.ndarray:
    """(n, 2, 9) statistics of each photo of ``folder`` and its test contrast loss at ``keep_level``."""
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        sys.exit(f"error: {folder}: no .png/.jpg photos in it")
    pairs = []
    for path in photos:
        img = Image.open(path).convert("RGB")
        pairs.append([tonal_statistics(img), tonal_statistics(DISTORTIONS["contrast"](img, keep_level))])
    return np.array(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=Path, default=Path("datasets/synth_default"))
    ap.add_argument("--test", type=Path, default=Path("datasets/synth_heldout"))
    ap.add_argument("--photos", type=Path, default=Path("datasets/pristine/heldout"))
    ap.add_argument("--levels", default="1,2", help="contrast_change levels of the training pairs")
    ap.add_argument("--c", type=float, default=0.1, help="inverse L2 strength (scikit-learn's C)")
    args = ap.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    if not set(levels) <= set(range(1, 6)):
        sys.exit(f"error: --levels {args.levels}: levels are 1 to 5")
    if not args.photos.is_dir():
        sys.exit(f"error: {args.photos}: not a folder of photos")
    train = reduction_pairs(args.train, levels)
    if len(train) == 0:
        sys.exit(f"error: {args.train}: no contrast_change reductions at levels {args.levels}")
    probe = fit_probe(train, c=args.c)
    print(f"probe fitted on {len(train)} pristine/contrast-reduced pairs of {args.train}")
    test = reduction_pairs(args.test, levels)
    if len(test):
        print(f"  {args.test}: pristine rated above its reduction in {share(rated_above(probe, test), len(test))}")
    photos = photo_pairs(args.photos)
    print(f"  {args.photos}: whole photo rated above its 70 % contrast version in "
          f"{share(rated_above(probe, photos), len(photos))}")


if __name__ == "__main__":
    main()
