"""On-disk cache of frozen-backbone features, so that training a head runs at decoder speed.

What is cached is ``head.pool(backbone(crop))``: exactly what the head consumes (the head is
idempotent on it), small (EfficientNet-Lite0 at grid 7: 496 x 7 x 7 per crop). Two views:

* ``bank``: a fixed bank of K random crops (+ flips) per training image. Crop j of an image is
  drawn from a generator seeded by (image content hash, j), so it is the same in every run and
  growing K reuses the crops already there; a run picks one crop of the bank per item.
* ``eval{N}``: the input policy's N deterministic test crops (what scoring uses).

Files live under ``<cache_dir>/<namespace>/<view>/<hh>/<sha256>.safetensors``, one per image
and view, holding tensors ``"<crop>/<level>"``. The namespace hashes everything the numbers
depend on: backbone name and weights (a hash of its state dict), the pooling grid, the input
policy (size, max_short_side, mean, std, dataset preprocessing), the flip probability, dtype and
a format version, the autocast dtype the backbone ran in and, for a backbone with the
pixel-statistics level, that level's version. Each file is written to a
temporary name and renamed, so a killed run never
leaves a file that reads as valid; a file that fails to read is recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from qfmiqm.data.datasets import IQADataset
from qfmiqm.data.transforms import InputPolicy, RandomPolicyCrop, normalize, resize_for_policy, validation_views
from qfmiqm.data.images import open_image
from qfmiqm.models.backbones import BackboneFeatures
from qfmiqm.models.features import feature_levels, from_levels
from qfmiqm.models.qfm import QualityNet
from qfmiqm.files import atomic_path
from qfmiqm.train.data import derive_seed

CACHE_FORMAT = 1
CACHE_ENV = "QFMIQM_CACHE"
DTYPES = {"float16": torch.float16, "float32": torch.float32}


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qfmiqm" / "features"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_hash(module: torch.nn.Module) -> str:
    """Hash of a module's weights (names, shapes, bytes): identifies the backbone's weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class CachedFeatures:
    """Pooled features of N images x K crops: ``levels[l]`` is (N, K, ...) in the cache dtype."""

    levels: list[torch.Tensor]
    has_cls: bool

    @property
    def n_images(self) -> int:
        return self.levels[0].shape[0]

    @property
    def n_crops(self) -> int:
        return self.levels[0].shape[1]

    def gather(self, images: torch.Tensor, crops: torch.Tensor, device: torch.device) -> BackboneFeatures:
        """Features of (image, crop) pairs as a float32 batch on ``device``."""
        levels = [t[images, crops].to(device, torch.float32, non_blocking=True) for t in self.levels]
        n_maps = len(levels) - int(self.has_cls)
        return BackboneFeatures(levels[:n_maps], levels[n_maps] if self.has_cls else None)

    def all_crops(self, images: torch.Tensor, device: torch.device) -> BackboneFeatures:
        """All K crops of ``images`` flattened to a batch of len(images) * K."""
        levels = [t[images].flatten(0, 1).to(device, torch.float32, non_blocking=True) for t in self.levels]
        n_maps = len(levels) - int(self.has_cls)
        return BackboneFeatures(levels[:n_maps], levels[n_maps] if self.has_cls else None)


@dataclass
class CacheStats:
    crops_total: int = 0
    crops_computed: int = 0
    images_hashed: int = 0
    seconds: float = 0.0
    views: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"crops_total": self.crops_total, "crops_computed": self.crops_computed,
                "crops_reused": self.crops_total - self.crops_computed, "seconds": round(self.seconds, 3)}


class _BankCrops:
    """Crop j of the bank of an image: a random policy crop + flip seeded by (content hash, j)."""

    def __init__(self, policy: InputPolicy, hflip: float):
        self.gen = torch.Generator()
        self.crop = RandomPolicyCrop(policy, hflip=hflip, generator=self.gen)

    def __call__(self, img: np.ndarray, digest: str, crops: Sequence[int]) -> torch.Tensor:
        img = np.array(resize_for_policy(img, self.crop.policy))  # writable: torch.from_numpy warns otherwise
        out = []
        for j in crops:
            self.gen.manual_seed(derive_seed("bank", digest, int(j)))
            out.append(self.crop(img))
        return torch.stack(out)


