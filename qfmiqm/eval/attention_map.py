"""Attention maps: where the decoder's panel looks in an image (``qfmiqm score --map DIR``).

The map of an image is the cross-attention of the panel queries onto the backbone tokens,
averaged over heads and panel members (last decoder layer). Each level's token grid is
upsampled to the crop's pixels and the levels are averaged; each crop's map is placed at its
offset in the policy-resized image and overlapping crops are averaged; the result is
normalised to [0, 1] per image. It shows where the decoder looks, not a per-pixel quality
score (docs/attention-maps.md).

Maps are an analysis feature, not the fast path: the CLI computes them in a second pass, one
image at a time, for the files the scoring pass scored successfully.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from qfmiqm.data.images import to_rgb_array
from qfmiqm.data.policy import resize_for_policy, view_boxes, view_weights
from qfmiqm.errors import ImageError, UsageError
from qfmiqm.files import atomic_path
from qfmiqm.models.qfm import QualityNet
from qfmiqm.scoring import QualityModel

MAP_SUFFIX = ".map.png"
#: Overlays are drawn on the policy-resized image, downscaled so its longer side is at most this.
MAX_DISPLAY_SIDE = 1024
COLORMAP = "inferno"
ALPHA = 0.5


@dataclass(frozen=True)
class AttentionMap:
    """One image's attention map on the policy-resized image.

    ``values``: float32 (H, W) in [0, 1], 0 where no crop covers the pixel; ``covered``: bool
    (H, W), the pixels some crop covers (the model never sees the others); ``score``: the
    image's 0-100 score, the same as ``QualityModel.score`` gives.
    """

    image: np.ndarray
    values: np.ndarray
    covered: np.ndarray
    score: float
    offsets: list[tuple[int, int]]


def supports_maps(model: QualityModel) -> bool:
    """Whether ``model`` runs a PyTorch ``QualityNet`` (ONNX Runtime has no attention to read)."""
    return model.runtime.name == "torch" and isinstance(model.net, QualityNet)


def crop_attention(net: QualityNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised crops (K, 3, S, S) -> (raw scores (K,), attention maps (K, S, S)).

    The map of a crop is the last decoder layer's cross-attention averaged over heads and panel
    members, per level upsampled (bilinear) from its token grid to S x S, averaged over levels.
    Scores are computed exactly as ``net(x)`` does.
    """
    head = net.head
    pooled = head.pool(net.backbone(x))
    with head.decoder.record_attention() as records:
        raw = head.score(pooled)
    weights = records[-1].float().mean(dim=(1, 2))  # (K, N): mean over heads and panel members
    grids = [tuple(m.shape[-2:]) for m in pooled.maps]
    if sum(h * w for h, w in grids) != weights.shape[1]:
        raise RuntimeError(f"decoder attends to {weights.shape[1]} tokens, but the levels' grids {grids} give another number")
    size = x.shape[-2:]
    levels, start = [], 0
    for h, w in grids:
        grid = weights[:, start:start + h * w].reshape(-1, 1, h, w)
        levels.append(F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0])
        start += h * w
    return raw, torch.stack(levels).mean(dim=0)


