"""Cached block inputs (last_n fine-tuning): resuming from the cached input of the first trained
block reproduces the backbone, one training step on cached block inputs equals one step on live
crops (same loss, same updated weights), it is faster per step (printed, not asserted), and a run
trained on them resumes to the same weights as an uninterrupted one."""
from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qfmiqm.data.synth import SynthOptions, synthesize
from qfmiqm.data.transforms import InputPolicy, normalize
from qfmiqm.errors import UsageError
from qfmiqm.models.backbones import create_backbone
from qfmiqm.models.card import DecoderConfig
from qfmiqm.models.qfm import QualityNet
from qfmiqm.train.block_cache import BlockSplit, ResumedNet, use_block_cache
from qfmiqm.train.distillation import ema_update, make_teacher
from qfmiqm.train.feeding import TEACHER_ON_BLOCK_INPUTS, TEACHER_ON_IMAGES
from qfmiqm.train.engine import run_training
from qfmiqm.train.finetune import set_backbone_mode, trainable_param_groups
from qfmiqm.train.objective import QFMConfig, QFMObjective
from qfmiqm.train.progress import Progress
from qfmiqm.train.schema import load_train_config
from qfmiqm.train.step import TrainStep

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name,last_n", [("efficientnet_lite0", 1), ("efficientnet_lite0", 2),
                                         ("efficientnet_lite0_pixstats", 3), ("resnet50", 2)])
def test_resuming_from_the_block_input_reproduces_the_backbone(name, last_n):
    torch.manual_seed(0)
    backbone = create_backbone(name, pretrained=False)
    set_backbone_mode(backbone, "last_n", last_n)
    split = BlockSplit(backbone, last_n, grid=0)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        full = backbone(x)
        got = split.resume(split.encode(x, pool=False))
    assert len(got.maps) == len(full.maps)
    for a, b in zip(got.maps, full.maps):
        torch.testing.assert_close(a, b)
    # the cache holds the input of the first trained block, then only the frozen levels
    assert sum(s is not None for s in split.level_source) >= 1


def test_vit_and_bad_choices_are_usage_errors():
    assert use_block_cache("auto", "last_n", "cnn", teacher_needs_images=False)
    assert not use_block_cache("auto", "last_n", "vit", teacher_needs_images=False)
    assert not use_block_cache("auto", "last_n", "cnn", teacher_needs_images=True)
    assert not use_block_cache("auto", "full", "cnn", teacher_needs_images=False)
    assert not use_block_cache(False, "last_n", "cnn", teacher_needs_images=False)
    with pytest.raises(UsageError, match="last_n"):
        use_block_cache(True, "full", "cnn", teacher_needs_images=False)
    with pytest.raises(UsageError, match="distill.teacher=ema"):
        use_block_cache(True, "last_n", "cnn", teacher_needs_images=True)
    assert not use_block_cache("auto", "last_n", "cnn", teacher_needs_images=False, whole_images=True)
    with pytest.raises(UsageError, match="layout"):
        use_block_cache(True, "last_n", "cnn", teacher_needs_images=False, whole_images=True)


class _Live:
    """The live feeder's features: the whole backbone on normalised crops."""

    cached = False

    def __init__(self, policy: InputPolicy):
        self.policy = policy

    def features(self, net, x):
        return net.backbone(normalize(x, self.policy))


class _Blocks:
    """The block feeder's features: the trained blocks on a cached block input."""

    cached = True

    def __init__(self, split: BlockSplit):
        self.split = split

    def features(self, net, feats):
        return self.split.resume(feats)


def _setup(net: QualityNet, feeder, policy: InputPolicy, qfm: QFMConfig = QFMConfig(match=True, adv=True, kd=False)):
    groups = trainable_param_groups(net, "last_n", 2)
    opt = torch.optim.AdamW([p for g in groups for p in g["params"]], lr=1e-3)
    step = TrainStep(net, QFMObjective(qfm), policy, feeder)
    return step, opt


