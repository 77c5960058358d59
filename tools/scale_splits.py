"""Write the split file of a training list that holds a photo at more than one scale, so that every
scale of a photo lands on the same side (train, validation or unseen) of the split.

    python tools/scale_splits.py datasets/default_train_ms_anchored_sat.csv runs/splits_ms.json \
        --extra synth_s512 --extra synth_pristine512 [--config configs/default_model.yaml]

The rows outside the ``--extra`` folders are split exactly as ``qfmiqm train`` would split them on
their own (by content, the config's protocol), so the validation and unseen scenes are those of a
run on the first scale alone. A row of an ``--extra`` folder then takes the side of its photo's
scene: the reference whose file stem (less a ``_cNN`` crop suffix) is the same, taken from the
rows that are not pristine-only crops. Without this, a photo's 512-px crops could train the head
while its 1024-px crops are the scenes the image-level term is fitted on as "unseen".
Give the file to training with ``--set data.split_file=OUT`` (docs/default-model.md).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from qfmiqm.data.datasets import load as load_dataset
from qfmiqm.data.splits import Split, SplitProtocol, SplitSet, make_splits, save_splits
from qfmiqm.errors import QfmiqmError
from qfmiqm.train.schema import load_train_config

SIDES = ("train", "val", "test")


def photo_of(reference: str) -> str:
    """The photo a reference image was cut from: its file stem without a ``_cNN`` crop suffix."""
    return re.sub(r"_c\d+$", "", Path(reference).stem)


def is_extra(key: str, extra: list[str]) -> bool:
    return any(key.startswith(prefix.rstrip("/") + "/") for prefix in extra)


def scale_splits(keys: list[str], content: list[str], types: list[str], extra: list[str],
                 protocol: SplitProtocol, name: str) -> SplitSet:
    """The split of ``keys``: the non-extra rows drawn by content, the extra rows by photo."""
    base = [i for i, k in enumerate(keys) if not is_extra(k, extra)]
    drawn = make_splits(len(base), [content[i] for i in base], protocol, name, [keys[i] for i in base])
    out = []
    for split in drawn.splits:
        side = {}
        for s in SIDES:
            for j in getattr(split, s):
                side[base[j]] = s
        # a photo's side is that of its distorted scene (a reference that has non-pristine rows)
        scene_side = {photo_of(content[i]): side[i] for i in base if types[i] != "pristine"}
        members: dict[str, list[int]] = {s: [] for s in SIDES}
        for i, k in enumerate(keys):
            s = side[i] if i in side else scene_side.get(photo_of(content[i]), "train")
            members[s].append(i)
        out.append(Split(split.index, split.seed, *(tuple(members[s]) for s in SIDES)))
    return SplitSet(name, protocol, "photo", tuple(keys), tuple(out))


def main() -> None:
    try:
        write()
    except QfmiqmError as exc:  # a missing list or config: one line, as fit_tone.py says it
        sys.exit(f"error: {exc}")


def write() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--extra", action="append", required=True, help="folder (as written in the CSV's paths) of a "
                    "further scale; repeatable")
    ap.add_argument("--config", default="configs/default_model.yaml", help="training config whose split protocol "
                    "(data.n_splits, test_fraction, val_fraction, seed) is used")
    args = ap.parse_args()
    d = load_train_config(args.config).data
    ds = load_dataset(str(args.csv))
    if ds.content is None or ds.types is None:
        sys.exit(f"{args.csv}: needs reference and type columns (a qfmiqm synth list)")
    protocol = SplitProtocol(n=d.n_splits, test_fraction=d.test_fraction, val_fraction=d.val_fraction, seed=d.seed)
    splits = scale_splits(list(ds.keys), list(ds.content), list(ds.types), args.extra, protocol, ds.name)
    path = save_splits(splits, args.out)
    first = splits.splits[0]
    print(f"wrote {path}: " + ", ".join(f"{len(getattr(first, s))} {s}" for s in SIDES))


if __name__ == "__main__":
    main()
