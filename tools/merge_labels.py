"""Merge synth label files into one training CSV, keeping only the rows of the given types.

    python tools/merge_labels.py OUT.csv LABELS.csv[:TYPE,TYPE...] ...

Paths are rewritten relative to OUT's folder. The default model's recipe adds many extra
pristine crops (type 'pristine') to the KADID-style set: with one reference per 125 distorted
images, the top of the scale is otherwise too rare to be learned.
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path


def main(out: str, specs: list[str]) -> None:
    out_dir = Path(out).resolve().parent
    rows, fields = [], None
    for spec in specs:
        file, _, types = spec.partition(":")
        keep = set(types.split(",")) if types else None
        base = Path(file).resolve().parent
        with open(file, newline="") as f:
            reader = csv.DictReader(f)
            fields = fields or reader.fieldnames
            for row in reader:
                if keep is None or row["type"] in keep:
                    for col in ("path", "reference"):
                        row[col] = os.path.relpath(base / row[col], out_dir).replace(os.sep, "/")
                    rows.append(row)
    tmp = Path(out).with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out)
    print(f"{len(rows)} rows -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
