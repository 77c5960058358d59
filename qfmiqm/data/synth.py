"""``qfmiqm synth``: a KADID-style distorted image set with full-reference proxy scores.

Pristine sources (a folder, or the real photographs shipped in the scikit-image wheel) are
optionally downscaled and cut into crops; every crop gets every requested distortion type at
every requested level (``qfmiqm.data.distortions``). Each distorted image is scored against its
pristine crop by :func:`proxy_score` (0-100, higher is better; docs/synth.md has the formula).

Output folder::

    OUT/labels.csv          path, reference, type, level, score (paths relative to OUT)
    OUT/reference/NAME.png  pristine crops (always PNG); listed with type "pristine", level 0, score 100
    OUT/distorted/NAME_TYPE_LEVEL.png|.jpg
    OUT/synth.json          the settings that decide pixel content; a rerun must match them

Every file is written to a temporary name and renamed, so a killed run never leaves a
half-written image under a final name. A rerun skips images already on disk (resumable); rows
finished before a kill are kept in ``OUT/.labels.partial.csv`` until labels.csv is rewritten.
Randomness comes from ``seed`` and the names only, so results do not depend on worker count
or order, and one (crop, type) uses the same random stream at every level: noise patterns,
patch positions, blur angles and coin flips are shared, so levels differ in strength only.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import io
import json
import multiprocessing
import os
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from qfmiqm.data.colour import LUMA
from qfmiqm.data.distortions import DISTORTIONS, LEVELS, available_names, get_distortion
from qfmiqm.errors import ImageError, UsageError
from qfmiqm.files import write_bytes_atomic

# --- defaults (the one place they live) ----------------------------------------------------

from qfmiqm.data.synth_defaults import DEFAULT_CROPS, DEFAULT_FORMAT, DEFAULT_LEVELS, DEFAULT_SEED, FORMAT_NAMES  # noqa: E402

LABELS_NAME = "labels.csv"
MANIFEST_NAME = "synth.json"
JOURNAL_NAME = ".labels.partial.csv"
LABEL_COLUMNS = ("path", "reference", "type", "level", "score")
PRISTINE_TYPE = "pristine"
PRISTINE_SCORE = 100.0
#: Bumped when a change to the generator or the distortions alters pixels or scores, so an old
#: output folder is not silently extended with incompatible images.
SYNTH_VERSION = 1


@dataclass(frozen=True)
class OutputFormat:
    suffix: str
    save: dict
    lossy: bool


#: Output formats for the distorted images. References are always PNG (they are the ground truth).
FORMATS: dict[str, OutputFormat] = {
    "png": OutputFormat(".png", {"format": "PNG", "compress_level": 3}, lossy=False),
    "jpeg": OutputFormat(".jpg", {"format": "JPEG", "quality": 95, "subsampling": "4:4:4"}, lossy=True),
}
assert tuple(FORMATS) == FORMAT_NAMES, "synth_defaults.FORMAT_NAMES must list FORMATS"


def _skimage(name: str, item: Optional[int] = None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        try:
            img = getattr(data, name)()
        except Exception as exc:  # noqa: BLE001 - e.g. a scikit-image build without this file
            raise ImageError(f"not available offline in this scikit-image ({type(exc).__name__}: {exc})") from None
        return img if item is None else img[item]
    return load


#: The real colour photographs in the scikit-image wheel (no download needed); licences in docs/synth.md.
SKIMAGE_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle_left": _skimage("stereo_motorcycle", 0),
    "motorcycle_right": _skimage("stereo_motorcycle", 1),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "retina": _skimage("retina"),
}


# --- the proxy score -----------------------------------------------------------------------

_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik 2003
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2
_GMSD_C = 170.0  # Xue et al. 2014, for 0-255 images
_GMSD_ZERO = 0.35  # GMSD at which the gradient factor reaches 0 (largest values seen are ~0.3)
_YIQ_IQ = np.array([[0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32)
_PREWITT = np.array([[1.0, 0.0, -1.0]] * 3, dtype=np.float32) / 3.0


def _gauss(a: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    return ndimage.gaussian_filter(a, sigma, truncate=3.5, mode="reflect")  # 11x11 at sigma 1.5


def _half(a: np.ndarray) -> np.ndarray:
    """2x2 mean, then every other pixel (odd edges dropped)."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w]
    return 0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2])


