"""Write the rows of some source photos from a ``qfmiqm synth`` labels.csv to a new CSV beside it
(same folder, so its relative paths still resolve). The default model's card metric is measured
on the 7 photos held out since its first version:

    python tools/subset_labels.py datasets/synth_heldout/labels.csv datasets/synth_heldout/labels7.csv

Photos are matched by the stem of their reference file (``reference/coffee.png`` -> ``coffee``).
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from collect_photos import CARD_HELD_OUT  # a sibling tool: python puts tools/ on the path

from qfmiqm.files import write_text_atomic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labels", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--photos", nargs="+", default=list(CARD_HELD_OUT))
    args = ap.parse_args()
    if args.out.resolve().parent != args.labels.resolve().parent:
        ap.error("the output must sit in the same folder as the labels, so that its relative paths resolve")
    if not args.labels.is_file():
        ap.error(f"{args.labels}: no such file (make it with qfmiqm synth)")
    photos = set(args.photos)
    with open(args.labels, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if Path(r["reference"]).stem in photos]
        fields = reader.fieldnames
    missing = photos - {Path(r["reference"]).stem for r in rows}
    if missing:
        ap.error(f"{args.labels}: no rows for {', '.join(sorted(missing))}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(args.out, buf.getvalue())
    print(f"{len(rows)} rows of {len(args.photos)} photos -> {args.out}")


if __name__ == "__main__":
    main()
