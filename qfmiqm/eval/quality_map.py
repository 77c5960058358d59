"""Local quality maps: the model's 0-100 score of every 224-pixel neighbourhood of an image.

``QualityModel.quality_map(image)`` and ``qfmiqm score --map DIR`` (docs/quality-maps.md).

How: the backbone runs **once over the whole policy-resized image** at native resolution. The
head is then evaluated on every window of the backbone's feature maps that has the size of one
training crop (``policy.size`` pixels: 7 x 7 cells of the coarsest, stride-32 level for the
default model), sliding one coarsest cell at a time. Each window is pooled to the head's token
grid exactly as a crop is (adaptive average bins), scored by the decoder, shifted by the model's
image-level term computed from the window's own pixels and mapped to 0-100 by the model's own
score mapping. A cell's value is the
Gaussian-weighted mean of the windows that cover it (weights fall with the distance between the
cell and the window's centre), so neighbouring cells share most windows: no crop seams.

The backbone pass over the whole image is one pass, not a tiling, so it has no seams either;
the windows see the features a whole-image pass gives, which near a window's edge differ a
little from those of a separately cut crop (the backbone's receptive field crosses the edge).

Maps need the network's modules (PyTorch). A model running in ONNX Runtime gets its PyTorch
twin loaded once (same zoo entry, same weights digest) for its maps.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from qfmiqm.data.feed import Prepared
from qfmiqm.eval.map_names import DATA_SUFFIX, MAP_SUFFIX, map_filenames  # noqa: F401 - map_filenames re-exported
from qfmiqm.data.images import to_rgb_array
from qfmiqm.data.policy import cut_views, resize_for_policy
from qfmiqm.errors import ImageError, UsageError
from qfmiqm.files import atomic_path
from qfmiqm.models.backbones import BackboneFeatures
from qfmiqm.models.graph import ScoringGraph, pool_matrix
from qfmiqm.models.qfm import QualityNet
from qfmiqm.scoring import QualityModel

#: the Gaussian's sigma that weights the windows covering a cell, in window sides: small enough
#: that a cell is dominated by the windows centred near it, large enough for a smooth map
WINDOW_SIGMA = 0.25
#: the largest policy-resized image a map is made of: the one backbone pass holds its activations
#: (measured on the CPU: about 0.22 GB per Mpx, 0.9 GB for 1024 x 4096); panoramas up to 8:1 fit
MAX_MAP_PIXELS = 8 * 1024 * 1024
#: windows scored per decoder batch (bounds the memory of very large images)
WINDOW_BATCH = 512
#: overlays are drawn at most this many pixels on their longer side
MAX_DISPLAY_SIDE = 1024
COLORMAP = "RdYlGn"  # red = low quality, green = high; fixed 0-100 range, so maps compare
ALPHA = 0.45


@dataclass(frozen=True)
class QualityMap:
    """One image's quality map.

    ``values``: float32 (rows, cols) on 0-100, one value per ``cell`` x ``cell`` pixel block of
    ``image`` (the policy-resized image; the last row and column of cells may stick out past its
    edge); ``score``: the image's 0-100 score as ``QualityModel.score`` gives it (its own
    policy, e.g. 5 crops), or None when not asked for.
    """

    image: np.ndarray
    values: np.ndarray
    cell: int
    score: float | None

    def upsampled(self) -> np.ndarray:
        """The map at the image's pixels (H, W): bilinear between cell centres."""
        return upsample(self.values, self.cell, self.image.shape[:2])


# --- the network part ---------------------------------------------------------------------------


def supports_maps(model: QualityModel) -> bool:
    """Whether ``model`` can compute quality maps: a PyTorch ``QualityNet``, or a model in ONNX
    Runtime whose PyTorch twin is in the zoo (``map_net``)."""
    if model.runtime.name == "torch":
        return isinstance(model.runtime.net, QualityNet)
    return _twin_entry(model) is not None


