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

The parts, each in its module: ``device`` (runtime choices), ``build`` (net, teacher,
optimizer), ``run_dir`` (files, lock, resume check), ``snapshot`` (what a checkpoint holds),
``feeding`` (batches from live images or cached features), ``block_cache`` (cached inputs of the
first trained block, last_n fine-tuning), ``step`` (one optimiser step),
``selection`` (evaluation, best model). ``_Trainer`` here wires them into epochs.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from qfmiqm.errors import QfmiqmError
from qfmiqm.train import ddp
from qfmiqm.train.block_cache import BlockFeeder, use_block_cache
from qfmiqm.train.build import build_teacher, build_training_net, check_backbone_weights
from qfmiqm.train.data import RunData, default_workers, load_run_data
from qfmiqm.train.device import (  # noqa: F401 - resolve_device and friends are re-exported
    AMP_DTYPES, check_compile, resolve_amp, resolve_device, seed_everything, set_determinism,
)
from qfmiqm.train.feeding import (
    TEACHER_ON_FEATURES, CachedFeeder, FeedContext, LiveFeeder, epoch_sampler, steps_per_epoch,
)
from qfmiqm.train.progress import Progress
from qfmiqm.train.run_dir import (  # noqa: F401 - the file names are re-exported
    BEST_DIR, BEST_MODEL, CONFIG_FILE, EVENTS_DIR, LOCK_FILE, LOG_FILE, METRICS_FILE, RESULT_FILE, RunDir,
    tensorboard_writer,
)
from qfmiqm.train.schema import TrainConfig, default_run_name, result_hash
from qfmiqm.train.selection import METRIC_KEYS, Selector, needs_eval, selection_splits
from qfmiqm.train.snapshot import (
    initial_state, load_model_state, model_state, restore_training_checkpoint, save_training_checkpoint,
    weights_digest,
)
from qfmiqm.train.step import Stepper, TrainingDiverged  # noqa: F401 - TrainingDiverged is re-exported


class TrainingInterrupted(QfmiqmError):
    """The run was asked to stop (SIGTERM/SIGINT): a checkpoint was written; --resume continues."""

    exit_code = 130


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