def _one_step(step: TrainStep, opt, inputs, targets, extra=None) -> float:
    torch.manual_seed(1)  # the objective's random draws
    loss, logs = step(inputs, targets, extra)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(logs["loss"])


def test_one_step_on_block_inputs_equals_one_step_on_live_crops():
    torch.manual_seed(0)
    # QFMIQM_BLOCK_BENCH=224,16 times the real crop size and batch (docs/training.md)
    size, batch = (int(v) for v in os.environ.get("QFMIQM_BLOCK_BENCH", "160,8").split(","))
    base = QualityNet(create_backbone("efficientnet_lite0", pretrained=False), DecoderConfig(width=32, heads=4, grid=4))
    policy = InputPolicy(size=size, mean=base.backbone.mean, std=base.backbone.std)
    live_net, block_net = base, copy.deepcopy(base)
    live_step, live_opt = _setup(live_net, _Live(policy), policy)
    trainable_param_groups(block_net, "last_n", 2)  # the split is taken on a net in its training modes
    split = BlockSplit(block_net.backbone, 2, block_net.head.grid)
    block_step, block_opt = _setup(block_net, _Blocks(split), policy)
    live_net.train(), block_net.train()
    crops = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)  # what the loader yields
    targets = torch.linspace(-1.0, 1.0, batch)
    block_net.eval()  # the cache is filled in eval mode (frozen BatchNorm is in eval mode anyway)
    with torch.no_grad():
        cached = split.encode(normalize(crops, policy))
    block_net.train()

    loss_live = _one_step(live_step, live_opt, crops, targets)
    loss_block = _one_step(block_step, block_opt, cached, targets)
    assert loss_block == pytest.approx(loss_live, rel=1e-4, abs=1e-5)
    live_w, block_w = live_net.state_dict(), block_net.state_dict()
    for k in live_w:  # trained blocks, their BatchNorm statistics and the head moved alike
        torch.testing.assert_close(block_w[k], live_w[k], rtol=1e-4, atol=1e-5, msg=k)

    def per_step(step, opt, inputs, n=3) -> tuple[float, float]:
        """The fastest of n steps, wall and CPU seconds (the CPU time is steadier on a busy machine)."""
        best = (math.inf, math.inf)
        for _ in range(n):
            wall, cpu = time.perf_counter(), time.process_time()
            _one_step(step, opt, inputs, targets)
            best = (min(best[0], time.perf_counter() - wall), min(best[1], time.process_time() - cpu))
        return best

    live, block = per_step(live_step, live_opt, crops), per_step(block_step, block_opt, cached)
    print(f"\nefficientnet_lite0 last 2 blocks, batch {batch} at {size} px, {torch.get_num_threads()} thread(s), "
          f"fastest of 3: live {live[0] * 1000:.0f} ms/step ({live[1] * 1000:.0f} ms CPU), block inputs "
          f"{block[0] * 1000:.0f} ms/step ({block[1] * 1000:.0f} ms CPU): {live[0] / block[0]:.1f}x")


