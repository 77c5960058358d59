"""Does the quality map locate a defect? Distort one half of each photo and compare the halves.

For every photo in ``--photos`` and each distortion (Gaussian blur sigma 4, white noise sigma 25,
JPEG quality 10) applied to the left or the right half only, the map's mean over the distorted
half should be at least ``--margin`` (10) points below its mean over the clean half. The criterion
of issue #25: this holds for at least 8 photos in 10, for each of the 6 (distortion, side) cases.

    python tools/map_localisation.py --photos datasets/pristine/heldout --split test
    python tools/map_localisation.py --photos datasets/pristine/heldout --split val

``--split`` uses tools/collect_photos.py: ``test`` = CARD_HELD_OUT (the photos the default model's
card reports on), ``val`` = the other held-out photos, ``all`` = every image in the folder.
Photos are first downscaled to a longer side of ``--max-side`` (1024, as the training data were
made), so that a sigma-4 blur means the same on every photo.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SIDES = ("left", "right")


def blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, sigma 4 px (the whole image, so the cut half has no border effect)."""
    return ndimage.gaussian_filter(img.astype(np.float32), sigma=(4, 4, 0), mode="reflect")


def noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise, sigma 25 grey levels, independent per channel."""
    return img.astype(np.float32) + rng.normal(0.0, 25.0, img.shape).astype(np.float32)


def jpeg(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """JPEG quality 10 (Pillow, 4:2:0), decoded again."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=10)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


DISTORTIONS = {"blur s4": blur, "noise s25": noise, "jpeg q10": jpeg}


def half_distorted(img: np.ndarray, kind: str, side: str, seed: int = 0) -> np.ndarray:
    """``img`` with its ``side`` half (columns < W/2 or >= W/2) replaced by the distorted image."""
    out = img.copy()
    bad = np.clip(np.round(np.asarray(DISTORTIONS[kind](img, np.random.default_rng(seed)), np.float32)), 0, 255)
    half = slice(0, img.shape[1] // 2) if side == "left" else slice(img.shape[1] // 2, None)
    out[:, half] = bad[:, half].astype(np.uint8)
    return out


def half_means(values: np.ndarray) -> tuple[float, float]:
    """Mean of a pixel map (H, W) over its left and its right half."""
    mid = values.shape[1] // 2
    return float(values[:, :mid].mean()), float(values[:, mid:].mean())


def drop(values: np.ndarray, side: str) -> float:
    """How far the ``side`` half's mean lies below the other half's (positive = lower)."""
    left, right = half_means(values)
    return right - left if side == "left" else left - right


def load_photo(path: Path, max_side: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = max_side / max(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
        return np.asarray(im)


def photos_of(folder: Path, split: str) -> list[Path]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)
    if split == "all":
        return paths
    sys.path.insert(0, str(ROOT / "tools"))
    from collect_photos import CARD_HELD_OUT

    return [p for p in paths if (p.stem in CARD_HELD_OUT) == (split == "test")]


def measure(model, img: np.ndarray) -> dict[tuple[str, str], float]:
    """The drop of the distorted half for every (distortion, side), plus ('none', side)."""
    from qfmiqm.eval.quality_map import quality_map

    drops = {("none", s): drop(quality_map(model, img, with_score=False).upsampled(), s) for s in SIDES[:1]}
    drops[("none", "right")] = -drops[("none", "left")]
    for kind in DISTORTIONS:
        for side in SIDES:
            drops[(kind, side)] = drop(quality_map(model, half_distorted(img, kind, side), with_score=False).upsampled(), side)
    return drops


def table(rows: dict[str, dict[tuple[str, str], float]], margin: float) -> str:
    """Markdown: per (distortion, side) the photos whose distorted half is >= margin lower."""
    n = len(rows)
    lines = [f"| distorted half | photos with drop >= {margin:g} | share | median drop | min drop |",
             "|---|---|---|---|---|"]
    for kind in ("none", *DISTORTIONS):
        for side in SIDES:
            d = np.array([r[(kind, side)] for r in rows.values()])
            ok = int((d >= margin).sum())
            label = f"{kind}, {side}" if kind != "none" else f"none (pristine photo), {side}"
            lines.append(f"| {label} | {ok}/{n} | {ok / n:.0%} | {np.median(d):.1f} | {d.min():.1f} |")
    return "\n".join(lines)


def cost(model, onnx_model, img: np.ndarray, repeats: int = 5) -> dict[str, float]:
    """Median seconds of: the score alone (ONNX Runtime, the CPU default; PyTorch), the map alone,
    map and score in one call (PyTorch)."""
    from qfmiqm.eval.quality_map import quality_map

    runs = {"score (onnx)": lambda: onnx_model.score(img), "score (torch)": lambda: model.score(img),
            "map": lambda: quality_map(model, img, with_score=False),
            "map + score": lambda: quality_map(model, img)}
    out = {}
    for name, fn in runs.items():
        fn()  # warm-up: first calls allocate
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[name] = float(np.median(times))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, help="folder of photos the model never saw")
    ap.add_argument("--split", choices=("test", "val", "all"), default="all")
    ap.add_argument("--model", default="default")
    ap.add_argument("--max-side", type=int, default=1024)
    ap.add_argument("--margin", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a busy machine)")
    ap.add_argument("--verbose", action="store_true", help="one line per photo")
    ap.add_argument("--sigma", type=float, default=None,
                    help="the cells' Gaussian over windows, in window sides (default: the map's WINDOW_SIGMA)")
    ap.add_argument("--cost", type=Path, default=None, metavar="IMAGE",
                    help="instead: time score, map and both on IMAGE resized to 500 x 375 (median of 5)")
    args = ap.parse_args(argv)
    if args.cost is None and args.photos is None:
        ap.error("--photos DIR is needed (or --cost IMAGE)")

    import torch

    import qfmiqm

    if args.threads:
        torch.set_num_threads(args.threads)
    from qfmiqm.eval import quality_map

    if args.sigma is not None:
        quality_map.WINDOW_SIGMA = args.sigma
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = qfmiqm.load(args.model, device="cpu", runtime="torch")
    if args.cost is not None:
        img = np.asarray(Image.open(args.cost).convert("RGB").resize((500, 375), Image.BICUBIC))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            onnx_model = qfmiqm.load(args.model, device="cpu", runtime="onnx", threads=torch.get_num_threads())
        for name, seconds in cost(model, onnx_model, img).items():
            print(f"{name}: {seconds * 1000:.0f} ms (500 x 375, {torch.get_num_threads()} thread(s))")
        return 0
    paths = photos_of(args.photos, args.split)
    if not paths:
        print(f"no photos in {args.photos} for split {args.split}", file=sys.stderr)
        return 2
    rows, start = {}, time.time()
    for p in paths:
        rows[p.stem] = measure(model, load_photo(p, args.max_side))
        if args.verbose:
            print(p.stem, " ".join(f"{k[0]}/{k[1]}={v:.1f}" for k, v in rows[p.stem].items()), file=sys.stderr)
    print(f"{len(paths)} photos ({args.split}) from {args.photos}, longer side <= {args.max_side}, "
          f"model {args.model}; {time.time() - start:.0f} s\n")
    print(table(rows, args.margin))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
