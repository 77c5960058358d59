"""The training engine behind ``qfmiqm train``: ``run_training(cfg) -> TrainResult``.

One run trains one split of one dataset and writes a run directory (docs/training.md):

    config.yaml       the resolved config (every key, defaults included)
    splits.json       the dataset's splits (this run trains split data.split)
    metrics.csv       one row per epoch: lr, loss and its components, val (and test) metrics
    events/           TensorBoard scalars
    train.log         the log lines
    ckpt-<step>/      the last checkpoints: weights, optimizer, teacher, RNG states, position
    best/ckpt-<step>/ the selected (best validation SRCC) checkpoint
    best.safetensors  the selected model with its card best.json: `qfmiqm score --model` loads it
    result.json       written last: final metrics (the run is complete)

Every random choice of the data pipeline is a function of (seed, epoch, position) and every
checkpoint records the position, so ``resume=True`` after a kill at any moment continues from
the last valid checkpoint and ends with the same weights and metrics as an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from qfmiqm.data.splits import save_splits
from qfmiqm.data.transforms import InputPolicy, normalize
from qfmiqm.errors import QfmiqmError, UsageError, WeightsError
from qfmiqm.files import write_json_atomic, write_text_atomic
from qfmiqm.eval.metrics import MetricInputError, MetricWarning, all_metrics
from qfmiqm.models.backbones import get_backbone_spec
from qfmiqm.models.card import ModelCard, ScoreMapping
from qfmiqm.models.qfm import QualityNet
from qfmiqm.models.registry import build_net, load_net, resolve_model, save_model
from qfmiqm.train import ddp
from qfmiqm.train.cache import CachedFeatures, FeatureCache, resolve_cache_runtime
from qfmiqm.train.checkpoint import (
    latest_valid_checkpoint, list_checkpoints, read_checkpoint, save_checkpoint,
)
from qfmiqm.train.config import to_plain
from qfmiqm.train.data import (
    EXTRA_FROM_TRAIN, EpochSampler, EvalCrops, GroupedEpochSampler, RunData, TrainCrops, default_workers, derive_seed, extra_order,
    load_run_data,
)
from qfmiqm.train.distillation import ema_update, make_teacher
from qfmiqm.train.finetune import trainable_param_groups
from qfmiqm.train.objective import QFMObjective
from qfmiqm.train.progress import Progress
from qfmiqm.train.schedule import lr_at
from qfmiqm.train.schema import TrainConfig, default_run_name, result_hash

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
RESULT_FILE = "result.json"
BEST_DIR = "best"
BEST_MODEL = "best.safetensors"
EVENTS_DIR = "events"
LOG_FILE = "train.log"
LOCK_FILE = ".lock"

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
METRIC_KEYS = ("srcc", "plcc", "krcc", "rmse", "plcc_fit")


class TrainingInterrupted(QfmiqmError):
    """The run was asked to stop (SIGTERM/SIGINT): a checkpoint was written; --resume continues."""

    exit_code = 130


class TrainingDiverged(QfmiqmError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What a run produced. ``metrics``: best_epoch, selected_on, val, test (of the selected
    model), last (the last epoch's row); ``complete`` is False when stopped by train.max_steps."""

    run_dir: Path
    best_model: Optional[Path]
    metrics: dict
    history: list[dict] = field(default_factory=list)
    cache: dict = field(default_factory=dict)
    complete: bool = True

    def to_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "best_model": str(self.best_model) if self.best_model else None,
                "metrics": self.metrics, "history": self.history, "cache": self.cache, "complete": self.complete}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainResult":
        return cls(Path(d["run_dir"]), Path(d["best_model"]) if d.get("best_model") else None, d["metrics"],
                   d.get("history", []), d.get("cache", {}), d.get("complete", True))


def run_training(cfg: TrainConfig, run_dir: str | os.PathLike | None = None, resume: bool = False,
                 progress: Optional[Progress] = None) -> TrainResult:
    """Train one split as ``cfg`` says; ``resume`` continues the run in ``run_dir`` (default
    ``<out.dir>/<out.name>``) from its last valid checkpoint. Works single-process and under
    torchrun (DDP). Every config problem fails before any work, with one line naming the key."""
    info = ddp.env_info()
    device = resolve_device(cfg.train.device, info)
    joined = info.enabled and not torch.distributed.is_initialized()
    ddp.init(info, device)
    try:
        return _Trainer(cfg, run_dir, resume, info, device, progress).run()
    finally:
        if joined:
            ddp.shutdown()


# --- runtime choices --------------------------------------------------------------------


def resolve_device(name: str, info: ddp.DistInfo) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"config: 'train.device' = {name!r}: not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("config: 'train.device' is cuda but no CUDA GPU is available (use auto or cpu)")
        if dev.index is None:
            dev = torch.device(f"cuda:{info.local_rank}")
    return dev


