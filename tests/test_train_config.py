"""Training configs: inheritance, overrides, the shipped configs, and bad configs failing
before any work with one line naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from qfmiqm.cli import app
from qfmiqm.errors import UsageError
from qfmiqm.train.schema import TrainConfig, load_train_config, result_hash

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
BENCHMARKS = ("live", "csiq", "tid2013", "kadid10k", "livec", "koniq10k", "livefb", "spaq")


def test_every_paper_config_inherits_deiqt_hyperparameters():
    for ds in BENCHMARKS:
        for method in ("deiqt", "qfm"):
            path = CONFIGS / f"{ds}_{method}.yaml"
            text = path.read_text()
            assert "_base_:" in text and "lr" not in text  # inherits, never copies
            cfg = load_train_config(path)
            assert cfg.data.dataset == ds
            assert cfg.model.backbone == "vit_small_patch16_224"
            assert (cfg.model.decoder.width, cfg.model.decoder.heads, cfg.model.decoder.grid) == (0, 6, 0)
            assert cfg.model.finetune.mode == "full"
            o = cfg.optim
            assert (o.optimizer, o.lr, o.weight_decay, o.batch_size, o.epochs) == ("adamw", 2e-4, 0.05, 16, 9)
            assert (o.warmup_epochs, o.warmup_lr, o.schedule, o.decay_epochs, o.decay_rate) == (3, 2e-7, "step", 3, 0.1)
            assert cfg.data.repeats == 10 and cfg.model.input.size == 224 and cfg.model.input.num_crops > 1
            qfm_on = (cfg.qfm.match, cfg.qfm.adv, cfg.qfm.kd, cfg.model.decoder.gate)
            assert qfm_on == ((True,) * 4 if method == "qfm" else (False,) * 4)


def test_synthetic_configs_are_small_frozen_and_cached():
    for method in ("deiqt", "qfm"):
        cfg = load_train_config(CONFIGS / f"synthetic_{method}.yaml")
        assert cfg.model.backbone == "efficientnet_lite0" and cfg.model.finetune.mode == "frozen"
        assert cfg.train.cache_features and cfg.train.device == "cpu"
        assert cfg.model.input.mean is None  # reset from base.yaml to the backbone's own
        assert cfg.model.decoder.width == 32


def test_inheritance_and_overrides(tmp_path):
    (tmp_path / "parent.yaml").write_text("data: {dataset: a.csv, repeats: 3}\noptim: {lr: 0.5, epochs: 4}\n")
    (tmp_path / "child.yaml").write_text("_base_: parent.yaml\noptim: {lr: 0.25}\n")
    cfg = load_train_config(tmp_path / "child.yaml", ["optim.batch_size=4", "qfm.match=false",
                                                      "model.input.mean=[0.5, 0.5, 0.5]"])
    assert cfg.optim.lr == 0.25 and cfg.optim.epochs == 4 and cfg.data.repeats == 3  # merged, not replaced
    assert cfg.optim.batch_size == 4 and cfg.qfm.match is False and cfg.model.input.mean == (0.5, 0.5, 0.5)
    assert cfg.optim.weight_decay == TrainConfig().optim.weight_decay  # untouched defaults from the schema
    # operational keys do not change the result hash; anything else does
    assert result_hash(cfg) == result_hash(cfg.replace(**{"train.workers": 3, "out.dir": "elsewhere"}))
    assert result_hash(cfg) != result_hash(cfg.replace(**{"optim.lr": 0.1}))


@pytest.mark.parametrize("overrides, key", [
    (["optim.learning_rate=1"], "optim.learning_rate"),
    (["optim.lr=fast"], "optim.lr"),
    (["optim.epochs=2.5"], "optim.epochs"),
    (["train.amp=fp8"], "train.amp"),
    (["qfm.match_distance=cubic"], "qfm.match_distance"),
    (["qfm.lambda_adv=-1"], "qfm.lambda_adv"),
    (["model.finetune.mode=half"], "model.finetune"),
    (["model.decoder.heads=3"], "model.decoder.heads"),
    (["model.input.mean=[0.5]"], "model.input.mean"),
    (["data.split=12"], "data.split"),
    (["optim.schedule=exp"], "optim.schedule"),
    (["train.cache_features=true", "model.finetune.mode=full"], "train.cache_features"),
    (["data.val_fraction=0"], "eval.select"),
    (["optim.gate_lr_scale=-1"], "optim.gate_lr_scale"),
    (["data.group_size=-2"], "data.group_size"),
    (["qfm.gate_l1=-0.5"], "qfm.gate_l1"),
    (["data.group_anchor=true"], "data.group_anchor"),
])
def test_bad_keys_fail_with_one_line_naming_the_key(overrides, key):
    with pytest.raises(UsageError) as err:
        load_train_config(None, ["data.dataset=x.csv", *overrides])
    message = str(err.value)
    assert key in message and "\n" not in message


def test_missing_dataset_key():
    with pytest.raises(UsageError, match="data.dataset"):
        load_train_config(None, [])


def _train(args, tmp_path):
    return CliRunner().invoke(app, ["train", *args, "--out", str(tmp_path / "run")])


def test_cli_errors_before_any_work(tmp_path):
    # unknown key in a file
    bad = tmp_path / "bad.yaml"
    bad.write_text("_base_: " + str(CONFIGS / "synthetic_deiqt.yaml") + "\noptim: {lrr: 1}\n")
    r = _train(["--config", str(bad)], tmp_path)
    assert r.exit_code == 2 and "optim.lrr" in r.output and "Traceback" not in r.output

    # missing dataset root / images
    r = _train(["--config", str(CONFIGS / "livec_deiqt.yaml"), "--root", str(tmp_path / "nowhere"),
                "--backbone-weights", str(bad)], tmp_path)
    assert r.exit_code == 2 and "data.dataset" in r.output and "livec" in r.output, r.output

    # missing backbone weights (ViT-S/16 has no packaged weights)
    r = _train(["--config", str(CONFIGS / "koniq10k_qfm.yaml")], tmp_path)
    assert r.exit_code == 2 and "model.backbone_weights" in r.output
    r = _train(["--config", str(CONFIGS / "koniq10k_qfm.yaml"), "--backbone-weights", str(tmp_path / "no.pth")],
               tmp_path)
    assert r.exit_code == 2 and "model.backbone_weights" in r.output and "not found" in r.output

    # incomplete user dataset (a listed image is missing)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,score\nmissing1.png,50\nmissing2.png,60\n")
    r = _train(["--config", str(CONFIGS / "synthetic_deiqt.yaml"), "--set", f"data.dataset={csv}"], tmp_path)
    assert r.exit_code == 2 and "data.dataset" in r.output and "missing" in r.output
    assert not (tmp_path / "run").exists()  # nothing was started


def test_protocol185_configs_load_and_setting_b_distills_on_cached_block_inputs():
    """Issue 23's configs: every one loads; setting (b) trains the last block on cached block
    inputs, and its QFM-IQM keeps the EMA-teacher distillation (which the cache now supports)."""
    paths = sorted(CONFIGS.glob("protocol185*.yaml"))
    assert len(paths) >= 10
    for path in paths:
        assert load_train_config(path).data.dataset.startswith("datasets/protocol185")
    b = load_train_config(CONFIGS / "protocol185_last1_qfm_tuned.yaml")
    assert (b.model.finetune.mode, b.model.finetune.last_n, b.train.cache_block_inputs) == ("last_n", 1, True)
    assert b.qfm.kd and b.data.extra == "train" and b.distill.teacher == "ema"
    with pytest.raises(UsageError, match="distill.teacher=ema"):
        load_train_config(CONFIGS / "protocol185_last1_qfm_tuned.yaml", ["distill.teacher=some_model.safetensors"])
