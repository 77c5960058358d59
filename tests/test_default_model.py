"""The embedded default model behaves like a quality model on photos it never saw in training.

coffee and motorcycle_left are held out of the default model's training photos
(tools/collect_photos.py HELD_OUT); every distortion here is applied to them fresh.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter
from scipy.stats import spearmanr

import qfmiqm
from qfmiqm.models.registry import zoo_entries


def _blur(img, level):
    return img.filter(ImageFilter.GaussianBlur(radius=[0.8, 1.6, 2.8, 4.5, 7.0][level - 1]))


def _noise(img, level):
    rng = np.random.default_rng(level)
    sigma = [6, 12, 22, 35, 55][level - 1]
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, sigma, (img.height, img.width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _jpeg(img, level):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=[40, 20, 10, 6, 3][level - 1])
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _contrast_loss(img, level):
    keep = [0.7, 0.5, 0.35, 0.22, 0.12][level - 1]
    arr = np.asarray(img, dtype=np.float32)
    out = arr.mean() + keep * (arr - arr.mean())
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


DISTORTIONS = {"blur": _blur, "noise": _noise, "jpeg": _jpeg, "contrast": _contrast_loss}


@pytest.fixture(scope="module")
def heldout_photos(samples):
    from skimage import data

    coffee = Image.open(samples["coffee"]).convert("RGB")
    motorcycle = Image.fromarray(data.stereo_motorcycle()[0]).convert("RGB")
    return {"coffee": coffee, "motorcycle_left": motorcycle}


def test_default_is_a_trained_model_with_a_card():
    card = zoo_entries()["default"].card
    assert card.trained, "the embedded default model must be trained"
    assert card.metrics["heldout_photos"]["srcc"] > 0.6
    assert any("human opinion" in limit for limit in card.limits)
    assert card.tone is not None, "the default model carries its image-level tone term (docs/default-model.md)"


def _scores(model, photo, kind):
    return model.score([photo] + [DISTORTIONS[kind](photo, level) for level in range(1, 6)])


@pytest.mark.parametrize("kind", sorted(DISTORTIONS))
def test_scores_fall_as_distortion_grows_on_heldout_photos(default_model, heldout_photos, kind):
    for name, photo in heldout_photos.items():
        scores = _scores(default_model, photo, kind)
        rho = spearmanr(range(1, 6), scores[1:]).statistic
        assert rho <= -0.9 + 1e-9, f"{kind} on {name}: scores {np.round(scores, 2)} (Spearman {rho:.2f})"
        assert scores[0] > max(scores[3:]), f"{kind} on {name}: pristine {scores[0]:.2f} vs {np.round(scores[1:], 2)}"


#: the card's limit: the mildest blur (radius 0.8) may score at or a few points above the original
MILDEST_BLUR_EXCESS = 5.0


def test_pristine_scores_above_every_distorted_version(default_model, heldout_photos):
    """Above every version, but for the card's stated limit: the mildest blur may come within or
    up to MILDEST_BLUR_EXCESS points above (docs/default-model.md); it stays below the original's
    score plus that, and every stronger blur stays below the original."""
    for kind in DISTORTIONS:
        for name, photo in heldout_photos.items():
            scores = _scores(default_model, photo, kind)
            shown = f"{kind} on {name}: pristine {scores[0]:.2f} vs {np.round(scores[1:], 2)}"
            if kind == "blur":
                assert scores[1] < scores[0] + MILDEST_BLUR_EXCESS, shown
                assert scores[0] > max(scores[2:]), shown
            else:
                assert scores[0] > max(scores[1:]), shown


def test_card_states_the_mildest_blur_limit_the_check_allows():
    card = zoo_entries()["default"].card
    assert any("mildest blur" in limit for limit in card.limits)


def test_greyscale_and_muted_photos_are_not_scored_as_degraded(default_model, heldout_photos):
    """Issue 22: a sharp, clean, well exposed photo in black and white or muted colour scores in
    the upper half, within 15 points of its colour original."""
    for name, photo in heldout_photos.items():
        grey = photo.convert("L").convert("RGB")
        muted = ImageEnhance.Color(photo).enhance(0.5)
        colour, grey_score, muted_score = default_model.score([photo, grey, muted])
        assert grey_score >= 50 and abs(colour - grey_score) <= 15, f"{name}: colour {colour:.1f}, grey {grey_score:.1f}"
        assert muted_score >= 50 and abs(colour - muted_score) <= 15, f"{name}: colour {colour:.1f}, muted {muted_score:.1f}"


def _recipe_fit_arguments() -> dict[str, str]:
    """The options of the tools/fit_tone.py command in tools/build_default_model.sh."""
    import re
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "tools" / "build_default_model.sh").read_text()
    command = script[script.index("python tools/fit_tone.py"):].split("\n# ")[0].replace("\\\n", " ")
    return dict(re.findall(r"--([a-z-]+) (\S+)", command))


def test_the_recipe_rebuilds_the_shipped_model_from_the_same_list_and_term_settings():
    """configs/default_model.yaml and tools/build_default_model.sh describe the embedded model: the
    same training list and split file, and the term fitted as the card says it was (a recipe that
    trained on another file went unnoticed once)."""
    from pathlib import Path

    from qfmiqm.train.schema import load_train_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_train_config(str(root / "configs" / "default_model.yaml"))
    card = zoo_entries()["default"].card
    assert card.training_data.startswith(Path(cfg.data.dataset).stem + " "), card.training_data
    assert cfg.data.split_file and card.metrics["epoch"] <= cfg.optim.epochs
    fit = card.metrics["tone_fit"]
    assert fit["dataset"] == cfg.data.dataset
    args = _recipe_fit_arguments()
    assert args["statistics"].split(",") == fit["statistics"] == list(card.tone.statistics)
    assert (int(args["mildest"]), float(args["gap"]), float(args["lam"]), float(args["temperature"])) == \
        (fit["mildest"], fit["gap"], fit["lam"], fit["temperature"])
    assert args["pairs-from"] == fit["pairs_from"]
    # the shipped labels took KADID's cells by level index; the tool's default matches by parameter
    script = (root / "tools" / "build_default_model.sh").read_text()
    anchors = [line for line in script.replace("\\\n", " ").splitlines() if "tools/anchor_labels.py" in line]
    assert len(anchors) == 2 and all("--match $MATCH" in line for line in anchors)
    assert "\nMATCH=index\n" in script
