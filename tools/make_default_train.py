"""Write the default model's training list: every row of the synthetic set, the pristine rows
of an extra set of pristine crops (more examples of undistorted content, label 100), every row
of any further sets (e.g. the same photos at another scale), the pristine rows of
``--pristine-more`` sets and, from ``--reductions`` sets, the
pristine rows plus only the distorted rows whose contrast is lower than their reference's.

    python tools/make_default_train.py datasets/synth_default datasets/synth_pristine datasets/default_train.csv \
        [datasets/synth_s512 ...] [--pristine-more datasets/synth_pristine512 ...]
        [--reductions datasets/synth_contrast ...] [--drop-contrast-raises]

``--reductions`` is meant for a ``qfmiqm synth --types contrast_change`` set: the synthetic
contrast change raises contrast (with clipping) or lowers it by a seeded coin flip, and the
extra crops are there to teach the lowering only (docs/default-model.md says why).
``--drop-contrast-raises`` also leaves out the ``contrast_change`` rows of every other set that
raise contrast. Both were tried for the default model and are not in its recipe.
Paths in the output are relative to the output's folder (the data root of the training config).
"""
from __future__ import annotations

import argparse
import csv
import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from qfmiqm.data.distortions import LUMA
from qfmiqm.files import write_text_atomic


@lru_cache(maxsize=None)
def luma_std(path: Path) -> float:
    """Standard deviation of an image's luminance (0-255): its global contrast (cached: a
    reference is compared with each of its distorted versions)."""
    return float((np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) @ LUMA).std())


def lowers_contrast(folder: Path, row: dict) -> bool:
    return luma_std(folder / row["path"]) < luma_std(folder / row["reference"])


def rows(folder: Path, root: Path, keep: str, drop_contrast_raises: bool = False) -> list[list[str]]:
    """``keep``: ``all`` rows, ``pristine`` rows only, or ``reductions`` (pristine rows and the
    distorted rows with lower contrast than their reference). ``drop_contrast_raises``: with
    ``all``, leave out the ``contrast_change`` rows that raise contrast."""
    with open(folder / "labels.csv", newline="") as f:
        reader = list(csv.DictReader(f))
    prefix = folder.resolve().relative_to(root.resolve())

    def wanted(r: dict) -> bool:
        if r["type"] == "pristine":
            return True
        if keep == "pristine":
            return False
        if keep == "reductions" or (drop_contrast_raises and r["type"] == "contrast_change"):
            return lowers_contrast(folder, r)
        return True

    chosen = [r for r in reader if wanted(r)]
    return [[str(prefix / r["path"]), str(prefix / r["reference"]), r["type"], r["level"], r["score"]]
            for r in chosen]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("synth", type=Path)
    ap.add_argument("pristine", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("more", type=Path, nargs="*", help="sets whose every row is added")
    ap.add_argument("--pristine-more", type=Path, nargs="+", default=[],
                    help="sets whose pristine rows only are added (more pristine crops, e.g. at another scale)")
    ap.add_argument("--reductions", type=Path, nargs="+", default=[],
                    help="sets whose pristine rows and contrast-lowering rows are added")
    ap.add_argument("--drop-contrast-raises", action="store_true",
                    help="leave out the contrast_change rows of the other sets that raise contrast")
    args = ap.parse_args()
    for folder in [args.synth, args.pristine, *args.more, *args.pristine_more, *args.reductions]:
        if not (folder / "labels.csv").is_file():
            ap.error(f"{folder}: no labels.csv (make the set with qfmiqm synth)")
    root = args.out.parent
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "reference", "type", "level", "score"])
    w.writerows(rows(args.synth, root, "all", args.drop_contrast_raises) + rows(args.pristine, root, "pristine"))
    for folder in args.more:
        w.writerows(rows(folder, root, "all", args.drop_contrast_raises))
    for folder in args.pristine_more:
        w.writerows(rows(folder, root, "pristine"))
    for folder in args.reductions:
        w.writerows(rows(folder, root, "reductions"))
    write_text_atomic(args.out, buf.getvalue())


if __name__ == "__main__":
    main()
