"""Image-level tonal statistics and the linear tone term of a model's score.

The per-crop features of a frozen ImageNet backbone are built to ignore a global loss of contrast
(ImageNet training jitters contrast), and one 224 crop cannot tell a low-contrast scene from a
contrast-reduced photo. Where the darkest and brightest parts of the *whole* image lie can
(tools/tone_probe.py: 36 of 36 held-out photos told from their 70 % contrast version). So a model
may carry a ``ToneTerm``: a linear function of ``STATISTICS`` computed once per image over all of
its policy views, added to the image's raw score from its views (docs/default-model.md).

``blockiness`` (JPEG's 8 x 8 grid, see ``_GridSteps``), ``reblur`` (sharpness, see
``_ReblurSums``) and ``noise`` (the noise level, see ``_noise_responses``) are there for the top of
the scale, where a photo and its mildly compressed or
blurred version differ by less than the head can tell on scenes it never saw. A term may use any
of the statistics; it names the ones it uses, so a card written before a statistic was added
keeps its meaning.

The statistics are computed in numpy from the uint8 views (qfmiqm.data.policy.policy_views), so
scoring with ONNX Runtime needs no torch, and training (tools/fit_tone.py) sees the same numbers.
Percentiles come from histograms with ``BINS_PER_LEVEL`` bins per grey level: exact to a quarter
grey level, at a fraction of the cost of a sort.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import numpy as np

from qfmiqm.data.colour import LUMA

STATISTICS = ("luma_std", "p1", "p5", "p95", "p99", "luma_mean", "local_std_mean", "local_std_median",
              "saturation", "blockiness", "reblur", "noise")
#: the block size of JPEG's DCT grid, whose edges ``blockiness`` looks for
BLOCK = 8
#: window of the local standard deviation (pixels; odd, so that a window has a centre pixel)
LOCAL_WINDOW = 7
#: width of the box blur ``reblur`` compares the image with (pixels)
REBLUR_BOX = 3
#: |response| of the 3 x 3 kernel [1 -2 1]^T [1 -2 1] to white noise of std s has median
#: s * 6 * 0.6745 (the kernel's L2 norm is 6; 0.6745 is the median of |N(0, 1)|)
NOISE_MEDIAN_PER_SIGMA = 6 * 0.6745
#: histogram bins per grey level for the percentiles (0.25 grey-level resolution)
BINS_PER_LEVEL = 4
_N_BINS = 256 * BINS_PER_LEVEL
#: pixels per strip (see _strips): its two float64 moments take 256 KB, within a core's L2 cache
_STRIP_PIXELS = 1 << 14


def tone_statistics(views: Sequence[np.ndarray]) -> np.ndarray:
    """The views of one image (uint8 (h, w, 3), any sizes) -> (len(STATISTICS),) float32 on the
    0-255 scale, each over the pixels of all views together (local std: over the windows that lie
    wholly inside one view; blockiness: per view, weighted by its pixels)."""
    if len(views) == 0:
        raise ValueError("tone statistics need at least one view")
    hist, local_hist = np.zeros(_N_BINS, dtype=np.intp), np.zeros(_N_BINS, dtype=np.intp)
    noise_hist = np.zeros(_N_BINS, dtype=np.intp)
    parts = []  # (pixels, mean, sum of squared deviations from that mean) of each strip
    saturation = local_sum = 0.0
    local_count = 0
    grids: dict[int, _GridSteps] = {}  # view index -> its luma steps by grid phase
    reblur = _ReblurSums()
    for view, top, planes, own in _strips(views):
        y = _luma(planes)
        grids.setdefault(view, _GridSteps()).add(y, top, own)
        reblur.add(y, own)
        noise_hist += _noise_responses(y, own)
        mine = y[:own]
        centre = float(mine.sum(dtype=np.float64)) / mine.size
        # luma lies in [0, 255] (white is 255.0 exactly): bins 0..1020, no clamp needed
        hist += np.bincount((mine * BINS_PER_LEVEL).astype(np.intp).ravel(), minlength=_N_BINS)
        saturation += _saturation_sum(planes[:, :own])
        squares, scaled = _scaled_local_std(y, centre, own)
        parts.append((mine.size, centre, squares))
        local_sum += float(scaled.sum())
        local_count += scaled.size
        # a std of values in [0, 255] is at most 127.5: no bin past 510, no clamp needed
        scaled *= BINS_PER_LEVEL / LOCAL_WINDOW ** 2
        local_hist += np.bincount(scaled.astype(np.intp).ravel(), minlength=_N_BINS)
    count = sum(n for n, _, _ in parts)
    mean = sum(n * c for n, c, _ in parts) / count
    # the strips' spreads about their own means, pooled (Chan et al.): exactly 0 for a flat image
    var = sum(sq + n * (c - mean) ** 2 for n, c, sq in parts) / count
    p1, p5, p95, p99 = _percentiles(hist, (1, 5, 95, 99))
    (local_median,) = _percentiles(local_hist, (50,))
    local_mean = local_sum / local_count / LOCAL_WINDOW ** 2
    (noise_median,) = _percentiles(noise_hist, (50,)) if noise_hist.any() else (0.0,)
    pixels = np.array([v.shape[0] * v.shape[1] for v in views], dtype=np.float64)
    blockiness = float(np.dot(pixels, [grids[i].blockiness() for i in range(len(views))]) / pixels.sum())
    return np.array([np.sqrt(var), p1, p5, p95, p99, mean, local_mean, local_median, saturation / count,
                     blockiness, reblur.share(), noise_median / NOISE_MEDIAN_PER_SIGMA], dtype=np.float32)


class _GridSteps:
    """Mean absolute luma step between neighbouring pixels, by the phase of the step on an
    8-pixel grid, across columns and across rows of one view.

    ``blockiness()`` is the log of how much the steps at the strongest phase exceed the others
    (each + 1 grey level, so a flat image gives 0): JPEG's block edges lie on one phase of its
    8 x 8 grid and grow with compression (Wang, Sheikh & Bovik, ICIP 2002, measure it the same
    way); a clean or blurred photo has no preferred phase (about 0). The strongest phase, not
    phase 0, so that a view cut at any offset of a compressed image (a crop, a tile) still sees
    its grid."""

    def __init__(self) -> None:
        self.sums = np.zeros((2, BLOCK))    # (across columns, across rows) x phase
        self.counts = np.zeros((2, BLOCK))

    def add(self, y: np.ndarray, top: int, own: int) -> None:
        """A strip's luma (rows, w) starting at view row ``top``, owning its first ``own`` rows."""
        across_columns = np.abs(np.diff(y[:own], axis=1)).sum(axis=0)  # (w - 1,) step x -> x + 1
        self._fold(0, across_columns, 0, own)
        rows = y[:own + 1]  # the step out of the last owned row lies in the next strip's rows
        across_rows = np.abs(np.diff(rows, axis=0)).sum(axis=1)         # (steps,) row r -> r + 1
        self._fold(1, across_rows, top, y.shape[1])

    def _fold(self, axis: int, step_sums: np.ndarray, start: int, per_step: int) -> None:
        phase = (start + np.arange(step_sums.size)) % BLOCK
        self.sums[axis] += np.bincount(phase, weights=step_sums, minlength=BLOCK)
        self.counts[axis] += np.bincount(phase, minlength=BLOCK) * per_step

    def blockiness(self) -> float:
        ratios = []
        for sums, counts in zip(self.sums, self.counts):
            if np.count_nonzero(counts) < 2:
                continue  # a view 2 pixels wide has no phases to compare
            means = sums[counts > 0] / counts[counts > 0]
            strongest = int(np.argmax(means))
            others = np.delete(means, strongest).mean()
            ratios.append(np.log((means[strongest] + 1.0) / (others + 1.0)))
        return float(np.mean(ratios)) if ratios else 0.0


