"""Hostile inputs, crash-safe batch scoring, safe weight loading."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from hostile_corpus import SCORED, build_corpus, command_line, render_table
from qfmiqm.outputs import read_results

ROOT = Path(__file__).resolve().parents[1]
QFMIQM = [sys.executable, "-m", "qfmiqm"]


def _run(args, **kw):
    return subprocess.run([*QFMIQM, *args], capture_output=True, text=True, timeout=900, **kw)


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    cases = build_corpus(root / "corpus")
    out = root / "results.csv"
    proc = _run(["score", *command_line(cases), "--recursive", "-o", str(out), "--batch-size", "4"])
    rows = read_results(out)
    return cases, proc, rows


def test_every_input_gets_its_expected_outcome(corpus_run):
    cases, proc, rows = corpus_run
    by_path = {r.path: r for r in rows}
    assert len(cases) >= 25
    for c in cases:
        row = by_path[c.row_path or c.arg]
        if c.expects_score:
            assert row.ok and 0 <= row.score <= 100, (c.kind, row)
        else:
            assert row.score is None and c.expected in row.error, (c.kind, row)


def test_one_row_per_input_and_one_error_line_per_failure(corpus_run):
    cases, proc, rows = corpus_run
    paths = [r.path for r in rows]
    assert len(paths) == len(set(paths)), "duplicate rows"
    tree = [p for p in paths if "/tree/" in p]
    assert sorted(Path(p).name for p in tree) == ["a.jpg", "b.png"]  # the link loop is not followed
    expected_rows = len(cases) - 1 + len(tree)
    assert len(rows) == expected_rows
    failed = [r for r in rows if not r.ok]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert sorted(error_lines) == sorted(f"error: {r.path}: {r.error}" for r in failed)
    assert "Traceback" not in proc.stderr
    assert "note: 1 duplicate path(s) given" in proc.stderr
    assert proc.returncode == 1


def test_first_frame_orientation_and_modes_are_right(corpus_run, default_model):
    cases, _, rows = corpus_run
    by_kind = {c.kind: c for c in cases}
    by_path = {r.path: r for r in rows}

    def score_of(kind):
        return by_path[by_kind[kind].arg].score

    rotated = Image.open(by_kind["EXIF-rotated JPEG (orientation 6)"].arg)
    assert score_of("EXIF-rotated JPEG (orientation 6)") == pytest.approx(
        default_model.score(ImageOps.exif_transpose(rotated)), abs=1e-3)
    assert abs(score_of("EXIF-rotated JPEG (orientation 6)") - default_model.score(np.asarray(rotated.convert("RGB")))) > 1e-3
    gif = Image.open(by_kind["animated GIF (first frame)"].arg)
    first = default_model.score(gif.convert("RGB"))
    gif.seek(1)
    second = default_model.score(gif.convert("RGB"))
    assert score_of("animated GIF (first frame)") == pytest.approx(first, abs=1e-3) and abs(first - second) > 1e-3
    tif = Image.open(by_kind["multi-page TIFF (first page)"].arg)
    assert score_of("multi-page TIFF (first page)") == pytest.approx(default_model.score(tif.convert("RGB")), abs=1e-3)


def test_docs_table_matches_this_run(corpus_run):
    cases, _, rows = corpus_run
    table = render_table(cases, {r.path: r for r in rows})
    doc = (ROOT / "docs" / "robustness.md").read_text(encoding="utf-8")
    assert table in doc, "docs/robustness.md is out of date: run python tools/robustness_table.py"


def test_debug_flag_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    quiet = _run(["score", str(ROOT / "samples" / "chelsea.jpg"), "--model", str(bad)])
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines()[-1].startswith(f"error: {bad}")
    loud = _run(["score", str(ROOT / "samples" / "chelsea.jpg"), "--model", str(bad), "--debug"])
    assert loud.returncode == 2 and "Traceback" in loud.stderr


class _PoisonImageFile(ImageFile.ImageFile):
    """A 'format' whose decoder kills its process, standing in for a decoder that segfaults."""

    format = "POISON"
    format_description = "test-only decoder crash"

    def _open(self):
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture()
def poison_format():
    Image.register_open(_PoisonImageFile.format, _PoisonImageFile, lambda prefix: prefix[:6] == b"POISON")
    yield
    Image.OPEN.pop(_PoisonImageFile.format, None)
    Image.ID.remove(_PoisonImageFile.format)


def test_a_worker_killed_by_a_file_is_replaced_and_the_file_reported(poison_format, default_model, samples, tmp_path):
    poison = tmp_path / "poison.jpg"
    poison.write_bytes(b"POISON" + b"\0" * 100)
    good = [str(samples[n]) for n in ("chelsea", "coffee", "rocket")]
    items = [good[0], good[1], str(poison), good[2], good[0], good[1], good[2]]
    results = list(default_model.iter_scores(items, batch_size=2, workers=2))
    assert [r.path for r in results] == items
    assert "decoder crashed" in results[2].error and "SIGKILL" in results[2].error
    reference = default_model.score(good, workers=0)
    got = [r.score for i, r in enumerate(results) if i != 2]
    np.testing.assert_allclose(got, [reference[i] for i in (0, 1, 2, 0, 1, 2)], atol=1e-4)


class _HangingImageFile(ImageFile.ImageFile):
    """A 'format' whose decoder never returns."""

    format = "HANG"
    format_description = "test-only decoder hang"

    def _open(self):
        time.sleep(3600)


def test_a_hung_decoder_is_given_up_and_the_batch_goes_on(default_model, samples, tmp_path, monkeypatch):
    import qfmiqm.data.feed as feed

    Image.register_open(_HangingImageFile.format, _HangingImageFile, lambda prefix: prefix[:4] == b"HANG")
    monkeypatch.setattr(feed, "DECODE_TIMEOUT_S", 3.0)
    try:
        hang = tmp_path / "hang.png"
        hang.write_bytes(b"HANG" + b"\0" * 100)
        items = [str(samples["chelsea"]), str(hang), str(samples["coffee"])]
        results = list(default_model.iter_scores(items, batch_size=1, workers=1))
    finally:
        Image.OPEN.pop(_HangingImageFile.format, None)
        Image.ID.remove(_HangingImageFile.format)
    assert [r.ok for r in results] == [True, False, True]
    assert "longer than 3 s" in results[1].error


def _make_many(folder: Path, n: int) -> None:
    folder.mkdir()
    photo = Image.open(ROOT / "samples" / "coffee.jpg").convert("RGB")
    for i in range(n):
        # every file a different crop, so that scores differ and rows are easy to tell apart
        photo.crop((i * 3, i * 2, i * 3 + 300, i * 2 + 240)).save(folder / f"img_{i:03d}.png")


def test_kill_minus_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    images = tmp_path / "imgs"
    _make_many(images, 30)
    args = ["score", str(images), "--batch-size", "2", "--workers", "1", "--num-crops", "4"]
    full = tmp_path / "full.csv"
    assert _run([*args, "-o", str(full)]).returncode == 0

    out = tmp_path / "partial.csv"
    proc = subprocess.Popen([*QFMIQM, *args, "-o", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 6:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial_rows = len(read_results(out)) if out.read_text().endswith("\n") else None
    assert partial_rows is None or partial_rows < 30, "the run finished before it was killed"

    resumed = _run([*args, "-o", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    got, want = read_results(out), read_results(full)
    assert sorted(r.path for r in got) == sorted(r.path for r in want)
    assert len({r.path for r in got}) == len(got) == 30
    want_by_path = {r.path: r.score for r in want}
    for r in got:
        assert r.score == pytest.approx(want_by_path[r.path], abs=1e-3)


def _copy_default(tmp_path: Path, **card_changes) -> Path:
    zoo = ROOT / "qfmiqm" / "models" / "zoo"
    target = tmp_path / "model.safetensors"
    shutil.copy(zoo / "default.safetensors", target)
    card = json.loads((zoo / "default.json").read_text())
    for key, value in card_changes.items():
        section, _, field = key.partition(".")
        if field:
            card[section][field] = value
        else:
            card[section] = value
    target.with_suffix(".json").write_text(json.dumps(card))
    return target


def test_bad_weights_give_one_clear_line(tmp_path):
    sample = str(ROOT / "samples" / "chelsea.jpg")
    truncated = _copy_default(tmp_path)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    r = _run(["score", sample, "--model", str(truncated)])
    assert r.returncode == 2 and "checksum mismatch" in r.stderr

    other = tmp_path / "other"
    other.mkdir()
    default_width = json.loads((ROOT / "qfmiqm" / "models" / "zoo" / "default.json").read_text())["decoder"]["width"]
    mismatched = _copy_default(other, **{"decoder.width": default_width * 2, "weights_sha256": None})
    r = _run(["score", sample, "--model", str(mismatched)])
    assert r.returncode == 2 and "do not fit this model" in r.stderr and "Traceback" not in r.stderr
    assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1

    pickled = tmp_path / "model.pth"
    pickled.write_bytes(b"whatever")
    r = _run(["score", sample, "--model", str(pickled)])
    assert r.returncode == 2 and ".safetensors" in r.stderr
