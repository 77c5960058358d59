from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import qfmiqm
from qfmiqm.errors import ImageError, UsageError


def test_public_api_surface():
    assert "default" in qfmiqm.list_models()
    assert qfmiqm.list_models("nothing*") == []
    assert isinstance(qfmiqm.__version__, str)


def test_same_image_same_score_whatever_the_input_type(default_model, samples, chelsea_rgb):
    path = samples["chelsea"]
    pil = Image.open(path)
    inputs = [
        str(path),
        path,
        pil,
        chelsea_rgb,
        chelsea_rgb.astype(np.float32) / 255.0,
        torch.from_numpy(chelsea_rgb.copy()).permute(2, 0, 1),  # uint8 CHW
        torch.from_numpy(chelsea_rgb.copy()).permute(2, 0, 1).float() / 255.0,  # float CHW
    ]
    scores = default_model.score(inputs)
    assert all(isinstance(s, float) for s in scores)
    assert max(scores) - min(scores) < 1e-4, scores
    assert default_model.score(str(path)) == pytest.approx(scores[0], abs=1e-4)


def test_batch_size_and_workers_do_not_change_scores(default_model, samples):
    paths = [str(p) for p in samples.values()] * 2
    reference = default_model.score(paths, batch_size=1)
    for batch_size, workers in [(2, 0), (6, 0), (3, 2)]:
        got = default_model.score(paths, batch_size=batch_size, workers=workers)
        np.testing.assert_allclose(got, reference, atol=1e-4)
    assert len(set(np.round(reference[:3], 3))) == 3  # different photos, different scores


def test_scores_are_on_the_0_100_scale(default_model, samples):
    scores = default_model.score([str(p) for p in samples.values()])
    assert all(0.0 <= s <= 100.0 for s in scores)


def test_exif_orientation_is_applied(default_model, chelsea_rgb, tmp_path):
    # store the photo rotated on disk with an EXIF tag that tells viewers to rotate it back
    stored = Image.fromarray(np.rot90(chelsea_rgb, k=1).copy())
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "rotated.png"
    stored.save(path, exif=exif)
    upright = default_model.score(chelsea_rgb)
    assert default_model.score(str(path)) == pytest.approx(upright, abs=1e-4)
    no_tag = tmp_path / "plain.png"
    stored.save(no_tag)
    assert abs(default_model.score(str(no_tag)) - upright) > 1e-3  # the tag really mattered


def test_modes_are_converted(default_model, chelsea_rgb):
    grey = Image.fromarray(chelsea_rgb).convert("L")
    assert default_model.score(grey) == pytest.approx(default_model.score(np.asarray(grey)), abs=1e-4)
    rgba = Image.fromarray(chelsea_rgb).convert("RGBA")
    assert default_model.score(rgba) == pytest.approx(default_model.score(chelsea_rgb), abs=1e-4)


def test_bad_inputs_raise_one_line_errors(default_model, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(ImageError) as info:
        default_model.score(str(broken))
    assert str(broken) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ImageError, match="no such file"):
        default_model.score(str(tmp_path / "missing.jpg"))
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        default_model.score(np.full((300, 300, 3), 2.0, dtype=np.float32))
    with pytest.raises(ImageError, match="not an image"):
        default_model.score(np.zeros((2, 3, 4, 5)))


