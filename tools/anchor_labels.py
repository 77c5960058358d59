"""Re-label a ``qfmiqm synth`` labels.csv with human-anchored scores (docs/labels.md):

    python tools/anchor_labels.py IN.csv OUT.csv [--spread 0.5] [--clip 2] [--match parameter] [--report]

OUT has the same columns with ``score`` replaced by the anchored label and the proxy score
kept in ``proxy_score``. Put OUT beside IN so its relative image paths still resolve. From
Python: ``qfmiqm.data.anchor.anchor_file(src, dst)`` or ``anchor_rows(rows)``.
``--report`` prints the agreement of the proxy and anchored cell means with KADID-10k,
TID2013 and CSIQ (SRCC over shared (type, level) cells).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from qfmiqm.data.anchor import (COLOUR_ONLY, DEFAULT_CLIP, DEFAULT_COLOUR_WEIGHT, DEFAULT_MATCH, DEFAULT_SPREAD, MATCHES,
                                anchor_file, cell_means, human_means,
                                proxy_of, read_rows, report, type_bootstrap)
from qfmiqm.errors import UsageError


def print_report(rows: Sequence[dict], anchored: Sequence[dict], match: str = DEFAULT_MATCH) -> None:
    """The agreement table, then type-bootstrap intervals of anchored vs the other labels on TID2013."""
    print(f"{'labels':24s} {'human set':10s} {'SRCC':>6s} {'cells':>5s}")
    for labels, human, rho, n in report(rows, anchored, match=match):
        print(f"{labels:24s} {human:10s} {rho:6.3f} {n:5d}")
    tid = human_means("tid2013")
    new = cell_means(anchored)
    for name, other in (("proxy (old)", cell_means([{**r, "p": proxy_of(r)} for r in rows], "p")),
                        ("kadid10k (human)", human_means("kadid10k"))):
        d, lo, hi = type_bootstrap(new, other, tid)
        print(f"anchored minus {name} on tid2013: {d:+.3f} (95% over types: {lo:+.3f} .. {hi:+.3f})")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="labels.csv of qfmiqm synth")
    ap.add_argument("dst", type=Path, help="re-labelled copy to write")
    ap.add_argument("--spread", type=float, default=DEFAULT_SPREAD,
                    help=f"fraction of the human cell std the proxy may use (default {DEFAULT_SPREAD})")
    ap.add_argument("--clip", type=float, default=DEFAULT_CLIP,
                    help=f"clip of the within-cell standardised proxy (default {DEFAULT_CLIP})")
    ap.add_argument("--calibration", type=Path, default=None,
                    help="another labels.csv whose KADID types fit the proxy -> human curve")
    ap.add_argument("--no-level-order", action="store_true",
                    help="do not pool labels that would rank a stronger level of one crop above a weaker one")
    ap.add_argument("--colour-weight", type=float, default=DEFAULT_COLOUR_WEIGHT,
                    help=f"scale of the colour-only types' distance below pristine (default {DEFAULT_COLOUR_WEIGHT}; 1: as KADID's cells)")
    ap.add_argument("--colour-types", default=",".join(sorted(COLOUR_ONLY)),
                    help="comma-separated types whose distance below pristine --colour-weight scales "
                         f"(default {','.join(sorted(COLOUR_ONLY))})")
    ap.add_argument("--match", choices=MATCHES, default=DEFAULT_MATCH,
                    help="label the types whose parameter KADID-10k shares from KADID's cells at our parameter "
                         f"('parameter') or at the same level index ('index', the default model's labels) (default {DEFAULT_MATCH})")
    ap.add_argument("--index-types", default="",
                    help="comma-separated types matched by level index even with --match parameter "
                         "(the default model's recipe: gaussian_blur; docs/labels.md)")
    ap.add_argument("--report", action="store_true", help="print the agreement with the human sets")
    args = ap.parse_args(argv)
    try:
        rows, _ = read_rows(args.src)
        out = anchor_file(args.src, args.dst, spread=args.spread, clip=args.clip,
                          calibration=args.calibration, level_order=not args.no_level_order,
                          colour_weight=args.colour_weight,
                          colour_types=[t for t in args.colour_types.split(",") if t], match=args.match,
                          index_types=[t for t in args.index_types.split(",") if t])
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(out)} rows -> {args.dst}")
    if args.report:
        print_report(rows, out, args.match)
    return 0


if __name__ == "__main__":
    sys.exit(main())
