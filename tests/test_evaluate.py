"""qfmiqm evaluate / diagnose on a small synthetic set made from the sample photos."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import qfmiqm
from qfmiqm.cli import app


@pytest.fixture(scope="module")
def synth_csv(tmp_path_factory, synth_from_samples):
    return synth_from_samples(tmp_path_factory.mktemp("synth"), "gaussian_blur,white_noise")


def _png_ok(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 10  # not a blank canvas


def test_evaluate_writes_a_complete_report(synth_csv, tmp_path):
    out = tmp_path / "ev"
    result = CliRunner().invoke(app, ["evaluate", "-c", "default", "-d", str(synth_csv), "-o", str(out),
                                      "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "SRCC" in result.stdout
    table = pd.read_csv(out / "predictions.csv")
    labels = pd.read_csv(synth_csv)
    assert len(table) == len(labels) and {"path", "mos", "prediction", "type"} <= set(table.columns)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["n"] == len(labels)
    assert set(metrics["per_type"]) >= {"gaussian_blur", "white_noise"}
    assert "| " in (out / "report.md").read_text()
    _png_ok(out / "scatter.png")
    _png_ok(out / "per_type_srcc.png")


@pytest.fixture(scope="module")
def saved_splits(synth_csv, tmp_path_factory):
    """(dataset, its 2 splits, their saved split file): what a protocol leaves behind."""
    ds = qfmiqm.datasets.load(str(synth_csv))
    splits = ds.splits(n=2, test_fraction=0.34, seed=1)
    return ds, splits, splits.save(tmp_path_factory.mktemp("splits") / "splits.json")


def test_evaluate_on_one_side_of_a_split_file(synth_csv, saved_splits, tmp_path):
    _, splits, split_file = saved_splits
    out = tmp_path / "ev"
    result = CliRunner().invoke(app, ["evaluate", "-c", "default", "-d", str(synth_csv), "-o", str(out),
                                      "--split-file", str(split_file), "--split-index", "1", "--device", "cpu",
                                      "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out / "predictions.csv")) == len(splits[1].test)


def test_evaluate_usage_errors(synth_csv, tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["evaluate", "-c", "nope", "-d", str(synth_csv)]).exit_code == 2
    assert runner.invoke(app, ["evaluate", "-c", "default", "-d", str(tmp_path / "none.csv")]).exit_code == 2
    bad = runner.invoke(app, ["evaluate", "-c", "default", "-d", str(synth_csv), "--subset", "val"])
    assert bad.exit_code == 2 and "--split-file" in bad.stderr


def test_diagnose_reports_backbone_and_gated_spaces(synth_csv, tmp_path):
    out = tmp_path / "dg"
    result = CliRunner().invoke(app, ["diagnose", "-c", "default", "-d", str(synth_csv), "-o", str(out),
                                      "--device", "cpu", "--k", "3"])
    assert result.exit_code == 0, result.output
    table = json.loads((out / "diagnose.json").read_text())
    assert set(table["spaces"]) == {"backbone", "gated"} and table["k"] == 3
    n = len(pd.read_csv(synth_csv))
    assert len(table["spaces"]["backbone"]["per_image_share"]) == n
    assert all(0.0 <= s <= 1.0 for s in table["spaces"]["gated"]["share"])
    assert "backbone 3-NN" in result.stdout
    _png_ok(out / "diagnose.png")


def test_diagnose_one_side_of_a_saved_split(synth_csv, saved_splits, tmp_path):
    """A protocol's split file picks the images: the test side of split 1 only."""
    ds, splits, split_file = saved_splits
    out = tmp_path / "dg1"
    result = CliRunner().invoke(app, ["diagnose", "-c", "default", "-d", str(synth_csv), "-o", str(out),
                                      "--split-file", str(split_file), "--split-index", "1", "--device", "cpu",
                                      "--k", "2"])
    assert result.exit_code == 0, result.output
    table = json.loads((out / "diagnose.json").read_text())
    test_paths = {ds.paths[i] for i in splits[1].test}
    assert table["n"] == len(splits[1].test) < len(ds)
    assert set(table["spaces"]["backbone"]["per_image_share"]) == {str(p) for p in test_paths}