class _Missing(Dataset):
    """Decodes the images whose crops are missing and cuts exactly those crops."""

    def __init__(self, paths: list[str], digests: list[str], crops: list[list[int]], make: Callable,
                 reduce_to: int, max_pixels: int):
        self.paths, self.digests, self.crops, self.make = paths, digests, crops, make
        self.reduce_to, self.max_pixels = reduce_to, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = open_image(self.paths[i], self.max_pixels, min_short_side=self.reduce_to)
        return i, self.make(img, self.digests[i], self.crops[i])


def _keep(batch):
    return batch


class FeatureCache:
    """Computes missing cached features with ``net`` (frozen backbone + head.pool) and loads them."""

    def __init__(self, root: str | os.PathLike | None, net: QualityNet, policy: InputPolicy, hflip: float,
                 dtype: str = "float32", device: torch.device = torch.device("cpu"),
                 autocast: Optional[Callable] = None, workers: int = 0, batch_size: int = 32,
                 rank: int = 0, world: int = 1, barrier: Callable[[], None] = lambda: None,
                 log: Callable[[str], None] = print, compute_dtype: str = "float32", runtime: str = "torch"):
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.net, self.policy, self.hflip = net, policy, hflip
        self.dtype = DTYPES[dtype]
        self.device, self.autocast = device, autocast
        self.workers, self.batch_size = workers, batch_size
        self.rank, self.world, self.barrier, self.log = rank, world, barrier, log
        self.stats = CacheStats()
        #: the autocast dtype the backbone runs in (bf16 features differ from float32 ones)
        self.compute_dtype = compute_dtype
        #: "onnx": the backbone runs in ONNX Runtime (built on first use), "torch": in PyTorch
        self.runtime = runtime
        self._ort = None
        self._weights = state_hash(net.backbone)

    def namespace(self, policy: InputPolicy) -> str:
        key = {"format": CACHE_FORMAT, "backbone": self.net.backbone.name, "weights": self._weights,
               "grid": self.net.head.grid, "policy": policy.to_dict(), "hflip": self.hflip,
               "dtype": str(self.dtype), "compute": self.compute_dtype}
        if self.runtime == "onnx":  # keyed only when used: the PyTorch namespaces stay valid
            key["runtime"] = "onnxruntime"
        key.update(self.net.backbone.pixel_level_versions)  # keyed only when present: older namespaces stay valid
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]

    # --- public views ----------------------------------------------------------------

    def bank(self, ds: IQADataset, k: int, train_policy: InputPolicy | None = None) -> CachedFeatures:
        """K random training crops per image of ``ds`` (cut by ``train_policy``, default the policy)."""
        policy = ds.policy(train_policy or self.policy)
        return self._view(ds, policy, "bank", list(range(k)), _BankCrops(policy, self.hflip))

    def eval(self, ds: IQADataset) -> CachedFeatures:
        """The policy's deterministic test crops of every image of ``ds``."""
        policy = ds.policy(self.policy)
        n = len(self._policy_offsets(policy)) if policy.layout == "crops" else 1
        name = f"eval{policy.num_crops}" if policy.layout == "crops" else "eval-whole"
        return self._view(ds, policy, name, list(range(n)),
                          lambda img, digest, crops: validation_views(img, policy)[list(crops)])

    @staticmethod
    def _policy_offsets(policy: InputPolicy) -> list:
        from qfmiqm.data.transforms import crop_offsets

        s = policy.size
        return crop_offsets(policy.num_crops, s + 1, s + 1, s)

    # --- machinery -----------------------------------------------------------------------

    def _view(self, ds: IQADataset, policy: InputPolicy, view: str, crops: list[int], make: Callable) -> CachedFeatures:
        import time

        start = time.perf_counter()
        folder = self.root / self.namespace(policy) / view
        digests = [file_sha256(p) for p in ds.paths]
        self.stats.images_hashed += len(digests)
        files = [folder / d[:2] / f"{d}.safetensors" for d in digests]
        todo = self._missing(files, crops)
        mine = [i for i in sorted(todo) if i % self.world == self.rank]
        total_missing = sum(len(v) for v in todo.values())
        if total_missing and self.rank == 0:
            self.log(f"feature cache: computing {total_missing} of {len(files) * len(crops)} crops "
                     f"({view}, {len(todo)} images) into {folder}")
        if mine:
            self._compute(ds, policy, [files[i] for i in mine], [ds.paths[i] for i in mine],
                          [digests[i] for i in mine], [todo[i] for i in mine], make)
        self.barrier()
        out = self._load(files, crops)
        self.stats.crops_total += len(files) * len(crops)
        self.stats.crops_computed += total_missing
        self.stats.seconds += time.perf_counter() - start
        self.stats.views.append(f"{view}:{folder}")
        return out

    @staticmethod
    def _read(file: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(file)) if file.is_file() else {}
        except (SafetensorError, OSError, ValueError, RuntimeError):
            return {}  # damaged: recomputed

    def _missing(self, files: list[Path], crops: list[int]) -> dict[int, list[int]]:
        todo = {}
        for i, file in enumerate(files):
            have = {name.split("/")[0] for name in self._read_names(file)}
            need = [j for j in crops if str(j) not in have]
            if need:
                todo[i] = need
        return todo

    @staticmethod
    def _read_names(file: Path) -> list[str]:
        from safetensors import safe_open

        if not file.is_file():
            return []
        try:
            with safe_open(str(file), framework="pt") as f:
                return list(f.keys())
        except (SafetensorError, OSError, ValueError, RuntimeError):
            return []

    @torch.no_grad()
    def _compute(self, ds: IQADataset, policy: InputPolicy, files: list[Path], paths: list[str],
                 digests: list[str], crops: list[list[int]], make: Callable) -> None:
        loader = DataLoader(_Missing(paths, digests, crops, make, policy.max_short_side, ds.max_pixels),
                            batch_size=max(1, self.batch_size // max(1, max(len(c) for c in crops))),
                            num_workers=self.workers, collate_fn=_keep)
        was_training = self.net.training
        self.net.eval()
        try:
            for batch in loader:
                for same_size in _by_view_size(batch):
                    stacked = torch.cat([c for _, c in same_size])
                    feats = self._pooled(normalize(stacked.to(self.device), policy))
                    sizes = [c.shape[0] for _, c in same_size]
                    parts = [torch.split(level, sizes) for level in feature_levels(feats)]
                    for b, (i, _) in enumerate(same_size):
                        self._write(files[i], crops[i], [p[b] for p in parts])
        finally:
            self.net.train(was_training)

    def _pooled(self, x: torch.Tensor) -> BackboneFeatures:
        if self.runtime == "onnx":
            if self._ort is None:
                from qfmiqm.models.backbone_onnx import OrtBackbone

                self._ort = OrtBackbone(self.net.backbone)
            maps = [torch.from_numpy(m) for m in self._ort(x.cpu().numpy())]
            return self.net.head.pool(BackboneFeatures(maps, None))
        ctx = self.autocast() if self.autocast else _null()
        with ctx:
            feats = self.net.head.pool(self.net.backbone(x))
        return from_levels([t.float() for t in feature_levels(feats)], feats)

    def _write(self, file: Path, crops: list[int], levels: list[torch.Tensor]) -> None:
        tensors = self._read(file)
        for row, j in enumerate(crops):
            for lv, t in enumerate(levels):
                tensors[f"{j}/{lv}"] = t[row].to(self.dtype).contiguous().cpu()
        with atomic_path(file) as tmp:
            save_file(tensors, str(tmp))

    def _load(self, files: list[Path], crops: list[int]) -> CachedFeatures:
        first = self._read(files[0])
        n_levels = len({name.split("/")[1] for name in first})
        has_cls = first[f"{crops[0]}/{n_levels - 1}"].dim() == 1
        levels = [torch.empty((len(files), len(crops), *first[f"{crops[0]}/{lv}"].shape), dtype=self.dtype)
                  for lv in range(n_levels)]
        for i, file in enumerate(files):
            tensors = first if i == 0 else self._read(file)
            for c, j in enumerate(crops):
                for lv in range(n_levels):
                    levels[lv][i, c] = tensors[f"{j}/{lv}"]
        return CachedFeatures(levels, has_cls)


def _by_view_size(batch: list) -> list[list]:
    """Split a batch of (index, views (K, 3, h, w)) into runs of one view size (whole-image
    views differ in size from image to image), keeping order within each run."""
    groups: dict[tuple, list] = {}
    for item in batch:
        groups.setdefault(tuple(item[1].shape[-2:]), []).append(item)
    return list(groups.values())


def resolve_cache_runtime(choice: str, device: torch.device, autocast: bool, backbone_kind: str) -> str:
    """``train.cache_runtime``: ``auto`` -> ONNX Runtime for a CNN on the CPU without autocast
    (2-3x faster than eager PyTorch there), else PyTorch; an explicit choice is kept."""
    if choice != "auto":
        return choice
    return "onnx" if device.type == "cpu" and not autocast and backbone_kind == "cnn" else "torch"


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
