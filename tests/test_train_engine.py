"""The training engine on a tiny synthetic set (crops of the sample photos, blurred and noised):
frozen EfficientNet-Lite0 with cached features, width-32 decoder, all QFM components on.

Covers the run directory, the exported best model (loads with qfmiqm.load and scores the
validation images exactly as recorded), feature-cache reuse across runs, resume after a stop
(equal to the uninterrupted run, bit for bit) and skipping a damaged checkpoint.
"""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import qfmiqm
from qfmiqm.data.synth import SynthOptions, synthesize
from qfmiqm.errors import UsageError
from qfmiqm.models.backbones import Backbone
from qfmiqm.train.checkpoint import list_checkpoints
from qfmiqm.train.config import build
from qfmiqm.train.engine import run_training
from qfmiqm.train.progress import Progress
from qfmiqm.train.schema import TrainConfig, load_train_config, result_hash

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3


def make_set(out: Path) -> Path:
    """6 reference crops (2 per sample photo) x blur/noise x 3 levels + references = 42 images."""
    synthesize(out, ROOT / "samples", SynthOptions(types=("gaussian_blur", "white_noise"), levels=(1, 3, 5),
                                                   size=224, crops=2), workers=0)
    return out / "labels.csv"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("train")
    yield tmp, make_set(tmp / "syn")
    torch.set_num_threads(before)


def config(work, *extra: str) -> TrainConfig:
    tmp, labels = work
    return load_train_config(ROOT / "configs" / "synthetic_qfm.yaml", [
        f"data.dataset={labels}", f"train.cache_dir={tmp / 'cache'}", "optim.batch_size=8",
        f"optim.epochs={EPOCHS}", "optim.warmup_epochs=1", "optim.decay_epochs=2", "train.crops_per_image=2",
        "train.workers=0", "train.log_every=2", *extra])


def quiet() -> Progress:
    return Progress(enabled=False)


@pytest.fixture(scope="module")
def full_run(work):
    tmp, _ = work
    return run_training(config(work), tmp / "full", progress=quiet())


def test_run_directory(full_run, work):
    run = full_run.run_dir
    for name in ("config.yaml", "splits.json", "metrics.csv", "train.log", "result.json", "best.safetensors",
                 "best.json"):
        assert (run / name).is_file(), name
    # the resolved config reads back as the same config
    again = build(TrainConfig, yaml.safe_load((run / "config.yaml").read_text()))
    assert result_hash(again) == result_hash(config(work))
    splits = json.loads((run / "splits.json").read_text())
    assert splits["format"] == "qfmiqm-splits/1" and len(splits["splits"]) == 10
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for key in ("lr", "loss", "reg", "match", "adv", "kd", "gate_mean", "val_srcc", "val_plcc"):
        assert all(np.isfinite(float(r[key])) for r in rows), key
    assert float(rows[0]["kd"]) > 0 and float(rows[0]["adv"]) > 0  # the QFM terms really ran
    # last checkpoints (keep 2) with their state, plus the best one
    ckpts = list_checkpoints(run)
    assert len(ckpts) == 2
    state = json.loads((ckpts[-1] / "state.json").read_text())
    assert state["epoch"] == EPOCHS and state["step_in_epoch"] == 0
    assert state["config_hash"] == result_hash(config(work))
    assert {"model", "optim", "rng", "teacher"} <= set(state["files"])
    assert list_checkpoints(run / "best")
    # TensorBoard events with the epoch scalars
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "events"))
    acc.Reload()
    assert {"epoch/loss", "epoch/val_srcc", "train/loss"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("epoch/val_srcc")) == EPOCHS


def test_best_model_loads_scores_and_matches_recorded_metrics(full_run):
    card = json.loads((full_run.run_dir / "best.json").read_text())
    assert card["trained"] is True and card["backbone"] == "efficientnet_lite0"
    assert card["metrics"]["selected_on"] == "val" and "test" in card["metrics"]
    assert "split 0 of 10" in card["training_data"]
    best_epoch = full_run.metrics["best_epoch"]
    rows = full_run.history
    assert rows[best_epoch - 1]["val_srcc"] == max(r["val_srcc"] for r in rows)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a trained model: no untrained-placeholder warning
        model = qfmiqm.load(str(full_run.best_model), device="cpu")
    splits = json.loads((full_run.run_dir / "splits.json").read_text())
    val_keys = [splits["keys"][i] for i in splits["splits"][0]["val"]]
    labels_csv = Path(yaml.safe_load((full_run.run_dir / "config.yaml").read_text())["data"]["dataset"])
    table = {r["path"]: float(r["score"]) for r in csv.DictReader(labels_csv.open())}
    scores = model.score([str(labels_csv.parent / k) for k in val_keys])
    assert all(0.0 <= s <= 100.0 for s in scores)
    srcc = qfmiqm.metrics.srcc(scores, [table[k] for k in val_keys])
    assert srcc == pytest.approx(full_run.metrics["val"]["srcc"], abs=1e-6)
    assert full_run.metrics["test"]["srcc"] > 0.5  # blur/noise levels are learnable from frozen features


