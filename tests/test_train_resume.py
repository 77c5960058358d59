"""kill -9 in the middle of a real training process, then --resume: the run ends with the same
weights and metrics as an uninterrupted one (end-to-end mode: the live backbone, DataLoader
workers, random crops and flips)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from qfmiqm.data.synth import SynthOptions, synthesize
from qfmiqm.train.checkpoint import list_checkpoints
from qfmiqm.train.engine import run_training
from qfmiqm.train.progress import Progress
from qfmiqm.train.schema import load_train_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic_deiqt.yaml"


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    synthesize(tmp_path / "syn", ROOT / "samples", SynthOptions(types=("gaussian_blur", "white_noise"),
                                                                levels=(1, 3, 5), size=224, crops=2), workers=0)
    overrides = [f"data.dataset={tmp_path / 'syn' / 'labels.csv'}", "train.cache_features=false",
                 "optim.batch_size=4", "optim.epochs=1", "optim.warmup_epochs=0.5", "train.workers=1",
                 "train.threads=2", "train.checkpoint_every=1", "train.keep_checkpoints=2"]

    run_b = tmp_path / "killed"
    args = [sys.executable, "-m", "qfmiqm", "train", "--config", str(CONFIG), "--out", str(run_b)]
    for o in overrides:
        args += ["--set", o]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            steps = [int(p.name.split("-")[1]) for p in list_checkpoints(run_b)]
            if steps and max(steps) >= 3:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_b / "result.json").exists()

    cfg = load_train_config(CONFIG, overrides)
    resumed = run_training(cfg, run_b, resume=True, progress=Progress(enabled=False))
    assert "resumed from ckpt-" in (run_b / "train.log").read_text()
    full = run_training(cfg, tmp_path / "full", progress=Progress(enabled=False))

    assert resumed.complete and resumed.metrics["test"] == full.metrics["test"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    a, b = load_file(str(full.best_model)), load_file(str(resumed.best_model))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
