"""Per-kind ranking of our model beside BRISQUE on whole photos, and colour vs greyscale (issue #22).

    python benchmarks/peers.py --photos datasets/pristine/heldout --max-side 512 \
        [--names a,b,...] [--model default] [--split NAMES_FILE] [--out results.json] [--markdown]

Each photo is downscaled to ``--max-side`` first, so BRISQUE and our model score exactly the
same pixels (BRISQUE works on whatever it is given, our model resamples to its own input
policy; fixing the size up front keeps the distortion strength per pixel identical for both and
the run short). Then, per photo:

* four kinds of distortion, each as level 0 (the untouched photo) plus 5 levels spaced roughly
  geometrically (``KINDS`` below); the metric is Spearman(level, score) per photo and kind,
  averaged over photos: -1 is a perfect ranking. BRISQUE's score is lower-is-better, so it is
  negated before the correlation (our model's is higher-is-better and used as is);
* a greyscale version (Pillow's ITU-R 601 luma, as three equal channels) and a muted version
  (half saturation: Pillow's ImageEnhance.Color(0.5), a 50 % blend with that greyscale),
  scored by our model beside the colour original.

Goals (issue #22): blur, noise and JPEG within 0.02 of BRISQUE's mean Spearman (or better);
contrast loss <= -0.90; greyscale within 15 points of colour for at least 80 % of photos
(8 of 10 in the issue) and a greyscale median >= 50.

``--split FILE``: one photo name per line, optionally followed by a group name
(``name`` or ``name,group`` / ``name group``); listed names without a group are "test",
photos not listed are "validation". The tables are then printed per group and for all photos.
BRISQUE comes from the ``brisque`` package (``pip install "qfmiqm[bench]"``, a benchmark-only
dependency) through ``qfmiqm.bench_limits.brisque_scorer``, which holds the NumPy-2 workaround
for brisque 0.2.0; without it the BRISQUE column says "not installed".
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TextIO

import numpy as np
from PIL import Image, ImageEnhance
from scipy import ndimage, stats

#: a batch scorer: RGB uint8 arrays in, one float per array out
ScoreFn = Callable[[list[np.ndarray]], list[float]]
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")
PEER_MARGIN = 0.02  # "within 0.02 of BRISQUE's Spearman"
CONTRAST_GOAL = -0.90
GREY_GAP = 15.0  # points
GREY_SHARE = 0.8  # "at least 8 of 10"
GREY_MEDIAN = 50.0


@dataclass(frozen=True)
class Scorer:
    """A named scorer; ``higher_is_better`` False means its scores are negated for rankings."""

    name: str
    fn: ScoreFn
    higher_is_better: bool = True


# --- distortions: uint8 RGB in, uint8 RGB out; rng is the only randomness ---------------------

def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def gaussian_blur(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of ``sigma`` pixels on each channel (reflected borders)."""
    return _to_uint8(ndimage.gaussian_filter(img.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect"))


def white_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise, ``sigma`` on the 0-255 scale, independent per channel."""
    return _to_uint8(img.astype(np.float32) + rng.normal(0.0, sigma, img.shape).astype(np.float32))


def jpeg(img: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    """Baseline JPEG through Pillow's libjpeg at ``quality`` (4:2:0 chroma), decoded back."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality), subsampling="4:2:0")
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def contrast_loss(img: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Contrast scaled by ``factor`` < 1 around the mean luma (brightness kept, no clipping)."""
    x = img.astype(np.float32)
    mean = float((x @ np.array([0.299, 0.587, 0.114], np.float32)).mean())
    return _to_uint8(mean + (x - mean) * factor)


@dataclass(frozen=True)
class Kind:
    """One distortion kind: its 5 parameters, mild to severe (level 0 is the untouched photo)."""

    name: str
    unit: str
    params: tuple[float, ...]
    fn: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


#: the levels of issue #22; blur, noise and contrast spaced by a constant ratio (~1.7, ~1.74,
#: ~0.70), JPEG's qualities as given in the issue
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("blur", "Gaussian sigma px", (0.7, 1.3, 2.2, 3.6, 6.0), gaussian_blur),
    Kind("noise", "sigma on 0-255", (6, 10, 18, 32, 55), white_noise),
    Kind("jpeg", "JPEG quality", (50, 30, 18, 10, 5), jpeg),
    Kind("contrast", "contrast factor", (0.75, 0.53, 0.37, 0.26, 0.18), contrast_loss),
)}


def seed_for(photo: str, kind: str, level: int) -> int:
    """A fixed seed per (photo, kind, level): the same noise whatever other photos are in the run."""
    return zlib.crc32(f"{photo}/{kind}/{level}".encode())


def ladder(img: np.ndarray, photo: str, kind: Kind) -> list[np.ndarray]:
    """The untouched photo followed by its 5 distorted versions, mild to severe."""
    return [img] + [kind.fn(img, p, np.random.default_rng(seed_for(photo, kind.name, lv)))
                    for lv, p in enumerate(kind.params, start=1)]


def greyscale(img: np.ndarray) -> np.ndarray:
    """Pillow's ITU-R 601 luma as three equal channels (what a black-and-white photo looks like)."""
    return np.asarray(Image.fromarray(img).convert("L").convert("RGB"))


def muted(img: np.ndarray, saturation: float = 0.5) -> np.ndarray:
    """Saturation scaled by ``saturation`` (a blend with the greyscale version)."""
    return np.asarray(ImageEnhance.Color(Image.fromarray(img)).enhance(saturation))


# --- photos ---------------------------------------------------------------------------------

def find_photos(folder: Path, names: Sequence[str] | None = None) -> dict[str, Path]:
    """Photos in ``folder`` by file stem, sorted; only ``names`` when given (missing ones are an error)."""
    found = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in PHOTO_SUFFIXES}
    if names is None:
        return found
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"error: not in {folder}: {', '.join(missing)}")
    return {n: found[n] for n in names}


def load_photo(path: Path, max_side: int) -> np.ndarray:
    """The photo as RGB uint8, downscaled (Lanczos) so its longer side is at most ``max_side``."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side), Image.LANCZOS)
        return np.asarray(im)


def read_split(path: Path) -> dict[str, str]:
    """name -> group from a names file (``name`` -> "test", or ``name,group`` / ``name group``)."""
    groups = {}
    for line in path.read_text().splitlines():
        parts = line.replace(",", " ").split()
        if parts and not parts[0].startswith("#"):
            groups[parts[0]] = parts[1] if len(parts) > 1 else "test"
    return groups


# --- scoring and the metric -----------------------------------------------------------------

def spearman(levels: Sequence[float], scores: Sequence[float]) -> float:
    """Spearman's rho; 0.0 when the scores are all equal (no ranking at all, rather than NaN)."""
    if len(set(scores)) < 2:
        return 0.0
    return float(stats.spearmanr(levels, scores).statistic)


def score_photo(img: np.ndarray, photo: str, scorers: Sequence[Scorer],
                kinds: dict[str, Kind] = KINDS) -> dict:
    """Scores of every scorer on every level of every kind, and our colour/grey/muted scores.

    The first scorer is "ours": it alone scores the greyscale and muted versions.
    """
    steps = [img]
    for kind in kinds.values():
        steps += ladder(img, photo, kind)[1:]  # level 0 is steps[0], shared by every kind
    out: dict = {"size": [int(img.shape[1]), int(img.shape[0])], "kinds": {k: {} for k in kinds}}
    for i, scorer in enumerate(scorers):
        if i == 0:  # ours: the greyscale and muted versions in the same call
            grey, mute, *scores = [float(s) for s in scorer.fn([greyscale(img), muted(img)] + steps)]
            out["colour"] = {"colour": scores[0], "grey": grey, "muted": mute}
        else:
            scores = [float(s) for s in scorer.fn(steps)]
        sign = 1.0 if scorer.higher_is_better else -1.0
        at = 1
        for name, kind in kinds.items():
            series = [scores[0]] + scores[at:at + len(kind.params)]
            at += len(kind.params)
            out["kinds"][name][scorer.name] = {
                "scores": series, "spearman": spearman(range(len(series)), [sign * s for s in series])}
    return out


def summarise(photos: dict[str, dict], scorers: Sequence[str]) -> dict:
    """Mean Spearman per kind and scorer, and the greyscale/muted figures, over ``photos``."""
    kinds = next(iter(photos.values()))["kinds"].keys() if photos else []
    table = {k: {s: statistics.fmean(p["kinds"][k][s]["spearman"] for p in photos.values())
                 for s in scorers if all(s in p["kinds"][k] for p in photos.values())} for k in kinds}
    colour = [p["colour"] for p in photos.values()]
    grey_gap = [c["colour"] - c["grey"] for c in colour]
    within = sum(abs(d) <= GREY_GAP for d in grey_gap)
    return {
        "photos": len(photos), "kinds": table,
        "grey": {"within_15": within, "median_grey": statistics.median(c["grey"] for c in colour),
                 "median_gap": statistics.median(grey_gap),
                 "median_muted": statistics.median(c["muted"] for c in colour),
                 "median_muted_gap": statistics.median(c["colour"] - c["muted"] for c in colour)}
        if colour else {},
    }


def kind_goal(kind: str, ours: float, peer: float | None) -> str:
    """"yes"/"no" for issue #22's goal on this kind, "n/a" when it needs BRISQUE and there is none."""
    if kind == "contrast":
        return "yes" if ours <= CONTRAST_GOAL else "no"
    if peer is None:
        return "n/a (no BRISQUE)"
    return "yes" if ours <= peer + PEER_MARGIN else "no"


# --- tables ---------------------------------------------------------------------------------

def kinds_markdown(summary: dict, ours: str = "ours", peer: str = "brisque") -> list[str]:
    """kind | our model | BRISQUE | goal met?, one row per kind (mean Spearman over photos)."""
    lines = ["| kind | levels | our model | BRISQUE | goal met? |", "|---|---|---|---|---|"]
    for name, row in summary["kinds"].items():
        kind = KINDS.get(name)
        levels = f"{kind.unit} {', '.join(f'{p:g}' for p in kind.params)}" if kind else ""
        p = row.get(peer)
        goal = f"<= {CONTRAST_GOAL:.2f}" if name == "contrast" else f"<= BRISQUE + {PEER_MARGIN}"
        lines.append(f"| {name} | {levels} | {row[ours]:+.3f} | "
                     f"{'not installed' if p is None else f'{p:+.3f}'} | {kind_goal(name, row[ours], p)} ({goal}) |")
    return lines


def grey_markdown(photos: dict[str, dict], summary: dict) -> list[str]:
    """Per photo: colour, greyscale, difference, muted, difference; then the count and medians."""
    lines = ["| photo | colour | greyscale | colour - grey | muted (half saturation) | colour - muted |",
             "|---|---|---|---|---|---|"]
    for name, p in photos.items():
        c = p["colour"]
        lines.append(f"| {name} | {c['colour']:.1f} | {c['grey']:.1f} | {c['colour'] - c['grey']:+.1f} | "
                     f"{c['muted']:.1f} | {c['colour'] - c['muted']:+.1f} |")
    g, n = summary["grey"], summary["photos"]
    met = g["within_15"] >= GREY_SHARE * n and g["median_grey"] >= GREY_MEDIAN
    lines += ["", f"greyscale within {GREY_GAP:g} points of colour: {g['within_15']} of {n} "
                  f"(goal >= {GREY_SHARE:.0%}); median greyscale score {g['median_grey']:.1f} (goal >= "
                  f"{GREY_MEDIAN:g}); median colour - grey {g['median_gap']:+.1f}; goal met: {'yes' if met else 'no'}",
              f"muted: median score {g['median_muted']:.1f}, median colour - muted {g['median_muted_gap']:+.1f}"]
    return lines


def detail_markdown(photos: dict[str, dict], scorers: Sequence[str]) -> list[str]:
    """Spearman per photo, kind and scorer: which photos a kind's mean hides."""
    kinds = list(next(iter(photos.values()))["kinds"]) if photos else []
    cols = [f"{k} {s}" for k in kinds for s in scorers]
    lines = ["| photo | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, p in photos.items():
        cells = [p["kinds"][k][s]["spearman"] if s in p["kinds"][k] else None for k in kinds for s in scorers]
        lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:+.2f}" for c in cells) + " |")
    return lines


def report(photos: dict[str, dict], groups: dict[str, str] | None, scorers: Sequence[str]) -> tuple[dict, list[str]]:
    """Summaries and markdown for each group (when split) and for all photos; ``scorers[0]`` is ours."""
    by_group: dict[str, dict[str, dict]] = {}
    if groups is not None:
        for name, p in photos.items():
            by_group.setdefault(groups.get(name, "validation"), {})[name] = p
    by_group["all"] = photos
    summaries, lines = {}, []
    for group, members in by_group.items():
        summaries[group] = summarise(members, scorers)
        lines += [f"### {group}: {len(members)} photos ({', '.join(members)})", "",
                  "Mean over photos of Spearman(level, score), levels 0 (untouched) to 5; -1 is a perfect "
                  "ranking. BRISQUE's score (lower is better) is negated first.", ""]
        lines += kinds_markdown(summaries[group], ours=scorers[0]) + [""]
        lines += grey_markdown(members, summaries[group]) + [""]
    return summaries, lines


# --- scorers --------------------------------------------------------------------------------

def our_scorer(model: str) -> Scorer:
    """Our model (``qfmiqm.load(model)``), scoring arrays in this process."""
    import qfmiqm

    m = qfmiqm.load(model)
    return Scorer("ours", lambda imgs: m.score(list(imgs), workers=0))


def brisque_peer() -> Scorer | None:
    """BRISQUE through qfmiqm.bench_limits (its NumPy-2 workaround), or None when not installed."""
    from qfmiqm.bench_limits import brisque_scorer

    score = brisque_scorer()
    if score is None:
        return None
    return Scorer("brisque", lambda imgs: [float(score(a)) for a in imgs], higher_is_better=False)


def run(paths: dict[str, Path], scorers: Sequence[Scorer], max_side: int,
        log: TextIO = sys.stderr) -> dict[str, dict]:
    """Score every photo; per-photo results by name."""
    photos = {}
    for i, (name, path) in enumerate(paths.items(), start=1):
        start = time.perf_counter()
        photos[name] = score_photo(load_photo(path, max_side), name, scorers)
        print(f"[{i}/{len(paths)}] {name}: {time.perf_counter() - start:.1f} s", file=log, flush=True)
    return photos


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, required=True, help="folder of pristine photos (.png/.jpg)")
    ap.add_argument("--names", help="comma-separated photo names (file stems); default: all in --photos")
    ap.add_argument("--model", default="default", help="zoo name or checkpoint for qfmiqm.load")
    ap.add_argument("--max-side", type=int, default=512, help="longer side each photo is downscaled to first")
    ap.add_argument("--split", type=Path, help="names file: listed photos are 'test' (or the group given)")
    ap.add_argument("--out", type=Path, help="write per-photo, per-level scores and the summaries as JSON")
    ap.add_argument("--markdown", action="store_true",
                    help="print only the summary tables (no per-photo Spearman detail), for pasting into docs")
    args = ap.parse_args(argv)
    paths = find_photos(args.photos, args.names.split(",") if args.names else None)
    if not paths:
        raise SystemExit(f"error: no photos in {args.photos}")
    scorers = [our_scorer(args.model)]
    peer = brisque_peer()
    if peer is None:
        print('note: BRISQUE not installed (pip install "qfmiqm[bench]"); its column is left empty', file=sys.stderr)
    else:
        scorers.append(peer)
    groups = read_split(args.split) if args.split else None  # read first: a wrong path fails fast
    unknown = sorted(set(groups or ()) - set(paths))
    if unknown and not args.names:  # a typo would otherwise move a test photo into "validation" unnoticed
        print(f"note: in {args.split} but not scored: {', '.join(unknown)}", file=sys.stderr)
    photos = run(paths, scorers, args.max_side)
    summaries, lines = report(photos, groups, [s.name for s in scorers])
    header = [f"model {args.model}, photos from {args.photos}, each downscaled to at most {args.max_side} px", ""]
    if not args.markdown:  # the per-photo detail too
        lines = header + lines + ["### Spearman per photo", ""] + detail_markdown(photos, [s.name for s in scorers])
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps({
            "argv": list(sys.argv[1:] if argv is None else argv), "model": args.model, "max_side": args.max_side,
            "levels": {k.name: {"unit": k.unit, "params": list(k.params)} for k in KINDS.values()},
            "brisque_negated": True, "groups": groups, "summaries": summaries, "photos": photos,
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