def resolve_amp(name: str, device: torch.device, say) -> Optional[torch.dtype]:
    if name == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    if name == "fp16" and device.type != "cuda":
        raise UsageError("config: 'train.amp' = fp16 needs a CUDA GPU (its GradScaler); use bf16 or none on CPU")
    if name == "bf16" and device.type == "cpu":
        say("warning: train.amp=bf16 on CPU: supported, but usually slower than float32 on CPUs without AMX")
    return AMP_DTYPES[name]


def check_compile(enabled: bool, device: torch.device, say) -> None:
    if enabled and device.type != "cuda":
        if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("cc") is None:
            raise UsageError("config: 'train.compile' on CPU needs a C++ compiler (none found); set train.compile=false")
        say("warning: train.compile on CPU: compiling takes minutes and rarely pays off for short runs")


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --- the step as a module (so DDP sees one forward per backward) ---------------------------


class _Step(nn.Module):
    """One training forward: backbone (live) or cached features -> QFM objective. Wrapped in
    DistributedDataParallel under torchrun; the objective's extra head passes (perturbed batches,
    the adversarial input gradient) happen inside this forward, so DDP's gradient hooks fire
    once per backward as it expects."""

    def __init__(self, net: QualityNet, objective: QFMObjective, policy: InputPolicy, cached: bool):
        super().__init__()
        self.net = net
        self.objective = objective
        self.policy = policy
        self.cached = cached
        self._teacher: list = [None, False]  # (teacher, runs on images); kept out of the module tree

    def set_teacher(self, teacher: Optional[nn.Module], on_images: bool) -> None:
        self._teacher = [teacher, on_images]

    def forward(self, inputs, targets: torch.Tensor, extra=None):
        teacher, on_images = self._teacher
        if self.cached:
            feats, extra_feats = inputs, extra
        else:
            feats = self.net.backbone(normalize(inputs, self.policy))
            extra_feats = self.net.backbone(normalize(extra, self.policy)) if extra is not None else None
        extra_targets, teacher_fn = None, None
        if extra_feats is not None and teacher is not None:
            if on_images:
                with torch.no_grad():
                    extra_targets = teacher(normalize(extra, self.policy)).float()
            else:
                teacher_fn = teacher
        return self.objective(self.net.head, feats, targets, extra_feats=extra_feats, teacher=teacher_fn,
                              extra_targets=extra_targets)


# --- the trainer ----------------------------------------------------------------------------