class _ReblurSums:
    """How much of an image's luma edges survive a box blur of REBLUR_BOX pixels (after
    Crete-Roffet, Dolmiere, Ladret & Nicolas, "The blur effect", SPIE 2007), across columns and
    rows, pooled.

    A step between neighbours x and x + 1 (|dF|) is compared with the step of the box-blurred
    image there (|dB| = |F(x + 2) - F(x - 1)| / 3 for a box of 3); ``share()`` is
    sum(|dF|^2 min(|dF|, |dB|)) / sum(|dF|^3): near 1 when blurring again changes nothing (the
    image is already blurred), lower the sharper it is. Crete-Roffet weigh every step alike; the
    |dF|^2 weight makes the strong edges count, which a blur widens, and not the small steps of
    fine texture and noise (on 29 unseen photos at 512 px, a 0.7 px blur moves it 4.1 times its
    spread between scenes, noise of sigma 6 0.1 times; unweighted: 2.5 and 0.6 times). Being a
    ratio of the image's own steps, it tells a photo from its blurred version far better than
    it tells two scenes apart. It saturates near 0.9 past a blur of about 2 px, where the 8-bit
    steps left are rounding; heavy blur is the head's to rank. A flat image (no steps) gives 1."""

    def __init__(self) -> None:
        self.kept = self.total = 0.0

    def add(self, y: np.ndarray, own: int) -> None:
        """A strip's luma (rows, w) owning its first ``own`` rows: the steps whose window of
        REBLUR_BOX + 1 pixels starts on an owned row (across columns: every window of those rows)."""
        span = REBLUR_BOX + 1
        self._count(y[:own], axis=1)
        starts = min(own, y.shape[0] - span + 1)
        if starts > 0:
            self._count(y[:starts + span - 1], axis=0)

    def _count(self, y: np.ndarray, axis: int) -> None:
        n = y.shape[axis] - REBLUR_BOX
        if n <= 0:
            return
        lead = REBLUR_BOX // 2  # the step from x to x + 1 sits after the box's first pixels
        step = np.abs(_along(y, axis, lead + 1, n) - _along(y, axis, lead, n))
        blurred_step = np.abs(_along(y, axis, REBLUR_BOX, n) - _along(y, axis, 0, n)) * (1.0 / REBLUR_BOX)
        weight = np.square(step)
        self.kept += float((np.minimum(step, blurred_step) * weight).sum(dtype=np.float64))
        self.total += float((step * weight).sum(dtype=np.float64))

    def share(self) -> float:
        return self.kept / self.total if self.total > 0 else 1.0


