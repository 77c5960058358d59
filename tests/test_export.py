"""qfmiqm export --format onnx, and scoring with the .onnx file (onnxruntime)."""
from __future__ import annotations

import csv
import io
import json
import sys
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import qfmiqm  # noqa: E402
from qfmiqm.cli import app  # noqa: E402
from qfmiqm.data.images import open_image  # noqa: E402
from qfmiqm.data.transforms import normalize, policy_crops  # noqa: E402
from qfmiqm.errors import UsageError, WeightsError  # noqa: E402
from qfmiqm.export import ExportError  # noqa: E402
from qfmiqm.models.card import ModelCard  # noqa: E402
from qfmiqm.models.onnx_net import ONNX_CARD_KEY, OnnxNet  # noqa: E402
from qfmiqm.models.registry import zoo_entries  # noqa: E402

NAMES = ("chelsea", "coffee", "rocket")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The embedded default model exported once, through the CLI: (path, CliRunner result)."""
    out = tmp_path_factory.mktemp("export") / "default.onnx"
    result = CliRunner().invoke(app, ["export", "--model", "default", "--format", "onnx", "--out", str(out)])
    return out, result


@pytest.fixture(scope="module")
def onnx_file(exported):
    out, result = exported
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def onnx_model(onnx_file):
    return qfmiqm.load(onnx_file, device="cpu")


def _paths(samples) -> list[str]:
    return [str(samples[n]) for n in NAMES]


def _session(path) -> "ort.InferenceSession":
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _crops(path: str, card: ModelCard) -> np.ndarray:
    """An image's normalised crops (K, 3, S, S) float32, as qfmiqm scoring prepares them."""
    img = open_image(path, min_short_side=card.input.max_short_side)
    return normalize(policy_crops(img, card.input), card.input).numpy()


def test_export_command_writes_a_complete_file(exported):
    out, result = exported
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"exported 'default' to {out}")
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left behind


def test_graph_signature_opset_and_card_metadata(onnx_file):
    proto = onnx.load(str(onnx_file))
    (inp,), (outp,) = proto.graph.input, proto.graph.output
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in outp.type.tensor_type.shape.dim]
    assert (inp.name, in_dims) == ("crops", ["batch", 3, 224, 224])
    assert (outp.name, out_dims) == ("scores", ["batch"])
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = {p.key: p.value for p in proto.metadata_props}
    card = ModelCard.from_dict(json.loads(meta[ONNX_CARD_KEY]))
    original = zoo_entries()["default"].card
    assert card.weights_sha256 is None  # the recorded hash is the .safetensors file's
    assert card.to_dict() == {**original.to_dict(), "weights_sha256": None}
    assert meta["qfmiqm.version"] == qfmiqm.__version__


def test_onnxruntime_by_hand_matches_pytorch_scores(onnx_file, default_model, samples):
    """The file alone (graph + card) reproduces the PyTorch model's 0-100 scores: the graph's mean
    over the crops, plus the card's tone term of the same crops (docs/export.md)."""
    from qfmiqm.models.tone import tone_statistics

    sess = _session(onnx_file)
    meta = sess.get_modelmeta().custom_metadata_map
    card = ModelCard.from_dict(json.loads(meta[ONNX_CARD_KEY]))
    assert card.tone is not None
    paths = _paths(samples)
    by_hand, graph_only = [], []
    for p in paths:
        (raw,) = sess.run(None, {"crops": _crops(p, card)})
        img = open_image(p, min_short_side=card.input.max_short_side)
        z = (tone_statistics(policy_crops(img, card.input)[None])[0].double().numpy() - card.tone.mean) / card.tone.scale
        by_hand.append(card.score.apply(float(raw.mean()) + float(z @ np.array(card.tone.weights)) + card.tone.bias))
        graph_only.append(card.score.apply(float(raw.mean())))
    expected = default_model.score(paths)
    assert by_hand == pytest.approx(expected, abs=1e-3)
    assert graph_only != pytest.approx(expected, abs=0.05)  # the term is not a no-op


def test_dynamic_batch(onnx_file, samples, default_model):
    sess = _session(onnx_file)
    crops = np.concatenate([_crops(p, default_model.card) for p in _paths(samples)])  # 15 crops
    (together,) = sess.run(None, {"crops": crops})
    alone = np.concatenate([sess.run(None, {"crops": crops[i:i + 1]})[0] for i in range(len(crops))])
    assert together.shape == alone.shape == (len(crops),)
    np.testing.assert_allclose(together, alone, atol=1e-4)
    three = sess.run(None, {"crops": crops[:3]})[0]
    np.testing.assert_allclose(three, alone[:3], atol=1e-4)


def test_load_onnx_scores_like_pytorch_at_any_batch_size(onnx_model, default_model, samples):
    paths = _paths(samples)
    assert isinstance(onnx_model.net, OnnxNet) and onnx_model.name == "default"
    assert onnx_model.card.input == default_model.card.input
    one = onnx_model.score(paths, batch_size=1)
    three = onnx_model.score(paths, batch_size=3)
    assert one == pytest.approx(three, abs=1e-4)
    assert one == pytest.approx(default_model.score(paths), abs=1e-3)
    assert onnx_model.score(paths[0]) == pytest.approx(one[0], abs=1e-4)


