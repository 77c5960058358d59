"""tools/feature_probe.py: its scores are the model's own, and its probe, trained on some photos,
finds a visible blur on a photo it did not see."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qfmiqm.data.distortions import distort

CROP = 224
BLUR = ("gaussian_blur", 2)


@pytest.fixture(scope="module")
def probe_tool(load_tool):
    return load_tool("feature_probe")


def _synth_set(root: Path, photos: dict[str, Path]) -> Path:
    """A labels.csv set like `qfmiqm synth` makes: 4 crops per photo, each pristine and blurred."""
    (root / "reference").mkdir(parents=True)
    (root / "distorted").mkdir()
    rows = []
    for name, path in photos.items():
        img = np.asarray(Image.open(path).convert("RGB"))
        h, w = img.shape[:2]
        for k, (y, x) in enumerate([(0, 0), (0, w - CROP), (h - CROP, 0), (h - CROP, w - CROP)]):
            crop = np.ascontiguousarray(img[y:y + CROP, x:x + CROP])
            ref = f"reference/{name}_{k}.png"
            dist = f"distorted/{name}_{k}_{BLUR[0]}_{BLUR[1]}.png"
            Image.fromarray(crop).save(root / ref)
            Image.fromarray(distort(crop, *BLUR, rng=k)).save(root / dist)
            rows += [(ref, ref, "pristine", 0, 100.0), (dist, ref, BLUR[0], BLUR[1], 70.0)]
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reference", "type", "level", "score"])
        writer.writerows(rows)
    return root


def test_probe_finds_blur_on_unseen_photo_and_scores_match_the_model(probe_tool, samples, default_torch_model, tmp_path):
    default_model = default_torch_model  # the probe reads the network's features
    train = probe_tool.versions_by_scene(_synth_set(tmp_path / "train", {k: samples[k] for k in ("chelsea", "rocket")}))
    test = probe_tool.versions_by_scene(_synth_set(tmp_path / "test", {"coffee": samples["coffee"]}))
    assert len(train) == 8 and len(test) == 4
    read = probe_tool.FeatureReader(default_model)

    x_train, _ = probe_tool.pairs(train, BLUR[0], BLUR[1], read)
    x_test, s_test = probe_tool.pairs(test, BLUR[0], BLUR[1], read)
    assert x_train.shape[:2] == (8, 2) and x_test.shape[:2] == (4, 2)

    # the scores the tool compares with are exactly what `score` gives
    first = next(iter(test.values()))
    for version in (("pristine", 0), BLUR):
        assert read(first[version])[1] == pytest.approx(default_model.score(str(first[version])), abs=1e-3)

    probe = probe_tool.fit_probe(x_train)
    assert probe_tool.rated_above(probe, x_test) == 4
    # the probe separates the two classes it was trained on (pristine high, blurred low)
    logits = probe(x_train)
    assert (logits[:, 0] > 0).all() and (logits[:, 1] < 0).all()


def test_a_set_without_labels_is_refused_in_one_line(probe_tool, tmp_path):
    with pytest.raises(SystemExit, match="labels.csv: not found"):
        probe_tool.versions_by_scene(tmp_path)
