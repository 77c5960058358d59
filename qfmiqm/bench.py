"""``qfmiqm bench``: scoring throughput against the backbone's own limit, and memory growth.

In one run, on the same images:
  (a) the bare backbone's forward over every pixel of each image at native resolution, from
      ready arrays, in the fastest runtime for the device (ONNX Runtime on a CPU, PyTorch on
      CUDA): the practical limit of any model built on that backbone. On a CPU, (a') is the same
      in PyTorch eager, for comparison;
  (b) the model's own forward (its runtime, its input layout, the tone term) on ready views;
  (c) end to end from JPEG files through the same path as ``qfmiqm score`` (decoding in worker
      processes, or on the device with ``--decode device``); on a GPU with nvJPEG, (c') the other
      decoding path beside it;
  (d) BRISQUE (the ``brisque`` package, ``pip install "qfmiqm[bench]"``) on the same files, when
      installed: the classical peer.
It prints images/s, the ratios b/a, c/a and c/d, peak RSS, and the RSS growth between scoring a
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
from PIL import Image

from qfmiqm.data.feed import default_workers, prepare_item
from qfmiqm.scoring import QualityModel

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
    runtime: str = "onnx"
    layout: str = ""
    backbone_runtime: str = "onnx"
    eager_backbone_ips: float | None = None
    brisque_ips: float | None = None

    def lines(self) -> list[str]:
        w, h = self.size
        a = self.backbone_ips
        out = [
            f"device {self.device}, runtime {self.runtime}, {self.images} JPEG images of {w}x{h}, {self.workers} workers, "
            f"JPEGs decoded {_WHERE[self.decode] if self.workers or self.decode != 'workers' else 'in this process'}; "
            f"input: {self.layout}",
            f"(a) backbone, native resolution, {self.backbone_runtime:<14}: {a:8.1f} img/s",
        ]
        if self.eager_backbone_ips is not None:
            out.append(f"(a') the same in PyTorch eager               : {self.eager_backbone_ips:8.1f} img/s   a'/a = "
                       f"{self.eager_backbone_ips / a:.2f}")
        out += [
            f"(b) model forward on ready views              : {self.model_ips:8.1f} img/s   b/a = {self.model_ips / a:.2f}",
            f"(c) end to end from JPEG files (score path)   : {self.end_to_end_ips:8.1f} img/s   c/a = {self.end_to_end_ips / a:.2f}",
        ]
        if self.other_decode_ips is not None:
            out.append(f"(c') the same, JPEGs decoded {_WHERE[self.other_decode]:<17}: {self.other_decode_ips:8.1f} img/s   "
                       f"c'/a = {self.other_decode_ips / a:.2f}")
        if self.brisque_ips is not None:
            out.append(f"(d) BRISQUE (brisque package), from the files : {self.brisque_ips:8.1f} img/s   c/d = "
                       f"{self.end_to_end_ips / self.brisque_ips:.2f}")
        else:
            out.append('(d) BRISQUE: not installed (pip install "qfmiqm[bench]")')
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


def _timed(fn, repeats: int = 1, sync=lambda: None) -> float:
    fn()  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def _cuda_sync(model: QualityModel):
    if not model.device.startswith("cuda"):
        return lambda: None
    import torch

    return torch.cuda.synchronize


def run_bench(model: QualityModel, images: int = 64, batch_size: int = 16, size: tuple[int, int] = (640, 480),
              workers: int | None = None, memory_images: tuple[int, int] | None = None,
              peers: bool = True) -> BenchResult:
    from qfmiqm.bench_limits import backbone_limit_ips, brisque_ips
    from qfmiqm.models.backbones import create_backbone

    workers = default_workers(images, batch_size, model.device, model.runtime.name) if workers is None else workers
    other = _other_decode(model)
    sync = _cuda_sync(model)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), images, size)

        def end_to_end(m: QualityModel = model):
            for r in m.iter_scores(paths, batch_size=batch_size, workers=workers):
                if not r.ok:
                    raise RuntimeError(r.error)

        # (c) first, while this process is as small as 'qfmiqm score' is: the ready arrays of
        # (a) and (b) take gigabytes for big runs, and every decoding worker forked after them
        # would copy their page tables, a cost the score path does not have (docs/speed.md)
        t_c = _timed(end_to_end, sync=sync)
        t_other = _timed(lambda: end_to_end(other), sync=sync) if other is not None else None
        arrays = [np.array(Image.open(p).convert("RGB")) for p in paths]
        spec = model.prepare_spec()
        prepared = [prepare_item(arrays, i, spec)[1] for i in range(len(arrays))]

        def model_pass():
            for start in range(0, images, batch_size):
                model.raw_scores_of(prepared[start:start + batch_size])

        t_b = _timed(model_pass, sync=sync)
        del prepared
        backbone = create_backbone(model.card.backbone, pretrained=False)
        on_cpu = not model.device.startswith("cuda")
        if on_cpu:
            a_ips = backbone_limit_ips(backbone, arrays, "onnx", batch_size=batch_size)
            eager_ips = backbone_limit_ips(backbone, arrays, "torch", batch_size=batch_size)
        else:
            a_ips, eager_ips = _cuda_backbone_ips(backbone, arrays, batch_size, model.device), None
        del arrays
        brisque = brisque_ips(paths) if peers else None
        memory = _memory_growth(model, paths, batch_size, workers, memory_images) if memory_images else None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return BenchResult(model.device, images, workers, size, a_ips, images / t_b, images / t_c, peak, memory,
                       decode=model.decode, other_decode=other.decode if other is not None else None,
                       other_decode_ips=images / t_other if t_other else None, runtime=model.runtime.name,
                       layout=model.policy.describe(), backbone_runtime="onnxruntime" if on_cpu else "torch",
                       eager_backbone_ips=eager_ips, brisque_ips=brisque)


def _cuda_backbone_ips(backbone, arrays: list[np.ndarray], batch_size: int, device: str) -> float:
    """(a) on a GPU: the backbone in PyTorch, channels-last, over every pixel of each image."""
    import torch

    from qfmiqm.bench_limits import normalised, same_size_batches

    backbone = backbone.to(device).eval().to(memory_format=torch.channels_last)
    batches = [torch.from_numpy(normalised(b, backbone.mean, backbone.std)) for b in same_size_batches(arrays, batch_size)]

    @torch.inference_mode()
    def one_pass():
        for x in batches:
            backbone(x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last))

    return len(arrays) / _timed(one_pass, sync=torch.cuda.synchronize)


def _other_decode(model: QualityModel) -> QualityModel | None:
    """On a GPU that decodes JPEG, the same model with the other decoding path, for comparison."""
    if not model.device.startswith("cuda") or model.runtime.name != "torch":
        return None
    import torch

    from qfmiqm.data.device_decode import device_decoder_available

    if not device_decoder_available(torch.device(model.device)):
        return None
    other = copy.copy(model)
    other.decode = "workers" if model.decode == "device" else "device"
    return other


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
