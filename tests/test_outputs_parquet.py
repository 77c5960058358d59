"""Parquet output: streamed row groups, readable back, and resumable after a kill."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qfmiqm import outputs
from qfmiqm.errors import UsageError
from qfmiqm.outputs import format_for, open_writer, prepare_resume, read_results
from qfmiqm.results import ScoreResult

GROUP = 4  # a small row group so that a few rows span several part files


@pytest.fixture(autouse=True)
def small_row_groups(monkeypatch):
    monkeypatch.setattr(outputs, "PARQUET_ROW_GROUP", GROUP)


def _rows(n: int, start: int = 0) -> list[ScoreResult]:
    """Every third row is an error row (no score)."""
    return [ScoreResult(f"img{i:03d}.jpg", None, "cannot decode") if i % 3 == 2
            else ScoreResult(f"img{i:03d}.jpg", round(10 + i / 7, 4)) for i in range(start, start + n)]


def _write(path, rows, append: bool = False, close: bool = True):
    writer, stream = open_writer(str(path), append=append)
    for row in rows:
        writer.write(row)
    if close:  # as the CLI does: the writer, then its stream
        writer.close()
        stream.close()
    return writer


def test_format_for_parquet():
    assert format_for("x.parquet") == "parquet" and format_for("X.PARQUET") == "parquet"
    with pytest.raises(UsageError, match=r"\.parquet"):
        format_for("x.txt")


def test_round_trip_ok_and_error_rows(tmp_path):
    out = tmp_path / "s.parquet"
    rows = [ScoreResult("a.jpg", 51.2345), ScoreResult("b.jpg", None, "cannot decode"),
            ScoreResult("c.jpg", float("nan"))]
    _write(out, rows)
    assert read_results(out) == [rows[0], rows[1], ScoreResult("c.jpg", None)]  # NaN is no score
    assert not (tmp_path / "s.parquet.parts").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.parquet"]  # no temp files left


def test_schema_and_nulls_seen_by_pyarrow(tmp_path):
    out = tmp_path / "s.parquet"
    _write(out, _rows(3))
    table = pq.read_table(out)
    assert table.schema.equals(pa.schema([("path", pa.string()), ("score", pa.float64()),
                                          ("error", pa.string())]))
    assert table.column("score").to_pylist() == [10.0, round(10 + 1 / 7, 4), None]
    assert table.column("error").to_pylist() == [None, None, "cannot decode"]


def test_more_rows_than_a_row_group_are_streamed(tmp_path):
    out = tmp_path / "s.parquet"
    rows = _rows(2 * GROUP + 2)
    writer = _write(out, rows[: 2 * GROUP + 1], close=False)
    # full row groups are already on disk as parts; only the rest is held in memory
    assert len(list((tmp_path / "s.parquet.parts").glob("part-*.parquet"))) == 2
    assert len(writer._rows) == 1
    for row in rows[2 * GROUP + 1:]:
        writer.write(row)
    writer.close()
    assert read_results(out) == rows
    assert pq.ParquetFile(out).num_row_groups == 3


def test_empty_run_writes_a_readable_file(tmp_path):
    out = tmp_path / "s.parquet"
    _write(out, [])
    assert read_results(out) == [] and prepare_resume(str(out)) == {}


def _resume_and_finish(out, rows):
    """What the CLI does with --resume: skip the rows already written, write the others."""
    previous = prepare_resume(str(out))
    _write(out, [r for r in rows if r.path not in previous], append=bool(previous))
    return previous


def test_killed_run_resumes_from_its_complete_parts(tmp_path):
    out = tmp_path / "s.parquet"
    rows = _rows(2 * GROUP + GROUP // 2)
    _write(out, rows, close=False)  # "killed": never closed, the last half group is lost
    assert not out.exists()
    previous = _resume_and_finish(out, rows)
    assert previous == {r.path: r for r in rows[: 2 * GROUP]}
    assert read_results(out) == rows  # every row exactly once, in order
    assert not (tmp_path / "s.parquet.parts").exists()


def test_temp_and_damaged_parts_are_ignored(tmp_path):
    out = tmp_path / "s.parquet"
    rows = _rows(3 * GROUP)
    _write(out, rows, close=False)
    parts = tmp_path / "s.parquet.parts"
    good = sorted(parts.glob("part-*.parquet"))
    assert len(good) == 3
    (parts / ".part-000003.parquet.tmp").write_bytes(b"PAR1 half written")  # killed mid-part
    data = good[1].read_bytes()
    good[1].write_bytes(data[: len(data) // 2])  # a part cut short (e.g. damaged disk)
    (parts / "part-000007.parquet").write_bytes(b"not parquet at all")
    previous = _resume_and_finish(out, rows)
    assert set(previous) == {r.path for r in rows[:GROUP] + rows[2 * GROUP:]}
    assert sorted(r.path for r in read_results(out)) == [r.path for r in rows]  # once each
    assert not parts.exists()


def test_resume_of_a_finished_file_appends(tmp_path):
    out = tmp_path / "s.parquet"
    rows = _rows(GROUP + 1)
    _write(out, rows[:3])
    # a parts folder beside a finished file is left over from a kill after the merge: stale
    (tmp_path / "s.parquet.parts").mkdir()
    (tmp_path / "s.parquet.parts" / "part-000000.parquet").write_bytes(b"stale")
    assert _resume_and_finish(out, rows) == {r.path: r for r in rows[:3]}
    assert read_results(out) == rows
    assert _resume_and_finish(out, rows) == {r.path: r for r in rows}  # nothing left to do
    assert read_results(out) == rows


def test_fresh_run_replaces_old_file_and_parts(tmp_path):
    out = tmp_path / "s.parquet"
    _write(out, _rows(5))
    _write(out, _rows(GROUP + 1, start=100), close=False)  # killed run
    new = _rows(2, start=200)
    _write(out, new)  # without --resume
    assert read_results(out) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.parquet"]


def test_not_a_qfmiqm_parquet_cannot_be_resumed(tmp_path):
    out = tmp_path / "s.parquet"
    pq.write_table(pa.table({"x": [1]}), out)
    with pytest.raises(UsageError, match="not a qfmiqm output"):
        prepare_resume(str(out))


def test_sigkilled_process_is_resumable(tmp_path):
    out = tmp_path / "s.parquet"
    rows = _rows(2 * GROUP + 1)
    child = textwrap.dedent(f"""
        import sys, time
        from qfmiqm import outputs
        from qfmiqm.results import ScoreResult
        outputs.PARQUET_ROW_GROUP = {GROUP}
        writer, _ = outputs.open_writer({str(out)!r})
        for path, score, error in {[(r.path, r.score, r.error) for r in rows]!r}:
            writer.write(ScoreResult(path, score, error))
        print("written", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _resume_and_finish(out, rows) == {r.path: r for r in rows[: 2 * GROUP]}
    assert read_results(out) == rows


def test_importing_outputs_does_not_import_pyarrow():
    code = "import sys, qfmiqm.outputs; print('pyarrow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_cli_score_to_parquet_and_resume(samples, tmp_path):
    from typer.testing import CliRunner

    from qfmiqm.cli import app

    out = tmp_path / "out.parquet"
    files = [str(samples["chelsea"]), str(samples["coffee"])]
    runner = CliRunner()
    result = runner.invoke(app, ["score", files[0], "-o", str(out)])
    assert result.exit_code == 0, result.output
    first = read_results(out)
    assert [r.path for r in first] == files[:1] and 0 <= first[0].score <= 100 and first[0].ok
    result = runner.invoke(app, ["score", *files, "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    rows = read_results(out)
    assert [r.path for r in rows] == files and rows[0] == first[0] and all(r.ok for r in rows)
