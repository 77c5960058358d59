"""tools/clipped_crops.py: pristine crops with clipped pixels, as a synthetic-set labels.csv."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "clipped_crops.py"


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("clipped_crops")


def test_clipped_share_counts_pixels_with_any_channel_at_an_end(tool):
    rgb = np.full((10, 10, 3), 128, dtype=np.uint8)
    rgb[0, :, 2] = 3      # a saturated colour: one channel near 0
    rgb[1, :5] = 255      # blown highlight
    rgb[2, :, 0] = 6      # not clipped (6 > 5)
    assert tool.clipped_share(rgb) == pytest.approx(0.15)


def test_only_clipped_crops_are_kept_and_labelled_pristine(tool, samples, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    coffee = Image.open(samples["coffee"]).convert("RGB")  # 15 % of its pixels have a channel <= 5
    coffee.save(src / "coffee.png")
    flat = Image.fromarray(np.asarray(coffee)[:, :, ::-1] // 2 + 60)  # no pixel reaches either end
    flat.save(src / "flat.png")
    out = tmp_path / "clipped"
    run = subprocess.run([sys.executable, str(TOOL), "--src", str(src), "--out", str(out), "--size", "128",
                          "--per-photo", "3", "--tries", "12", "--min-share", "0.02"],
                         capture_output=True, text=True, check=True)
    rows = list(csv.DictReader(open(out / "labels.csv", newline="")))
    assert 1 <= len(rows) <= 3 and "from 1 of 2 photos" in run.stdout
    for row in rows:
        assert row["path"] == row["reference"] and row["type"] == "pristine" and float(row["score"]) == 100.0
        assert row["path"].startswith("reference/coffee_k")
        crop = np.asarray(Image.open(out / row["path"]))
        assert crop.shape == (128, 128, 3) and tool.clipped_share(crop) >= 0.02


def test_a_missing_photo_folder_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, str(TOOL), "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.strip().count("\n") == 0 and "nope: not a folder" in run.stderr