def test_distillation_on_block_inputs_equals_distillation_on_live_crops():
    """The EMA teacher of the trained blocks + head, called on cached block inputs, gives the
    pseudo-labels the whole-network EMA teacher gives on the live crops, step after step."""
    torch.manual_seed(0)
    size, batch = 96, 4
    base = QualityNet(create_backbone("efficientnet_lite0", pretrained=False), DecoderConfig(width=32, heads=4, grid=4))
    policy = InputPolicy(size=size, mean=base.backbone.mean, std=base.backbone.std)
    qfm = QFMConfig(match=True, adv=True, kd=True)
    live_net, block_net = base, copy.deepcopy(base)
    live_step, live_opt = _setup(live_net, _Live(policy), policy, qfm)
    trainable_param_groups(block_net, "last_n", 2)
    split = BlockSplit(block_net.backbone, 2, block_net.head.grid)
    block_step, block_opt = _setup(block_net, _Blocks(split), policy, qfm)
    live_teacher, block_student = make_teacher(live_net), ResumedNet(split, block_net.head)
    block_teacher = make_teacher(block_student)
    live_step.set_teacher(live_teacher, TEACHER_ON_IMAGES)
    block_step.set_teacher(block_teacher, TEACHER_ON_BLOCK_INPUTS)
    crops = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    extra = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    targets = torch.linspace(-1.0, 1.0, batch)
    block_net.eval()
    with torch.no_grad():
        cached, cached_extra = split.encode(normalize(crops, policy)), split.encode(normalize(extra, policy))
    for _ in range(2):  # the second step's pseudo-labels come from the moved teachers
        live_net.train(), block_net.train()
        loss_live = _one_step(live_step, live_opt, crops, targets, extra)
        loss_block = _one_step(block_step, block_opt, cached, targets, cached_extra)
        assert loss_block == pytest.approx(loss_live, rel=1e-4, abs=1e-5)
        ema_update(live_teacher, live_net, 0.5)
        ema_update(block_teacher, block_student, 0.5)
    with torch.no_grad():
        from_images = live_teacher(normalize(extra, policy))
        from_blocks = block_teacher(cached_extra)
    torch.testing.assert_close(from_blocks, from_images, rtol=1e-4, atol=1e-5)
    # the block teacher holds copies, not the student's modules
    assert all(t is not s for t, s in zip(block_teacher.parameters(), block_student.parameters()))
    assert not any(p.requires_grad for p in block_teacher.parameters())


# --- a whole run ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("block")
    synthesize(tmp / "syn", ROOT / "samples", SynthOptions(types=("gaussian_blur", "white_noise"), levels=(1, 3, 5),
                                                           size=160, crops=2), workers=0)
    return tmp, tmp / "syn" / "labels.csv"


def _config(synth_set, *extra: str):
    tmp, labels = synth_set
    return load_train_config(ROOT / "configs" / "synthetic.yaml", [
        f"data.dataset={labels}", f"train.cache_dir={tmp / 'cache'}", "model.finetune.mode=last_n",
        "model.finetune.last_n=2", "train.cache_features=false", "model.input.size=128", "optim.batch_size=4",
        "optim.epochs=2", "optim.warmup_epochs=1", "optim.decay_epochs=1", "train.crops_per_image=2",
        "train.workers=0", "eval.test=false", *extra])


@pytest.mark.parametrize("kd", [(), ("qfm.kd=true", "data.extra=train", "qfm.ema_decay=0.9")], ids=["no_kd", "ema_kd"])
def test_a_last_n_run_on_block_inputs_resumes_exactly(synth_set, kd):
    tmp, _ = synth_set
    quiet = Progress(enabled=False)
    name = "kd" if kd else "plain"
    full = run_training(_config(synth_set, *kd), tmp / f"full_{name}", progress=quiet)
    assert full.complete and full.cache["crops_total"] > 0  # the block-input cache was used (auto)
    if kd:
        assert all(h.get("kd", 0.0) > 0 for h in full.history if "kd" in h) and any("kd" in h for h in full.history)
    steps = full.history[-1]["step"]
    part = run_training(_config(synth_set, *kd, f"train.max_steps={steps // 2 + 1}"), tmp / f"part_{name}",
                        progress=quiet)
    assert not part.complete and part.cache["crops_computed"] == 0  # the first run's cache is reused
    resumed = run_training(_config(synth_set, *kd), tmp / f"part_{name}", resume=True, progress=quiet)
    a, b = load_file(str(full.best_model)), load_file(str(resumed.best_model))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_config_refuses_block_inputs_without_last_n(synth_set):
    with pytest.raises(UsageError, match="cache_block_inputs"):
        _config(synth_set, "model.finetune.mode=full", "train.cache_block_inputs=true")