def test_second_run_reuses_the_cache(full_run, work, monkeypatch):
    rows_seen = []
    original = Backbone.forward

    def counting(self, x):
        rows_seen.append(x.shape[0])
        return original(self, x)

    monkeypatch.setattr(Backbone, "forward", counting)
    tmp, _ = work
    result = run_training(config(work, "train.seed=1", "optim.epochs=1"), tmp / "second", progress=quiet())
    assert rows_seen == [1]  # only the 1-image shape probe when the backbone is built: no crop recomputed
    assert result.cache["crops_computed"] == 0
    assert result.cache["crops_reused"] == full_run.cache["crops_total"] > 0
    assert full_run.cache["crops_computed"] == full_run.cache["crops_total"]


def test_stop_damage_and_resume_equals_uninterrupted(full_run, work, capsys):
    tmp, _ = work
    run = tmp / "resumed"
    ops = ["train.checkpoint_every=1", "train.keep_checkpoints=3"]
    stopped = run_training(config(work, *ops, "train.max_steps=5"), run, progress=quiet())
    assert not stopped.complete and not (run / "result.json").exists()
    ckpts = list_checkpoints(run)
    assert ckpts[-1].name.endswith("000000005") and len(ckpts) == 3

    with pytest.raises(UsageError, match="--resume"):
        run_training(config(work, *ops), run, progress=quiet())
    with pytest.raises(UsageError, match="optim.lr"):
        run_training(config(work, *ops, "optim.lr=0.1"), run, resume=True, progress=quiet())

    # damage the newest checkpoint: resume must skip it, say so, and use step 4
    model_file = ckpts[-1] / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:100])
    capsys.readouterr()
    resumed = run_training(config(work, *ops), run, resume=True, progress=Progress(bar=False))
    err = capsys.readouterr().err
    assert "skipping damaged checkpoint" in err and ckpts[-1].name in err
    assert "resumed from ckpt-000000004" in err

    assert resumed.metrics["test"] == full_run.metrics["test"]
    assert resumed.metrics["val"] == full_run.metrics["val"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(resumed.history) == strip(full_run.history)
    a, b = load_file(str(full_run.best_model)), load_file(str(resumed.best_model))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_a_complete_run_returns_its_result(full_run, work):
    before = (full_run.run_dir / "result.json").stat().st_mtime_ns
    again = run_training(config(work), full_run.run_dir, resume=True, progress=quiet())
    assert again.metrics == json.loads(json.dumps(full_run.metrics))
    assert (full_run.run_dir / "result.json").stat().st_mtime_ns == before  # nothing retrained or rewritten


def test_a_whole_image_model_trains_on_train_size_crops_and_scores_as_validated(work):
    """``model.input.layout: whole`` with ``train_size``: the bank holds crops of that size, the card
    ships the layout, and scoring the validation images reproduces the recorded validation SRCC
    (each 224 px image is one whole view, as in-training validation scores it)."""
    tmp, _ = work
    cfg = config(work, "model.input.layout=whole", "model.input.train_size=224", "optim.epochs=1",
                 "optim.decay_epochs=1", "train.crops_per_image=1")
    run = run_training(cfg, tmp / "whole", progress=quiet())
    card = json.loads((run.run_dir / "best.json").read_text())
    assert card["input"]["layout"] == "whole" and card["input"]["tile"] == 1024
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = qfmiqm.load(str(run.best_model), device="cpu")
    splits = json.loads((run.run_dir / "splits.json").read_text())
    val_keys = [splits["keys"][i] for i in splits["splits"][0]["val"]]
    labels_csv = Path(cfg.data.dataset)
    table = {r["path"]: float(r["score"]) for r in csv.DictReader(labels_csv.open())}
    scores = model.score([str(labels_csv.parent / k) for k in val_keys])
    srcc = qfmiqm.metrics.srcc(scores, [table[k] for k in val_keys])
    assert srcc == pytest.approx(run.metrics["val"]["srcc"], abs=1e-4)