def map_net(model: QualityModel) -> QualityNet:
    """The PyTorch ``QualityNet`` that computes ``model``'s maps; a model in ONNX Runtime gets
    its PyTorch twin (the zoo entry of the same name and weights digest), loaded once."""
    if model.runtime.name == "torch":
        net = model.net
    else:
        net = getattr(model, "_map_net", None) or _torch_twin(model)
        model._map_net = net  # cached on the model: loading a network takes a second
    if not isinstance(net, QualityNet):
        raise UsageError(f"model '{model.name}' has no PyTorch QualityNet to compute quality maps with")
    return net


def _twin_entry(model: QualityModel):
    """The zoo entry with ``model``'s name and weights digest, or None."""
    from qfmiqm.models.registry import zoo_entries

    entry = zoo_entries().get(model.card.name)
    # the same name is not enough: a checkpoint may reuse a zoo name with other weights
    if entry is None or not model.card.weights_sha256 or entry.card.weights_sha256 != model.card.weights_sha256:
        return None
    return entry


def _torch_twin(model: QualityModel) -> QualityNet:
    from qfmiqm.models.registry import load_net

    entry = _twin_entry(model)
    if entry is None:
        raise UsageError(f"quality maps need the PyTorch network: load '{model.name}' with runtime='torch' "
                         "(a .safetensors checkpoint or zoo name, not an ONNX file)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an untrained card warned when it was loaded
        return load_net(entry).eval()


def level_strides(feats: BackboneFeatures, height: int) -> list[int]:
    """Each level's stride in pixels (a power of two), from its map's height."""
    return [2 ** round(math.log2(height / m.shape[-2])) for m in feats.maps]


def window_matrix(length: int, starts: list[int], span: int, grid: int) -> torch.Tensor:
    """(len(starts) * grid, length) averaging weights: window ``i`` covers ``[starts[i],
    starts[i] + span)`` (cut at ``length``) and is pooled into ``grid`` bins as by
    ``adaptive_avg_pool`` (the bins a crop of that many cells gets)."""
    rows = torch.zeros(len(starts) * grid, length)
    for i, s in enumerate(starts):
        n = min(span, length - s)
        rows[i * grid:(i + 1) * grid, s:s + n] = pool_matrix(n, grid)
    return rows


def window_features(feats: BackboneFeatures, strides: list[int], size: int, grid: int,
                    offsets_y: list[int], offsets_x: list[int]) -> BackboneFeatures:
    """Whole-image features (1, C, h, w) per level -> each window's pooled features
    (n_y * n_x, C, grid, grid); windows start at pixel ``offsets`` and are ``size`` wide."""
    pooled = []
    for m, s in zip(feats.maps, strides):
        a_h = window_matrix(m.shape[-2], [o // s for o in offsets_y], size // s, grid).to(m)
        a_w = window_matrix(m.shape[-1], [o // s for o in offsets_x], size // s, grid).to(m)
        p = a_h @ m[0] @ a_w.t()  # (C, n_y * grid, n_x * grid): every window pooled at once
        c = p.shape[0]
        p = p.view(c, len(offsets_y), grid, len(offsets_x), grid).permute(1, 3, 0, 2, 4)
        pooled.append(p.reshape(-1, c, grid, grid))
    return BackboneFeatures(pooled, None)


def window_scores(net: QualityNet, normalised: torch.Tensor, size: int,
                  feats: BackboneFeatures | None = None) -> tuple[np.ndarray, int]:
    """A normalised image (1, 3, H, W) -> (raw head score of every ``size`` window sliding one
    coarsest cell at a time (n_y, n_x), that cell in pixels). ``feats``: the backbone's features
    of ``normalised`` when already computed."""
    head = net.head
    if head.grid <= 0:
        raise UsageError("quality maps need a head that pools feature maps to a grid (decoder grid > 0)")
    feats = net.backbone(normalised) if feats is None else feats
    if feats.cls_token is not None:
        raise UsageError("quality maps need a CNN backbone (a ViT's class token sees the whole image)")
    height, width = normalised.shape[-2:]
    strides = level_strides(feats, height)
    cell = max(strides)
    if size % cell:
        raise UsageError(f"the crop size {size} is not a multiple of the backbone's stride {cell}")
    cells_y, cells_x = feats.maps[strides.index(cell)].shape[-2:]
    k = size // cell
    offsets_y = [i * cell for i in range(cells_y - k + 1)]
    offsets_x = [j * cell for j in range(cells_x - k + 1)]
    pooled = window_features(feats, strides, size, head.grid, offsets_y, offsets_x)
    n = len(offsets_y) * len(offsets_x)
    raw = torch.cat([head.score(BackboneFeatures([m[i:i + WINDOW_BATCH] for m in pooled.maps], None))
                     for i in range(0, n, WINDOW_BATCH)])
    return raw.double().cpu().numpy().reshape(len(offsets_y), len(offsets_x)), cell


# --- windows -> cells ---------------------------------------------------------------------------


def cover_weights(cells: int, windows: int, k: int, sigma: float) -> np.ndarray:
    """(cells, windows) weight of window ``j`` (covering cells ``j .. j+k-1``) for each cell: a
    Gaussian of the distance from the cell's centre to the window's centre, 0 if not covered;
    each row sums to 1."""
    centre = np.arange(cells)[:, None] + 0.5
    start = np.arange(windows)[None, :]
    d = centre - (start + k / 2)
    w = np.exp(-0.5 * (d / sigma) ** 2) * ((centre > start) & (centre < start + k))
    return w / w.sum(axis=1, keepdims=True)


def cells_from_windows(scores: np.ndarray, k: int, sigma: float | None = None) -> np.ndarray:
    """Window scores (n_y, n_x) of windows ``k`` cells wide -> per-cell values
    (n_y + k - 1, n_x + k - 1); separable, since the Gaussian weights are. ``sigma`` in window
    sides (default ``WINDOW_SIGMA``)."""
    sigma = WINDOW_SIGMA if sigma is None else sigma
    n_y, n_x = scores.shape
    w_y = cover_weights(n_y + k - 1, n_y, k, sigma * k)
    w_x = cover_weights(n_x + k - 1, n_x, k, sigma * k)
    # the row-normalised separable weights are the normalised 2-D product weights
    return w_y @ scores @ w_x.T


def upsample(values: np.ndarray, cell: int, shape: tuple[int, int]) -> np.ndarray:
    """Cell values -> (H, W) pixels, bilinear between cell centres (clamped at the borders)."""
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    up = F.interpolate(t, scale_factor=cell, mode="bilinear", align_corners=False)[0, 0]
    return up[:shape[0], :shape[1]].numpy()


# --- the public functions -----------------------------------------------------------------------


def quality_map(model: QualityModel, item: Any, with_score: bool = True) -> QualityMap:
    """The quality map of one image (path, PIL image, array or tensor), decoded and resized by the
    model's input policy exactly as for scoring. ``with_score``: also compute the image's score
    (its policy views, from the same decoded image)."""
    net = map_net(model)
    policy = model.policy
    img = resize_for_policy(to_rgb_array(item, model.max_pixels, min_short_side=policy.max_short_side), policy)
    if img.shape[0] * img.shape[1] > MAX_MAP_PIXELS:
        raise ImageError(f"{img.shape[1]}x{img.shape[0]} after resizing is too large for a quality map "
                         f"(one backbone pass; at most {MAX_MAP_PIXELS // 2**20} Mpx)")
    views = [np.ascontiguousarray(v) for v in cut_views(img, policy)] if with_score else []
    device = next(net.parameters()).device
    graph = ScoringGraph(net, policy).to(device)  # the scoring path's normalisation
    one_pass = with_score and _scored_whole(views, img)
    with torch.inference_mode():
        x = graph.normalised(torch.tensor(img, dtype=torch.uint8, device=device)[None])
        feats = net.backbone(x)
        raw, cell = window_scores(net, x, policy.size, feats)
        # a whole-image model scores exactly this pass's features: map and score share it
        whole_raw = float(net.head(feats)[0]) if one_pass else None
    score = _image_score(model, views, whole_raw) if with_score else None
    terms = window_terms(model, img, raw.shape, cell, policy.size)
    to_score = np.vectorize(model.map_score, otypes=[np.float64])
    values = cells_from_windows(to_score(raw + terms), policy.size // cell)
    return QualityMap(img, values.astype(np.float32), cell, score)


def window_terms(model: QualityModel, img: np.ndarray, shape: tuple[int, int], cell: int, size: int) -> np.ndarray | float:
    """The card's image-level term of each window (n_y, n_x), from the window's own pixels (its
    tonal statistics and blockiness), as if the window were an image; 0 without a term."""
    if model.card.tone is None:
        return 0.0
    from qfmiqm.models.tone import tone_statistics

    stats = np.stack([tone_statistics([img[i * cell:i * cell + size, j * cell:j * cell + size]])
                      for i in range(shape[0]) for j in range(shape[1])])
    return model.card.tone.of_statistics(stats).reshape(shape)


def _image_score(model: QualityModel, views: list[np.ndarray], whole_raw: float | None) -> float:
    """The image's 0-100 score: from the map's own pass (``whole_raw``, the head on the whole
    image's features) plus the image's term, or else (crops, tiles) the scoring path's own views,
    statistics and runtime."""
    statistics = model.prepare_spec().statistics  # None without a tone term
    prepared = Prepared(views, statistics(views) if statistics is not None else None)
    if whole_raw is None:
        return model.map_score(model.raw_scores_of([prepared])[0])
    term = float(model.card.tone.of_statistics(prepared.stats[None])[0]) if prepared.stats is not None else 0.0
    return model.map_score(whole_raw + term)


def _scored_whole(views: list[np.ndarray], img: np.ndarray) -> bool:
    """Whether the model scores ``img`` as one view of all of it (whole-image layout, no tiles)."""
    return len(views) == 1 and views[0].shape == img.shape


# --- pictures and files -------------------------------------------------------------------------


def render_overlay(qmap: QualityMap, max_side: int = MAX_DISPLAY_SIDE, cmap: str = COLORMAP,
                   alpha: float = ALPHA):
    """A matplotlib figure: the image (longer side at most ``max_side`` px) under the map as a
    semi-transparent colormap, a 0-100 colour bar, the score in the title."""
    from matplotlib.figure import Figure

    h, w = qmap.image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    dpi = 100
    fig = Figure(figsize=(w * scale / dpi + 1.2, h * scale / dpi + 0.5), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, w * scale / dpi / fig.get_figwidth(), 1 - 0.5 / fig.get_figheight()))
    ax.imshow(qmap.image, interpolation="antialiased")
    shown = ax.imshow(qmap.upsampled(), cmap=cmap, vmin=0, vmax=100, alpha=alpha, interpolation="bilinear")
    ax.set_axis_off()
    title = f"score {qmap.score:.1f}" if qmap.score is not None else "quality map"
    ax.set_title(f"{title}   (map: min {qmap.values.min():.0f}, max {qmap.values.max():.0f})", fontsize=10)
    bar_ax = fig.add_axes((ax.get_position().x1 + 0.15 / fig.get_figwidth(), 0.05, 0.2 / fig.get_figwidth(), 0.85))
    fig.colorbar(shown, cax=bar_ax, label="quality (0-100)")
    return fig


def save_overlay(qmap: QualityMap, path: str | os.PathLike) -> Path:
    """Write the overlay PNG atomically."""
    fig = render_overlay(qmap)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def save_data(qmap: QualityMap, path: str | os.PathLike) -> Path:
    """Write the map's cell values (float32 (rows, cols), 0-100) as ``.npy``, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, qmap.values)
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


def save_map(model: QualityModel, item: Any, path: str | os.PathLike, data: bool = False,
             score: float | None = None) -> Path:
    """Compute and write the overlay PNG of one image (and with ``data`` its ``.npy`` beside it).
    ``score``: the image's score when already known (the title shows it; not computed again)."""
    qmap = quality_map(model, item, with_score=score is None)
    if score is not None:
        qmap = QualityMap(qmap.image, qmap.values, qmap.cell, score)
    return write_map_files(qmap, path, data)


def write_map_files(qmap: QualityMap, path: str | os.PathLike, data: bool = False) -> Path:
    """Write the overlay PNG ``path`` (and with ``data`` the ``.npy`` beside it), atomically."""
    path = Path(path)
    if data:
        save_data(qmap, path.with_name(path.name[: -len(MAP_SUFFIX)] + DATA_SUFFIX)
                  if path.name.endswith(MAP_SUFFIX) else path.with_suffix(".npy"))
    return save_overlay(qmap, path)
