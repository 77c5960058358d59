"""The folder report (``qfmiqm report``, ``score --report``): what the page holds, every score
format, how paths and maps are found, its size for 100k rows, and how it looks in a real browser."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from qfmiqm.cli import app
from qfmiqm.eval.html_report import (
    TOP_N, folder_medians, histogram, pick_extremes, report_from_file, write_report,
)
from qfmiqm.eval.map_names import MAP_SUFFIX
from qfmiqm.outputs import open_writer
from qfmiqm.results import ScoreResult

THUMB = "data:image/jpeg;base64,"


def _write_scores(path: Path, rows: list[ScoreResult]) -> Path:
    """A score file as ``qfmiqm score -o`` writes it (any of its formats)."""
    writer, stream = open_writer(str(path))
    for row in rows:
        writer.write(row)
    writer.close()
    stream.close()
    return path


def _cards(page: str) -> list[str]:
    return re.findall(r'<figure class="card">.*?</figure>', page)


def _section(page: str, heading: str) -> str:
    """The HTML between the ``<h2>`` starting with ``heading`` and the next ``<h2>``."""
    start = page.index(f"<h2>{heading}")
    end = page.find("<h2>", start + 4)
    return page[start:end if end >= 0 else None]


@pytest.fixture()
def shoot(tmp_path, samples) -> Path:
    """A folder of 60 photos in 3 subfolders (links to the real samples), like a user's shoot."""
    root = tmp_path / "shoot"
    names = sorted(samples)
    for i in range(60):
        folder = root / f"day{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(samples[names[i % len(names)]], folder / f"img{i:02d}.jpg")
    return root


def _shoot_rows(shoot: Path) -> list[ScoreResult]:
    """Scores rising with the index (img00 worst, img59 best), plus two failures."""
    rows = [ScoreResult(str(p.relative_to(shoot.parent)), 10.0 + int(p.stem[3:]), None)
            for p in sorted(shoot.rglob("*.jpg"))]
    rows.append(ScoreResult("shoot/day0/broken.jpg", None, "cannot identify image file <b>&"))
    rows.append(ScoreResult("shoot/day1/gone.jpg", None, "no such file"))
    return rows


