"""tools/tone_probe.py: whole-image tonal statistics tell a photo from its contrast reduction."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CROP = 160


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("tone_probe")


def _reduced(crop: np.ndarray, keep: float) -> np.ndarray:
    mean = crop.mean()
    return np.clip(mean + keep * (crop.astype(np.float32) - mean) + 0.5, 0, 255).astype(np.uint8)


def _contrast_set(root: Path, photos: list[Path]) -> Path:
    """A `qfmiqm synth`-style set: crops of the photos, each with a contrast reduction at level 1
    (80 %) and a contrast *raise* at level 2 (the synthetic type goes either way)."""
    (root / "reference").mkdir(parents=True)
    (root / "distorted").mkdir()
    rows = []
    for path in photos:
        img = np.asarray(Image.open(path).convert("RGB"))
        h, w = img.shape[:2]
        for k, (y, x) in enumerate([(0, 0), (0, w - CROP), (h - CROP, 0), (h - CROP, w - CROP), (h // 3, w // 3)]):
            crop = np.ascontiguousarray(img[y:y + CROP, x:x + CROP])
            ref, low, high = (f"reference/{path.stem}_{k}.png", f"distorted/{path.stem}_{k}_c1.png",
                              f"distorted/{path.stem}_{k}_c2.png")
            Image.fromarray(crop).save(root / ref)
            Image.fromarray(_reduced(crop, 0.8)).save(root / low)
            Image.fromarray(_reduced(crop, 1 / 0.65)).save(root / high)
            rows += [(ref, ref, "pristine", 0, 100.0), (low, ref, "contrast_change", 1, 80.0),
                     (high, ref, "contrast_change", 2, 70.0)]
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reference", "type", "level", "score"])
        writer.writerows(rows)
    return root


def test_probe_from_other_photos_rates_coffee_above_its_contrast_loss(tool, samples, tmp_path):
    train = _contrast_set(tmp_path / "train", [samples["chelsea"], samples["rocket"]])
    pairs = tool.reduction_pairs(train, [1, 2])
    assert pairs.shape == (10, 2, len(tool.STATISTICS))  # only the reductions, not the raises
    probe = tool.fit_probe(pairs, c=0.1)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(samples["coffee"]).save(photos / "coffee.png")
    coffee = tool.photo_pairs(photos)
    assert tool.rated_above(probe, coffee) == 1
    # the statistics move the way a contrast loss moves them: spread and range shrink by ~70 %
    spread = coffee[0, 1] / coffee[0, 0]
    assert spread[0] == pytest.approx(0.7, abs=0.02) and spread[1] == pytest.approx(0.7, abs=0.05)


def test_unknown_levels_are_refused(tool, monkeypatch, tmp_path):
    monkeypatch.setattr("sys.argv", ["tone_probe.py", "--levels", "0,7", "--photos", str(tmp_path)])
    with pytest.raises(SystemExit, match="levels are 1 to 5"):
        tool.main()
