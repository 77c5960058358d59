"""Write the default model's training list: every row of the synthetic set, the pristine rows
of an extra set of pristine crops (more examples of undistorted content, label 100), and every
row of any further sets (e.g. more crops at the mildest levels).

    python tools/make_default_train.py datasets/synth_default datasets/synth_pristine datasets/default_train.csv \
        [datasets/synth_mild12 ...]

Paths in the output are relative to the output's folder (the data root of the training config).
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from qfmiqm.files import write_text_atomic


def rows(folder: Path, root: Path, pristine_only: bool) -> list[list[str]]:
    with open(folder / "labels.csv", newline="") as f:
        reader = csv.DictReader(f)
        prefix = folder.resolve().relative_to(root.resolve())
        return [[str(prefix / r["path"]), str(prefix / r["reference"]), r["type"], r["level"], r["score"]]
                for r in reader if not pristine_only or r["type"] == "pristine"]


def main(synth: str, pristine: str, out: str, *more: str) -> None:
    root = Path(out).parent
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "reference", "type", "level", "score"])
    w.writerows(rows(Path(synth), root, False) + rows(Path(pristine), root, True))
    for folder in more:
        w.writerows(rows(Path(folder), root, False))
    write_text_atomic(out, buf.getvalue())


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