def _noise_responses(y: np.ndarray, own: int) -> np.ndarray:
    """Histogram (``_N_BINS`` bins of 1 / BINS_PER_LEVEL) of |y * K| for K = [1 -2 1]^T [1 -2 1]
    over the 3 x 3 windows of a strip's luma (rows, w) whose top row it owns.

    K cancels any plane and most of a smooth surface, so over a photo's many smooth windows its
    response is mostly noise; its median, divided by NOISE_MEDIAN_PER_SIGMA, estimates the std of
    white noise (Immerkaer, "Fast noise variance estimation", 1996, who takes the mean; the
    median is Donoho's robust form, which edges and texture move far less). The term needs it:
    without it, the weight that makes a mildly blurred photo score below the original also lifts
    a noisy one, whose steps survive a blur badly too. Responses past 255.75 share the last bin.
    """
    starts = min(own, y.shape[0] - 2)
    if starts <= 0 or y.shape[1] < 3:
        return np.zeros(_N_BINS, dtype=np.intp)
    rows = y[:starts + 2]
    across = rows[:, :-2] + rows[:, 2:] - 2.0 * rows[:, 1:-1]
    response = np.abs(across[:-2] + across[2:] - 2.0 * across[1:-1])
    response *= BINS_PER_LEVEL
    np.minimum(response, _N_BINS - 1, out=response)
    return np.bincount(response.astype(np.intp).ravel(), minlength=_N_BINS)


