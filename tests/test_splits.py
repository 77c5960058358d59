"""The split protocol: 10 x 80/20, reproducible, content-disjoint for synthetic sets, saved as JSON."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import qfmiqm
from qfmiqm.data.registry import DATASETS, label_rows
from qfmiqm.data.splits import SplitProtocol, load_splits, make_splits, save_splits
from qfmiqm.errors import UsageError


@pytest.fixture(scope="module")
def kadid():
    """The real KADID-10k label list: 10,125 items over 81 reference images."""
    rows = label_rows(DATASETS["kadid10k"])
    return [r.path for r in rows], [r.reference for r in rows]


@pytest.fixture
def synthetic_csv(tmp_path, samples) -> Path:
    """A small synthetic user set: 6 references x 3 versions of real photos, as synth writes it."""
    photo = np.asarray(Image.open(samples["coffee"]).convert("RGB"))
    lines = ["path,reference,type,level,score"]
    for ref in range(6):
        for level in range(3):
            name = f"imgs/r{ref}_l{level}.png"
            (tmp_path / "imgs").mkdir(exist_ok=True)
            Image.fromarray(photo[ref * 20:ref * 20 + 64, level * 30:level * 30 + 64]).save(tmp_path / name)
            lines.append(f"{name},ref{ref}.png,blur,{level + 1},{90 - 30 * level}")
    f = tmp_path / "labels.csv"
    f.write_text("\n".join(lines) + "\n")
    return f


def _parts(split) -> list[set[int]]:
    return [set(split.train), set(split.val), set(split.test)]


def test_ten_random_80_20_splits_for_an_authentic_set():
    splits = make_splits(1000, protocol=SplitProtocol(), dataset="toy")
    assert len(splits) == 10 and splits.grouped_by == "image"
    tests = []
    for i, s in enumerate(splits):
        train, val, test = _parts(s)
        assert s.index == i and s.seed == i
        assert len(train) == 800 and len(test) == 200 and not val
        assert not train & test and train | test == set(range(1000))
        assert list(s.train) == sorted(s.train)
        tests.append(test)
    assert len({frozenset(t) for t in tests}) == 10  # ten different test sets


def test_same_seed_same_splits_other_seed_other_splits(kadid):
    paths, refs = kadid
    a = make_splits(len(paths), refs, SplitProtocol(n=3, seed=7), "kadid10k", paths)
    b = make_splits(len(paths), refs, SplitProtocol(n=3, seed=7), "kadid10k", paths)
    c = make_splits(len(paths), refs, SplitProtocol(n=3, seed=8), "kadid10k", paths)
    assert a == b
    assert a[0].test != c[0].test and a[1].test == c[0].test  # split i uses seed + i


def test_synthetic_split_never_puts_one_reference_on_both_sides(kadid):
    paths, refs = kadid
    splits = make_splits(len(paths), refs, SplitProtocol(n=10, val_fraction=0.1), "kadid10k", paths)
    assert splits.grouped_by == "content"
    for s in splits:
        sides = [{refs[i] for i in part} for part in (s.train, s.val, s.test)]
        assert not sides[0] & sides[2] and not sides[0] & sides[1] and not sides[1] & sides[2]
        assert (len(sides[0]), len(sides[1]), len(sides[2])) == (57, 8, 16)  # of 81 references
        assert len(s.train) + len(s.val) + len(s.test) == len(paths)
        assert abs(len(s.test) / len(paths) - 0.2) < 0.01


def test_dataset_splits_group_by_reference(synthetic_csv):
    ds = qfmiqm.datasets.load(synthetic_csv)
    assert ds.kind == "synthetic"
    splits = ds.splits(n=10, test_fraction=0.2, seed=0)
    assert len(splits) == 10 and splits.dataset == ds.name
    for s in splits:
        train_refs = {ds.content[i] for i in s.train}
        test_refs = {ds.content[i] for i in s.test}
        assert len(test_refs) == 1 and len(train_refs) == 5 and not train_refs & test_refs
        assert len(s.test) == 3  # all three versions of the held-out reference
    test_ds = ds.subset(splits[0].test)
    assert len(test_ds) == 3 and set(test_ds.content) == {ds.content[i] for i in splits[0].test}
    np.testing.assert_allclose(sorted(test_ds.labels), [30.0, 60.0, 90.0])


def test_split_file_round_trip_and_realignment(synthetic_csv, tmp_path):
    ds = qfmiqm.datasets.load(synthetic_csv)
    splits = ds.splits(n=4, val_fraction=0.2, seed=3)
    out = save_splits(splits, tmp_path / "results")  # a results folder -> results/splits.json
    assert out == tmp_path / "results" / "splits.json"
    assert [p.name for p in out.parent.iterdir()] == ["splits.json"]  # no temp files left
    data = json.loads(out.read_text())
    assert data["dataset"] == ds.name
    assert data["protocol"] == {"n": 4, "test_fraction": 0.2, "val_fraction": 0.2, "seed": 3}
    assert data["keys"][0] == "imgs/r0_l0.png" and data["grouped_by"] == "content"
    again = load_splits(out, dataset=ds)
    assert again == splits
    # the same split file applied to the set listed in another order still picks the same images
    shuffled = ds.subset(list(range(len(ds)))[::-1])
    aligned = load_splits(tmp_path / "results", dataset=shuffled)
    for s, t in zip(splits, aligned):
        assert sorted(ds.keys[i] for i in s.test) == sorted(shuffled.keys[i] for i in t.test)
        assert sorted(ds.keys[i] for i in s.val) == sorted(shuffled.keys[i] for i in t.val)
    # a set missing some of the split's images is refused, unless asked to drop them
    partial = ds.subset(range(3, len(ds)))
    with pytest.raises(UsageError, match="3 of its 18 images are not in dataset"):
        load_splits(out, dataset=partial)
    dropped = load_splits(out, dataset=partial, allow_missing=True)
    assert all(max(s.train + s.val + s.test) < len(partial) for s in dropped)


def test_bad_split_files_and_protocols_are_usage_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="cannot read split file"):
        load_splits(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(UsageError, match="not a qfmiqm split file"):
        load_splits(bad)
    good = make_splits(10).to_dict()
    good["splits"][0]["test"] = [99]
    bad.write_text(json.dumps(good))
    with pytest.raises(UsageError, match="malformed split file"):
        load_splits(bad)
    with pytest.raises(UsageError, match="no such split file"):
        load_splits(tmp_path / "absent.json")
    with pytest.raises(UsageError, match="test_fraction"):
        SplitProtocol(test_fraction=1.2)
    with pytest.raises(UsageError, match="must leave a train part"):
        SplitProtocol(test_fraction=0.5, val_fraction=0.5)
    with pytest.raises(UsageError, match="has 1 reference images"):
        make_splits(5, content=["a"] * 5, dataset="one-ref")
