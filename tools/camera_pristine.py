"""Make "camera pristine" crops: pristine crops with the faint sensor grain and high-quality JPEG a
good camera photo carries, labelled 100 like every pristine image (docs/default-model.md, "Tried
after v6": run ms7g; not in the default model's recipe).

Why it was tried: on some held-out photos the head scores a 0.7 px blur or a quality-50 JPEG of the
photo *above* the photo itself. The guess was that it reads the photo's own grain or JPEG texture
as a defect, which the blur or compression wipes away (the run did not bear it out). These crops
teach that such texture is part of a good photo: Poisson-Gaussian sensor noise in linear light (``photons`` photo-electrons
at full scale, 1,000-8,000: about 1-4 grey levels of noise at mid-grey, below the mildest synth
noise level of about 5), then, for half of them, baseline JPEG at quality 85-95.

    python tools/camera_pristine.py OUT --from datasets/synth_pristine:3 --from datasets/synth_pristine512:2 ...

Each ``--from FOLDER:K`` takes the first K crops (``_cNN``) of each photo in a pristine-crop set
(``qfmiqm synth ... --crops N``); the crops of the n-th ``--from`` are renumbered from 10 * n, so
that the crop suffix stays ``_cNN`` and tools/scale_splits.py puts them on their photo's side.
OUT gets ``reference/*.png`` and a synth-style ``labels.csv`` (all rows pristine, 100), ready for
``tools/make_default_train.py --pristine-more OUT``.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from PIL import Image

from qfmiqm.data.anchor import PRISTINE_LABEL, PRISTINE_TYPE
from qfmiqm.data.distortions import jpeg, sensor_grain
from qfmiqm.files import write_text_atomic

#: photo-electrons at full scale: the fewer, the stronger the grain (1-4 grey levels at mid-grey)
PHOTONS = (1000.0, 8000.0)
#: JPEG quality range of the half of the crops that are compressed
QUALITY = (85, 95)
JPEG_SHARE = 0.5
CROP = re.compile(r"^(?P<photo>.+)_c(?P<n>\d+)$")
#: the crops of the n-th --from are numbered from STRIDE * n, so K may be at most STRIDE
STRIDE = 10


def add_grain(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 RGB -> uint8 RGB with camera grain (and, for half, JPEG)."""
    photons = float(np.exp(rng.uniform(*np.log(PHOTONS))))
    img = sensor_grain(x.astype(np.float32) / 255.0, photons, rng)
    quality = int(rng.integers(QUALITY[0], QUALITY[1] + 1)) if rng.random() < JPEG_SHARE else 0
    if quality:
        img = jpeg(np.clip(img, 0.0, 1.0), quality, rng)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def chosen_crops(folder: Path, k: int) -> list[tuple[str, int, Path]]:
    """(photo, crop number, path) of the first ``k`` crops of each photo in ``folder/reference``."""
    out = []
    for path in sorted((folder / "reference").glob("*.png")):
        m = CROP.match(path.stem)
        if m and int(m["n"]) < k:
            out.append((m["photo"], int(m["n"]), path))
    if not out:
        raise SystemExit(f"{folder}/reference: no _cNN crops (make the set with qfmiqm synth --crops N)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--from", dest="sources", action="append", required=True, metavar="FOLDER:K",
                    help="pristine-crop set and crops per photo to take; repeatable")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    (args.out / "reference").mkdir(parents=True, exist_ok=True)
    rows = []
    for n, source in enumerate(args.sources):
        folder, _, k = source.rpartition(":")
        if not folder or not k.isdigit() or not 1 <= int(k) <= STRIDE:
            ap.error(f"--from {source}: expected FOLDER:K with K from 1 to {STRIDE}")
        for photo, crop, path in chosen_crops(Path(folder), int(k)):
            grainy = add_grain(np.asarray(Image.open(path).convert("RGB")), rng)
            name = f"reference/{photo}_c{STRIDE * n + crop:02d}.png"
            Image.fromarray(grainy).save(args.out / name)
            rows.append((name, name, PRISTINE_TYPE, 0, PRISTINE_LABEL))
    lines = ["path,reference,type,level,score"] + [",".join(map(str, r)) for r in rows]
    write_text_atomic(args.out / "labels.csv", "\n".join(lines) + "\n")
    print(f"wrote {len(rows)} camera-pristine crops to {args.out}")


if __name__ == "__main__":
    main()
