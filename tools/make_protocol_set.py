"""Write the content-disjoint synthetic set of the QFM-IQM vs DEIQT protocol (issue 23,
docs/results.md): every photo that is not a default-model test photo, KADID-10k's 25 types x 5
levels + the pristine image, with the default model's human-anchored labels.

    python tools/make_protocol_set.py [--train datasets/default_train_anchored_sat.csv] \\
        [--heldout datasets/synth_heldout/labels_anchored_sat.csv] [--out datasets/protocol185.csv] \\
        [--one-level]

``--one-level`` writes the thinned set of setting (b) (``datasets/protocol185_one_level.csv``):
each photo keeps its pristine image and one level per type, the level cycling with the photo and
the type so that every (type, level) cell holds about the same number of photos. It is a fifth of
the images, for the runs that train backbone blocks on the CPU.

The training photos' images come from the default model's synthetic set (one 288 x 288 crop per
photo, seed 0), the validation photos' from the held-out set (seed 1); the 7 test photos of the
default model (CARD_HELD_OUT in tools/collect_photos.py) are left out, so the protocol never
touches them. Paths in the output are relative to its folder, which must be the folder of both
inputs' image trees (``datasets/``).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from qfmiqm.data.synth import TYPE_GROUPS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect_photos import CARD_HELD_OUT  # noqa: E402

COLUMNS = ("path", "reference", "type", "level", "score")


def photo_name(reference: str) -> str:
    return Path(reference).stem


def protocol_rows(train_rows, heldout_rows, heldout_prefix: str) -> list[dict]:
    """The KADID-type and pristine rows of both sets, the test photos left out; the held-out
    set's paths get ``heldout_prefix`` (its folder relative to the output's)."""
    keep = set(TYPE_GROUPS["kadid"]()) | {"pristine"}
    out = []
    for r in train_rows:
        # the extra pristine crops of the default recipe have no distorted versions: not scenes
        if r["type"] in keep and r["path"].startswith("synth_default/"):
            out.append({k: r[k] for k in COLUMNS})
    for r in heldout_rows:
        if r["type"] in keep and photo_name(r["reference"]) not in CARD_HELD_OUT:
            out.append({**{k: r[k] for k in COLUMNS}, "path": heldout_prefix + r["path"],
                        "reference": heldout_prefix + r["reference"]})
    return out


def one_level_per_type(rows: list[dict]) -> list[dict]:
    """Each reference's pristine rows and, per type, only level ``1 + (photo + type) % levels``
    (photos and types numbered in sorted order), so the cells stay balanced."""
    refs = {ref: i for i, ref in enumerate(sorted({r["reference"] for r in rows}))}
    types = {t: i for i, t in enumerate(sorted({r["type"] for r in rows if r["type"] != "pristine"}))}
    levels = sorted({int(r["level"]) for r in rows if r["type"] != "pristine"})
    keep = []
    for r in rows:
        if r["type"] == "pristine":
            keep.append(r)
        elif int(r["level"]) == levels[(refs[r["reference"]] + types[r["type"]]) % len(levels)]:
            keep.append(r)
    return keep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, default=Path("datasets/default_train_anchored_sat.csv"))
    ap.add_argument("--heldout", type=Path, default=Path("datasets/synth_heldout/labels_anchored_sat.csv"))
    ap.add_argument("--out", type=Path, default=Path("datasets/protocol185.csv"))
    ap.add_argument("--one-level", action="store_true",
                    help="one level per photo and type, cycling (the thinned set of setting b)")
    args = ap.parse_args(argv)
    prefix = str(args.heldout.parent.relative_to(args.out.parent)) + "/"
    with open(args.train) as f, open(args.heldout) as g:
        rows = protocol_rows(list(csv.DictReader(f)), list(csv.DictReader(g)), prefix)
    if args.one_level:
        rows = one_level_per_type(rows)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    refs = {r["reference"] for r in rows}
    print(f"{len(rows)} images of {len(refs)} reference photos -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
