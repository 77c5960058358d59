"""``qfmiqm bench``: scoring throughput against the backbone's own limit, and memory growth.

In one run, on the same images:
  (a) the bare backbone's forward over every pixel of each image at native resolution, from
      ready tensors: the practical limit of any model built on that backbone;
  (b) the model's own forward (backbone + gate + decoder with its crop policy) on ready crops;
  (c) end to end from JPEG files through the same path as ``qfmiqm score`` (decoding in worker
      processes, or on the device with ``--decode device``); on a GPU with nvJPEG, (c') the other
      decoding path beside it.
It prints images/s, the ratios b/a and c/a, peak RSS, and the RSS growth between scoring a
small and a large number of images (a leak shows up as growth).
"""
from __future__ import annotations

import copy
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from qfmiqm.data.device_decode import device_decoder_available
from qfmiqm.data.transforms import normalize, policy_crops
from qfmiqm.scoring import QualityModel, default_workers

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


_WHERE = {"workers": "in the workers", "device": "on the device"}


@dataclass
class BenchResult:
    device: str
    images: int
    workers: int
    size: tuple[int, int]
    backbone_ips: float
    model_ips: float
    end_to_end_ips: float
    peak_rss_mb: float
    memory: dict | None = None
    decode: str = "workers"
    other_decode: str | None = None
    other_decode_ips: float | None = None

    def lines(self) -> list[str]:
        w, h = self.size
        out = [
            f"device {self.device}, {self.images} JPEG images of {w}x{h}, {self.workers} workers, "
            f"JPEGs decoded {_WHERE[self.decode]}",
            f"(a) backbone, native resolution, ready tensors : {self.backbone_ips:8.1f} img/s",
            f"(b) model forward with its crop policy          : {self.model_ips:8.1f} img/s   b/a = {self.model_ips / self.backbone_ips:.2f}",
            f"(c) end to end from JPEG files (score path)     : {self.end_to_end_ips:8.1f} img/s   c/a = {self.end_to_end_ips / self.backbone_ips:.2f}",
        ]
        if self.other_decode_ips is not None:
            out.append(f"(c') the same, JPEGs decoded {_WHERE[self.other_decode]:<17}: {self.other_decode_ips:8.1f} img/s   "
                       f"c'/a = {self.other_decode_ips / self.backbone_ips:.2f}")
        out.append(f"peak RSS {self.peak_rss_mb:.0f} MB")
        if self.memory:
            m = self.memory
            out.append(f"RSS after {m['small']} images {m['rss_small_mb']:.0f} MB, after {m['large']} images "
                       f"{m['rss_large_mb']:.0f} MB: growth {m['growth_pct']:+.1f} %")
        return out


def cpu_name() -> str:
    """The CPU model, for benchmark reports (Linux /proc/cpuinfo, else platform)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def _rss_mb() -> float:
    # current RSS from /proc (Linux); ru_maxrss is the peak
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return float("nan")


def make_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """``n`` JPEG files of ``size`` cut at random from the sample photos."""
    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(SAMPLES.glob("*.jpg"))]
    w, h = size
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        if photo.shape[0] < h or photo.shape[1] < w:
            photo = np.asarray(Image.fromarray(photo).resize((max(w, photo.shape[1]), max(h, photo.shape[0]))))
        y = rng.integers(0, photo.shape[0] - h + 1)
        x = rng.integers(0, photo.shape[1] - w + 1)
        path = folder / f"bench_{i:05d}.jpg"
        Image.fromarray(photo[y:y + h, x:x + w]).save(path, quality=90)
        paths.append(str(path))
    return paths


def _timed(fn, repeats: int = 1) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def run_bench(model: QualityModel, images: int = 64, batch_size: int = 16, size: tuple[int, int] = (640, 480),
              workers: int | None = None, memory_images: tuple[int, int] | None = None) -> BenchResult:
    policy = model.policy
    dev = model.device
    workers = default_workers(images, batch_size, dev) if workers is None else workers
    other = _other_decode(model)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), images, size)

        def end_to_end(m: QualityModel = model):
            for r in m.iter_scores(paths, batch_size=batch_size, workers=workers):
                if not r.ok:
                    raise RuntimeError(r.error)

        # (c) first, while this process is as small as 'qfmiqm score' is: the ready tensors of
        # (a) and (b) take gigabytes, and every decoding worker forked after them would copy
        # their page tables, a cost the score path does not have (docs/speed.md)
        t_c = _timed(end_to_end)
        t_other = _timed(lambda: end_to_end(other)) if other is not None else None
        full, crops = _ready_tensors(paths, policy)
        backbone = model.net.backbone

        @torch.inference_mode()
        def backbone_pass():
            for start in range(0, images, batch_size):
                x = normalize(full[start:start + batch_size].to(dev), policy)
                backbone(x)

        def model_pass():
            for start in range(0, images, batch_size):
                model.raw_scores(crops[start:start + batch_size])

        t_a, t_b = _timed(backbone_pass), _timed(model_pass)
        del full, crops
        memory = _memory_growth(model, paths, batch_size, workers, memory_images) if memory_images else None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return BenchResult(str(dev), images, workers, size, images / t_a, images / t_b, images / t_c, peak, memory,
                       decode=model.decode, other_decode=other.decode if other is not None else None,
                       other_decode_ips=images / t_other if t_other else None)


def _other_decode(model: QualityModel) -> QualityModel | None:
    """On a GPU that decodes JPEG, the same model with the other decoding path, for comparison."""
    if model.device.type != "cuda" or not device_decoder_available(model.device):
        return None
    other = copy.copy(model)
    other.decode = "workers" if model.decode == "device" else "device"
    return other


def _ready_tensors(paths: list[str], policy) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image at native resolution (N, 3, H, W) and its policy crops (N, K, 3, S, S), uint8."""
    arrays = [np.array(Image.open(p).convert("RGB")) for p in paths]
    full = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])
    crops = torch.stack([policy_crops(a, policy) for a in arrays])
    return full, crops


def _memory_growth(model: QualityModel, paths: list[str], batch_size: int, workers: int,
                   memory_images: tuple[int, int]) -> dict:
    small, large = memory_images
    reps = paths * (large // len(paths) + 1)
    list(model.iter_scores(reps[:small], batch_size=batch_size, workers=workers))
    rss_small = _rss_mb()
    list(model.iter_scores(reps[:large], batch_size=batch_size, workers=workers))
    rss_large = _rss_mb()
    return {"small": small, "large": large, "rss_small_mb": rss_small, "rss_large_mb": rss_large,
            "growth_pct": 100.0 * (rss_large - rss_small) / rss_small}
