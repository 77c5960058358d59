"""DDP: ``torchrun --nproc_per_node 2`` (python -m torch.distributed.run) with the Gloo backend on
CPU trains a tiny cached run; both ranks end with the same weights, rank 0 alone writes the run."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from qfmiqm.data.synth import SynthOptions, synthesize

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import os, sys
from safetensors.torch import save_file
from qfmiqm.train import engine
from qfmiqm.train.schema import load_train_config

out, run = sys.argv[1], sys.argv[2]
original = engine._Trainer._finish

def finish(self):
    # each rank's weights as training left them (before the best checkpoint is reloaded)
    assert self.info.world == 2 and self.model.__class__.__name__ == "DistributedDataParallel"
    save_file(self._model_state(), os.path.join(out, f"rank{self.info.rank}.safetensors"))
    return original(self)

engine._Trainer._finish = finish
cfg = load_train_config(os.path.join(sys.argv[3], "configs", "synthetic_qfm.yaml"), sys.argv[4:])
result = engine.run_training(cfg, run)
print(f"rank {os.environ['RANK']} done: complete={result.complete} steps={result.history[-1]['step']}")
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo_agree(tmp_path):
    synthesize(tmp_path / "syn", ROOT / "samples", SynthOptions(types=("gaussian_blur", "white_noise"),
                                                                levels=(1, 3, 5), size=224, crops=2), workers=0)
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    run = tmp_path / "run"
    overrides = [f"data.dataset={tmp_path / 'syn' / 'labels.csv'}", f"train.cache_dir={tmp_path / 'cache'}",
                 "optim.batch_size=4", "optim.epochs=2", "optim.warmup_epochs=1", "train.crops_per_image=2",
                 "train.workers=0", "train.threads=1", "train.device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), str(script), str(tmp_path), str(run), str(ROOT), *overrides],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0 done: complete=True" in proc.stdout and "rank 1 done: complete=True" in proc.stdout

    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # training moved the weights (the channel gate starts at exactly 3.0 everywhere)
    gates = [a[k] for k in a if k.startswith("gate.logits")]
    assert gates and any((g != 3.0).any() for g in gates)

    # 28 training images / 2 ranks / batch 4 = 3 steps per epoch on each rank: the data was sharded
    assert "steps=6" in proc.stdout
    assert (run / "result.json").is_file() and (run / "best.safetensors").is_file()
    log = (run / "train.log").read_text()
    assert "2 processes" in log and log.count("done: best epoch") == 1  # rank 0 alone writes
