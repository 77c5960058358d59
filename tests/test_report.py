"""Evaluation report files and the N-split protocol tables (aggregation, paper table,
cross-dataset matrix, ablation with a paired Wilcoxon test)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats
from scipy.special import expit

from qfmiqm.errors import UsageError
from qfmiqm.eval import report
from qfmiqm.eval.metrics import all_metrics, plcc, srcc

TYPES = ("blur", "jpeg", "noise")


def _strict_json(path):
    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constants)


def _assert_real_png(path, min_colours: int = 3):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width > 100 and img.height > 100
        rgb = np.asarray(img.convert("RGB"))
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) >= min_colours  # not a flat image


def _predictions(with_type: bool) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 90
    mos = rng.uniform(1, 5, n)
    prediction = 100 * expit((mos - 3) * 1.2) + rng.normal(0, 4, n)
    table = pd.DataFrame({"path": [f"img_{i:03d}.png" for i in range(n)], "mos": mos, "prediction": prediction})
    if with_type:
        table["type"] = [TYPES[i % 3] for i in range(n)]
    return table


def _no_temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


# --------------------------------------------------------------------------- one evaluation


def test_report_files_exist_and_parse(tmp_path):
    table = _predictions(with_type=False)
    table.loc[5, "prediction"] = np.nan  # an image that failed to score
    result = report.write_evaluation_report(table, tmp_path / "out", title="Unit test")
    out = tmp_path / "out"
    assert set(result.files) == {"predictions", "metrics", "markdown", "scatter"}
    assert not (out / report.REPORT_FILES["per_type"]).exists()
    assert _no_temp_files(out)

    clean = table.drop(index=5)
    expected = all_metrics(clean["prediction"], clean["mos"])
    document = _strict_json(out / "metrics.json")
    assert document["n_dropped"] == 1 and result.n_dropped == 1
    assert document["metrics"]["n"] == len(clean)
    for key in ("srcc", "krcc", "plcc", "plcc_fit", "rmse", "rmse_fit"):
        assert document["metrics"][key] == pytest.approx(expected[key])
    assert document["fit"]["kind"] == "logistic" and len(document["fit"]["params"]) == 4
    assert "per_type" not in document

    back = pd.read_csv(out / "predictions.csv")
    assert list(back.columns) == ["path", "mos", "prediction"]
    assert back["path"].tolist() == table["path"].tolist()
    assert np.allclose(back["mos"], table["mos"])
    assert back["prediction"].isna().sum() == 1

    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "# Unit test" in markdown
    assert "| metric | value |" in markdown
    assert f"| SRCC | {expected['srcc']:.4f} |" in markdown
    assert "1 row(s) without a finite prediction" in markdown
    assert "](scatter.png)" in markdown
    _assert_real_png(out / "scatter.png")


def test_report_with_types_has_per_type_table_and_plot(tmp_path):
    table = _predictions(with_type=True)
    result = report.write_evaluation_report(table, tmp_path)
    document = _strict_json(tmp_path / "metrics.json")
    assert set(document["per_type"]) == set(TYPES)
    for name in TYPES:
        group = table[table["type"] == name]
        assert document["per_type"][name]["n"] == len(group)
        assert document["per_type"][name]["srcc"] == pytest.approx(srcc(group["prediction"], group["mos"]))
        assert document["per_type"][name]["plcc"] == pytest.approx(plcc(group["prediction"], group["mos"]))
    assert result.per_type["type"].tolist() == sorted(TYPES)

    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## SRCC per distortion type" in markdown
    assert "| type | n | SRCC | PLCC |" in markdown
    blur = document["per_type"]["blur"]
    assert f"| blur | {blur['n']} | {blur['srcc']:.3f} |" in markdown
    assert list(pd.read_csv(tmp_path / "predictions.csv").columns) == ["path", "mos", "prediction", "type"]
    _assert_real_png(tmp_path / "per_type_srcc.png")
    _assert_real_png(tmp_path / "scatter.png")


def test_undefined_per_type_srcc_is_null_not_a_crash(tmp_path):
    table = _predictions(with_type=True)
    table.loc[table["type"] == "jpeg", "prediction"] = 50.0  # constant within one type
    report.write_evaluation_report(table, tmp_path)
    document = _strict_json(tmp_path / "metrics.json")
    assert document["per_type"]["jpeg"]["srcc"] is None
    assert document["per_type"]["blur"]["srcc"] > 0.5
    assert "| jpeg | 30 | — | — |" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_missing_columns_are_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="lacks column.*prediction"):
        report.write_evaluation_report(pd.DataFrame({"path": ["a"], "mos": [1.0]}), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "metrics.json"
    report.write_json_atomic(target, {"srcc": 0.5, "bad": float("nan")})
    assert _strict_json(target) == {"srcc": 0.5, "bad": None}
    with pytest.raises(RuntimeError):
        with report.atomic_path(target) as tmp:
            tmp.write_text("{half", encoding="utf-8")
            raise RuntimeError("interrupted")
    assert _strict_json(target) == {"srcc": 0.5, "bad": None}
    assert _no_temp_files(tmp_path)


# --------------------------------------------------------------------------- protocol helpers


def test_aggregate_splits_medians_and_std():
    splits = [
        {"srcc": 0.90, "plcc": 0.80, "fit": "logistic", "n": 100},
        {"srcc": 0.70, "plcc": 0.95, "fit": "linear", "n": 100},
        {"srcc": 0.85, "plcc": float("nan"), "fit": None, "n": 100},
    ]
    agg = report.aggregate_splits(splits)
    assert "fit" not in agg
    assert agg["srcc"]["median"] == pytest.approx(0.85)
    assert agg["srcc"]["std"] == pytest.approx(np.std([0.90, 0.70, 0.85]))
    assert agg["srcc"]["splits"] == 3
    # the NaN split is left out of PLCC instead of poisoning it
    assert agg["plcc"]["median"] == pytest.approx(0.875) and agg["plcc"]["splits"] == 2
    assert report.aggregate_splits(splits, ddof=1)["srcc"]["std"] == pytest.approx(np.std([0.90, 0.70, 0.85], ddof=1))
    with pytest.raises(UsageError, match="no splits"):
        report.aggregate_splits([])


def test_paper_table_cells_are_srcc_slash_plcc_medians():
    ours = report.aggregate_splits([{"srcc": s, "plcc": p} for s, p in [(0.91, 0.92), (0.93, 0.94), (0.95, 0.90)]])
    results = {"QFM-IQM": {"LIVE": ours, "KonIQ": {"srcc": 0.8, "plcc": 0.85}},
               "DEIQT": {"LIVE": {"srcc": 0.97, "plcc": 0.5}}}
    table = report.paper_table(results)
    lines = table.splitlines()
    assert lines[0] == "| Method | LIVE (SRCC / PLCC) | KonIQ (SRCC / PLCC) |"
    assert lines[2] == "| QFM-IQM | 0.930 / **0.920** | **0.800** / **0.850** |"
    assert lines[3] == "| DEIQT | **0.970** / 0.500 | — / — |"
    plain = report.paper_table(results, ["KonIQ"], bold_best=False, digits=2)
    assert plain.splitlines()[2] == "| QFM-IQM | 0.80 / 0.85 |"


def test_cross_dataset_matrix_markdown_and_heatmap(tmp_path):
    matrix = {"koniq": {"koniq": 0.93, "spaq": 0.85, "livec": {"srcc": {"median": 0.80}}},
              "spaq": {"koniq": 0.71, "spaq": 0.92}}
    frame = report.cross_dataset_frame(matrix)
    assert frame.loc["koniq", "livec"] == pytest.approx(0.80)
    assert math.isnan(frame.loc["spaq", "livec"])
    lines = report.cross_dataset_markdown(matrix).splitlines()
    assert lines[0] == "| train \\ test (SRCC) | koniq | spaq | livec |"
    assert lines[3] == "| spaq | 0.710 | 0.920 | — |"
    path = report.cross_dataset_heatmap(matrix, tmp_path / "cross.png")
    _assert_real_png(path)
    assert _no_temp_files(tmp_path)


def test_ablation_paired_wilcoxon_matches_scipy():
    base = [0.90, 0.91, 0.92, 0.90, 0.93, 0.90, 0.91, 0.89]
    worse = [0.88, 0.90, 0.90, 0.89, 0.90, 0.88, 0.92, 0.86]
    table = report.ablation_table({"full": base, "no gate": worse}, baseline="full")
    full, ablated = table.rows
    assert full.note == "baseline" and math.isnan(full.p_value)
    diffs = np.subtract(worse, base)
    assert ablated.diffs == pytest.approx(diffs.tolist())
    assert ablated.diff_median == pytest.approx(np.median(diffs))
    assert (ablated.wins, ablated.ties, ablated.losses) == (1, 0, 7)
    assert ablated.p_value == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert ablated.median == pytest.approx(np.median(worse))
    markdown = table.to_markdown()
    assert "| variant | SRCC median |" in markdown and "| no gate | 0.895 | " in markdown
    assert "| -0.020 | 1 / 0 / 7 |" in markdown
    assert json.dumps(report.jsonable(table.to_dict()), allow_nan=False)


def test_ablation_notes_too_few_splits_and_identical_results():
    base = [0.90, 0.91, 0.92]
    rows = report.ablation_table({"a": base, "b": [0.91, 0.93, 0.90], "same": list(base)}, baseline="a").rows
    assert math.isnan(rows[1].p_value) and "too few splits" in rows[1].note
    assert math.isnan(rows[2].p_value) and "identical to the baseline on every split" in rows[2].note
    assert (rows[2].wins, rows[2].ties, rows[2].losses) == (0, 3, 0)


def test_ablation_reads_metric_dicts_and_counts_rmse_lower_as_better():
    base = [{"srcc": 0.9, "rmse": 10.0}] * 6
    better = [{"srcc": 0.9, "rmse": 9.0 - 0.1 * i} for i in range(6)]
    row = report.ablation_table({"base": base, "new": better}, baseline="base", metric="rmse").rows[1]
    assert (row.wins, row.losses) == (6, 0)
    assert row.p_value == pytest.approx(stats.wilcoxon(np.array([r["rmse"] for r in better]) - 10.0).pvalue)


def test_ablation_input_errors():
    with pytest.raises(UsageError, match="baseline 'x' is not among"):
        report.ablation_table({"a": [0.9, 0.8]}, baseline="x")
    with pytest.raises(UsageError, match="paired by split"):
        report.ablation_table({"a": [0.9, 0.8], "b": [0.9]}, baseline="a")
