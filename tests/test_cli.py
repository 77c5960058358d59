from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from qfmiqm.cli import app
from qfmiqm.outputs import read_results


@pytest.fixture()
def runner():
    return CliRunner()


def _stdout_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_score_files_prints_path_score_csv(runner, samples):
    files = [str(samples["chelsea"]), str(samples["coffee"])]
    result = runner.invoke(app, ["score", *files])
    assert result.exit_code == 0, result.output
    rows = _stdout_rows(result.stdout)
    assert [r["path"] for r in rows] == files
    assert list(rows[0]) == ["path", "score"]
    assert all(0 <= float(r["score"]) <= 100 for r in rows)
    assert "UNTRAINED" not in result.stderr  # the embedded default is a trained model


def test_score_folder_recursive_and_glob(runner, samples, tmp_path):
    (tmp_path / "sub").mkdir()
    shutil.copy(samples["chelsea"], tmp_path / "a.jpg")
    shutil.copy(samples["coffee"], tmp_path / "sub" / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    flat = _stdout_rows(runner.invoke(app, ["score", str(tmp_path)]).stdout)
    assert [r["path"].rsplit("/", 1)[-1] for r in flat] == ["a.jpg"]
    deep = _stdout_rows(runner.invoke(app, ["score", str(tmp_path), "--recursive"]).stdout)
    assert sorted(r["path"].rsplit("/", 1)[-1] for r in deep) == ["a.jpg", "b.jpg"]
    globbed = _stdout_rows(runner.invoke(app, ["score", str(tmp_path / "*.jpg")]).stdout)
    assert len(globbed) == 1


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_output_formats_parse_back(runner, samples, tmp_path, suffix):
    out = tmp_path / f"scores{suffix}"
    missing = str(tmp_path / "missing.jpg")
    result = runner.invoke(app, ["score", str(samples["chelsea"]), missing, str(samples["rocket"]), "-o", str(out)])
    assert result.exit_code == 1
    rows = read_results(out)
    assert [r.path for r in rows] == [str(samples["chelsea"]), missing, str(samples["rocket"])]
    assert rows[0].ok and rows[2].ok and rows[1].score is None and "no such file" in rows[1].error
    if suffix == ".json":
        assert isinstance(json.loads(out.read_text()), list)
    if suffix == ".csv":
        assert out.read_text().splitlines()[0] == "path,score,error"
    assert f"error: {missing}: no such file" in result.stderr


def test_scores_match_the_api(runner, samples, default_model, tmp_path):
    out = tmp_path / "s.jsonl"
    runner.invoke(app, ["score", str(samples["coffee"]), "-o", str(out), "--batch-size", "1"])
    assert read_results(out)[0].score == pytest.approx(default_model.score(str(samples["coffee"])), abs=1e-3)


def test_usage_errors_exit_2(runner, samples, tmp_path):
    assert runner.invoke(app, ["score", str(samples["chelsea"]), "--model", "nope"]).exit_code == 2
    assert runner.invoke(app, ["score", str(samples["chelsea"]), "--no-such-flag"]).exit_code == 2
    assert runner.invoke(app, ["score", str(samples["chelsea"]), "-o", str(tmp_path / "x.xlsx")]).exit_code == 2
    assert runner.invoke(app, ["score", str(samples["chelsea"]), "--resume"]).exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["score", str(empty)])
    assert result.exit_code == 2 and "no images found" in result.stderr


def test_resume_scores_only_what_is_missing(runner, samples, tmp_path):
    out = tmp_path / "s.csv"
    files = [str(samples[n]) for n in ("chelsea", "coffee", "rocket")]
    runner.invoke(app, ["score", *files[:2], "-o", str(out)])
    # simulate a kill in the middle of writing the next row
    with open(out, "a") as f:
        f.write(f"{files[2]},12.3")
    result = runner.invoke(app, ["score", *files, "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    rows = read_results(out)
    assert [r.path for r in rows] == files and all(r.ok for r in rows)
    full = tmp_path / "full.csv"
    runner.invoke(app, ["score", *files, "-o", str(full)])
    assert [r.score for r in read_results(full)] == [r.score for r in rows]


def test_models_and_version(runner):
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0 and "default" in result.stdout and "efficientnet_lite0" in result.stdout
    assert "UNTRAINED" not in result.stdout and "yes" in result.stdout
    assert "default: limit:" in result.stdout and "human opinion" in result.stdout  # where its labels come from
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("qfmiqm ")


def test_console_script_exit_codes(samples, tmp_path):
    exe = shutil.which("qfmiqm") or f"{sys.executable} -m qfmiqm.cli"
    ok = subprocess.run([*exe.split(), "score", str(samples["chelsea"])], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("path,score\n")
    bad = subprocess.run([*exe.split(), "score", str(tmp_path / "nope.jpg")], capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.splitlines()[-2] == f"error: {tmp_path / 'nope.jpg'}: no such file"


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["score", "--help"]])
def test_version_and_help_load_no_heavy_library(args):
    """Start-up: the CLI imports torch, timm, scipy and matplotlib only where they are used."""
    code = ("import sys; from qfmiqm.cli import main; sys.argv = ['qfmiqm', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'timm', 'scipy', 'matplotlib', 'pandas'})\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []"
