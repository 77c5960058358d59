"""qfmiqm protocol: N-split bookkeeping, medians, resume, ablation and cross-dataset tables."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from qfmiqm.cli import app

FAST = ["--set", "optim.epochs=1", "--set", "optim.batch_size=4", "--set", "train.crops_per_image=1", "--set", "train.workers=0",
        "--set", "train.progress=false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, synth_from_samples):
    root = tmp_path_factory.mktemp("protocol")
    a = synth_from_samples(root / "blurnoise", "gaussian_blur,white_noise")
    b = synth_from_samples(root / "jpegcontrast", "jpeg,contrast_change")
    return root, a, b


def _protocol(args, cache):
    return CliRunner().invoke(app, ["protocol", *args, *FAST, "--set", f"train.cache_dir={cache}"])


def test_ten_splits_medians_and_resume(data, tmp_path):
    root, labels, _ = data
    out = tmp_path / "p"
    args = ["-c", "configs/synthetic_deiqt.yaml", "--splits", "10", "--out", str(out),
            "--set", f"data.dataset={labels}", "--set", "data.val_fraction=0.0", "--set", "eval.select=last"]
    first = _protocol(args, root / "cache")
    assert first.exit_code == 0, first.output
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits["splits"]) == 10
    results = json.loads((out / "results.json").read_text())
    references = {row["reference"] for row in csv.DictReader(open(labels))}
    assert results["references"] == len(references) > 1
    srcc = [r["srcc"] for r in results["per_split"]["synthetic_deiqt"]]
    assert len(srcc) == 10
    assert results["summary"]["synthetic_deiqt"]["srcc"]["median"] == pytest.approx(np.median(srcc))
    for i in range(10):
        record = json.loads((out / "synthetic_deiqt" / f"split{i:02d}" / "result.json").read_text())
        assert record["split"] == i and record["test"]["srcc"] == pytest.approx(srcc[i])
    assert "| synthetic_deiqt |" in (out / "results.md").read_text()

    # an interrupted protocol: the last three splits never finished
    for i in (7, 8, 9):
        (out / "synthetic_deiqt" / f"split{i:02d}" / "result.json").unlink()
    again = _protocol(args, root / "cache")
    assert again.exit_code == 0, again.output
    assert again.stderr.count("done earlier") == 7
    resumed = json.loads((out / "results.json").read_text())["per_split"]["synthetic_deiqt"]
    np.testing.assert_allclose([r["srcc"] for r in resumed], srcc, atol=1e-6)


def test_two_methods_share_splits_and_get_an_ablation_table(data, tmp_path):
    root, labels, _ = data
    out = tmp_path / "ab"
    result = _protocol(["-c", "configs/synthetic_deiqt.yaml", "-c", "configs/synthetic_qfm.yaml", "--splits", "2",
                        "--out", str(out), "--set", f"data.dataset={labels}"], root / "cache")
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["per_split"]) == {"synthetic_deiqt", "synthetic_qfm"}
    assert "ablation" in doc and "Wilcoxon" in (out / "results.md").read_text()
    for method in ("synthetic_deiqt", "synthetic_qfm"):
        card = json.loads((out / method / "split00" / "best.json").read_text())
        assert card["trained"] is True


def test_cross_dataset_matrix(data, tmp_path):
    root, a, b = data
    out = tmp_path / "x"
    result = _protocol(["-c", "configs/synthetic_deiqt.yaml", "--cross", f"{a},{b}", "--out", str(out),
                        "--set", f"data.dataset={a}", "--set", "eval.select=last"], root / "cache")
    assert result.exit_code == 0, result.output
    matrix = json.loads((out / "cross.json").read_text())
    assert set(matrix) == {str(a), str(b)} and all(set(row) == {str(a), str(b)} for row in matrix.values())
    assert "Cross-dataset SRCC" in (out / "cross.md").read_text()
    with Image.open(out / "cross.png") as im:
        assert im.format == "PNG" and im.width > 100


def test_protocol_errors(tmp_path):
    bad = CliRunner().invoke(app, ["protocol", "-c", "configs/synthetic_deiqt.yaml", "--set", "optim.lrr=1"])
    assert bad.exit_code == 2 and "optim.lrr" in bad.stderr
    missing = CliRunner().invoke(app, ["protocol", "-c", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2


def test_a_split_trained_by_hand_counts_as_done_and_an_unfinished_one_does_not(tmp_path):
    """A split run in parallel with `qfmiqm train` into the protocol's split folder leaves the
    run's own result.json (metrics under "metrics"): the protocol reads its test metrics from it."""
    from qfmiqm.eval.protocol import _finished

    run = tmp_path / "split03"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"complete": True, "best_model": "b.safetensors", "history": [],
                                                 "metrics": {"test": {"srcc": 0.5}, "val": {"srcc": 0.6}}}))
    assert _finished(run, 3) == {"split": 3, "test": {"srcc": 0.5}, "val": {"srcc": 0.6}, "best_model": "b.safetensors"}
    (run / "result.json").write_text(json.dumps({"complete": False, "metrics": {}}))  # stopped at max_steps
    assert _finished(run, 3) is None
    (run / "result.json").write_text('{"split": 3, "te')  # half-written
    assert _finished(run, 3) is None
    (run / "result.json").write_text(json.dumps({"split": 3, "test": {"srcc": 0.4}, "val": {}, "best_model": None}))
    assert _finished(run, 3)["test"] == {"srcc": 0.4}  # the protocol's own record
