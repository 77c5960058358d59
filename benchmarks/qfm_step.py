"""QFM-IQM training-step time against DEIQT's on the same batch, on CPU.

Two regimes:
  (i)  head only, on cached features of a frozen backbone;
  (ii) end to end, backbone fine-tuned in its last blocks.
DEIQT step: plain decoder (no gate), smooth-L1, backward, AdamW step. QFM step: gated head,
QFMObjective with matching + adversarial perturbation, backward, AdamW step. Distillation adds
a forward/backward on *extra* images by design; it is timed on its own line (same number of
extra images as labelled ones). Steps are interleaved and the median is reported, so drift in
machine load affects both sides alike. Goal: QFM / DEIQT <= 1.3.

    python benchmarks/qfm_step.py [--batch-size 16] [--repeats 10] [--threads N] [--last-n 2]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from qfmiqm.models.backbones import create_backbone
from qfmiqm.models.card import DecoderConfig
from qfmiqm.models.qfm import QualityNet
from qfmiqm.train.distillation import make_teacher
from qfmiqm.train.finetune import set_backbone_mode
from qfmiqm.train.objective import QFMConfig, QFMObjective

GOAL = 1.3
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def real_crops(n: int, size: int, mean, std, seed: int = 0) -> torch.Tensor:
    """n native-resolution crops of the sample photos, normalised (random pixels if none)."""
    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(SAMPLES.glob("*.jpg"))]
    crops = []
    for i in range(n):
        if photos:
            img = photos[i % len(photos)]
            y0, x0 = rng.integers(0, img.shape[0] - size + 1), rng.integers(0, img.shape[1] - size + 1)
            crops.append(img[y0:y0 + size, x0:x0 + size])
        else:
            crops.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def interleaved_medians(steps: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def make_step(params, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    return step


PHASES = ("qfm.clean_forward", "qfm.mine_pairs", "qfm.ascent_grad", "qfm.perturbed_forward", "backward", "optimizer")


def profile_head_only_qfm(head, feats, y, steps: int = 5) -> None:
    """Where a head-only QFM step spends its time (torch.profiler, regions labelled in the objective)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    objective = QFMObjective(QFMConfig(kd=False))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = objective(head, feats, y)[0]
            with record_function("backward"):
                loss.backward()
            with record_function("optimizer"):
                opt.step()
    totals = {e.key: e.cpu_time_total / steps / 1e3 for e in prof.key_averages() if e.key in PHASES}
    whole = sum(totals.values())
    print("  profile of one head-only QFM step (ms, share):")
    for name in PHASES:
        if name in totals:
            print(f"    {name:<24}{totals[name]:>8.1f}{totals[name] / whole:>8.0%}")


def build_nets(backbone_name: str, decoder: DecoderConfig) -> tuple[QualityNet, QualityNet]:
    torch.manual_seed(0)
    backbone = create_backbone(backbone_name, pretrained=False)  # speed does not depend on the weights
    deiqt = QualityNet(backbone, DecoderConfig(**{**decoder.__dict__, "gate": False}))
    qfm = QualityNet(copy.deepcopy(backbone), DecoderConfig(**{**decoder.__dict__, "gate": True}))
    return deiqt.train(), qfm.train()


def head_only(args, x, xe, y) -> dict[str, float]:
    deiqt, qfm = build_nets(args.backbone, DecoderConfig())
    for net in (deiqt, qfm):
        set_backbone_mode(net.backbone, "frozen")
    with torch.no_grad():  # the cache: pooled features computed once
        feats, extra = qfm.head.pool(qfm.backbone(x)), qfm.head.pool(qfm.backbone(xe))
    qfm_obj = QFMObjective(QFMConfig(kd=False))
    kd_obj, teacher = QFMObjective(QFMConfig(kd=True)), make_teacher(qfm.head)
    steps = {
        "deiqt": make_step(deiqt.head.parameters(), lambda: F.smooth_l1_loss(deiqt.head(feats), y)),
        "qfm": make_step(qfm.head.parameters(), lambda: qfm_obj(qfm.head, feats, y)[0]),
        "qfm_match_only": make_step(qfm.head.parameters(),
                                    lambda: QFMObjective(QFMConfig(adv=False, kd=False))(qfm.head, feats, y)[0]),
        "qfm_adv_only": make_step(qfm.head.parameters(),
                                  lambda: QFMObjective(QFMConfig(match=False, kd=False))(qfm.head, feats, y)[0]),
        "qfm+kd": make_step(qfm.head.parameters(),
                            lambda: kd_obj(qfm.head, feats, y, extra_feats=extra, teacher=teacher)[0]),
    }
    medians = interleaved_medians(steps, args.repeats)
    report("(i) head only, cached features of a frozen backbone", medians)
    if args.profile:
        profile_head_only_qfm(qfm.head, feats, y)
    return medians


def end_to_end(args, x, xe, y) -> dict[str, float]:
    deiqt, qfm = build_nets(args.backbone, DecoderConfig())
    groups = {}
    for name, net in (("deiqt", deiqt), ("qfm", qfm)):
        groups[name] = [p for g in set_backbone_mode(net.backbone, "last_n", args.last_n) for p in g["params"]]
        groups[name] += list(net.head.parameters())
        net.train()
    qfm_obj = QFMObjective(QFMConfig(kd=False))
    kd_obj, teacher = QFMObjective(QFMConfig(kd=True)), make_teacher(qfm.head)

    def qfm_kd_loss() -> torch.Tensor:
        feats, extra = qfm.backbone(x), qfm.backbone(xe)
        return kd_obj(qfm.head, feats, y, extra_feats=extra, teacher=teacher)[0]

    steps = {
        "deiqt": make_step(groups["deiqt"], lambda: F.smooth_l1_loss(deiqt(x), y)),
        "qfm": make_step(groups["qfm"], lambda: qfm_obj(qfm.head, qfm.backbone(x), y)[0]),
        "qfm+kd": make_step(groups["qfm"], qfm_kd_loss),
    }
    return interleaved_medians(steps, args.repeats)


def report(title: str, medians: dict[str, float]) -> float:
    base = medians["deiqt"]
    print(f"\n{title}")
    print(f"  {'step':<16}{'ms':>10}{'x DEIQT':>10}")
    for name, t in medians.items():
        print(f"  {name:<16}{t * 1e3:>10.1f}{t / base:>10.2f}")
    ratio = medians["qfm"] / base
    print(f"  QFM/DEIQT = {ratio:.2f}  (goal <= {GOAL}: {'met' if ratio <= GOAL else 'missed'})")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--last-n", type=int, default=2, help="backbone blocks fine-tuned end to end")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--profile", action="store_true", help="break a head-only QFM step into its phases")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    probe = create_backbone(args.backbone, pretrained=False)
    x = real_crops(args.batch_size, probe.input_size, probe.mean, probe.std)
    xe = real_crops(args.batch_size, probe.input_size, probe.mean, probe.std, seed=1)
    # close qualities inside the batch, so that matching finds pairs as in real training
    y = torch.linspace(20, 80, args.batch_size).round()
    print(f"CPU, {torch.get_num_threads()} threads, batch {args.batch_size}, {args.backbone}, "
          f"decoder {DecoderConfig()}, median of {args.repeats}")
    medians = head_only(args, x, xe, y)
    ratios = {"head_only": medians["qfm"] / medians["deiqt"]}
    if not args.skip_end_to_end:
        ratios["end_to_end"] = report(f"(ii) end to end, last {args.last_n} backbone blocks fine-tuned",
                                      end_to_end(args, x, xe, y))
    print("\nratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