def _ssim_terms(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SSIM's luminance map and contrast-structure map (Gaussian window, sigma 1.5)."""
    mx, my = _gauss(x), _gauss(y)
    sxx = _gauss(x * x) - mx * mx
    syy = _gauss(y * y) - my * my
    sxy = _gauss(x * y) - mx * my
    return (2 * mx * my + _C1) / (mx * mx + my * my + _C1), (2 * sxy + _C2) / (sxx + syy + _C2)


def ms_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """MS-SSIM of two single-channel 0-255 images. Fewer than 5 scales when the image is small
    (the coarsest scale keeps at least 12 px); negative terms are clipped to 0."""
    scales = int(np.clip(1 + np.floor(np.log2(min(x.shape) / 12.0)), 1, 5))
    weights = np.array(_MS_SSIM_WEIGHTS[:scales])
    weights /= weights.sum()
    terms = []
    for i in range(scales):
        lum, cs = _ssim_terms(x, y)
        terms.append(max(0.0, float((cs if i < scales - 1 else lum * cs).mean())))
        x, y = _half(x), _half(y)
    return float(np.prod(np.power(terms, weights)))


def gmsd(x: np.ndarray, y: np.ndarray) -> float:
    """Gradient magnitude similarity deviation (0 = identical) of two single-channel 0-255 images."""
    x, y = _half(x), _half(y)

    def magnitude(a: np.ndarray) -> np.ndarray:
        return np.hypot(ndimage.correlate(a, _PREWITT, mode="reflect"),
                        ndimage.correlate(a, _PREWITT.T, mode="reflect"))

    mx, my = magnitude(x), magnitude(y)
    return float(((2 * mx * my + _GMSD_C) / (mx * mx + my * my + _GMSD_C)).std())


def chroma_ssim(ref: np.ndarray, dist: np.ndarray) -> float:
    """Mean single-scale SSIM of the YIQ chroma planes I and Q (at half resolution)."""
    a = ref.astype(np.float32) @ _YIQ_IQ.T
    b = dist.astype(np.float32) @ _YIQ_IQ.T
    values = []
    for ch in range(2):
        lum, cs = _ssim_terms(_half(a[..., ch]), _half(b[..., ch]))
        values.append(max(0.0, float((lum * cs).mean())))
    return float(np.mean(values))


def tone_similarity(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM's luminance term on local means at half resolution (window sigma 1.5 there, about 3
    px at full size): brightness fidelity, which MS-SSIM weighs only at its coarsest scale."""
    mx, my = _gauss(_half(x)), _gauss(_half(y))
    return float(((2 * mx * my + _C1) / (mx * mx + my * my + _C1)).mean())


def proxy_components(reference: np.ndarray, distorted: np.ndarray) -> dict[str, float]:
    """The four similarity factors of :func:`proxy_score`, each in [0, 1] (1 = identical)."""
    ref, dist = _rgb_uint8(reference), _rgb_uint8(distorted)
    if ref.shape != dist.shape:
        raise ValueError(f"reference {ref.shape} and distorted {dist.shape} differ in shape")
    # float32 halves the filtering time; its error (~1e-2 on 0-255^2 moments) is far below C1, C2
    x, y = ref.astype(np.float32) @ LUMA, dist.astype(np.float32) @ LUMA
    return {
        "ms_ssim": ms_ssim(x, y),
        "gradient": max(0.0, 1.0 - gmsd(x, y) / _GMSD_ZERO),
        "chroma": chroma_ssim(ref, dist),
        "tone": tone_similarity(x, y),
    }


def proxy_score(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Full-reference quality of ``distorted`` against ``reference`` (RGB uint8), 0-100, higher better.

    ``100 * MS-SSIM(Y) * (1 - GMSD(Y) / 0.35)+ * chromaSSIM(I, Q) * tone(Y)``; identical images
    score exactly 100. See docs/synth.md for the definition and its measured behaviour.
    """
    return 100.0 * float(np.prod(list(proxy_components(reference, distorted).values())))


def _rgb_uint8(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got {a.shape}")
    return a


# --- options and sources -------------------------------------------------------------------

#: where a single crop may sit (``--crop-position``)
CROP_POSITIONS = ("centre", "random")


@dataclass(frozen=True)
class SynthOptions:
    """What to generate. ``size`` None keeps whole images; ``max_side`` None keeps full resolution."""

    types: tuple[str, ...] = field(default_factory=lambda: tuple(available_names()))
    levels: tuple[int, ...] = LEVELS[:DEFAULT_LEVELS]
    seed: int = DEFAULT_SEED
    fmt: str = DEFAULT_FORMAT
    size: Optional[int] = None
    crops: int = DEFAULT_CROPS
    max_side: Optional[int] = None
    #: where a single crop sits: "centre", or "random" (seeded like several crops)
    crop_position: str = "centre"

    def __post_init__(self) -> None:
        for name in self.types:
            get_distortion(name)
        if not self.types:
            raise UsageError("no distortion types selected")
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad or not self.levels:
            raise UsageError(f"levels must be in {LEVELS[0]}..{LEVELS[-1]}, got {list(self.levels)}")
        if self.fmt not in FORMATS:
            raise UsageError(f"unknown output format {self.fmt!r}; choose from: {', '.join(FORMATS)}")
        if self.size is not None and self.size < 16:
            raise UsageError(f"--size must be at least 16 pixels, got {self.size}")
        if self.max_side is not None and self.max_side < 16:
            raise UsageError(f"--max-side must be at least 16 pixels, got {self.max_side}")
        if self.crops < 1:
            raise UsageError(f"--crops must be at least 1, got {self.crops}")
        if self.crops > 1 and self.size is None:
            raise UsageError("--crops above 1 needs --size (the side of each crop)")
        if self.crop_position not in CROP_POSITIONS:
            raise UsageError(f"--crop-position must be one of {', '.join(CROP_POSITIONS)}, not {self.crop_position!r}")
        if self.crop_position == "random" and self.size is None:
            raise UsageError("--crop-position random needs --size (the side of each crop)")


def parse_levels(spec: str | int) -> tuple[int, ...]:
    """``"5"`` or ``5`` -> levels 1..5; ``"1,3,5"`` -> exactly those levels."""
    text = str(spec).strip()
    try:
        if "," in text:
            levels = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
        else:
            n = int(text)
            if not 1 <= n <= len(LEVELS):
                raise UsageError(f"--levels N must be 1..{len(LEVELS)} (levels 1..N), got {n}")
            levels = LEVELS[:n]
    except ValueError:
        raise UsageError(f"--levels must be a count 1..{len(LEVELS)} or a list like 1,3,5; got {spec!r}") from None
    if not levels or any(lv not in LEVELS for lv in levels):
        raise UsageError(f"--levels values must be in {LEVELS[0]}..{LEVELS[-1]}, got {spec!r}")
    return levels


#: type groups usable in ``--types``: KADID-10k's 25 types, the camera defects (docs/synth.md)
TYPE_GROUPS = {
    "kadid": lambda: tuple(n for n in available_names() if get_distortion(n).kadid_id is not None),
    "camera": lambda: tuple(n for n in available_names() if get_distortion(n).kadid_id is None),
}


def parse_types(specs: Optional[Sequence[str]]) -> tuple[str, ...]:
    """Type names or groups (``kadid``, ``camera``; repeated or comma-separated); None, empty or
    "all" -> every type this installation can run, in registry order."""
    names = [n.strip() for s in (specs or ()) for n in s.split(",") if n.strip()]
    if not names or names == ["all"]:
        return tuple(available_names())
    names = [t for n in names for t in (TYPE_GROUPS[n]() if n in TYPE_GROUPS else (n,))]
    for n in names:
        get_distortion(n)
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Source:
    """One pristine image: a short unique ``name`` for output files, a ``label`` for messages."""

    name: str
    label: str
    load: Callable[[], np.ndarray]


def skimage_sources() -> list[Source]:
    """The default sources: scikit-image's real colour photographs."""
    return [Source(name, f"skimage.data:{name}", load) for name, load in SKIMAGE_PHOTOS.items()]


def folder_sources(src: str | os.PathLike, recursive: bool = False,
                   exclude: Optional[str | os.PathLike] = None) -> list[Source]:
    """Image files in ``src`` (sorted; subfolders with ``recursive``) as sources; files under
    ``exclude`` (the output folder, when it lies inside ``src``) are left out."""
    from qfmiqm.data.images import open_image

    root = Path(src)
    if not root.is_dir():
        raise UsageError(f"--src {src}: not a folder")
    skip = Path(exclude).resolve() if exclude is not None else None
    paths = [p for p in _scan(root, recursive) if skip is None or not Path(p).resolve().is_relative_to(skip)]
    if not paths:
        raise UsageError(f"--src {src}: no image files found{'' if recursive else ' (try --recursive)'}")
    taken: set[str] = set()
    out = []
    for p in paths:
        rel = Path(p).relative_to(root)
        name = _unique(_safe_name(str(rel.with_suffix("")).replace(os.sep, "__")), rel.suffix, taken)
        out.append(Source(name, p, lambda p=p: open_image(p)))
    return out


def _scan(root: Path, recursive: bool) -> list[str]:
    """Image files under ``root`` by extension, sorted; links to folders are not followed."""
    from qfmiqm.data.sources import IMAGE_EXTENSIONS

    found: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        found.extend(os.path.join(folder, f) for f in sorted(files)
                     if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
        if not recursive:
            break
    return found


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "image"


def _unique(name: str, suffix: str, taken: set[str]) -> str:
    if name in taken:
        name = f"{name}_{_safe_name(suffix)}"
    base, i = name, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


# --- crops and randomness ------------------------------------------------------------------

def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator that depends only on the seed and the names (stable across runs and machines)."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def crop_boxes(height: int, width: int, size: Optional[int], crops: int,
               rng: np.random.Generator, position: str = "centre") -> list[tuple[int, int, int, int]]:
    """(top, left, h, w) of each crop: the whole image without ``size``, the centre for one crop
    (unless ``position`` is "random"), uniformly random positions for several. Sides shorter than
    ``size`` are kept whole."""
    if size is None:
        return [(0, 0, height, width)]
    h, w = min(size, height), min(size, width)
    if crops == 1 and position == "centre":
        return [((height - h) // 2, (width - w) // 2, h, w)]
    return [(int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
            for _ in range(crops)]


def _downscale(img: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    h, w = img.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return img
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


def _prepare(img: np.ndarray) -> np.ndarray:
    from qfmiqm.data.images import array_to_rgb_array

    return array_to_rgb_array(img)


# --- files ---------------------------------------------------------------------------------

def _atomic_write(path: Path, data: bytes, durable: bool = False) -> None:
    """A reader (or a rerun) sees the whole file or none. ``durable`` also fsyncs (labels,
    manifest); images skip it for speed, since a kill cannot tear a rename and only a power cut
    could lose recent images."""
    write_bytes_atomic(path, data, durable)


def _encode(img: np.ndarray, fmt: OutputFormat) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, **fmt.save)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _fmt_row(path: str, reference: str, dtype: str, level: int, score: float) -> dict:
    return {"path": path, "reference": reference, "type": dtype, "level": int(level), "score": round(float(score), 3)}


#: The journal's extra last column: a line cut short by a kill lacks it, so a truncated score
#: ("45.1" of "45.123") is never read back as valid.
_JOURNAL_END = ("end", "#")


def read_labels(file: str | os.PathLike, journal: bool = False) -> list[dict]:
    """Rows of a labels.csv, or with ``journal`` of the partial journal (lines without the end
    marker, i.e. cut short by a kill, are dropped); malformed rows are skipped."""
    f = Path(file)
    if not f.exists():
        return []
    rows = []
    with open(f, newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            if journal and (rec.get(_JOURNAL_END[0]) != _JOURNAL_END[1] or None in rec):
                continue
            try:
                rows.append(_fmt_row(rec["path"], rec["reference"], rec["type"], int(rec["level"]),
                                     float(rec["score"])))
            except (KeyError, TypeError, ValueError):
                continue
    return rows


class _Journal:
    """Append-only record of finished rows, flushed per row, for resuming after a kill."""

    def __init__(self, file: Path) -> None:
        fresh = not file.exists() or file.stat().st_size == 0
        if not fresh:
            with open(file, "rb+") as fh:  # end a line cut short, so the next row starts clean
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
        self.fh = open(file, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.fh, fieldnames=(*LABEL_COLUMNS, _JOURNAL_END[0]), lineterminator="\n")
        if fresh:
            self.writer.writeheader()

    def write(self, row: dict) -> None:
        self.writer.writerow({**row, _JOURNAL_END[0]: _JOURNAL_END[1]})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _write_labels(file: Path, rows: Iterable[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LABEL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(file, buf.getvalue().encode("utf-8"), durable=True)


def _manifest(options: SynthOptions, source_spec: str) -> dict:
    return {"version": SYNTH_VERSION, "sources": source_spec, "seed": options.seed, "format": options.fmt,
            "size": options.size, "crops": options.crops, "max_side": options.max_side,
            **({"crop_position": options.crop_position} if options.crop_position != "centre" else {})}


def _check_manifest(out: Path, manifest: dict) -> None:
    """A rerun into the same folder must use the settings that decided the pixels already there."""
    file = out / MANIFEST_NAME
    if file.exists():
        try:
            old = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{file}: unreadable ({exc}); remove it or use a new --out") from None
        diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in manifest.items() if old.get(k) != v]
        if diff:
            raise UsageError(f"{out} was generated with other settings ({'; '.join(diff)}); "
                             "use a new --out folder or the same settings")
        return
    _atomic_write(file, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"), durable=True)


# --- the work ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    crop: np.ndarray
    reference: str  # relative path of the reference PNG
    ref_name: str
    dtype: str
    levels: tuple[int, ...]
    rescore: tuple[int, ...]  # levels already on disk without a label: score the file
    seed: int
    fmt: str
    out: str


def distorted_path(ref_name: str, dtype: str, level: int, fmt: str) -> str:
    """Relative path of one distorted image."""
    return f"distorted/{ref_name}_{dtype}_{level}{FORMATS[fmt].suffix}"


@dataclass(frozen=True)
class _Result:
    path: str
    row: Optional[dict]  # None when the image failed
    error: str = ""
    rescored: bool = False


def _run_job(job: _Job) -> list[_Result]:
    """Make (or re-score) the images of one (crop, type), one result per level."""
    fmt = FORMATS[job.fmt]
    distortion = DISTORTIONS[job.dtype]
    results = []
    for level in sorted(set(job.levels) | set(job.rescore)):
        rel = distorted_path(job.ref_name, job.dtype, level, job.fmt)
        target = Path(job.out) / rel
        rescored = level in job.rescore
        try:
            if rescored:  # on disk from a run killed before its label was saved
                seen = _decode(target.read_bytes())
            else:
                img = distortion(job.crop, level, _rng(job.seed, job.ref_name, job.dtype))
                data = _encode(img, fmt)
                seen = _decode(data) if fmt.lossy else img  # score what a reader of the file sees
                _atomic_write(target, data)
            row = _fmt_row(rel, job.reference, job.dtype, level, proxy_score(job.crop, seen))
            results.append(_Result(rel, row, rescored=rescored))
        except Exception as exc:  # noqa: BLE001 - one failed image must not stop the batch
            results.append(_Result(rel, None, f"{type(exc).__name__}: {exc}", rescored))
    return results


@dataclass
class SynthReport:
    """What a run did. ``failures``: (source or file, reason)."""

    out: Path
    labels: Path
    rows: int = 0
    written: int = 0
    rescored: int = 0
    skipped: int = 0
    references: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return (self.written + self.rescored) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"{self.written} image(s) written, {self.rescored} re-scored, {self.skipped} already done, "
                f"{self.references} reference(s); {self.rows} rows in {self.labels}"
                + (f"; {len(self.failures)} failure(s)" if self.failures else ""))


def default_workers() -> int:
    """One worker process per CPU core."""
    return os.cpu_count() or 1


def generate(
    out: str | os.PathLike,
    sources: Sequence[Source],
    options: SynthOptions = SynthOptions(),
    source_spec: str = "skimage",
    workers: Optional[int] = None,
    progress: bool = False,
    on_error: Optional[Callable[[str, str], None]] = None,
) -> SynthReport:
    """Write the distorted set for ``sources`` into ``out`` and return what was done.

    ``source_spec`` names the source set in the manifest (a rerun must name the same one).
    ``workers``: processes (0 = in this process; default one per core). ``on_error(label,
    reason)`` is called for each source or image that fails; the run goes on.
    """
    start = time.perf_counter()
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    _check_manifest(out, _manifest(options, source_spec))
    report = SynthReport(out=out, labels=out / LABELS_NAME)
    known = {r["path"]: r for r in read_labels(out / LABELS_NAME) + read_labels(out / JOURNAL_NAME, journal=True)}
    workers = default_workers() if workers is None else max(0, workers)

    def fail(label: str, reason: str) -> None:
        report.failures.append((label, reason))
        if on_error:
            on_error(label, reason)

    journal = _Journal(out / JOURNAL_NAME)

    def record(row: dict) -> None:
        known[row["path"]] = row
        journal.write(row)

    total = len(sources) * options.crops * len(options.types) * len(options.levels)
    try:
        with _worker_pool(workers) as pool, _progress_bar(progress, total) as advance:
            jobs = _jobs(out, sources, options, known, record, report, fail, advance)
            for results in _execute(jobs, pool, workers):
                for res in results:
                    if res.row is None:
                        fail(str(out / res.path), res.error)
                    else:
                        record(res.row)
                        if res.rescored:
                            report.rescored += 1
                        else:
                            report.written += 1
                    advance(1)
    finally:  # also on Ctrl-C: labels.csv then lists everything finished so far
        journal.close()
        rows = _final_rows(out, known)
        _write_labels(out / LABELS_NAME, rows)
        report.rows = len(rows)
        with contextlib.suppress(OSError):
            os.unlink(out / JOURNAL_NAME)  # its rows are in labels.csv now
    report.seconds = time.perf_counter() - start
    return report


def _jobs(out: Path, sources: Sequence[Source], options: SynthOptions, known: dict,
          record: Callable[[dict], None], report: SynthReport, fail: Callable[[str, str], None],
          advance: Callable[[int], None]) -> Iterator[_Job]:
    """Load each source, write its reference crops, yield the (crop, type) jobs still to do."""
    for src in sources:
        try:
            img = _downscale(_prepare(src.load()), options.max_side)
        except ImageError as exc:
            fail(src.label, str(exc))
            advance(options.crops * len(options.types) * len(options.levels))
            continue
        boxes = crop_boxes(img.shape[0], img.shape[1], options.size, options.crops, _rng(options.seed, src.name),
                           options.crop_position)
        for i, (top, left, h, w) in enumerate(boxes):
            ref_name = src.name if options.crops == 1 else f"{src.name}_c{i:02d}"
            crop = np.ascontiguousarray(img[top:top + h, left:left + w])
            ref_rel = f"reference/{ref_name}.png"
            if not (out / ref_rel).exists():
                _atomic_write(out / ref_rel, _encode(crop, FORMATS["png"]))
                report.references += 1
            if ref_rel not in known:
                record(_fmt_row(ref_rel, ref_rel, PRISTINE_TYPE, 0, PRISTINE_SCORE))
            for dtype in options.types:
                todo, rescore = [], []
                for level in options.levels:
                    rel = distorted_path(ref_name, dtype, level, options.fmt)
                    if not (out / rel).exists():
                        todo.append(level)
                    elif rel not in known:
                        rescore.append(level)
                done = len(options.levels) - len(todo) - len(rescore)
                report.skipped += done
                advance(done)
                if todo or rescore:
                    yield _Job(crop, ref_rel, ref_name, dtype, tuple(todo), tuple(rescore), options.seed,
                               options.fmt, str(out))


@contextlib.contextmanager
def _worker_pool(workers: int) -> Iterator[Optional[cf.ProcessPoolExecutor]]:
    """A started process pool (None for workers == 0).

    Fork where the platform has it: importing the qfmiqm package pulls in torch, which would
    cost every spawned worker seconds, and the workers only run numpy/scipy/Pillow code (never
    torch), so inheriting the parent's state is safe. The pool is started before the progress
    bar's thread exists, so no lock can be copied in a held state.
    """
    if workers == 0:
        yield None
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                                  initializer=_watch_parent, initargs=(os.getpid(),))
    try:
        pool.submit(int).result()  # start the workers now
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _watch_parent(parent: int) -> None:
    """Worker initializer: exit when the parent dies. Forked workers share the pool's pipes, so
    after a hard kill of the parent they would otherwise wait on them forever."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="qfmiqm-synth-parent-watch").start()


def _execute(jobs: Iterator[_Job], pool: Optional[cf.ProcessPoolExecutor], workers: int) -> Iterator[list]:
    """Run jobs in this process (no pool) or in the pool, a bounded number in flight."""
    if pool is None:
        for job in jobs:
            yield _run_job(job)
        return
    pending: set[cf.Future] = set()
    for job in jobs:
        pending.add(pool.submit(_run_job, job))
        if len(pending) >= 2 * workers:
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
    for fut in cf.as_completed(pending):
        yield fut.result()


def _final_rows(out: Path, known: dict) -> list[dict]:
    """Every known row whose file is on disk: references first, then KADID order and level."""
    order = {name: i for i, name in enumerate(DISTORTIONS)}
    rows = [r for r in known.values() if (out / r["path"]).exists()]
    return sorted(rows, key=lambda r: (r["reference"], r["level"] > 0, order.get(r["type"], len(order)),
                                       r["type"], r["level"], r["path"]))


class _progress_bar:
    """A rich progress bar on stderr (or nothing); the context value is ``advance(n)``."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.bar.start()
        task = self.bar.add_task("synth", total=self.total)
        return lambda n: self.bar.advance(task, n) if n else None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def synthesize(
    out: str | os.PathLike,
    src: Optional[str | os.PathLike] = None,
    options: SynthOptions = SynthOptions(),
    recursive: bool = False,
    workers: Optional[int] = None,
    progress: bool = False,
    on_error: Optional[Callable[[str, str], None]] = None,
) -> SynthReport:
    """Generate from the images in ``src`` (a folder) or, without it, scikit-image's photos.

    This is ``qfmiqm synth``; see :func:`generate` for the arguments.
    """
    if src is None:
        return generate(out, skimage_sources(), options, "skimage", workers, progress, on_error)
    sources = folder_sources(src, recursive, exclude=out)
    return generate(out, sources, options, f"folder:{Path(src).resolve()}", workers, progress, on_error)