def _strips(views: Sequence[np.ndarray]) -> Iterator[tuple[int, int, np.ndarray, int]]:
    """Each view cut into strips of rows: (the view's index, the strip's first row in it, its R, G,
    B planes (3, rows, w) uint8, rows it owns).

    A strip reaches LOCAL_WINDOW - 1 rows into the next, for the windows across the cut; the rows
    it owns (its first ``own``) count once in the pixel statistics. Strips keep every intermediate
    array in a core's cache and off freshly mapped pages (over whole views the same numpy work ran
    1.2-1.5x slower on the dev VM), and contiguous planes let the channel arithmetic vectorise."""
    r = LOCAL_WINDOW - 1
    for index, v in enumerate(views):
        if v.dtype != np.uint8 or v.ndim != 3 or v.shape[2] != 3 or min(v.shape[:2]) < LOCAL_WINDOW:
            raise ValueError(f"a view must be a uint8 (h, w, 3) array of at least {LOCAL_WINDOW} x "
                             f"{LOCAL_WINDOW} pixels, got {v.dtype} {v.shape}")
        h, w = v.shape[:2]
        rows = max(LOCAL_WINDOW, _STRIP_PIXELS // w)
        for top in range(0, h - r, rows):
            bottom = min(top + rows, h - r) + r
            yield index, top, np.moveaxis(v[top:bottom], 2, 0).copy(), (bottom - top if bottom == h else rows)


def _luma(planes: np.ndarray) -> np.ndarray:
    """(3, ...) uint8 R, G, B -> (...) float32 luma, rounded exactly as ``(rgb * LUMA).sum()`` in
    float32 (r, g, b in that order): grey pixels sit on bin edges, and a matmul's other rounding
    would move them across."""
    y = np.multiply(planes[0], LUMA[0], dtype=np.float32)
    part = np.multiply(planes[1], LUMA[1], dtype=np.float32)
    y += part
    y += np.multiply(planes[2], LUMA[2], out=part, dtype=np.float32)
    return y


def _saturation_sum(planes: np.ndarray) -> int:
    """(3, ...) uint8 R, G, B -> sum over the pixels of max - min channel, in uint8 (exact, and
    a quarter of the memory of float32)."""
    r, g, b = planes
    hi, lo = np.maximum(r, g), np.minimum(r, g)
    np.maximum(hi, b, out=hi)
    np.minimum(lo, b, out=lo)
    hi -= lo
    return int(hi.sum(dtype=np.uint64))


def _scaled_local_std(y: np.ndarray, centre: float, own: int) -> tuple[float, np.ndarray]:
    """Luma (rows, w) of a strip -> (sum of (y - centre)^2 over its first ``own`` rows,
    LOCAL_WINDOW^2 x the std in each LOCAL_WINDOW window (rows - 6, w - 6)).

    In float64 and centred, so that n s2 - s1^2 (s1, s2: window sums of y and y^2) cancels to 0
    in a flat window and not to float32 noise of the size of the std measured. The 1 / n is left
    to the caller, which applies it to a sum and a bin width rather than to every window.
    """
    moments = np.empty((2,) + y.shape)
    np.subtract(y, centre, out=moments[0], dtype=np.float64)
    np.multiply(moments[0], moments[0], out=moments[1])
    s1, s2 = _window_sums(_window_sums(moments, axis=1), axis=2)
    s2 *= LOCAL_WINDOW ** 2
    s2 -= np.square(s1, out=s1)
    np.maximum(s2, 0.0, out=s2)
    return float(moments[1, :own].sum()), np.sqrt(s2, out=s2)


def _window_sums(a: np.ndarray, axis: int) -> np.ndarray:
    """Sums of LOCAL_WINDOW consecutive elements along ``axis`` (valid positions only), from
    sums of 1, 2, 4, ... elements (the binary digits of the window): 4 array additions for a
    window of 7, not 6."""
    n = a.shape[axis] - LOCAL_WINDOW + 1
    pieces, offset, run, width = [], 0, a, 1
    while width <= LOCAL_WINDOW:
        if LOCAL_WINDOW & width:
            pieces.append(_along(run, axis, offset, n))
            offset += width
        if 2 * width <= LOCAL_WINDOW:
            m = run.shape[axis] - width
            run = _along(run, axis, 0, m) + _along(run, axis, width, m)  # sums of 2 * width elements
        width *= 2
    total = pieces[0] + pieces[1] if len(pieces) > 1 else pieces[0].copy()
    for piece in pieces[2:]:
        total += piece
    return total


def _along(a: np.ndarray, axis: int, start: int, length: int) -> np.ndarray:
    """``a``'s elements ``start`` .. ``start + length - 1`` along ``axis`` (a view)."""
    return a[(slice(None),) * axis + (slice(start, start + length),)]


def _percentiles(hist: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Percentiles (0-100) from a histogram of ``BINS_PER_LEVEL`` bins per level: the centre of
    the first bin whose cumulative count reaches ``q / 100`` of all values."""
    cdf = np.cumsum(hist, dtype=np.float64)
    first = np.searchsorted(cdf, np.asarray(qs, dtype=np.float64) / 100.0 * cdf[-1], side="left")
    return (np.minimum(first, len(cdf) - 1) + 0.5) / BINS_PER_LEVEL


@dataclass(frozen=True)
class ToneTerm:
    """``bias + sum(weights * (stats - mean) / scale)``: added to an image's raw score."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float = 0.0
    statistics: tuple[str, ...] = STATISTICS

    def __post_init__(self) -> None:
        n = len(self.statistics)
        unknown = [s for s in self.statistics if s not in STATISTICS]
        if unknown or len(set(self.statistics)) != n:
            raise ValueError(f"tone term statistics {list(self.statistics)} are not this version's: "
                             f"distinct names among {list(STATISTICS)}")
        if not len(self.mean) == len(self.scale) == len(self.weights) == n:
            raise ValueError(f"tone term needs {n} means, scales and weights")

    def __call__(self, views: Sequence[np.ndarray]) -> float:
        """The views of one image (uint8 (h, w, 3)) -> its additive raw-score term."""
        return float(self.of_statistics(tone_statistics(views)[None])[0])

    def of_statistics(self, stats: np.ndarray) -> np.ndarray:
        """(N, len(STATISTICS)) statistics (all of them, as ``tone_statistics`` gives them) ->
        (N,) float64 term, from the columns of this term's own ``statistics``."""
        used = np.asarray(stats, dtype=np.float64)[:, [STATISTICS.index(s) for s in self.statistics]]
        z = (used - np.array(self.mean)) / np.array(self.scale)
        return z @ np.array(self.weights) + self.bias

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ToneTerm":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