def test_load_errors_and_aliases(tmp_path):
    with pytest.raises(UsageError, match="unknown model"):
        qfmiqm.load("no-such-model")
    with pytest.raises(UsageError, match="not found"):
        qfmiqm.load(tmp_path / "missing.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the trained default loads without warnings
        m = qfmiqm.create_metric("default", device="cpu")
    assert isinstance(m, qfmiqm.QualityModel) and m.device == "cpu"
    assert m.runtime.name == "onnx"  # auto: ONNX Runtime on the CPU


def test_a_model_marked_untrained_warns(tmp_path, default_torch_model):
    from dataclasses import replace

    from qfmiqm.models.registry import save_model

    default_model = default_torch_model
    path = tmp_path / "untrained.safetensors"
    save_model(default_model.net, replace(default_model.card, trained=False), path)
    with pytest.warns(UserWarning, match="UNTRAINED"):
        qfmiqm.load(path, device="cpu")


def test_checkpoint_round_trip(tmp_path, default_model, default_torch_model, samples):
    from qfmiqm.models.registry import save_model

    path = tmp_path / "copy.safetensors"
    save_model(default_torch_model.net, default_model.card, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        again = qfmiqm.load(path, device="cpu")
    img = str(samples["rocket"])
    assert again.score(img) == pytest.approx(default_model.score(img), abs=1e-6)
    # the card also travels inside the weights: the file alone is enough
    path.with_suffix(".json").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        alone = qfmiqm.load(path, device="cpu")
    assert alone.card.backbone == "efficientnet_lite0"


def test_decoded_batch_stacks_views_by_size_and_keeps_order_and_errors():
    from qfmiqm.data.feed import DecodedBatch, Prepared

    small, big = np.zeros((8, 8, 3), np.uint8), np.ones((8, 12, 3), np.uint8)
    stats = np.arange(10, dtype=np.float32)
    batch = DecodedBatch.collate([(4, Prepared([small, big], stats), None), (5, None, "not an image"),
                                  (6, Prepared([small + 2], stats + 1), None)])
    assert batch.indices == [4, 5, 6] and batch.good == [4, 6]
    assert batch.errors == {5: "not an image"}
    by_shape = {g.views.shape: g.owners for g in batch.groups}
    assert by_shape == {(2, 8, 8, 3): [0, 1], (1, 8, 12, 3): [0]}
    np.testing.assert_allclose(batch.weights[0], [64 / 160, 96 / 160])  # each view's share of the pixels
    assert batch.stats.shape == (2, 10) and batch.stats[1, 0] == 1
    empty = DecodedBatch.collate([(0, None, "bad")])
    assert empty.groups == [] and empty.good == []


def test_decoded_batch_keeps_jpeg_bytes_for_the_device_in_one_block():
    from qfmiqm.data.feed import DecodedBatch, EncodedJpeg, Prepared

    view = np.zeros((8, 8, 3), np.uint8)
    a, b = torch.arange(7, dtype=torch.uint8), torch.arange(3, dtype=torch.uint8) + 100
    batch = DecodedBatch.collate([(0, EncodedJpeg(a), None), (1, Prepared([view]), None), (2, None, "bad"),
                                  (3, EncodedJpeg(b), None)])
    assert batch.good == [1] and batch.encoded_good == [0, 3] and batch.errors == {2: "bad"}
    assert batch.encoded.numel() == 10 and batch.encoded_sizes == [7, 3]
    assert [t.tolist() for t in batch.encoded_files()] == [a.tolist(), b.tolist()]
    assert DecodedBatch.collate([(1, Prepared([view]), None)]).encoded_files() == []


def test_worker_batches_arrive_stacked_in_shared_memory_with_their_errors():
    from torch.utils.data import DataLoader

    from qfmiqm.data.feed import DecodedBatch, EncodedJpeg, Prepared

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            if i == 1:
                return i, None, "bad"
            if i == 2:
                return i, EncodedJpeg(torch.full((9,), 7, dtype=torch.uint8)), None
            return i, Prepared([np.full((4, 4, 3), i, np.uint8)] * 2), None

    batches = list(DataLoader(Items(), batch_size=3, num_workers=1, collate_fn=DecodedBatch.collate))
    assert [b.indices for b in batches] == [[0, 1, 2], [3, 4]]
    assert [b.errors for b in batches] == [{1: "bad"}, {}]
    assert all(g.views.is_shared() for b in batches for g in b.groups)
    assert [b.groups[0].views[:, 0, 0, 0].tolist() for b in batches] == [[0, 0], [3, 3, 4, 4]]
    assert batches[0].encoded.is_shared() and batches[0].encoded_files()[0].tolist() == [7] * 9


def test_decoding_workers_use_the_cores_a_gpu_leaves_free(monkeypatch):
    from qfmiqm.data.feed import default_workers

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_workers(1, 16) == 0                      # nothing to overlap
    assert default_workers(10_000, 64, "cpu") == 4          # the CPU forward needs the cores too
    assert default_workers(10_000, 64, "cuda") == 15        # a GPU leaves decoding as the bottleneck
    assert default_workers(3 * 64, 64, "cuda") == 3         # never more workers than batches
    assert default_workers(10_000, 64, "cpu", "onnx") == 0  # ONNX Runtime's forward needs every core
    assert default_workers(10_000, 64, "cuda", "onnx") == 15
