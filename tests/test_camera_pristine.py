"""tools/camera_pristine.py: camera-grain pristine crops, labelled 100, that stay on their photo's side
of the split and carry less noise than the mildest synth noise level."""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from qfmiqm.data.distortions import white_noise
from qfmiqm.models.tone import STATISTICS, tone_statistics

ROOT = Path(__file__).resolve().parents[1]
NOISE = STATISTICS.index("noise")


def crop_set(folder: Path, photos: dict[str, str], crops: int) -> Path:
    """A pristine-crop set as ``qfmiqm synth --crops N`` lays it out, cut from real sample photos."""
    (folder / "reference").mkdir(parents=True)
    for name, sample in photos.items():
        img = Image.open(ROOT / "samples" / sample).convert("RGB")
        for j in range(crops):
            img.crop((160 + 40 * j, 120 + 20 * j, 256 + 40 * j, 216 + 20 * j)).save(folder / "reference" / f"{name}_c{j:02d}.png")
    return folder


def run(out: Path, *sources: str, seed: int = 11) -> list[dict]:
    subprocess.run([sys.executable, str(ROOT / "tools" / "camera_pristine.py"), str(out), "--seed", str(seed),
                    *(a for s in sources for a in ("--from", s))], check=True, capture_output=True)
    with open(out / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def noise_of(path: Path) -> float:
    return float(tone_statistics([np.asarray(Image.open(path).convert("RGB"))])[NOISE])


def test_crops_are_pristine_renumbered_and_reproducible(tmp_path):
    big = crop_set(tmp_path / "p1024", {"cat": "chelsea.jpg", "cup": "coffee.jpg"}, crops=3)
    small = crop_set(tmp_path / "p512", {"cat": "chelsea.jpg", "cup": "coffee.jpg"}, crops=3)
    rows = run(tmp_path / "grain", f"{big}:2", f"{small}:1")
    names = sorted(Path(r["path"]).stem for r in rows)
    # the first K crops of each photo; the second --from renumbered from 10, still _cNN
    assert names == ["cat_c00", "cat_c01", "cat_c10", "cup_c00", "cup_c01", "cup_c10"]
    assert {(r["type"], r["level"], r["score"]) for r in rows} == {("pristine", "0", "100.0")}
    assert all(r["path"] == r["reference"] for r in rows)
    again = run(tmp_path / "grain2", f"{big}:2", f"{small}:1")
    assert again == rows
    for r in rows:
        assert (tmp_path / "grain" / r["path"]).read_bytes() == (tmp_path / "grain2" / r["path"]).read_bytes()


def test_grain_is_visible_yet_milder_than_the_mildest_noise_level(tmp_path):
    """More noise than the crops had (on average: JPEG at 85 can wipe out the faintest grain), and
    each less than white_noise at sigma 5 (below synth's level 1)."""
    src = crop_set(tmp_path / "p", {"cup": "coffee.jpg", "cat": "chelsea.jpg"}, crops=2)
    rows = run(tmp_path / "grain", f"{src}:2", seed=3)
    rng = np.random.default_rng(0)
    befores, afters = [], []
    for r in rows:
        name = Path(r["path"]).name
        before = noise_of(src / "reference" / name)
        x = np.asarray(Image.open(src / "reference" / name).convert("RGB"), dtype=np.float32) / 255.0
        mild = np.clip(white_noise(x, 5 / 255.0, rng), 0, 1)
        mild_noise = float(tone_statistics([(mild * 255 + 0.5).astype(np.uint8)])[NOISE])
        after = noise_of(tmp_path / "grain" / r["path"])
        assert after < mild_noise, (name, after, mild_noise)
        assert not np.array_equal(np.asarray(Image.open(tmp_path / "grain" / r["path"])), (x * 255).round())
        befores.append(before)
        afters.append(after)
    assert np.mean(afters) > np.mean(befores) + 0.2


def test_bad_source_is_one_line(tmp_path):
    (tmp_path / "empty" / "reference").mkdir(parents=True)
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "camera_pristine.py"), str(tmp_path / "o"),
                          "--from", f"{tmp_path / 'empty'}:2"], capture_output=True, text=True)
    assert res.returncode != 0 and "no _cNN crops" in res.stderr
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "camera_pristine.py"), str(tmp_path / "o"),
                          "--from", "nocount"], capture_output=True, text=True)
    assert res.returncode == 2 and "expected FOLDER:K" in res.stderr
