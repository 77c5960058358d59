"""tools/scale_splits.py and make_default_train.py --pristine-more: a photo's second scale stays on its
side of the split, and the first scale is split as training alone would split it."""
import csv
import sys

import numpy as np
from PIL import Image

from qfmiqm.data.splits import SplitProtocol, load_splits, make_splits

PHOTOS = [f"photo{i:02d}" for i in range(40)]
TYPES = ("gaussian_blur", "jpeg")


def synth_rows(folder: str, crops: bool = False) -> list[tuple[str, str, str]]:
    """(path, reference, type) rows of a synth-like set; ``crops``: pristine-only crops _c00, _c01."""
    out = []
    for p in PHOTOS:
        if crops:
            out += [(f"{folder}/reference/{p}_c{j:02d}.png",) * 2 + ("pristine",) for j in range(2)]
            continue
        ref = f"{folder}/reference/{p}.png"
        out.append((ref, ref, "pristine"))
        out += [(f"{folder}/distorted/{p}_{t}_1.png", ref, t) for t in TYPES]
    return out


def test_every_scale_of_a_photo_on_one_side(load_tool):
    tool = load_tool("scale_splits")
    rows = synth_rows("big") + synth_rows("big_pristine", crops=True) + synth_rows("small") \
        + synth_rows("small_pristine", crops=True)
    keys, content, types = (list(c) for c in zip(*rows))
    protocol = SplitProtocol(n=2, test_fraction=0.1, val_fraction=0.1, seed=3)
    splits = tool.scale_splits(keys, content, types, ["small", "small_pristine/"], protocol, "ms")
    assert splits.grouped_by == "photo"  # what the run's log and model card say of the split
    base = [i for i, k in enumerate(keys) if not k.startswith("small")]
    alone = make_splits(len(base), [content[i] for i in base], protocol, "ms", [keys[i] for i in base])
    for split, drawn in zip(splits.splits, alone.splits):
        side = {}
        for name in ("train", "val", "test"):
            for i in getattr(split, name):
                side[i] = name
        assert sorted(side) == list(range(len(keys)))  # every row on exactly one side
        # the first scale exactly as training on it alone would split it
        for name in ("train", "val", "test"):
            assert [base[j] for j in getattr(drawn, name)] == sorted(i for i in getattr(split, name) if i in base)
        scene = {tool.photo_of(content[i]): side[i] for i in base if types[i] != "pristine"}
        for i, k in enumerate(keys):
            if k.startswith("small"):
                assert side[i] == scene[tool.photo_of(content[i])], k
        assert {side[i] for i in range(len(keys)) if keys[i].startswith("small")} == {"train", "val", "test"}


def test_written_split_file_loads_for_the_list(tmp_path, load_tool, monkeypatch):
    root = tmp_path / "data"
    img = Image.fromarray(np.full((8, 8, 3), 128, np.uint8))
    rows = synth_rows("big") + synth_rows("small")
    for path, _, _ in rows:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / path)
    listing = root / "train.csv"
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "reference", "type", "level", "score"])
        w.writerows([p, r, t, 0 if t == "pristine" else 1, 100 if t == "pristine" else 60] for p, r, t in rows)
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  dataset: {listing}\n  n_splits: 1\n  test_fraction: 0.1\n  val_fraction: 0.1\n"
                      "  seed: 0\n")
    out = tmp_path / "splits.json"
    monkeypatch.setattr(sys, "argv", ["scale_splits.py", str(listing), str(out), "--extra", "small",
                                      "--config", str(config)])
    load_tool("scale_splits").main()
    from qfmiqm.data.datasets import load as load_dataset

    ds = load_dataset(str(listing))
    split = load_splits(out, dataset=ds).splits[0]
    assert len(split.train) + len(split.val) + len(split.test) == len(rows)
    unseen = {ds.keys[i] for i in split.val + split.test}
    assert unseen and all(k.replace("big/", "small/") in unseen for k in unseen if k.startswith("big/"))


def test_pristine_more_adds_only_pristine_rows(tmp_path, load_tool, monkeypatch):
    sets = {}
    for name, crops in (("synth", False), ("pristine", True), ("pristine512", True)):
        folder = tmp_path / name
        folder.mkdir()
        with open(folder / "labels.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "reference", "type", "level", "score"])
            for p, r, t in synth_rows(".", crops)[:6]:
                w.writerow([p[2:], r[2:], t, 0 if t == "pristine" else 1, 100 if t == "pristine" else 70])
                if crops:  # a synth pristine set also holds one distorted row per crop
                    w.writerow([p[2:].replace("reference", "distorted"), r[2:], "white_noise", 1, 80])
        sets[name] = folder
    out = tmp_path / "train.csv"
    monkeypatch.setattr(sys, "argv", ["make_default_train.py", str(sets["synth"]), str(sets["pristine"]), str(out),
                                      "--pristine-more", str(sets["pristine512"])])
    load_tool("make_default_train").main()
    written = list(csv.DictReader(open(out)))
    tail = [r for r in written if r["path"].startswith("pristine512/")]
    assert len(tail) == 6 and all(r["type"] == "pristine" for r in tail)
    assert written[-6:] == tail  # after the other sets, so the first sets keep their row order


def test_a_missing_list_is_one_line_naming_it(tmp_path, load_tool, monkeypatch, capsys):
    import pytest

    missing = tmp_path / "nope.csv"
    monkeypatch.setattr(sys, "argv", ["scale_splits.py", str(missing), str(tmp_path / "s.json"), "--extra", "small"])
    with pytest.raises(SystemExit) as stop:
        load_tool("scale_splits").main()
    message = str(stop.value.code)
    assert message.startswith("error: ") and str(missing) in message and "\n" not in message
    assert not (tmp_path / "s.json").exists()