class _Trainer:
    """One run: set up in ``__init__`` (all config checks), then ``run`` trains epoch by epoch."""

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
        seed_everything(t.seed)
        set_determinism(t.deterministic, device)
        check_backbone_weights(cfg)
        self.data: RunData = load_run_data(cfg)
        # built now: a bad data.group_size fails before feature caching
        self.sampler = epoch_sampler(cfg, self.data, info.rank, info.world)
        self.net, self.param_groups = build_training_net(cfg, device)
        self.base_policy = cfg.model.input.policy(self.net.backbone.mean, self.net.backbone.std)
        self.policy = self.data.train.policy(self.base_policy)
        self.train_policy = cfg.model.input.train_policy(self.policy)
        path = Path(run_dir) if run_dir is not None else Path(cfg.out.dir) / (cfg.out.name or default_run_name(cfg))
        self.name = cfg.model.name or path.name
        self.hash = result_hash(cfg)
        self.run_dir = RunDir(path, cfg, self.hash, info.is_main, say)
        self.kd_active = cfg.qfm.kd and self.data.extra is not None
        #: subtracted from training labels, added to predictions (data.center_targets)
        self.offset = float(np.mean(self.data.train.labels)) if cfg.data.center_targets else 0.0
        self.feeder = self._feeder(default_workers(t.workers))
        self.teacher, self.ema_student, self.teacher_called_on = (
            build_teacher(cfg, self.net, self.feeder, device) if self.kd_active else (None, None, TEACHER_ON_FEATURES))
        self.selector = Selector(cfg, self.data, self.net, self.feeder, self.run_dir, info.rank, info.world,
                                 self.offset, self.name, self.policy, self.hash)
        self._stop_signal: Optional[str] = None
        self.writer = None

    def _feeder(self, workers: int):
        ctx = FeedContext(self.cfg, self.data, self.net, self.device, self.amp, self.offset, workers, self.policy,
                          self.train_policy, self.base_policy, self.kd_active, self.info.rank, self.info.world)
        wanted = lambda name: needs_eval(self.cfg, name)  # noqa: E731
        if self.cfg.train.cache_features:
            return CachedFeeder(ctx, wanted)
        if use_block_cache(self.cfg.train.cache_block_inputs, self.cfg.model.finetune.mode,
                           self.net.backbone.spec.kind, self.kd_active and self.cfg.distill.teacher != "ema",
                           self.policy.layout == "whole"):
            return BlockFeeder(ctx, wanted)
        return LiveFeeder(ctx)

    # --- the run -------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train (or resume) to the last epoch, or until stopped; the run's result."""
        cfg, say = self.cfg, self.progress.message
        ckpt = self.run_dir.prepare(self.resume, self.progress.attach_log)
        try:
            if self.resume and ckpt is None and self.run_dir.is_complete():
                say(f"{self.run_dir.path}: this run is already complete")
                return TrainResult.from_dict(self.run_dir.read_result())
            self.run_dir.write_static(self.data.splits)
            say(f"run: {self.run_dir.path}")
            say(f"data: {self.data.describe()}")
            say(f"model: {cfg.model.backbone} ({cfg.model.finetune.mode}), device {self.device}"
                + (f", {self.info.world} processes" if self.info.enabled else "")
                + (f", amp {self.amp}" if self.amp else ""))
            if cfg.qfm.kd and self.data.extra is None:
                say("note: qfm.kd is on but data.extra is not set: no distillation term")
            self.steps_per_epoch = steps_per_epoch(cfg, self.data, self.info.world)
            self.feeder.setup(say)
            self.stepper = Stepper(cfg, self.net, self.param_groups, self.feeder, self.policy, self.teacher,
                                   self.ema_student, self.teacher_called_on, self.device, self.amp,
                                   self.info.enabled)
            self.model = self.stepper.model
            self.state = initial_state()
            if ckpt is not None:
                restore_training_checkpoint(ckpt, self.state, self.net, cfg.model.finetune.mode,
                                            self.stepper.optimizer, self.stepper.scaler, self.teacher,
                                            self.info.world, self.device)
                say(f"resumed from {ckpt.path.name}: epoch {self.state['epoch'] + 1}, "
                    f"step {self.state['step_in_epoch']} of the epoch (global step {self.state['global_step']})")
            if self.info.is_main:
                self.writer = tensorboard_writer(self.run_dir.path,
                                                 self.state["global_step"] if ckpt is not None else None, say)
            with self._signals():
                stopped = self._train_loop()
            if stopped:
                return TrainResult(self.run_dir.path, self.run_dir.best_model(),
                                   {"stopped_at_step": self.state["global_step"]}, self.state["history"],
                                   self.feeder.stats(), complete=False)
            return self._finish()
        finally:
            if self.writer is not None:
                self.writer.close()
            self.progress.close()
            self.run_dir.close()

    # --- epochs ----------------------------------------------------------------------------

    def _train_loop(self) -> bool:
        """Train until the last epoch; True when stopped early (max_steps or a signal)."""
        o, st, sampler = self.cfg.optim, self.state, self.sampler
        while st["epoch"] < o.epochs:
            epoch = st["epoch"]
            if self.cfg.train.max_steps and st["global_step"] >= self.cfg.train.max_steps:
                self._say_max_steps()
                return True
            sampler.set_epoch(epoch)
            sampler.start = st["step_in_epoch"] * o.batch_size
            self.progress.start_epoch(epoch, o.epochs, self.steps_per_epoch, st["step_in_epoch"])
            if self._train_epoch(sampler, epoch):
                self._checkpoint()
                if self._stop_signal:
                    raise TrainingInterrupted(f"stopped by {self._stop_signal} at step {st['global_step']}; "
                                              f"checkpoint written, continue with --resume")
                self._say_max_steps()
                return True
            self._end_epoch(epoch)
        return False

    def _train_epoch(self, sampler, epoch: int) -> bool:
        """The epoch's remaining steps (with mid-epoch checkpoints); True when stopped early."""
        st, every = self.state, self.cfg.train.checkpoint_every
        t0 = time.perf_counter()
        stopped = False
        for batch in self.feeder.batches(sampler, epoch):
            self._train_step(batch)
            st["epoch_seconds"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            if self._should_stop():
                stopped = True
                break
            if every and st["global_step"] % every == 0 and st["step_in_epoch"] < self.steps_per_epoch:
                self._checkpoint()
        self.progress.end_epoch()
        return stopped

    def _say_max_steps(self) -> None:
        self.progress.message(f"stopped after train.max_steps={self.cfg.train.max_steps} steps "
                              f"(checkpoint written; continue with --resume)")

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

    def _train_step(self, batch) -> None:
        """One optimiser step, then the position, running sums, progress and TensorBoard."""
        st = self.state
        lr = self.stepper.set_lr(st["global_step"], self.steps_per_epoch)
        logs = self.stepper.step(batch, lr, where=f"step {st['global_step']} (epoch {st['epoch'] + 1})")
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
        """The epoch's row (means, evaluation), selection, checkpoint, metrics.csv, TensorBoard."""
        st, cfg = self.state, self.cfg
        row = self._epoch_means(epoch)
        ddp.broadcast_module(self.net)
        evaluate_now = (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.optim.epochs
        if evaluate_now:
            for split in selection_splits(cfg.eval.select):
                metrics = self.selector.evaluate(split)
                row.update({f"{split}_{k}": metrics[k] for k in METRIC_KEYS if k in metrics})
        row["seconds"] = st["epoch_seconds"]
        st["history"].append(row)
        if evaluate_now:
            self.selector.maybe_select(st, epoch, row, self._model_state)
        st.update(epoch=epoch + 1, step_in_epoch=0, sums={}, count=0, epoch_seconds=0.0)
        self._checkpoint()
        self.run_dir.write_metrics(st["history"])
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, float) and math.isfinite(v):
                    self.writer.add_scalar(f"epoch/{k}", v, epoch + 1)
            self.writer.flush()
        shown = " ".join(f"{k} {row[k]:.4f}" for k in ("loss", "val_srcc", "val_plcc", "test_srcc") if k in row)
        self.progress.message(f"epoch {epoch + 1}/{cfg.optim.epochs}: {shown} ({row['seconds']:.1f} s)")

    def _epoch_means(self, epoch: int) -> dict[str, Any]:
        """The epoch's logged values averaged over its steps (and over the ranks)."""
        st = self.state
        sums = ddp.all_reduce_sums({**st["sums"], "_count": float(st["count"])}, self.device)
        count = max(1.0, sums.pop("_count"))
        means = {k: v / count for k, v in sums.items()}
        row: dict[str, Any] = {"epoch": epoch + 1, "step": st["global_step"]}
        row.update({k: means.pop(k) for k in ("lr", "loss") if k in means})
        row.update(sorted(means.items()))
        return row

    # --- weights and checkpoints -------------------------------------------------------------

    def _model_state(self) -> dict[str, torch.Tensor]:
        return model_state(self.net, self.cfg.model.finetune.mode)

    def _load_model_state(self, tensors: dict[str, torch.Tensor]) -> None:
        load_model_state(self.net, self.cfg.model.finetune.mode, tensors)

    def _checkpoint(self) -> None:
        if self.info.is_main:
            save_training_checkpoint(self.run_dir.path, self.state, self._model_state(), self.stepper.optimizer,
                                     self.stepper.scaler, self.teacher, self.hash, self.info.world,
                                     self.cfg.train.keep_checkpoints)
        ddp.barrier()

    # --- the end -----------------------------------------------------------------------------

    def _check_replicas(self) -> None:
        """Under DDP every rank must hold the same weights at the end; a mismatch is a bug, not noise."""
        if not self.info.enabled:
            return
        digests = ddp.all_gather_objects(weights_digest(self._model_state()))
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP replicas diverged: rank weight digests {digests}")

    def _finish(self) -> TrainResult:
        cfg = self.cfg
        self._check_replicas()
        metrics = self.selector.final_metrics(self.state, self._load_model_state)
        result = TrainResult(self.run_dir.path, self.run_dir.best_model(), metrics, self.state["history"],
                             self.feeder.stats())
        if self.info.is_main:
            self.run_dir.write_result(result.to_dict())
            self.progress.message(
                f"done: best epoch {metrics['best_epoch']} (by {cfg.eval.select}); "
                + " ".join(f"{s} SRCC {metrics[s]['srcc']:.4f} PLCC {metrics[s]['plcc']:.4f}"
                           for s in ("val", "test") if metrics[s].get("srcc") is not None)
                + f"; model {result.best_model}")
        ddp.barrier()
        return result

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
