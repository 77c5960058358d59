"""qfmiqm synth: the distortion table, the proxy score, the generator and its command."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from qfmiqm.cli import app
from qfmiqm.data.distortions import DISTORTIONS, distort, get_distortion
from qfmiqm.data.synth import (JOURNAL_NAME, LABEL_COLUMNS, LABELS_NAME, SKIMAGE_PHOTOS, SynthOptions,
                               crop_boxes, parse_levels, parse_types, proxy_score, read_labels, synthesize)
from qfmiqm.errors import UsageError

FEW_TYPES = ("gaussian_blur", "jpeg", "impulse_noise")


@pytest.fixture(scope="module")
def photo(samples) -> np.ndarray:
    """A textured, colourful 96x128 crop of a real photo (non-square to catch axis mix-ups)."""
    img = np.asarray(Image.open(samples["coffee"]).convert("RGB"))
    return np.ascontiguousarray(img[150:246, 200:328])


@pytest.fixture()
def src_dir(samples, tmp_path) -> Path:
    """Two small real photos in two formats."""
    src = tmp_path / "src"
    src.mkdir()
    for name, fmt in (("chelsea", "PNG"), ("rocket", "JPEG")):
        im = Image.open(samples[name]).convert("RGB")
        im.thumbnail((160, 160))
        im.save(src / f"{name}.{fmt.lower()}", format=fmt)
    return src


def _options(**kw) -> SynthOptions:
    base = dict(types=FEW_TYPES, levels=(1, 3, 5), size=48, crops=2, seed=3)
    base.update(kw)
    return SynthOptions(**base)


# --- the distortion table ------------------------------------------------------------------

def test_table_covers_the_kadid_families():
    kadid = [d for d in DISTORTIONS.values() if d.kadid_id is not None]
    assert len(kadid) == 25
    assert sorted(d.kadid_id for d in kadid) == list(range(1, 26))
    assert {d.family for d in kadid} == {
        "blur", "color", "compression", "noise", "brightness", "spatial", "sharpness", "contrast"}
    assert all(len(d.params) == 5 for d in DISTORTIONS.values())
    # camera defects (issue #22, tests/test_camera_distortions.py) come after KADID's 25
    assert len(DISTORTIONS) == 32 and all(d.kadid_id is None for d in list(DISTORTIONS.values())[25:])


@pytest.mark.parametrize("name", list(DISTORTIONS))
def test_distortion_changes_image_keeps_shape_dtype_and_is_deterministic(name, photo):
    d = DISTORTIONS[name]
    mild = d(photo, 1, np.random.default_rng(7))
    severe = d(photo, 5, np.random.default_rng(7))
    for out in (mild, severe):
        assert out.shape == photo.shape and out.dtype == np.uint8
        assert not np.array_equal(out, photo)
    assert np.array_equal(severe, d(photo, 5, np.random.default_rng(7)))
    as_float = d(photo.astype(np.float32) / 255.0, 3, 11)
    assert as_float.dtype == np.float32 and as_float.shape == photo.shape
    assert 0.0 <= as_float.min() and as_float.max() <= 1.0
    assert proxy_score(photo, severe) < proxy_score(photo, mild) < 100.0


def test_levels_and_names_are_checked(photo):
    with pytest.raises(UsageError, match="level"):
        distort(photo, "jpeg", 0)
    with pytest.raises(UsageError, match="level"):
        distort(photo, "jpeg", 6)
    with pytest.raises(UsageError, match="unknown distortion type 'nope'"):
        get_distortion("nope")


def test_a_codec_missing_from_pillow_is_left_out_or_refused(monkeypatch):
    import dataclasses
    import warnings

    crippled = dataclasses.replace(DISTORTIONS["jpeg2000"], pillow_feature="no_such_codec")
    monkeypatch.setitem(DISTORTIONS, "jpeg2000", crippled)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow: "Unknown feature"
        assert "jpeg2000" not in parse_types(None) and len(parse_types(None)) == len(DISTORTIONS) - 1
        with pytest.raises(UsageError, match="needs Pillow built with the 'no_such_codec' codec"):
            parse_types(["jpeg2000"])


def test_proxy_score_scale(photo):
    assert proxy_score(photo, photo) == pytest.approx(100.0)
    noisy = distort(photo, "white_noise", 5, 0)
    assert 0.0 <= proxy_score(photo, noisy) < 60.0
    blurred = [proxy_score(photo, distort(photo, "gaussian_blur", lv, 0)) for lv in (1, 2, 3, 4, 5)]
    assert blurred == sorted(blurred, reverse=True)


def test_parsers_and_crop_boxes():
    assert parse_levels("3") == (1, 2, 3)
    assert parse_levels("5,1,3") == (1, 3, 5)
    for bad in ("0", "6", "x", "1,7"):
        with pytest.raises(UsageError):
            parse_levels(bad)
    assert parse_types(None) == tuple(DISTORTIONS)
    assert parse_types(["jpeg,gaussian_blur", "jpeg"]) == ("jpeg", "gaussian_blur")
    kadid, camera = parse_types(["kadid"]), parse_types(["camera"])
    assert len(kadid) == 25 and all(DISTORTIONS[n].kadid_id for n in kadid)
    assert camera and all(DISTORTIONS[n].kadid_id is None for n in camera)
    assert parse_types(["kadid,camera"]) == tuple(DISTORTIONS)
    assert crop_boxes(100, 200, None, 1, np.random.default_rng(0)) == [(0, 0, 100, 200)]
    assert crop_boxes(100, 200, 50, 1, np.random.default_rng(0)) == [(25, 75, 50, 50)]
    boxes = crop_boxes(100, 200, 50, 6, np.random.default_rng(0))
    assert len(boxes) == 6 and all(0 <= t <= 50 and 0 <= le <= 150 for t, le, _, _ in boxes)
    assert crop_boxes(30, 200, 50, 1, np.random.default_rng(0)) == [(0, 75, 30, 50)]


def test_one_crop_at_a_random_position_is_seeded_and_mostly_off_centre():
    centre = (25, 75, 50, 50)
    boxes = [crop_boxes(100, 200, 50, 1, np.random.default_rng(seed), "random")[0] for seed in range(20)]
    assert boxes[3] == crop_boxes(100, 200, 50, 1, np.random.default_rng(3), "random")[0]
    assert all(0 <= t <= 50 and 0 <= le <= 150 and (h, w) == (50, 50) for t, le, h, w in boxes)
    assert sum(b != centre for b in boxes) >= 18 and len(set(boxes)) >= 15


# --- the generator -------------------------------------------------------------------------

def _labels(out: Path) -> list[dict]:
    with open(out / LABELS_NAME, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == LABEL_COLUMNS
        return list(reader)


def test_generate_writes_labels_with_relative_paths(src_dir, tmp_path):
    out = tmp_path / "out"
    report = synthesize(out, src_dir, _options(), workers=0)
    rows = _labels(out)
    assert not report.failures
    assert report.written == 2 * 2 * 3 * 3 and report.references == 4
    assert len(rows) == report.rows == 4 + 2 * 2 * 3 * 3
    for r in rows:
        assert not os.path.isabs(r["path"]) and (out / r["path"]).is_file()
        assert (out / r["reference"]).is_file() and r["reference"].startswith("reference/")
        assert 0.0 <= float(r["score"]) <= 100.0
        with Image.open(out / r["path"]) as im:
            assert im.size == (48, 48)
    pristine = [r for r in rows if r["level"] == "0"]
    assert len(pristine) == 4 and all(r["type"] == "pristine" and float(r["score"]) == 100.0
                                      and r["path"] == r["reference"] for r in pristine)
    assert {r["type"] for r in rows} == {"pristine", *FEW_TYPES}
    for t in FEW_TYPES:  # level up, score down, crop by crop
        for ref in {r["reference"] for r in rows}:
            scores = [float(r["score"]) for r in rows if r["type"] == t and r["reference"] == ref]
            assert scores[0] > scores[-1]
    assert not (out / JOURNAL_NAME).exists()


def test_labels_load_as_a_synthetic_user_dataset(src_dir, tmp_path):
    from qfmiqm.data.user_csv import read_table

    out = tmp_path / "out"
    synthesize(out, src_dir, _options(types=("jpeg",), levels=(2,), crops=1), workers=0)
    table = read_table(out / LABELS_NAME)
    assert table.content is not None and len(table.paths) == 4
    assert set(table.content) == {"reference/chelsea.png", "reference/rocket.png"}


def test_one_random_crop_keeps_the_photo_name_and_moves_the_crop(src_dir, tmp_path):
    centre, shifted = tmp_path / "centre", tmp_path / "random"
    synthesize(centre, src_dir, _options(types=("jpeg",), levels=(2,), crops=1), workers=0)
    synthesize(shifted, src_dir, _options(types=("jpeg",), levels=(2,), crops=1, crop_position="random"), workers=0)
    names = sorted(p.name for p in (shifted / "reference").iterdir())
    assert names == sorted(p.name for p in (centre / "reference").iterdir()) == ["chelsea.png", "rocket.png"]
    for name in names:
        a = np.asarray(Image.open(centre / "reference" / name))
        b = np.asarray(Image.open(shifted / "reference" / name))
        assert a.shape == b.shape == (48, 48, 3) and not np.array_equal(a, b)


def test_rerun_is_a_no_op(src_dir, tmp_path):
    out = tmp_path / "out"
    synthesize(out, src_dir, _options(), workers=0)
    before = (out / LABELS_NAME).read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = synthesize(out, src_dir, _options(), workers=0)
    assert again.written == 0 and again.rescored == 0 and again.references == 0
    assert again.skipped == 2 * 2 * 3 * 3
    assert (out / LABELS_NAME).read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps


def test_resume_after_a_kill_restores_the_same_set(src_dir, tmp_path):
    out = tmp_path / "out"
    synthesize(out, src_dir, _options(), workers=0)
    full = (out / LABELS_NAME).read_bytes()
    rows = read_labels(out / LABELS_NAME)
    distorted = [r for r in rows if r["level"] > 0]
    (out / distorted[0]["path"]).unlink()  # killed before this image was renamed into place
    (out / distorted[1]["path"]).unlink()
    kept_without_label = distorted[2]["path"]  # renamed, then killed before its label was saved
    (out / LABELS_NAME).write_text("path,reference,type,level,score\n" + "".join(
        f"{r['path']},{r['reference']},{r['type']},{r['level']},{r['score']}\n"
        for r in rows if r["path"] != kept_without_label and r is not distorted[0] and r is not distorted[1]))
    (out / "distorted" / ".half-written.png.tmp").write_bytes(b"\x89PNG\r\n")  # a torn temp file
    report = synthesize(out, src_dir, _options(), workers=0)
    assert (report.written, report.rescored) == (2, 1)
    assert (out / LABELS_NAME).read_bytes() == full


def test_a_journal_line_cut_short_is_not_trusted(src_dir, tmp_path):
    out = tmp_path / "out"
    synthesize(out, src_dir, _options(), workers=0)
    full = (out / LABELS_NAME).read_bytes()
    rows = read_labels(out / LABELS_NAME)
    lines = [f"{r['path']},{r['reference']},{r['type']},{r['level']},{r['score']},#\n" for r in rows]
    cut = f"{rows[-1]['path']},{rows[-1]['reference']},{rows[-1]['type']},{rows[-1]['level']},{int(rows[-1]['score'])}"
    (out / LABELS_NAME).unlink()  # killed before labels.csv was first written
    (out / JOURNAL_NAME).write_text("path,reference,type,level,score,end\n" + "".join(lines[:-1]) + cut)
    assert len(read_labels(out / JOURNAL_NAME, journal=True)) == len(rows) - 1
    report = synthesize(out, src_dir, _options(), workers=0)
    assert (report.written, report.rescored) == (0, 1)
    assert (out / LABELS_NAME).read_bytes() == full and not (out / JOURNAL_NAME).exists()


def test_worker_processes_give_identical_results(src_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    synthesize(a, src_dir, _options(), workers=0)
    synthesize(b, src_dir, _options(), workers=2)
    assert (a / LABELS_NAME).read_bytes() == (b / LABELS_NAME).read_bytes()
    for r in read_labels(a / LABELS_NAME):
        assert (a / r["path"]).read_bytes() == (b / r["path"]).read_bytes()


def test_other_content_settings_are_refused_in_the_same_folder(src_dir, tmp_path):
    out = tmp_path / "out"
    synthesize(out, src_dir, _options(), workers=0)
    with pytest.raises(UsageError, match="seed 3 -> 4"):
        synthesize(out, src_dir, _options(seed=4), workers=0)
    more = synthesize(out, src_dir, _options(types=("jpeg", "darken")), workers=0)  # adding types is fine
    assert more.written == 2 * 2 * 3 and more.rows == 4 + 2 * 2 * 4 * 3


def test_jpeg_output_is_scored_as_saved(src_dir, tmp_path):
    out = tmp_path / "out"
    synthesize(out, src_dir, _options(types=("gaussian_blur",), fmt="jpeg", crops=1), workers=0)
    rows = [r for r in read_labels(out / LABELS_NAME) if r["level"] > 0]
    assert all(r["path"].endswith(".jpg") for r in rows)
    r = rows[0]
    ref = np.asarray(Image.open(out / r["reference"]).convert("RGB"))
    saved = np.asarray(Image.open(out / r["path"]).convert("RGB"))
    assert r["score"] == pytest.approx(proxy_score(ref, saved), abs=1e-3)


def test_default_sources_are_skimage_photos(tmp_path):
    assert {"astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "retina"} <= set(SKIMAGE_PHOTOS)
    report = synthesize(tmp_path / "out", None, SynthOptions(types=("jpeg",), levels=(5,), size=32), workers=0)
    assert not report.failures and report.references == len(SKIMAGE_PHOTOS)
    refs = {r["reference"] for r in read_labels(tmp_path / "out" / LABELS_NAME)}
    assert "reference/astronaut.png" in refs and len(refs) == len(SKIMAGE_PHOTOS)


# --- the command ---------------------------------------------------------------------------

ARGS = ["--types", "jpeg,gaussian_blur", "--levels", "2", "--size", "40", "--workers", "0", "--seed", "1"]


def test_cli_synth_writes_the_set(src_dir, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["synth", "--src", str(src_dir), "--out", str(out), *ARGS])
    assert result.exit_code == 0, result.output
    rows = read_labels(out / LABELS_NAME)
    assert len(rows) == 2 + 2 * 2 * 2
    assert "8 image(s) written" in result.stdout
    again = CliRunner().invoke(app, ["synth", "--src", str(src_dir), "--out", str(out), *ARGS])
    assert again.exit_code == 0 and "0 image(s) written" in again.stdout and "8 already done" in again.stdout


def test_cli_reports_a_bad_source_and_goes_on(src_dir, tmp_path):
    bad = src_dir / "broken.jpg"
    bad.write_bytes(b"this is not a JPEG")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["synth", "--src", str(src_dir), "--out", str(out), *ARGS])
    assert result.exit_code == 1
    assert f"error: {bad}: " in result.stderr and "Traceback" not in result.output
    refs = {r["reference"] for r in read_labels(out / LABELS_NAME)}
    assert refs == {"reference/chelsea.png", "reference/rocket.png"}


@pytest.mark.parametrize("extra, message", [
    (["--types", "nope"], "unknown distortion type"),
    (["--levels", "9"], "--levels"),
    (["--crops", "3"], "--crops above 1 needs --size"),
    (["--crop-position", "random"], "--crop-position random needs --size"),
    (["--crop-position", "left", "--size", "32"], "--crop-position must be one of centre, random"),
    (["--format", "gif"], "unknown output format"),
    (["--size", "4"], "--size must be at least 16"),
])
def test_cli_usage_errors_exit_2(src_dir, tmp_path, extra, message):
    result = CliRunner().invoke(app, ["synth", "--src", str(src_dir), "--out", str(tmp_path / "o"), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_cli_needs_out_and_a_real_src(tmp_path):
    assert CliRunner().invoke(app, ["synth"]).exit_code == 2
    missing = CliRunner().invoke(app, ["synth", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "not a folder" in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = CliRunner().invoke(app, ["synth", "--src", str(empty), "--out", str(tmp_path / "o")])
    assert none.exit_code == 2 and "no image files" in none.stderr


def test_cli_list_types():
    result = CliRunner().invoke(app, ["synth", "--list-types"])
    assert result.exit_code == 0
    assert all(name in result.stdout for name in DISTORTIONS)