def test_page_holds_counts_histogram_worst_best_folders_and_failures(tmp_path, shoot):
    scores = _write_scores(tmp_path / "scores.csv", _shoot_rows(shoot))
    summary = report_from_file(scores, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert (summary.count, summary.scored, summary.failed) == (62, 60, 2)
    assert "<b>62</b><span>images</span>" in page and "<b>2</b><span>failed</span>" in page
    assert "<svg" in page and page.count("<rect") == 20  # the histogram: 20 bins over 0-100
    worst, best = _section(page, "Worst"), _section(page, "Best")
    assert len(_cards(worst)) == TOP_N and len(_cards(best)) == TOP_N
    assert worst.index("img00.jpg") < worst.index("img01.jpg") and "img59" not in worst
    assert best.index("img59.jpg") < best.index("img58.jpg") and "img00" not in best
    assert page.count(THUMB) == 2 * TOP_N  # every listed image has its embedded thumbnail
    assert 'href="shoot/day0/img00.jpg"' in page  # linked relative to the report
    folders = _section(page, "Median per folder")
    assert all(f"day{k}" in folders for k in range(3))
    failures = _section(page, "Failures")
    assert "(2)" in failures and "gone.jpg" in failures
    # text from the score file is escaped, never markup
    assert "cannot identify image file &lt;b&gt;&amp;" in failures and "<b>&" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_reads_every_score_format(tmp_path, samples, suffix):
    rows = [ScoreResult(str(samples["rocket"]), 31.5, None), ScoreResult(str(samples["chelsea"]), 77.25, None),
            ScoreResult(str(tmp_path / "missing.jpg"), None, "no such file")]
    scores = _write_scores(tmp_path / f"scores{suffix}", rows)
    summary = report_from_file(scores, tmp_path / "r.html")
    page = summary.path.read_text(encoding="utf-8")
    assert (summary.count, summary.scored, summary.failed) == (3, 2, 1)
    worst = _section(page, "Worst")
    assert worst.index("rocket.jpg") < worst.index("chelsea.jpg") and ">31.5<" in worst
    assert "missing.jpg" in _section(page, "Failures")


def test_reads_the_stdout_csv_without_an_error_column(tmp_path, samples):
    scores = tmp_path / "stdout.csv"
    scores.write_text(f"path,score\n{samples['coffee']},12.0\n{samples['rocket']},\n")
    summary = report_from_file(scores, tmp_path / "r.html")
    assert (summary.count, summary.scored, summary.failed) == (2, 1, 1)
    assert "no score" in _section(summary.path.read_text(encoding="utf-8"), "Failures")


def test_relative_paths_resolve_under_score_file_then_cwd_and_missing_show_placeholders(
        tmp_path, samples, monkeypatch):
    run = tmp_path / "run"
    (run / "imgs").mkdir(parents=True)
    shutil.copy(samples["chelsea"], run / "imgs" / "beside.jpg")
    cwd = tmp_path / "cwd"
    (cwd / "pics").mkdir(parents=True)
    shutil.copy(samples["coffee"], cwd / "pics" / "here.jpg")
    (cwd / "pics" / "broken.jpg").write_bytes(b"not a jpeg at all")
    monkeypatch.chdir(cwd)
    rows = [ScoreResult("imgs/beside.jpg", 40.0), ScoreResult("pics/here.jpg", 50.0),
            ScoreResult("pics/nowhere.jpg", 60.0), ScoreResult("pics/broken.jpg", 70.0),
            ScoreResult("s3://bucket/remote.jpg", 80.0)]
    scores = _write_scores(run / "scores.jsonl", rows)
    page = report_from_file(scores, tmp_path / "out" / "report.html").path.read_text(encoding="utf-8")
    cards = dict(zip(["beside", "here", "nowhere", "broken", "remote"], _cards(page)))
    assert THUMB in cards["beside"] and 'href="../run/imgs/beside.jpg"' in cards["beside"]
    assert THUMB in cards["here"] and 'href="../cwd/pics/here.jpg"' in cards["here"]
    assert "image not found" in cards["nowhere"] and "image not found" in cards["remote"]
    assert "cannot read" in cards["broken"] and THUMB not in cards["broken"]


def _score_map_filenames():
    """The naming ``score --map`` uses."""
    from qfmiqm.eval.quality_map import map_filenames

    return map_filenames


def test_maps_beside_images_with_the_names_score_map_writes(tmp_path, samples, shoot):
    map_filenames = _score_map_filenames()

    # two files share a stem, so score --map gives them hashed names; the others are plain
    (shoot / "day1" / "img00.jpg").symlink_to(samples["coffee"])
    paths = [str(p) for p in sorted(shoot.rglob("img0[0-3].jpg"))]
    maps = tmp_path / "maps"
    maps.mkdir()
    names = map_filenames(paths)
    assert any(n != Path(p).stem + MAP_SUFFIX for p, n in names.items())
    for name in names.values():
        Image.new("RGB", (64, 48), (200, 40, 40)).save(maps / name)
    rows = [ScoreResult(p, 20.0 + i) for i, p in enumerate(paths)]
    rows.append(ScoreResult(str(samples["rocket"]), 90.0))  # no map written for it
    page = write_report(rows, tmp_path / "r.html", bases=[tmp_path], maps_dir=maps).path.read_text()
    cards = _cards(page)
    assert len(paths) == 5 and len(cards) == 6
    assert all(c.count(THUMB) == 2 and 'alt="map of' in c for c in cards[:5])
    assert all(f'href="../maps/{names[p]}"' in c or f'href="maps/{names[p]}"' in c for p, c in zip(paths, cards))
    assert cards[5].count(THUMB) == 1 and "map of" not in cards[5]


def test_100k_rows_give_a_small_page_in_seconds(tmp_path, samples):
    # 500 subfolders (links to samples/) x 3 real photos; 1% failures
    shots = tmp_path / "shots"
    shots.mkdir()
    for k in range(500):
        (shots / f"d{k:03d}").symlink_to(samples["chelsea"].parent, target_is_directory=True)
    names = sorted(p.name for p in samples.values())
    lines = ["path,score,error"]
    for i in range(100_000):
        path = f"shots/d{i % 500:03d}/{names[i % len(names)]}"
        lines.append(f"{path},,decode failed" if i % 100 == 7 else f"{path},{(i * 7919) % 10000 / 100:.4f},")
    scores = tmp_path / "scores.csv"
    scores.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    summary = report_from_file(scores, tmp_path / "report.html")
    seconds = time.perf_counter() - start
    print(f"100k-row report: {summary.size_bytes / 1e6:.2f} MB in {seconds:.2f} s")
    assert (summary.count, summary.failed) == (100_000, 1000)
    assert summary.size_bytes < 2_000_000
    assert seconds < 15  # about 1-2 s alone; generous for a busy shared CI machine
    page = summary.path.read_text(encoding="utf-8")
    assert page.count(THUMB) == 2 * TOP_N and "more folders not listed" in page and "more failures not listed" in page


def test_summaries():
    rows = [ScoreResult(f"a/{i}.jpg", float(i)) for i in range(5)] + [ScoreResult("b/x.jpg", 50.0),
                                                                     ScoreResult("b/y.jpg", None, "bad")]
    worst, best = pick_extremes([r for r in rows if r.ok], n=3)
    assert [r.score for r in worst] == [0, 1, 2] and [r.score for r in best] == [50, 4, 3]
    worst, best = pick_extremes(rows[:4], n=3)
    assert len(worst) == 3 and [r.score for r in best] == [3]  # never the same image twice
    assert histogram([0, 4.99, 5, 100, 120, -3], bins=20)[:2] == [3, 1] and histogram([100, 120])[-1] == 2
    stats = folder_medians(rows)
    assert [(s.folder, s.images, s.failed, s.median) for s in stats] == [("a", 5, 0, 2.0), ("b", 2, 1, 50.0)]


# ----------------------------------------------------------------------------- command line


@pytest.fixture()
def runner():
    return CliRunner()


def test_report_command(runner, tmp_path, samples):
    scores = _write_scores(tmp_path / "scores.csv", [ScoreResult(str(samples["coffee"]), 42.0)])
    out = tmp_path / "site" / "report.html"
    result = runner.invoke(app, ["report", str(scores), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"report: {out} (1 rows, 0 failed") and "coffee.jpg" in out.read_text()


@pytest.mark.parametrize("problem, message", [
    ("missing", "no such score file"), ("not_scores", "not a qfmiqm score file"),
    ("not_scores_csv", "not a qfmiqm score file"), ("suffix", "unknown output format"), ("maps", "no such folder"), ("out_dir", "is a folder"),
])
def test_report_command_usage_errors(runner, tmp_path, samples, problem, message):
    scores = _write_scores(tmp_path / "scores.csv", [ScoreResult(str(samples["coffee"]), 42.0)])
    args = ["report", str(scores), "--out", str(tmp_path / "r.html")]
    if problem == "missing":
        args[1] = str(tmp_path / "nope.csv")
    elif problem == "not_scores":
        (tmp_path / "other.json").write_text('{"a": 1}')
        args[1] = str(tmp_path / "other.json")
    elif problem == "not_scores_csv":  # a foreign CSV: no path column, so no rows to report
        (tmp_path / "other.csv").write_text("name,value\n")
        args[1] = str(tmp_path / "other.csv")
    elif problem == "suffix":
        args[1] = str(tmp_path / "scores.txt")
    elif problem == "maps":
        args += ["--maps", str(tmp_path / "no-maps")]
    else:
        args[3] = str(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.stderr and result.stderr.startswith("error: ")
    assert not (tmp_path / "r.html").exists()


def test_score_report_from_output_file_and_from_stdout(runner, tmp_path, samples, monkeypatch):
    monkeypatch.chdir(samples["chelsea"].parent)  # relative paths, as a user types them
    inputs = ["chelsea.jpg", "rocket.jpg", "missing.jpg"]
    for output in (str(tmp_path / "scores.parquet"), None):
        report = tmp_path / ("file.html" if output else "stdout.html")
        args = ["score", *inputs, "--report", str(report)] + (["-o", output] if output else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output  # missing.jpg failed; the report is written anyway
        assert f"report: {report}" in result.stderr
        page = report.read_text(encoding="utf-8")
        assert page.count(THUMB) == 2 and "chelsea.jpg" in page and "missing.jpg" in _section(page, "Failures")


def test_score_map_and_report_show_the_written_map(runner, tmp_path, samples):
    maps, report = tmp_path / "maps", tmp_path / "report.html"
    result = runner.invoke(app, ["score", str(samples["chelsea"]), "--map", str(maps), "--report", str(report)])
    assert result.exit_code == 0, result.output
    card = _cards(report.read_text(encoding="utf-8"))[0]
    assert card.count(THUMB) == 2 and 'href="maps/chelsea.map.png"' in card


def test_score_report_bad_path_fails_before_scoring(runner, tmp_path, samples):
    result = runner.invoke(app, ["score", str(samples["chelsea"]), "--report", str(tmp_path)])
    assert result.exit_code == 2 and "is a folder" in result.stderr and "path,score" not in result.stdout


# ----------------------------------------------------------------------------- in a browser


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run_browser(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
           f"--user-data-dir={profile}", *args]  # its own profile: other runs may share the machine
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(profile)})


@pytest.mark.skipif(_browser() is None, reason="no Chromium on this machine (apt-get install chromium); "
                                               "the report's browser check needs it")
def test_report_renders_in_headless_chromium(tmp_path, samples):
    rows = [ScoreResult(str(samples["rocket"]), 12.5), ScoreResult(str(samples["coffee"]), 55.0),
            ScoreResult(str(samples["chelsea"]), 88.0), ScoreResult("gone/lost.jpg", None, "no such file")]
    page = write_report(rows, tmp_path / "report.html", bases=[tmp_path]).path
    browser, profile = _browser(), tmp_path / "profile"
    shot = tmp_path / "report.png"
    result = _run_browser(browser, profile, "--window-size=1200,1400", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        colours = rgb.getcolors(1 << 24)
        background = max(colours)[0] / (rgb.width * rgb.height)
    # not blank: the photos' thumbnails alone give thousands of colours; text and a white page do not
    assert len(colours) > 2000 and background < 0.95, (len(colours), background)
    dom = _run_browser(browser, profile, "--dump-dom", page.as_uri()).stdout
    worst_card = _cards(dom)[0]
    assert "rocket.jpg" in worst_card and "12.5" in worst_card
    assert "lost.jpg" in dom and "no such file" in dom