def test_onnx_net_stands_in_for_a_torch_module(onnx_model):
    net = onnx_model.net
    assert net.to(memory_format=torch.channels_last) is net and net.eval() is net
    assert not hasattr(net, "backbone")  # PyTorch-only features see it is not a QualityNet
    with pytest.raises(UsageError, match="no PyTorch backbone"):
        net.backbone  # noqa: B018
    x = torch.zeros(2, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    assert net(x).shape == (2,)


def test_gpu_only_with_the_cuda_provider(monkeypatch):
    import qfmiqm.models.onnx_net as onnx_net

    cuda = torch.device("cuda")
    monkeypatch.setattr(onnx_net, "cuda_provider_available", lambda: False)
    assert onnx_net.onnx_device("auto", cuda) == torch.device("cpu")
    with pytest.raises(UsageError, match="onnxruntime-gpu"):
        onnx_net.onnx_device("cuda", cuda)
    assert onnx_net._providers(cuda) == ["CPUExecutionProvider"]
    monkeypatch.setattr(onnx_net, "cuda_provider_available", lambda: True)
    assert onnx_net.onnx_device("cuda", cuda) == cuda
    assert onnx_net._providers(cuda) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cli_score_with_onnx_gives_the_same_csv(onnx_file, samples):
    runner = CliRunner()
    paths = _paths(samples)
    by_onnx = runner.invoke(app, ["score", "--model", str(onnx_file), *paths])
    by_torch = runner.invoke(app, ["score", *paths])
    assert by_onnx.exit_code == 0, by_onnx.output
    rows_onnx = list(csv.DictReader(io.StringIO(by_onnx.stdout)))
    rows_torch = list(csv.DictReader(io.StringIO(by_torch.stdout)))
    assert [r["path"] for r in rows_onnx] == [r["path"] for r in rows_torch] == paths
    for a, b in zip(rows_onnx, rows_torch):
        assert float(a["score"]) == pytest.approx(float(b["score"]), abs=1e-3)
    assert by_onnx.stderr == ""


def _one_error_line(result, *fragments: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_export_usage_errors_exit_2(tmp_path):
    runner = CliRunner()
    out = tmp_path / "m.onnx"
    bad_format = runner.invoke(app, ["export", "--format", "tflite", "--out", str(out)])
    assert bad_format.exit_code == 2
    _one_error_line(bad_format, "unknown export format 'tflite'", "onnx")
    bad_suffix = runner.invoke(app, ["export", "--out", str(tmp_path / "m.pt")])
    assert bad_suffix.exit_code == 2
    _one_error_line(bad_suffix, "must end in .onnx")
    bad_opset = runner.invoke(app, ["export", "--opset", "13", "--out", str(out)])
    assert bad_opset.exit_code == 2
    _one_error_line(bad_opset, "opset 13 is not supported")
    unknown = runner.invoke(app, ["export", "--model", "nope", "--out", str(out)])
    assert unknown.exit_code == 2
    _one_error_line(unknown, "unknown model 'nope'")
    assert list(tmp_path.iterdir()) == []


def test_score_with_missing_corrupt_or_foreign_onnx_exits_2(tmp_path, samples):
    runner = CliRunner()
    image = str(samples["chelsea"])
    missing = runner.invoke(app, ["score", "--model", str(tmp_path / "missing.onnx"), image])
    assert missing.exit_code == 2
    _one_error_line(missing, "model file not found")

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 this is not a protobuf" * 10)
    result = runner.invoke(app, ["score", "--model", str(corrupt), image])
    assert result.exit_code == 2
    _one_error_line(result, str(corrupt), "not an ONNX model")

    # a valid ONNX graph that qfmiqm did not write: no card in its metadata
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["crops"], ["scores"], axes=[1, 2, 3], keepdims=0)], "g",
        [helper.make_tensor_value_info("crops", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch"])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(foreign))
    result = runner.invoke(app, ["score", "--model", str(foreign), image])
    assert result.exit_code == 2
    _one_error_line(result, "no qfmiqm model card")


def test_card_that_does_not_fit_the_graph_is_refused(onnx_file, tmp_path):
    proto = onnx.load(str(onnx_file))
    for p in proto.metadata_props:
        if p.key == ONNX_CARD_KEY:
            card = json.loads(p.value)
            card["input"]["size"] = 256
            p.value = json.dumps(card)
    bad = tmp_path / "resized.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(WeightsError, match=r"needs float crops \[N, 3, 256, 256\]"):
        qfmiqm.load(bad, device="cpu")


def test_missing_onnx_packages_give_an_install_hint(monkeypatch, tmp_path, onnx_file):
    runner = CliRunner()
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    result = runner.invoke(app, ["export", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    _one_error_line(result, 'pip install "qfmiqm[onnx]"')
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UsageError, match=r'pip install "qfmiqm\[onnx\]"'):
        qfmiqm.load(onnx_file)
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_no_file(monkeypatch, tmp_path, onnx_file):
    """Atomic writing: when the check after writing fails, neither the final name nor a
    temporary file remains (and the graph is not traced again: the fixture's is reused)."""
    import qfmiqm.export as export

    exported_bytes = onnx_file.read_bytes()
    monkeypatch.setattr(export, "_trace", lambda *args, **kwargs: exported_bytes)

    def disagree(*args, **kwargs):
        raise ExportError("onnxruntime and PyTorch disagree by 9 points")

    monkeypatch.setattr(export, "_check_against_torch", disagree)
    out = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = CliRunner().invoke(app, ["export", "--out", str(out)])
    assert result.exit_code == 1
    _one_error_line(result, "disagree")
    assert list(tmp_path.iterdir()) == []
