"""benchmarks/peers.py: its core functions on two sample photos at a tiny size, with fake scorers."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SIDE = 48  # tiny: the test is about the bookkeeping, not the model


@pytest.fixture(scope="module")
def peers():
    """The benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["peers"] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["peers"]
    return module


@pytest.fixture(scope="module")
def photos(peers, samples) -> dict[str, np.ndarray]:
    return {n: peers.load_photo(samples[n], SIDE) for n in ("chelsea", "coffee")}


def perfect_scorer(peers, photos: dict[str, np.ndarray], higher_is_better: bool = True):
    """A fake scorer that knows every distorted image's level (from the same deterministic ladders)
    and scores it -level (or +level when lower is better); anything else gets 0."""
    level_of = {}
    for name, img in photos.items():
        for kind in peers.KINDS.values():
            for level, step in enumerate(peers.ladder(img, name, kind)):
                level_of[step.tobytes()] = level
    sign = -1.0 if higher_is_better else 1.0
    return peers.Scorer("fake" if higher_is_better else "fake_low",
                        lambda imgs: [sign * level_of.get(a.tobytes(), 0) for a in imgs], higher_is_better)


def test_photos_are_downscaled_and_distortions_are_deterministic(peers, photos):
    img = photos["chelsea"]
    assert max(img.shape[:2]) == SIDE and img.dtype == np.uint8
    for kind in peers.KINDS.values():
        assert len(kind.params) == 5
        first, again = peers.ladder(img, "chelsea", kind), peers.ladder(img, "chelsea", kind)
        assert len(first) == 6 and first[0] is img
        assert all(a.shape == img.shape and a.dtype == np.uint8 for a in first)
        assert all(np.array_equal(a, b) for a, b in zip(first, again))
    grey = peers.greyscale(img)
    assert grey.shape == img.shape and np.array_equal(grey[..., 0], grey[..., 2])


def test_spearman_of_a_perfect_scorer_is_minus_one(peers, photos):
    assert peers.spearman(range(6), [9, 7, 5, 3, 2, 1]) == pytest.approx(-1.0)
    assert peers.spearman(range(6), [4] * 6) == 0.0  # no ranking, not NaN
    scorers = [perfect_scorer(peers, photos), perfect_scorer(peers, photos, higher_is_better=False)]
    results = {name: peers.score_photo(img, name, scorers) for name, img in photos.items()}
    summary = peers.summarise(results, ["fake", "fake_low"])
    assert summary["photos"] == 2 and list(summary["kinds"]) == list(peers.KINDS)
    for row in summary["kinds"].values():
        assert row["fake"] == pytest.approx(-1.0) and row["fake_low"] == pytest.approx(-1.0)
    series = results["coffee"]["kinds"]["jpeg"]["fake"]["scores"]
    assert series == [0, -1, -2, -3, -4, -5]
    assert set(results["coffee"]["colour"]) == {"colour", "grey", "muted"}


def test_tables_and_split(peers, photos, tmp_path):
    scorers = [perfect_scorer(peers, photos)]
    results = {name: peers.score_photo(img, name, scorers) for name, img in photos.items()}
    split = tmp_path / "test_names.txt"
    split.write_text("# test photos\ncoffee\n")
    groups = peers.read_split(split)
    assert groups == {"coffee": "test"}
    summaries, lines = peers.report(results, groups, ["fake"])
    assert list(summaries) == ["validation", "test", "all"]
    assert summaries["test"]["photos"] == 1 and summaries["all"]["photos"] == 2
    text = "\n".join(lines)
    assert text.count("| kind | levels | our model | BRISQUE | goal met? |") == 3
    assert text.count("| photo | colour | greyscale | colour - grey |") == 3
    kind_rows = [ln for ln in lines if ln.startswith("| blur |")]
    assert len(kind_rows) == 3 and all(len(r.split("|")) == 7 for r in kind_rows)
    # no BRISQUE column: the peer goals say so, contrast's goal needs only ours
    assert "n/a (no BRISQUE)" in text and "| contrast |" in text
    assert peers.kind_goal("contrast", -0.95, None) == "yes" and peers.kind_goal("blur", -0.92, -0.93) == "yes"
    assert peers.kind_goal("blur", -0.90, -0.95) == "no"
    # the fake gives 0 to colour and greyscale alike: all within 15 points, but a median of 0 < 50
    assert "greyscale within 15 points of colour: 2 of 2" in text and "goal met: no" in text
    json.dumps(summaries)  # the --out file holds these


def test_brisque_peer_scores_the_same_pixels(peers, photos):
    peer = peers.brisque_peer()
    if peer is None:
        pytest.skip('brisque not installed (pip install "qfmiqm[bench]")')
    assert not peer.higher_is_better
    result = peers.score_photo(photos["coffee"], "coffee", [perfect_scorer(peers, photos), peer])
    brisque = result["kinds"]["noise"]["brisque"]
    assert len(brisque["scores"]) == 6 and all(math.isfinite(s) for s in brisque["scores"])
    assert -1.0 <= brisque["spearman"] <= 1.0


def test_command_line_writes_tables_and_json(peers, samples, tmp_path, monkeypatch, capsys):
    # fakes in place of the real scorers: this checks the wiring, not the models
    monkeypatch.setattr(peers, "our_scorer", lambda model: peers.Scorer("ours", lambda imgs: [50.0] * len(imgs)))
    monkeypatch.setattr(peers, "brisque_peer", lambda: None)
    split = tmp_path / "names.txt"
    split.write_text("coffee\n")
    out = tmp_path / "peers.json"
    assert peers.main(["--photos", str(samples["coffee"].parent), "--names", "chelsea,coffee", "--max-side", "32",
                       "--split", str(split), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "### test: 1 photos (coffee)" in text and "### validation: 1 photos (chelsea)" in text
    assert "### Spearman per photo" in text and "not installed" in text
    saved = json.loads(out.read_text())
    assert saved["max_side"] == 32 and set(saved["photos"]) == {"chelsea", "coffee"}
    assert saved["photos"]["coffee"]["kinds"]["blur"]["ours"]["scores"] == [50.0] * 6
    assert saved["summaries"]["all"]["kinds"]["blur"]["ours"] == 0.0  # a constant scorer ranks nothing
    assert max(saved["photos"]["coffee"]["size"]) == 32