class _Trainer:
    def __init__(self, cfg: TrainConfig, run_dir, resume: bool, info: ddp.DistInfo, device: torch.device,
                 progress: Optional[Progress]):
        self.cfg, self.info, self.device, self.resume = cfg, info, device, resume
        t = cfg.train
        self.progress = progress or Progress(enabled=info.is_main, bar=None if t.progress else False,
                                             log_every=t.log_every)
        if not info.is_main:
            self.progress.enabled = False
        say = self.progress.message
        if t.threads:
            torch.set_num_threads(t.threads)
        self.amp = resolve_amp(t.amp, device, say)
        check_compile(t.compile, device, say)
        self._seed_everything(t.seed)
        if t.deterministic:
            if device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self._check_backbone_weights()
        self.data: RunData = load_run_data(cfg)
        self.sampler = self._epoch_sampler()  # built now: a bad data.group_size fails before feature caching
        self.net = self._build_net()
        self.base_policy = cfg.model.input.policy(self.net.backbone.mean, self.net.backbone.std)
        self.policy = self.data.train.policy(self.base_policy)
        self.train_policy = cfg.model.input.train_policy(self.policy)
        self.run_dir = Path(run_dir) if run_dir is not None else Path(cfg.out.dir) / (cfg.out.name or default_run_name(cfg))
        self.name = cfg.model.name or self.run_dir.name
        self.cached = t.cache_features
        self.kd_active = cfg.qfm.kd and self.data.extra is not None
        self.teacher, self.teacher_on_images = self._build_teacher()
        self.workers = default_workers(t.workers)
        #: subtracted from training labels, added to predictions (data.center_targets)
        self.offset = float(np.mean(self.data.train.labels)) if cfg.data.center_targets else 0.0
        self.hash = result_hash(cfg)
        self._stop_signal: Optional[str] = None

    # --- setup -------------------------------------------------------------------------

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _check_backbone_weights(self) -> None:
        m = self.cfg.model
        try:
            spec = get_backbone_spec(m.backbone)
        except UsageError as exc:
            raise UsageError(f"config: 'model.backbone': {exc}") from None
        if m.backbone_weights:
            if not os.path.isfile(m.backbone_weights):
                raise UsageError(f"config: 'model.backbone_weights' = {m.backbone_weights!r}: file not found "
                                 f"({spec.name}: {spec.weights_help})")
        elif not spec.weights_offline:
            raise UsageError(f"config: 'model.backbone_weights' is not set and backbone '{spec.name}' has no "
                             f"packaged ImageNet weights: {spec.weights_help} (or --set model.backbone_weights=FILE)")

    def _card(self, **changes) -> ModelCard:
        m = self.cfg.model
        policy = getattr(self, "policy", None) or InputPolicy()
        base = ModelCard(name=getattr(self, "name", "training"), backbone=m.backbone, trained=False,
                         input=policy, decoder=m.decoder, score=ScoreMapping(),
                         includes_backbone=m.finetune.mode != "frozen")
        return replace(base, **changes)

    def _build_net(self) -> QualityNet:
        m = self.cfg.model
        try:
            # includes_backbone=False: start from the ImageNet backbone even when it will be fine-tuned
            net = build_net(self._card(includes_backbone=False), backbone_weights=m.backbone_weights,
                            trust_pickle=m.trust_pickle)
        except WeightsError as exc:
            raise UsageError(f"config: 'model.backbone_weights': {exc}") from None
        except UsageError as exc:
            raise UsageError(f"config: 'model.decoder': {exc}") from None
        net.to(self.device)
        self.param_groups = trainable_param_groups(net, m.finetune.mode, m.finetune.last_n)
        net.train()
        return net

    def _build_teacher(self) -> tuple[Optional[nn.Module], bool]:
        if not self.kd_active:
            return None, False
        live = not self.cached
        name = self.cfg.distill.teacher
        if name == "ema":
            student = self.net if (live and self.cfg.model.finetune.mode != "frozen") else self.net.head
            return make_teacher(student), student is self.net
        try:
            loaded = load_net(resolve_model(name), backbone_weights=self.cfg.model.backbone_weights,
                              trust_pickle=self.cfg.model.trust_pickle).to(self.device)
        except QfmiqmError as exc:
            raise UsageError(f"config: 'distill.teacher' = {name!r}: {exc}") from None
        if self.cached:
            if loaded.backbone.name != self.net.backbone.name:
                raise UsageError(f"config: 'distill.teacher' = {name!r}: with cached features the teacher needs "
                                 f"the same backbone ({self.net.backbone.name}), not {loaded.backbone.name}")
            return make_teacher(loaded.head), False
        return make_teacher(loaded), True

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        groups = []
        for g in self.param_groups:
            scale = {"head": 1.0, "gate": o.gate_lr_scale}.get(g["name"], o.backbone_lr_scale)
            decay = [p for p in g["params"] if not (o.no_decay_1d and p.ndim <= 1)]
            no_decay = [p for p in g["params"] if o.no_decay_1d and p.ndim <= 1]
            for params, wd, suffix in ((decay, o.weight_decay, ""), (no_decay, 0.0, "_no_decay")):
                if params:
                    groups.append({"params": params, "weight_decay": wd, "name": g["name"] + suffix, "lr_scale": scale})
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)

    # --- run directory ---------------------------------------------------------------------

    def _prepare_run_dir(self) -> Optional[Any]:
        """Create/lock the run dir; returns the checkpoint to resume from (or None)."""
        rd = self.run_dir
        has_run = rd.is_dir() and (bool(list_checkpoints(rd)) or (rd / RESULT_FILE).is_file())
        if has_run and not self.resume:
            raise UsageError(f"{rd}: a run already exists there; pass --resume to continue it, or choose another --out")
        if self.info.is_main:
            rd.mkdir(parents=True, exist_ok=True)
            self._lock = _lock_run_dir(rd)
        ddp.barrier()
        if self.info.is_main:
            self.progress.attach_log(rd / LOG_FILE)
        if not self.resume or (rd / RESULT_FILE).is_file():
            return None  # fresh start, or a complete run (returned as is)
        ckpt = latest_valid_checkpoint(rd, report=self.progress.message)
        if ckpt is None:
            self.progress.message(f"note: no checkpoint to resume in {rd}; starting from the beginning")
            return None
        saved = ckpt.state.get("config_hash")
        if saved != self.hash:
            raise UsageError(f"--resume: the config differs from the one {rd} was trained with "
                             f"({_config_diff(rd / CONFIG_FILE, self.cfg)}); resume with the same config")
        return ckpt

    def _write_static_files(self) -> None:
        if not self.info.is_main:
            return
        text = yaml.safe_dump(to_plain(self.cfg), sort_keys=False)
        write_text_atomic(self.run_dir / CONFIG_FILE, text, durable=True)
        save_splits(self.data.splits, self.run_dir)

    # --- main loop -------------------------------------------------------------------------

    def run(self) -> TrainResult:
        cfg, say = self.cfg, self.progress.message
        ckpt = self._prepare_run_dir()
        try:
            if self.resume and ckpt is None and (self.run_dir / RESULT_FILE).is_file():
                result = TrainResult.from_dict(json.loads((self.run_dir / RESULT_FILE).read_text()))
                say(f"{self.run_dir}: this run is already complete")
                return result
            self._write_static_files()
            say(f"run: {self.run_dir}")
            say(f"data: {self.data.describe()}")
            say(f"model: {cfg.model.backbone} ({cfg.model.finetune.mode}), device {self.device}"
                + (f", {self.info.world} processes" if self.info.enabled else "")
                + (f", amp {self.amp}" if self.amp else ""))
            if cfg.qfm.kd and self.data.extra is None:
                say("note: qfm.kd is on but data.extra is not set: no distillation term")
            self._setup_features()
            self.optimizer = self._optimizer()
            self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp is torch.float16)
            self.step_module = _Step(self.net, QFMObjective(cfg.qfm), self.policy, self.cached)
            self.step_module.set_teacher(self.teacher, self.teacher_on_images)
            if cfg.train.compile:
                self._compile()
            self.model = self._wrap_ddp(self.step_module)
            self.state = self._initial_state()
            if ckpt is not None:
                self._restore(ckpt)
                say(f"resumed from {ckpt.path.name}: epoch {self.state['epoch'] + 1}, "
                    f"step {self.state['step_in_epoch']} of the epoch (global step {self.state['global_step']})")
            self.writer = self._tensorboard(purge=ckpt is not None)
            with self._signals():
                stopped = self._train_loop()
            if stopped:
                return TrainResult(self.run_dir, self._best_path(), {"stopped_at_step": self.state["global_step"]},
                                   self.state["history"], self._cache_stats(), complete=False)
            return self._finish()
        finally:
            if getattr(self, "writer", None) is not None:
                self.writer.close()
            self.progress.close()
            lock = getattr(self, "_lock", None)
            if lock is not None:
                lock.close()

    def _initial_state(self) -> dict:
        return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "sums": {}, "count": 0, "epoch_seconds": 0.0,
                "best": None, "history": []}

    def _compile(self) -> None:
        head = self.net.head
        head.adapter.compile()
        head.decoder.compile()
        if not self.cached:
            self.net.backbone.compile()

    def _wrap_ddp(self, module: nn.Module) -> nn.Module:
        if not self.info.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # buffers (BatchNorm statistics of a fine-tuned CNN) are synced from rank 0 before each
        # evaluation and checkpoint (ddp.broadcast_module), not at every forward
        import inspect

        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
            return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    def _tensorboard(self, purge: bool):
        if not self.info.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.progress.message("note: tensorboard is not installed: no events/ (pip install tensorboard)")
            return None
        return SummaryWriter(str(self.run_dir / EVENTS_DIR), purge_step=self.state["global_step"] if purge else None)

    # --- features ----------------------------------------------------------------------------

    def _setup_features(self) -> None:
        self.steps_per_epoch = self._steps_per_epoch()
        if not self.cached:
            self.cache = None
            return
        t = self.cfg.train
        self.cache = FeatureCache(
            t.cache_dir, self.net, self.base_policy, self.cfg.data.hflip, t.cache_dtype, self.device,
            autocast=(lambda: _autocast(self.device, self.amp)) if self.amp else None, workers=self.workers,
            batch_size=self.cfg.eval.batch_size, rank=self.info.rank, world=self.info.world, barrier=ddp.barrier,
            log=self.progress.message, compute_dtype=str(self.amp or torch.float32), runtime=self._cache_runtime(),
        )
        d = self.data
        self.bank = self.cache.bank(d.train, t.crops_per_image, self.cfg.model.input.train_policy(self.base_policy))
        self.eval_feats = {name: self.cache.eval(ds) for name, ds in (("val", d.val), ("test", d.test))
                           if ds is not None and self._needs_eval(name)}
        if self.kd_active:
            self.extra_bank = self.bank if self.cfg.data.extra == EXTRA_FROM_TRAIN \
                else self.cache.bank(d.extra, t.crops_per_image, self.cfg.model.input.train_policy(self.base_policy))
        s = self.cache.stats.to_dict()
        self.progress.message(f"feature cache: {s['crops_reused']} of {s['crops_total']} crops reused, "
                              f"{s['crops_computed']} computed ({s['seconds']:.1f} s)")

    def _cache_runtime(self) -> str:
        return resolve_cache_runtime(self.cfg.train.cache_runtime, self.device, bool(self.amp),
                                     self.net.backbone.spec.kind)

    def _needs_eval(self, name: str) -> bool:
        if name == "val":
            return True
        return self.cfg.eval.test or self.cfg.eval.select == "test"

    def _cache_stats(self) -> dict:
        return self.cache.stats.to_dict() if self.cache is not None else {}

    def _steps_per_epoch(self) -> int:
        n = len(self.data.train) * self.cfg.data.repeats
        per_rank = math.ceil(n / self.info.world)
        steps = per_rank // self.cfg.optim.batch_size
        if steps < 1:
            raise UsageError(f"config: 'optim.batch_size' = {self.cfg.optim.batch_size} is larger than the "
                             f"{per_rank} training items per process (images x data.repeats / processes)")
        return steps

    # --- epochs ----------------------------------------------------------------------------------

    def _train_loop(self) -> bool:
        """Train until the last epoch; True when stopped early (max_steps or a signal)."""
        o, st = self.cfg.optim, self.state
        sampler = self.sampler
        while st["epoch"] < o.epochs:
            epoch = st["epoch"]
            if self.cfg.train.max_steps and st["global_step"] >= self.cfg.train.max_steps:
                self.progress.message(f"stopped after train.max_steps={self.cfg.train.max_steps} steps "
                                      f"(checkpoint written; continue with --resume)")
                return True
            sampler.set_epoch(epoch)
            sampler.start = st["step_in_epoch"] * o.batch_size
            self.progress.start_epoch(epoch, o.epochs, self.steps_per_epoch, st["step_in_epoch"])
            t0 = time.perf_counter()
            batches = self._cached_batches(sampler, epoch) if self.cached else self._live_batches(sampler, epoch)
            stopped = False
            for batch in batches:
                self._train_step(batch)
                st["epoch_seconds"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                if self._should_stop():
                    stopped = True
                    break
                if self.cfg.train.checkpoint_every and st["global_step"] % self.cfg.train.checkpoint_every == 0 \
                        and st["step_in_epoch"] < self.steps_per_epoch:
                    self._checkpoint()
            self.progress.end_epoch()
            if stopped:
                self._checkpoint()
                if self._stop_signal:
                    raise TrainingInterrupted(f"stopped by {self._stop_signal} at step {st['global_step']}; "
                                              f"checkpoint written, continue with --resume")
                self.progress.message(f"stopped after train.max_steps={self.cfg.train.max_steps} steps "
                                      f"(checkpoint written; continue with --resume)")
                return True
            self._end_epoch(epoch)
        return False

    def _epoch_sampler(self) -> EpochSampler:
        d, n_items = self.cfg.data, len(self.data.train) * self.cfg.data.repeats
        if not d.group_size:
            return EpochSampler(n_items, self.info.world, self.info.rank, self.cfg.train.seed)
        if self.data.train.content is None:
            raise UsageError(f"config: 'data.group_size' needs a dataset with a content (reference) column; "
                             f"{self.data.train.name} has none")
        anchors = None
        if d.group_anchor:
            types = self.data.train.types
            if types is None or "pristine" not in types:
                raise UsageError(f"config: 'data.group_anchor' needs pristine images (type 'pristine', as in "
                                 f"'qfmiqm synth' sets) in the training set; {self.data.train.name} has none")
            anchors = [t == "pristine" for t in types]
        return GroupedEpochSampler(self.data.train.content, n_items, self.info.world, self.info.rank,
                                   self.cfg.train.seed, d.group_size, anchors)

    def _should_stop(self) -> bool:
        st = self.state
        if self.info.enabled:
            flag = ddp.all_reduce_sums({"stop": 1.0 if self._stop_signal else 0.0}, self.device)["stop"]
            if flag and not self._stop_signal:
                self._stop_signal = "a signal on another rank"
        if self._stop_signal:
            return True
        return bool(self.cfg.train.max_steps) and st["global_step"] >= self.cfg.train.max_steps \
            and st["step_in_epoch"] < self.steps_per_epoch

    def _cached_batches(self, sampler: EpochSampler, epoch: int):
        seed, n, k = self.cfg.train.seed, len(self.data.train), self.bank.n_crops
        total = n * self.cfg.data.repeats
        crops = np.random.default_rng(derive_seed(seed, "bank-pick", epoch)).integers(0, k, size=total)
        labels = torch.as_tensor(self.data.train.labels - self.offset, dtype=torch.float32)
        if self.kd_active:
            n_extra = self.extra_bank.n_images
            e_order = extra_order(n_extra, seed, epoch)
            e_crops = np.random.default_rng(derive_seed(seed, "extra-pick", epoch)).integers(
                0, self.extra_bank.n_crops, size=total)
        positions = np.fromiter(iter(sampler), dtype=np.int64)
        bs = self.cfg.optim.batch_size
        for b in range(len(positions) // bs):
            pos = positions[b * bs:(b + 1) * bs]
            images = torch.from_numpy(pos % n)
            feats = self.bank.gather(images, torch.from_numpy(crops[pos]), self.device)
            extra = None
            if self.kd_active:
                extra = self.extra_bank.gather(torch.from_numpy(e_order[pos % n_extra]),
                                               torch.from_numpy(e_crops[pos]), self.device)
            yield feats, labels[images].to(self.device), extra

    def _live_batches(self, sampler: EpochSampler, epoch: int):
        view = TrainCrops(self.data.train, self.train_policy, self.cfg.data.hflip, self.cfg.data.repeats,
                          self.cfg.train.seed, extra=self.data.extra if self.kd_active else None)
        view.set_epoch(epoch)
        loader = DataLoader(view, batch_size=self.cfg.optim.batch_size, sampler=sampler, drop_last=True,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda",
                            multiprocessing_context="fork" if self.workers and os.name != "nt" else None)
        for batch in loader:
            x, y = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True) - self.offset
            extra = batch[2].to(self.device, non_blocking=True) if len(batch) > 2 else None
            yield x, y, extra

    def _set_lr(self) -> float:
        lr = lr_at(self.cfg.optim, self.state["global_step"], self.steps_per_epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        return lr

    def _train_step(self, batch) -> None:
        st, o = self.state, self.cfg.optim
        inputs, targets, extra = batch
        lr = self._set_lr()
        with _autocast(self.device, self.amp):
            loss, logs = self.model(inputs, targets, extra)
        if not math.isfinite(logs["loss"]) and self.amp is not torch.float16:
            raise TrainingDiverged(f"the loss became {logs['loss']} at step {st['global_step']} (epoch "
                                   f"{st['epoch'] + 1}); lower optim.lr or check the data (last checkpoint kept)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if o.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, o.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.teacher is not None and self.cfg.distill.teacher == "ema":
            student = self.net if self.teacher_on_images else self.net.head
            ema_update(self.teacher, student, self.cfg.qfm.ema_decay)
        logs["lr"] = lr
        st["global_step"] += 1
        st["step_in_epoch"] += 1
        st["count"] += 1
        for k, v in logs.items():
            st["sums"][k] = st["sums"].get(k, 0.0) + float(v)
        self.progress.step(st["step_in_epoch"], logs, lr)
        if self.writer is not None and st["global_step"] % self.cfg.train.log_every == 0:
            for k, v in logs.items():
                self.writer.add_scalar(f"train/{k}", v, st["global_step"])

    def _end_epoch(self, epoch: int) -> None:
        st, cfg = self.state, self.cfg
        sums = ddp.all_reduce_sums({**st["sums"], "_count": float(st["count"])}, self.device)
        count = max(1.0, sums.pop("_count"))
        means = {k: v / count for k, v in sums.items()}
        row: dict[str, Any] = {"epoch": epoch + 1, "step": st["global_step"]}
        row.update({k: means.pop(k) for k in ("lr", "loss") if k in means})
        row.update(sorted(means.items()))
        ddp.broadcast_module(self.net)
        evaluate_now = (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.optim.epochs
        if evaluate_now:
            for split in ("val", "test") if cfg.eval.select == "test" else ("val",):
                metrics = self._evaluate(split)
                row.update({f"{split}_{k}": metrics[k] for k in METRIC_KEYS if k in metrics})
        row["seconds"] = st["epoch_seconds"]
        st["history"].append(row)
        if evaluate_now:
            self._maybe_select(epoch, row)
        st.update(epoch=epoch + 1, step_in_epoch=0, sums={}, count=0, epoch_seconds=0.0)
        self._checkpoint()
        self._write_metrics()
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, float) and math.isfinite(v):
                    self.writer.add_scalar(f"epoch/{k}", v, epoch + 1)
            self.writer.flush()
        shown = " ".join(f"{k} {row[k]:.4f}" for k in ("loss", "val_srcc", "val_plcc", "test_srcc") if k in row)
        self.progress.message(f"epoch {epoch + 1}/{cfg.optim.epochs}: {shown} ({row['seconds']:.1f} s)")

    # --- selection, export ---------------------------------------------------------------------

    def _maybe_select(self, epoch: int, row: dict) -> None:
        select = self.cfg.eval.select
        key = {"val": "val_srcc", "test": "test_srcc", "last": None}[select]
        best = self.state["best"]
        score = row.get(key, float("nan")) if key else float(epoch)
        score = -math.inf if not math.isfinite(score) else score
        if best is not None and score <= best["score"] and select != "last":
            return
        self.state["best"] = {"epoch": epoch + 1, "score": score, "step": self.state["global_step"],
                              "val": {k[4:]: row[k] for k in row if k.startswith("val_")}}
        if self.info.is_main:
            save_checkpoint(self.run_dir / BEST_DIR, self.state["global_step"], {"model": self._model_state()},
                            {"epoch": epoch + 1, "config_hash": self.hash, "best": self.state["best"]}, keep=1)
            self._export(self.state["best"], test=None)
        ddp.barrier()

    def _best_path(self) -> Optional[Path]:
        p = self.run_dir / BEST_MODEL
        return p if p.is_file() else None

    def _method(self) -> str:
        q = self.cfg.qfm
        return "QFM-IQM" if (q.match or q.adv or q.kd or self.cfg.model.decoder.gate) else "DEIQT"

    def _export(self, best: dict, test: Optional[dict]) -> None:
        d, cfg = self.data, self.cfg
        metrics = {"selected_on": cfg.eval.select, "epoch": best["epoch"], "val": best["val"]}
        if test is not None:
            metrics["test"] = test
        limits = []
        if cfg.eval.select == "test":
            limits.append("epoch selected on the test split (as DEIQT's code does): test metrics are optimistic")
        card = self._card(
            name=self.name, trained=True,
            description=f"{self._method()} ({cfg.model.backbone}, backbone {cfg.model.finetune.mode}) trained with "
                        f"qfmiqm train on {d.dataset.name}",
            training_data=d.describe() + f"; run {self.run_dir.name}, config hash {self.hash}",
            metrics=metrics, limits=tuple(limits), score=ScoreMapping(offset=self.offset),
        )
        save_model(self.net, card, self.run_dir / BEST_MODEL)

    def _model_state(self) -> dict[str, torch.Tensor]:
        module = self.net if self.cfg.model.finetune.mode != "frozen" else self.net.head
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    def _load_model_state(self, tensors: dict[str, torch.Tensor]) -> None:
        module = self.net if self.cfg.model.finetune.mode != "frozen" else self.net.head
        module.load_state_dict(tensors, strict=True)

    # --- evaluation ------------------------------------------------------------------------------

    @torch.no_grad()
    def _evaluate(self, split: str) -> dict:
        ds = self.data.val if split == "val" else self.data.test
        if ds is None:
            return {}
        preds = self._predict(split, ds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            try:
                m = all_metrics(preds, ds.labels)
            except MetricInputError:  # too few images for a correlation
                m = {"n": len(ds), **{k: float("nan") for k in METRIC_KEYS}}
        return {k: float(m[k]) for k in ("n", *METRIC_KEYS) if k in m}

    def _predict(self, split: str, ds) -> np.ndarray:
        mine = list(range(self.info.rank, len(ds), self.info.world))
        self.net.eval()
        out: dict[int, float] = {}
        try:
            if self.cached:
                feats: CachedFeatures = self.eval_feats[split]
                k = feats.n_crops
                step = max(1, self.cfg.eval.batch_size // k)
                for i in range(0, len(mine), step):
                    idx = torch.tensor(mine[i:i + step])
                    with _autocast(self.device, self.amp):
                        raw = self.net.head(feats.all_crops(idx, self.device))
                    for j, v in zip(idx.tolist(), raw.float().view(len(idx), k).mean(1).tolist()):
                        out[j] = v
            else:
                loader = DataLoader(EvalCrops(ds, self.policy), sampler=mine,
                                    batch_size=self._live_eval_batch(),
                                    num_workers=self.workers, pin_memory=self.device.type == "cuda")
                for idx, crops, _ in loader:
                    n, k = crops.shape[:2]
                    x = normalize(crops.to(self.device).flatten(0, 1), self.policy)
                    with _autocast(self.device, self.amp):
                        raw = self.net(x)
                    for j, v in zip(idx.tolist(), raw.float().view(n, k).mean(1).tolist()):
                        out[j] = v
        finally:
            self.net.train()
        merged: dict[int, float] = {}
        for part in ddp.all_gather_objects(out):
            merged.update(part)
        return np.array([merged[i] for i in range(len(ds))], dtype=np.float64) + self.offset

    def _live_eval_batch(self) -> int:
        """Images per validation batch on a live backbone: whole-image views differ in size, so
        they go one image at a time."""
        if self.policy.layout == "whole":
            return 1
        return max(1, self.cfg.eval.batch_size // self.policy.num_crops)

    # --- the end ---------------------------------------------------------------------------------

    def _check_replicas(self) -> None:
        """Under DDP every rank must hold the same weights at the end; a mismatch is a bug, not noise."""
        if not self.info.enabled:
            return
        digests = ddp.all_gather_objects(_weights_digest(self._model_state()))
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP replicas diverged: rank weight digests {digests}")

    def _finish(self) -> TrainResult:
        st, cfg = self.state, self.cfg
        self._check_replicas()
        best = st["best"]
        test = None
        if best is not None:
            ckpt = read_checkpoint(list_checkpoints(self.run_dir / BEST_DIR)[-1])
            self._load_model_state(ckpt.tensors["model"])
            if cfg.eval.test and self.data.test is not None:
                test = self._evaluate("test")
                if self.info.is_main:
                    self._export(best, test)
        metrics = {"best_epoch": best["epoch"] if best else None, "selected_on": cfg.eval.select,
                   "val": best["val"] if best else {}, "test": test or {},
                   "last": st["history"][-1] if st["history"] else {}}
        result = TrainResult(self.run_dir, self._best_path(), metrics, st["history"], self._cache_stats())
        if self.info.is_main:
            write_json_atomic(self.run_dir / RESULT_FILE, _finite(result.to_dict()), durable=True, strict=False)
            self.progress.message(
                f"done: best epoch {metrics['best_epoch']} (by {cfg.eval.select}); "
                + " ".join(f"{s} SRCC {metrics[s]['srcc']:.4f} PLCC {metrics[s]['plcc']:.4f}"
                           for s in ("val", "test") if metrics[s].get("srcc") is not None)
                + f"; model {result.best_model}")
        ddp.barrier()
        return result

    # --- checkpoints ----------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        st = self.state
        if self.info.is_main:
            tensors = {"model": self._model_state(), "optim": {}, "rng": _rng_tensors()}
            optim_state = self.optimizer.state_dict()
            for idx, s in optim_state["state"].items():
                for key, value in s.items():
                    if isinstance(value, torch.Tensor):
                        tensors["optim"][f"{idx}/{key}"] = value
            groups = [{k: v for k, v in g.items()} for g in optim_state["param_groups"]]
            if self.teacher is not None:
                tensors["teacher"] = {k: v.detach().cpu().clone() for k, v in self.teacher.state_dict().items()}
            if not tensors["optim"]:
                tensors.pop("optim")
            state = {"epoch": st["epoch"], "step_in_epoch": st["step_in_epoch"], "global_step": st["global_step"],
                     "sums": st["sums"], "count": st["count"], "epoch_seconds": st["epoch_seconds"],
                     "best": st["best"], "history": st["history"], "config_hash": self.hash,
                     "optim_groups": groups, "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                     "python_rng": _py_rng_state(), "numpy_rng": _np_rng_meta(), "world": self.info.world}
            save_checkpoint(self.run_dir, st["global_step"], tensors, _finite(state),
                            keep=self.cfg.train.keep_checkpoints)
        ddp.barrier()

    def _restore(self, ckpt) -> None:
        s = ckpt.state
        if s.get("world", 1) != self.info.world:
            raise UsageError(f"--resume: {ckpt.path} was written by {s.get('world', 1)} processes; resume with "
                             f"the same number (now {self.info.world}) so that the data order continues exactly")
        self._load_model_state(ckpt.tensors["model"])
        per_idx: dict[int, dict] = {}
        for name, value in ckpt.tensors.get("optim", {}).items():
            idx, key = name.split("/", 1)
            per_idx.setdefault(int(idx), {})[key] = value.to(self.device) if key != "step" else value
        self.optimizer.load_state_dict({"state": per_idx, "param_groups": s["optim_groups"]})
        if self.teacher is not None and "teacher" in ckpt.tensors:
            self.teacher.load_state_dict(ckpt.tensors["teacher"])
        if s.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(s["scaler"])
        _restore_rng(ckpt.tensors.get("rng", {}), s)
        self.state.update({k: s[k] for k in ("epoch", "step_in_epoch", "global_step", "sums", "count",
                                             "epoch_seconds", "best", "history")})
        self.state["best"] = _unfinite(self.state["best"])

    def _write_metrics(self) -> None:
        if not self.info.is_main:
            return
        rows = self.state["history"]
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns)
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        write_text_atomic(self.run_dir / METRICS_FILE, buf.getvalue(), durable=True)

    # --- signals -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signals(self):
        """SIGTERM (cluster pre-emption) and SIGINT finish the current step, checkpoint and stop."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            self._stop_signal = signal.Signals(signum).name

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


# --- small helpers -----------------------------------------------------------------------------


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    out["numpy"] = torch.from_numpy(np.random.get_state()[1].astype(np.int64))
    return out


def _py_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _np_rng_meta() -> list:
    name, _, pos, has_gauss, cached = np.random.get_state()
    return [name, int(pos), int(has_gauss), float(cached)]


def _restore_rng(tensors: dict[str, torch.Tensor], state: dict) -> None:
    if "torch" in tensors:
        torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
    if "numpy" in tensors and state.get("numpy_rng"):
        name, pos, has_gauss, cached = state["numpy_rng"]
        np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    if state.get("python_rng"):
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))


def _weights_digest(state: dict[str, torch.Tensor]) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _finite(obj: Any) -> Any:
    """JSON-safe: NaN/inf floats become strings "nan"/"inf"/"-inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _unfinite(obj: Any) -> Any:
    if isinstance(obj, str) and obj in ("nan", "inf", "-inf"):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _unfinite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unfinite(v) for v in obj]
    return obj


def _config_diff(saved_file: Path, cfg: TrainConfig) -> str:
    from qfmiqm.train.schema import OPERATIONAL_KEYS

    try:
        saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "its config.yaml is unreadable"
    now = to_plain(cfg)
    diffs = []
    for section, values in now.items():
        for key, value in (values.items() if isinstance(values, dict) else []):
            dotted = f"{section}.{key}"
            if dotted in OPERATIONAL_KEYS:
                continue
            old = (saved.get(section) or {}).get(key, "<absent>")
            if old != value:
                diffs.append(f"{dotted}: {old!r} -> {value!r}")
    return "; ".join(diffs[:3]) or "the defaults changed"


class _RunLock:
    def __init__(self, fh):
        self.fh = fh

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()


def _lock_run_dir(run_dir: Path) -> Optional[_RunLock]:
    """An exclusive lock on the run dir, released by the OS when the process dies (even kill -9).
    A POSIX record lock (lockf), not flock: forked DataLoader workers do not inherit it, so an
    orphaned worker of a killed run cannot keep the directory locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    fh = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.lockf(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise UsageError(f"{run_dir}: another process is training in this run directory") from None
    return _RunLock(fh)
