"""Runtimes (qfmiqm.models.runtime*): which one runs a model, ONNX Runtime and PyTorch agreeing on
real photos for both input layouts, the cache of built ONNX graphs (qfmiqm.models.onnx_cache),
and scoring on the CPU without importing torch.

Every graph is built once per module, into one temporary cache folder ($QFMIQM_CACHE).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import qfmiqm  # noqa: E402
from qfmiqm.data.policy import policy_views, view_weights  # noqa: E402
from qfmiqm.errors import UsageError, WeightsError  # noqa: E402
from qfmiqm.models import onnx_cache, runtime  # noqa: E402
from qfmiqm.models.registry import resolve_model, save_model, zoo_entries  # noqa: E402
from qfmiqm.models.runtime import resolve_device, resolve_runtime  # noqa: E402
from qfmiqm.scoring import with_policy  # noqa: E402

NAMES = ("chelsea", "coffee", "rocket")
#: ONNX Runtime and PyTorch scores agree within this, on the 0-100 scale
AGREE = 1e-3


def _paths(samples) -> list[str]:
    return [str(samples[n]) for n in NAMES]


def _load(model, runtime_name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return qfmiqm.load(model, device="cpu", runtime=runtime_name)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One ONNX cache folder for the module, in $QFMIQM_CACHE while its tests run."""
    folder = tmp_path_factory.mktemp("qfmiqm_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(onnx_cache.CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def onnx_default(cache):
    """The default model in ONNX Runtime: its graph is built into the module's cache here."""
    return _load("default", "onnx")


@pytest.fixture(scope="module")
def whole_checkpoint(tmp_path_factory, default_torch_model):
    """The default model's weights under a card of the ``whole`` layout (tile 1024)."""
    card = default_torch_model.card
    card = dataclasses.replace(card, name="default_whole_test", input=card.input.replace(layout="whole", tile=1024))
    path = tmp_path_factory.mktemp("whole") / "w.safetensors"
    save_model(default_torch_model.net, card, path)
    return path


@pytest.fixture(scope="module")
def whole_models(cache, whole_checkpoint):
    """(ONNX Runtime, PyTorch) models of the whole-layout checkpoint."""
    return _load(whole_checkpoint, "onnx"), _load(whole_checkpoint, "torch")


@pytest.fixture(scope="module")
def crops_models(cache, tmp_path_factory, default_torch_model):
    """(ONNX Runtime, PyTorch) models of the default weights under a card of the ``crops`` layout
    (5 crops of 224)."""
    card = default_torch_model.card
    card = dataclasses.replace(card, name="default_crops_test", input=card.input.replace(layout="crops"))
    path = tmp_path_factory.mktemp("crops") / "c.safetensors"
    save_model(default_torch_model.net, card, path)
    return _load(path, "onnx"), _load(path, "torch")


@pytest.fixture(scope="module")
def big_coffee(samples) -> np.ndarray:
    """coffee.jpg upscaled to 1400 x 933: wider than a tile of 1024, within max_short_side."""
    img = Image.open(samples["coffee"]).convert("RGB").resize((1400, 933), Image.BICUBIC)
    return np.asarray(img)


# --- which runtime, which device -------------------------------------------------------------

def test_runtime_choice():
    assert resolve_runtime("auto", "cpu") == "onnx"
    assert resolve_runtime(None, "cpu") == "onnx"
    assert resolve_runtime("auto", "cuda") == "torch"
    assert resolve_runtime("auto", "cuda:1") == "torch"
    for device in ("cpu", "cuda"):
        assert resolve_runtime("onnx", device) == "onnx"
        assert resolve_runtime("torch", device) == "torch"
    assert resolve_runtime("ONNX", "cpu") == "onnx"
    with pytest.raises(UsageError, match="unknown runtime 'tensorrt'"):
        resolve_runtime("tensorrt", "cpu")


def test_device_choice_without_a_gpu(monkeypatch):
    monkeypatch.setattr(runtime, "cuda_possible", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device(None) == "cpu"
    assert resolve_device("cpu") == "cpu"
    for name in ("cuda", "cuda:1"):
        with pytest.raises(UsageError, match="no CUDA GPU"):
            resolve_device(name)
    with pytest.raises(UsageError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(runtime, "cuda_possible", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    for name in ("cuda:x", "cuda1", "cudaa", "cuda:"):  # not a device: refused here, not deep in a runtime
        with pytest.raises(UsageError, match="unknown device"):
            resolve_device(name)


# --- ONNX Runtime and PyTorch agree --------------------------------------------------------------

def test_runtimes_agree_on_photos_with_crops(crops_models, samples):
    by_onnx, by_torch = crops_models
    assert (by_onnx.runtime.name, by_torch.runtime.name) == ("onnx", "torch")
    assert by_onnx.device == by_torch.device == "cpu"
    assert by_onnx.card == by_torch.card and by_onnx.policy.layout == "crops"
    paths = _paths(samples)
    scores = by_onnx.score(paths)
    assert scores == pytest.approx(by_torch.score(paths), abs=AGREE)
    assert all(0.0 <= s <= 100.0 for s in scores)


def test_default_runtimes_agree_on_photos(onnx_default, default_torch_model, samples):
    assert (onnx_default.runtime.name, default_torch_model.runtime.name) == ("onnx", "torch")
    assert onnx_default.card == default_torch_model.card
    paths = _paths(samples)
    assert onnx_default.score(paths) == pytest.approx(default_torch_model.score(paths), abs=AGREE)


def test_runtimes_agree_on_photos_whole(whole_models, crops_models, samples):
    by_onnx, by_torch = whole_models
    assert by_onnx.runtime.name == "onnx" and by_torch.runtime.name == "torch"
    assert by_onnx.name == by_torch.name == "default_whole_test"
    assert by_onnx.policy.layout == by_torch.policy.layout == "whole"
    paths = _paths(samples)
    whole = by_onnx.score(paths)
    assert whole == pytest.approx(by_torch.score(paths), abs=AGREE)
    # the samples are smaller than a tile: each is one view of its own size
    for p in paths:
        (view,) = policy_views(np.asarray(Image.open(p).convert("RGB")), by_onnx.policy)
        assert max(view.shape[:2]) < 1024
    assert whole != pytest.approx(crops_models[0].score(paths), abs=AGREE)  # the layout matters


def test_photo_larger_than_a_tile_is_scored_from_its_tiles(whole_models, big_coffee):
    by_onnx, by_torch = whole_models
    views = policy_views(big_coffee, by_onnx.policy)
    assert [v.shape for v in views] == [(933, 700, 3), (933, 700, 3)]
    score = by_onnx.score(big_coffee)
    assert score == pytest.approx(by_torch.score(big_coffee), abs=AGREE)
    # the pixel-weighted mean of the tiles' head scores, plus the tone term of all of them
    heads = np.concatenate([by_onnx.runtime.head_scores(v[None]) for v in views])
    tone = by_onnx.card.tone.of_statistics(by_onnx.prepare_spec().statistics(views)[None])[0]
    assert by_onnx.raw_scores([big_coffee])[0] == pytest.approx(float(view_weights(views) @ heads) + tone, abs=1e-6)
    # unequal tiles (3 x 2 of 466-467 px): views of several sizes in one image, one batch
    small_tiles = [with_policy(m, tile=600) for m in whole_models]
    views = policy_views(big_coffee, small_tiles[0].policy)
    assert len(views) == 6 and len({v.shape for v in views}) > 1
    assert sum(v.shape[0] * v.shape[1] for v in views) == 1400 * 933
    assert small_tiles[0].score(big_coffee) == pytest.approx(small_tiles[1].score(big_coffee), abs=AGREE)


# --- the cache of built graphs ---------------------------------------------------------------

def _graphs(cache) -> list[str]:
    return sorted(p.name for p in (cache / "onnx").glob("*.onnx"))


def test_graph_is_built_once_and_reused(onnx_default, cache, samples):
    entry = zoo_entries()["default"]
    path = onnx_cache.graph_path(entry)
    assert path.parent == cache / "onnx" and path.name.startswith("default-")
    assert onnx_default.runtime.path == path
    assert onnx_cache.is_intact(path)
    assert path.with_name(path.name + ".sha256").is_file()
    before = path.stat().st_mtime_ns
    again = _load("default", "onnx")
    assert again.runtime.path == path and path.stat().st_mtime_ns == before
    assert onnx_cache.cached_graph(entry) == path and path.stat().st_mtime_ns == before
    assert again.score(str(samples["chelsea"])) == pytest.approx(onnx_default.score(str(samples["chelsea"])), abs=1e-9)
    assert not [p for p in (cache / "onnx").iterdir() if p.name.endswith(".tmp")]


def test_changed_card_gets_another_file(onnx_default, whole_models, whole_checkpoint, cache):
    entry = zoo_entries()["default"]
    whole = resolve_model(whole_checkpoint)
    assert whole.card.name == "default_whole_test"
    assert onnx_cache.graph_path(whole) == whole_models[0].runtime.path
    assert onnx_cache.graph_path(whole) != onnx_cache.graph_path(entry)
    assert len(_graphs(cache)) >= 2 and all(onnx_cache.is_intact(cache / "onnx" / n) for n in _graphs(cache))
    renamed = dataclasses.replace(entry, card=dataclasses.replace(entry.card, name="other"))
    assert onnx_cache.graph_path(renamed).name.startswith("other-")
    assert onnx_cache.graph_key(renamed) != onnx_cache.graph_key(entry)
    retiled = dataclasses.replace(entry, card=dataclasses.replace(entry.card, input=entry.card.input.replace(tile=512)))
    assert onnx_cache.graph_path(retiled) != onnx_cache.graph_path(entry)  # any card change: a new key
    reweighted = dataclasses.replace(entry, card=dataclasses.replace(entry.card, weights_sha256="0" * 64))
    with pytest.raises(WeightsError, match="checksum mismatch"):  # weights that are not the card's: refused
        onnx_cache.graph_key(reweighted)
    assert onnx_cache.graph_key(entry) == onnx_cache.graph_key(zoo_entries()["default"])  # stable


def test_truncated_graph_is_rebuilt(onnx_default, cache, samples):
    path = onnx_default.runtime.path
    expected = onnx_default.score(_paths(samples))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not onnx_cache.is_intact(path)
    rebuilt = _load("default", "onnx")
    assert rebuilt.runtime.path == path and onnx_cache.is_intact(path)
    assert rebuilt.score(_paths(samples)) == pytest.approx(expected, abs=1e-6)


def test_wrong_or_missing_sidecar_means_a_rebuild(onnx_default, cache, monkeypatch):
    """A file whose sidecar does not hold its digest is never trusted: it is exported again (here by
    a stand-in exporter that writes the good bytes, to spare a second real export)."""
    import qfmiqm.export as export

    entry = zoo_entries()["default"]
    path = onnx_default.runtime.path
    sidecar = path.with_name(path.name + ".sha256")
    good = path.read_bytes()
    builds = []

    def stand_in(entry_, out, **kwargs):
        builds.append(out)
        out.write_bytes(good)

    monkeypatch.setattr(export, "export_entry", stand_in)
    sidecar.write_text("0" * 64 + "\n")
    assert not onnx_cache.is_intact(path)
    assert onnx_cache.cached_graph(entry) == path and builds == [path] and onnx_cache.is_intact(path)
    sidecar.unlink()
    assert not onnx_cache.is_intact(path)
    assert onnx_cache.cached_graph(entry) == path and len(builds) == 2 and onnx_cache.is_intact(path)
    path.unlink()
    assert not onnx_cache.is_intact(path)
    assert onnx_cache.cached_graph(entry) == path and len(builds) == 3 and onnx_cache.is_intact(path)
    assert onnx_cache.cached_graph(entry) == path and len(builds) == 3  # intact: not built again
    assert path.read_bytes() == good


def test_failed_build_leaves_nothing_in_the_cache(tmp_path, monkeypatch, onnx_default):
    import qfmiqm.export as export
    from qfmiqm.export import ExportError

    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(tmp_path))
    traced = onnx_default.runtime.path.read_bytes()
    monkeypatch.setattr(export, "_trace", lambda *args, **kwargs: traced)

    def disagree(*args, **kwargs):
        raise ExportError("onnxruntime and PyTorch disagree by 9 points")

    monkeypatch.setattr(export, "_check_against_torch", disagree)
    with pytest.raises(ExportError, match="disagree"):
        onnx_cache.cached_graph(zoo_entries()["default"])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_unwritable_cache_is_a_usage_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(UsageError, match=f"cannot create the ONNX cache folder.*{onnx_cache.CACHE_ENV}"):
        onnx_cache.cached_graph(zoo_entries()["default"])


# --- no torch on the CPU ---------------------------------------------------------------------

NO_TORCH = """
import sys, qfmiqm
m = qfmiqm.load("default", device="cpu")
score = m.score(sys.argv[1])
loaded = sorted(k for k in sys.modules if k == "torch" or k.startswith("torch."))
assert not loaded, loaded
assert m.runtime.name == "onnx", m.runtime.name
print(repr(score))
"""


def test_scoring_on_the_cpu_does_not_import_torch(onnx_default, cache, samples):
    path = onnx_default.runtime.path
    assert onnx_cache.is_intact(path)
    before = {p.name: p.stat().st_mtime_ns for p in (cache / "onnx").iterdir()}
    env = {**os.environ, onnx_cache.CACHE_ENV: str(cache)}
    done = subprocess.run([sys.executable, "-c", NO_TORCH, str(samples["chelsea"])], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip()) == pytest.approx(onnx_default.score(str(samples["chelsea"])), abs=1e-9)
    assert {p.name: p.stat().st_mtime_ns for p in (cache / "onnx").iterdir()} == before  # the cache was used