def place_crops(crop_maps: list[np.ndarray], offsets: list[tuple[int, int]], height: int,
                width: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop maps (K, S, S) at their top-left ``offsets`` -> (mean map (H, W), covered (H, W)).
    Overlaps are averaged; uncovered pixels are 0."""
    total = np.zeros((height, width), dtype=np.float64)
    count = np.zeros((height, width), dtype=np.int32)
    for crop, (y, x) in zip(crop_maps, offsets):
        s_h, s_w = crop.shape
        total[y:y + s_h, x:x + s_w] += crop
        count[y:y + s_h, x:x + s_w] += 1
    covered = count > 0
    return np.where(covered, total / np.maximum(count, 1), 0.0), covered


def normalise(values: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Scale the covered pixels to [0, 1] (min -> 0, max -> 1); uncovered and constant maps -> 0."""
    out = np.zeros(values.shape, dtype=np.float32)
    if covered.any():
        lo, hi = float(values[covered].min()), float(values[covered].max())
        if hi > lo:
            out[covered] = (values[covered] - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0)


def attention_map(model: QualityModel, item: Any) -> AttentionMap:
    """The attention map of one image (path, PIL image, array or tensor), decoded, resized and
    cropped by the model's input policy exactly as for scoring."""
    if not supports_maps(model):
        raise UsageError("attention maps need the PyTorch runtime (runtime='torch'; not an ONNX file)")
    policy = model.policy
    img = resize_for_policy(to_rgb_array(item, model.max_pixels, min_short_side=policy.max_short_side), policy)
    h, w = img.shape[:2]
    boxes = view_boxes(h, w, policy)
    views = [np.ascontiguousarray(img[y0:y1, x0:x1]) for y0, x0, y1, x1 in boxes]
    graph = model.runtime.graph
    raws, maps = [], []
    with torch.inference_mode():
        for v in views:  # one at a time: the views of the whole layout differ in size
            raw, vmap = crop_attention(model.net, graph.normalised(torch.from_numpy(v)[None].to(model.device)))
            raws.append(float(raw[0]))
            maps.append(vmap[0].cpu().numpy())
    raw = float(np.dot(view_weights(views), raws))
    if model.card.tone is not None:  # as `qfmiqm score`
        from qfmiqm.models.tone import tone_statistics

        raw += float(model.card.tone.of_statistics(tone_statistics(views)[None])[0])
    offsets = [(y0, x0) for y0, x0, _, _ in boxes]
    values, covered = place_crops(maps, offsets, h, w)
    return AttentionMap(img, normalise(values, covered), covered, model.map_score(raw), offsets)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: small bitmap font
        return ImageFont.load_default()


def render_overlay(amap: AttentionMap, max_side: int = MAX_DISPLAY_SIDE, cmap: str = COLORMAP,
                   alpha: float = ALPHA) -> Image.Image:
    """The resized image (longer side at most ``max_side``) with the map as a semi-transparent
    colormap overlay on the covered pixels and the score in the top-left corner."""
    import matplotlib

    h, w = amap.values.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = Image.fromarray(amap.image)
    values = Image.fromarray(amap.values.astype(np.float32))  # mode "F"
    covered = Image.fromarray(amap.covered.astype(np.uint8) * 255)
    if size != (w, h):
        base = base.resize(size, Image.BICUBIC)
        values = values.resize(size, Image.BILINEAR)
        covered = covered.resize(size, Image.NEAREST)
    colors = matplotlib.colormaps[cmap](np.clip(np.asarray(values), 0.0, 1.0))[..., :3] * 255.0
    a = alpha * (np.asarray(covered) > 0)[..., None]
    blended = (1.0 - a) * np.asarray(base, dtype=np.float64) + a * colors
    out = Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8)).convert("RGBA")

    text = f"score {amap.score:.1f}"
    font = _font(max(12, round(min(size) / 18)))
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    pad = max(3, round(min(size) / 100))
    left, top, right, bottom = draw.textbbox((2 * pad, 2 * pad), text, font=font)
    draw.rectangle((left - pad, top - pad, right + pad, bottom + pad), fill=(0, 0, 0, 160))
    draw.text((2 * pad, 2 * pad), text, font=font, fill=(255, 255, 255, 255))
    return Image.alpha_composite(out, layer).convert("RGB")


def map_filenames(paths: Iterable[str]) -> dict[str, str]:
    """File names for the maps of ``paths``: ``<stem>.map.png``; stems that occur more than once
    (same name in several folders, or ``a.jpg`` and ``a.png``) all get ``<stem>-<hash>.map.png``,
    ``hash`` being the first 8 hex digits of the SHA-1 of the file's absolute path."""
    paths = list(paths)
    stems = Counter(Path(p).stem for p in paths)
    names = {}
    for p in paths:
        stem = Path(p).stem
        if stems[stem] > 1:
            digest = hashlib.sha1(os.fsencode(os.path.normpath(os.path.abspath(p)))).hexdigest()[:8]
            stem = f"{stem}-{digest}"
        names[p] = stem + MAP_SUFFIX
    return names


def save_map(model: QualityModel, item: Any, path: str | os.PathLike) -> Path:
    """Compute, render and write (atomically, PNG) the attention map of one image."""
    overlay = render_overlay(attention_map(model, item))
    with atomic_path(path) as tmp:
        overlay.save(tmp, format="PNG")
    return Path(path)


def prepare_map_dir(folder: str | os.PathLike) -> Path:
    """Create the maps folder (with parents); a UsageError if it cannot be one."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"map folder '{folder}' exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the map folder '{folder}': {exc.strerror or exc}") from None
    return folder


def save_maps(model: QualityModel, paths: list[str], folder: str | os.PathLike,
              on_error: Callable[[str, str], None]) -> int:
    """Write ``folder/<name>`` (``map_filenames``) for each path, one image at a time. A failure
    is reported through ``on_error(path, reason)`` and the rest go on; returns the failures."""
    folder = prepare_map_dir(folder)
    failures = 0
    for p, name in map_filenames(paths).items():
        try:
            save_map(model, p, folder / name)
        except (ImageError, UsageError, OSError) as exc:
            failures += 1
            on_error(p, f"attention map not written: {exc}")
        except MemoryError:
            failures += 1
            on_error(p, "attention map not written: out of memory")
        except Exception as exc:  # noqa: BLE001 - one image's map must not stop the others
            failures += 1
            on_error(p, f"attention map not written ({type(exc).__name__}: {exc})")
    return failures
