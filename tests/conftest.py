"""Shared fixtures: real sample photos shipped in the repo and one loaded default model."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


@pytest.fixture(scope="session")
def samples() -> dict[str, Path]:
    paths = {p.stem: p for p in sorted(SAMPLES.glob("*.jpg"))}
    assert {"chelsea", "coffee", "rocket"} <= set(paths)
    return paths


@pytest.fixture(scope="session")
def chelsea_rgb(samples) -> np.ndarray:
    return np.asarray(Image.open(samples["chelsea"]).convert("RGB"))


@pytest.fixture(scope="session")
def default_model():
    import qfmiqm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return qfmiqm.load("default", device="cpu")


@pytest.fixture(scope="session")
def default_torch_model():
    """The default model in the PyTorch runtime (its network modules: maps, features, saving)."""
    import qfmiqm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return qfmiqm.load("default", device="cpu", runtime="torch")


@pytest.fixture(scope="session")
def synth_from_samples(samples):
    """``make(root, types, size=224) -> labels.csv``: a synthetic set of the sample photos at
    levels 1, 3, 5, made by ``qfmiqm synth`` as a user would."""
    from typer.testing import CliRunner

    from qfmiqm.cli import app

    def make(root: Path, types: str, size: int = 224) -> Path:
        src = root / "src"
        src.mkdir(parents=True)
        for stem, path in samples.items():
            Image.open(path).convert("RGB").save(src / f"{stem}.png")
        result = CliRunner().invoke(app, ["synth", "--src", str(src), "--out", str(root / "set"), "--types", types,
                                          "--levels", "1,3,5", "--size", str(size), "--workers", "0",
                                          "--no-progress"])
        assert result.exit_code == 0, result.output
        return root / "set" / "labels.csv"

    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch work on one thread (small ops are faster so, and timings steadier)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def load_tool():
    """Import a script of tools/ by name (tools/ is not a package): ``load_tool("tone_probe")``."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
