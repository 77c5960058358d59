"""qfmiqm export --format onnx, and scoring with the .onnx file (ONNX Runtime).

The exported graph takes uint8 views [N, H, W, 3] of any size and returns raw head scores [N];
the card in its metadata gives the policy, the tone term and the 0-100 mapping (docs/export.md).
"""
from __future__ import annotations

import csv
import io
import json
import sys
import warnings
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import qfmiqm  # noqa: E402
from qfmiqm.cli import app  # noqa: E402
from qfmiqm.data.images import open_image  # noqa: E402
from qfmiqm.data.policy import policy_views, view_weights  # noqa: E402
from qfmiqm.errors import UsageError, WeightsError  # noqa: E402
from qfmiqm.export import ExportError  # noqa: E402
from qfmiqm.models import runtime_onnx  # noqa: E402
from qfmiqm.models.card import ModelCard  # noqa: E402
from qfmiqm.models.registry import zoo_entries  # noqa: E402
from qfmiqm.models.runtime_onnx import (  # noqa: E402
    GRAPH_FORMAT, INPUT_NAME, ONNX_CARD_KEY, ONNX_GRAPH_KEY, ONNX_VERSION_KEY, OUTPUT_NAME,
)

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


@pytest.fixture(scope="module")
def session(onnx_file):
    return ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])


#: raw scores (0-100 points) of the same views in one batch or alone, or in the two runtimes: float32
#: reduction order differs with the batch (about 1e-4 measured), well inside the 1e-3 of the scores
AGREE_RAW = 5e-4


def _paths(samples) -> list[str]:
    return [str(samples[n]) for n in NAMES]


def _views(path: str, card: ModelCard) -> list[np.ndarray]:
    """An image's uint8 views (h, w, 3), decoded and cut as qfmiqm scoring does."""
    img = open_image(path, min_short_side=card.input.max_short_side)
    return policy_views(img, card.input)


def _run(session, views) -> np.ndarray:
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(np.stack(views))})
    return out


def test_export_command_writes_a_complete_file(exported):
    out, result = exported
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"exported 'default' to {out}")
    assert "uint8 views [N, H, W, 3]" in result.stdout
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left behind


def test_graph_signature_opset_and_card_metadata(onnx_file):
    proto = onnx.load(str(onnx_file))
    (inp,), (outp,) = proto.graph.input, proto.graph.output
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in outp.type.tensor_type.shape.dim]
    assert (inp.name, in_dims) == ("views", ["batch", "height", "width", 3])
    assert (outp.name, out_dims) == ("scores", ["batch"])
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert outp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = {p.key: p.value for p in proto.metadata_props}
    card = ModelCard.from_dict(json.loads(meta[ONNX_CARD_KEY]))
    original = zoo_entries()["default"].card
    assert card.weights_sha256 is None  # the recorded hash is the .safetensors file's
    assert card.to_dict() == {**original.to_dict(), "weights_sha256": None}
    assert meta[ONNX_GRAPH_KEY] == GRAPH_FORMAT
    assert meta[ONNX_VERSION_KEY] == qfmiqm.__version__


def test_onnxruntime_by_hand_matches_pytorch_scores(session, default_torch_model, samples):
    """The file alone (graph + card) reproduces the PyTorch model's 0-100 scores: the pixel-weighted
    mean of the graph's scores over the views, plus the card's tone term of the same views."""
    from qfmiqm.models.tone import tone_statistics

    card = ModelCard.from_dict(json.loads(session.get_modelmeta().custom_metadata_map[ONNX_CARD_KEY]))
    assert card.tone is not None
    paths = _paths(samples)
    by_hand, graph_only = [], []
    for p in paths:
        views = _views(p, card)
        raw = np.concatenate([_run(session, [v]) for v in views]).astype(np.float64)  # any sizes
        mean = float(view_weights(views) @ raw)
        tone = float(card.tone.of_statistics(tone_statistics(views)[None])[0])
        by_hand.append(card.score.apply(mean + tone))
        graph_only.append(card.score.apply(mean))
    expected = default_torch_model.score(paths)
    assert by_hand == pytest.approx(expected, abs=1e-3)
    assert graph_only != pytest.approx(expected, abs=0.05)  # the term is not a no-op


def test_dynamic_batch_and_size(session, default_torch_model, samples):
    """One graph runs batches of any size and views of any height and width: the same views give
    the same scores together and one by one, and the scores of PyTorch at a size never traced."""
    card = default_torch_model.card
    card = replace(card, input=card.input.replace(layout="crops"))
    crops = [v for p in _paths(samples) for v in _views(p, card)]  # 15 crops of 224 x 224
    rng = np.random.default_rng(0)
    chelsea = open_image(str(samples["chelsea"]))  # 451 x 300
    odd = [np.ascontiguousarray(chelsea[y:y + 233, x:x + 301])
           for y, x in zip(rng.integers(0, chelsea.shape[0] - 233, 4), rng.integers(0, chelsea.shape[1] - 301, 4))]
    for views in (crops, odd):
        together = _run(session, views)
        alone = np.concatenate([_run(session, [v]) for v in views])
        assert together.shape == alone.shape == (len(views),)
        np.testing.assert_allclose(together, alone, atol=AGREE_RAW)
        np.testing.assert_allclose(_run(session, views[:3]), alone[:3], atol=AGREE_RAW)
        torch_scores = default_torch_model.runtime.head_scores(np.stack(views))
        np.testing.assert_allclose(together, torch_scores, atol=AGREE_RAW)
    assert not np.allclose(_run(session, odd), _run(session, crops[:4]), atol=1e-3)  # input matters


def test_load_onnx_scores_like_pytorch_at_any_batch_size(onnx_model, default_torch_model, samples):
    paths = _paths(samples)
    assert onnx_model.runtime.name == "onnx" and onnx_model.name == "default" and onnx_model.device == "cpu"
    assert onnx_model.card.input == default_torch_model.card.input
    assert onnx_model.card.tone == default_torch_model.card.tone
    one = onnx_model.score(paths, batch_size=1)
    three = onnx_model.score(paths, batch_size=3)
    assert one == pytest.approx(three, abs=1e-4)
    assert one == pytest.approx(default_torch_model.score(paths), abs=1e-3)
    assert onnx_model.score(paths[0]) == pytest.approx(one[0], abs=1e-4)
    with pytest.raises(UsageError, match="runtime='torch'"):
        onnx_model.net  # noqa: B018 - no PyTorch modules in an ONNX model


def test_cuda_only_with_the_cuda_provider(monkeypatch):
    monkeypatch.setattr(runtime_onnx, "cuda_provider_available", lambda: False)
    with pytest.raises(UsageError, match="onnxruntime-gpu"):
        runtime_onnx._providers("cuda")
    with pytest.raises(UsageError, match="onnxruntime-gpu"):
        runtime_onnx._providers("cuda:1")
    assert runtime_onnx._providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(runtime_onnx, "cuda_provider_available", lambda: True)
    assert runtime_onnx._providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _rows(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.stdout)))


def test_cli_score_with_onnx_gives_the_same_csv(onnx_file, samples):
    runner = CliRunner()
    paths = _paths(samples)
    by_onnx = runner.invoke(app, ["score", "--model", str(onnx_file), *paths])
    by_default = runner.invoke(app, ["score", *paths])
    rows_onnx, rows_default = _rows(by_onnx), _rows(by_default)
    assert [r["path"] for r in rows_onnx] == [r["path"] for r in rows_default] == paths
    for a, b in zip(rows_onnx, rows_default):
        assert float(a["score"]) == pytest.approx(float(b["score"]), abs=1e-3)
    assert by_onnx.stderr == ""


def _one_error_line(result, *fragments: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_export_usage_errors_exit_2(tmp_path, onnx_file):
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
    again = runner.invoke(app, ["export", "--model", str(onnx_file), "--out", str(out)])
    assert again.exit_code == 2
    _one_error_line(again, "already an ONNX model")
    (tmp_path / "dir.onnx").mkdir()
    folder = runner.invoke(app, ["export", "--out", str(tmp_path / "dir.onnx")])
    assert folder.exit_code == 2
    _one_error_line(folder, "is a folder")
    assert [p.name for p in tmp_path.iterdir()] == ["dir.onnx"]


def test_score_runtime_usage_errors_exit_2(onnx_file, samples):
    runner = CliRunner()
    image = str(samples["chelsea"])
    unknown = runner.invoke(app, ["score", "--runtime", "tensorrt", image])
    assert unknown.exit_code == 2
    _one_error_line(unknown, "unknown runtime 'tensorrt'")
    torch_on_onnx = runner.invoke(app, ["score", "--model", str(onnx_file), "--runtime", "torch", image])
    assert torch_on_onnx.exit_code == 2
    _one_error_line(torch_on_onnx, "runs in ONNX Runtime")


def _foreign_graph(input_type: int, input_name: str = "views") -> "onnx.ModelProto":
    """A valid ONNX graph that qfmiqm did not write: the mean of its input per batch item."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", [input_name], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x"], ["scores"], axes=[1, 2, 3], keepdims=0)]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(input_name, input_type, ["batch", "height", "width", 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _with_metadata(proto, props: dict[str, str]):
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto


def test_score_with_missing_corrupt_or_foreign_onnx_exits_2(tmp_path, samples):
    from onnx import TensorProto

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

    foreign = tmp_path / "foreign.onnx"  # no card in its metadata
    onnx.save(_foreign_graph(TensorProto.UINT8), str(foreign))
    result = runner.invoke(app, ["score", "--model", str(foreign), image])
    assert result.exit_code == 2
    _one_error_line(result, "no qfmiqm model card")

    # a card and the graph key, but a graph that takes float input: refused before scoring
    card = zoo_entries()["default"].card.to_json()
    float_input = tmp_path / "float.onnx"
    onnx.save(_with_metadata(_foreign_graph(TensorProto.FLOAT), {ONNX_CARD_KEY: card, ONNX_GRAPH_KEY: GRAPH_FORMAT}),
              str(float_input))
    result = runner.invoke(app, ["score", "--model", str(float_input), image])
    assert result.exit_code == 2
    _one_error_line(result, "does not take uint8 views")

    wrong_output = tmp_path / "wrong_output.onnx"  # uint8 views in, but no "scores" out
    proto = _foreign_graph(TensorProto.UINT8)
    proto.graph.node[-1].output[0] = proto.graph.output[0].name = "y"
    onnx.save(_with_metadata(proto, {ONNX_CARD_KEY: card, ONNX_GRAPH_KEY: GRAPH_FORMAT}), str(wrong_output))
    result = runner.invoke(app, ["score", "--model", str(wrong_output), image])
    assert result.exit_code == 2
    _one_error_line(result, "does not return raw scores")
    assert result.stdout == ""  # refused on loading, before any row

    bad_json = tmp_path / "bad_card.onnx"
    onnx.save(_with_metadata(_foreign_graph(TensorProto.UINT8), {ONNX_CARD_KEY: "{not json", ONNX_GRAPH_KEY: GRAPH_FORMAT}),
              str(bad_json))
    result = runner.invoke(app, ["score", "--model", str(bad_json), image])
    assert result.exit_code == 2
    _one_error_line(result, "not valid JSON")


def test_file_of_the_old_interface_is_refused(onnx_file, tmp_path, samples):
    """A file written before the uint8-views graph (no graph key in its metadata) must be exported
    again; it is never fed views it was not made for."""
    proto = onnx.load(str(onnx_file))
    kept = [p for p in proto.metadata_props if p.key != ONNX_GRAPH_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    with pytest.raises(WeightsError, match="export it again"):
        qfmiqm.load(old, device="cpu")
    result = CliRunner().invoke(app, ["score", "--model", str(old), str(samples["chelsea"])])
    assert result.exit_code == 2
    _one_error_line(result, str(old), "export it again", "qfmiqm export")


def test_missing_onnx_packages_give_an_install_hint(monkeypatch, tmp_path, onnx_file):
    runner = CliRunner()
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    result = runner.invoke(app, ["export", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    _one_error_line(result, "needs the onnx package", "pip install onnx")
    monkeypatch.setitem(sys.modules, "onnx", onnx)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = runner.invoke(app, ["export", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    _one_error_line(result, "pip install onnxruntime")
    with pytest.raises(UsageError, match="pip install onnxruntime"):
        qfmiqm.load(onnx_file, device="cpu")
    with pytest.raises(UsageError, match="pip install onnxruntime"):
        qfmiqm.load("default", device="cpu", runtime="onnx")
    assert list(tmp_path.iterdir()) == []


def test_whole_layout_without_a_token_grid_is_refused():
    from dataclasses import replace

    from qfmiqm.export import export_graph

    card = zoo_entries()["default"].card
    card = replace(card, input=card.input.replace(layout="whole"), decoder=replace(card.decoder, grid=0))
    with pytest.raises(ExportError, match="token grid"):
        export_graph(None, card, "never.onnx")  # refused before the graph is traced


def test_fixed_size_network_is_traced_at_its_crop_size(tmp_path):
    """A ViT (fixed position embeddings) with an unpooled head (grid 0, as DEIQT) takes only
    ``size`` x ``size`` crops: it is traced and checked at that size, and exports (random weights
    here: no ImageNet weights needed). A whole layout for it is refused before tracing."""
    from dataclasses import replace

    from qfmiqm.data.policy import InputPolicy
    from qfmiqm.export import CHECK_SHAPE, TRACE_SHAPE, export_graph, takes_any_size, view_shapes
    from qfmiqm.models.card import DecoderConfig
    from qfmiqm.models.graph import ScoringGraph
    from qfmiqm.models.registry import build_net

    default = zoo_entries()["default"].card
    assert takes_any_size(default) and view_shapes(default) == (TRACE_SHAPE, CHECK_SHAPE)
    card = ModelCard(name="vit_test", backbone="vit_small_patch16_224", trained=False,
                     decoder=DecoderConfig(width=0, heads=6, grid=0, gate=False), input=InputPolicy(num_crops=9))
    assert not takes_any_size(card)
    assert view_shapes(card) == ((TRACE_SHAPE[0], 224, 224), (CHECK_SHAPE[0], 224, 224))
    assert not takes_any_size(replace(card, decoder=replace(card.decoder, grid=4)))  # a ViT never does
    with pytest.raises(ExportError, match="token grid"):
        export_graph(None, replace(card, input=card.input.replace(layout="whole")), tmp_path / "w.onnx")

    graph = ScoringGraph(build_net(card, pretrained_backbone=False), card.input)
    result = export_graph(graph, card, tmp_path / "vit.onnx")
    assert result.max_abs_diff <= 1e-3
    with pytest.warns(UserWarning, match="UNTRAINED"):
        model = qfmiqm.load(tmp_path / "vit.onnx", device="cpu")
    views = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    import torch

    with torch.no_grad():
        expected = graph(torch.as_tensor(views)).double().numpy()
    np.testing.assert_allclose(model.runtime.head_scores(views), expected, atol=1e-4)


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


def test_check_against_torch_catches_a_wrong_graph(monkeypatch, onnx_file, default_torch_model):
    """The check compares onnxruntime with PyTorch on views of a size the graph was not traced with;
    a graph that computes something else is caught."""
    from torch import nn

    import qfmiqm.export as export

    graph = default_torch_model.runtime.graph
    assert export._check_against_torch(onnx_file, graph, default_torch_model.card) <= export.CHECK_TOLERANCE

    class Shifted(nn.Module):
        def forward(self, views):
            return graph(views) + 0.5

    with pytest.raises(ExportError, match="disagree"):
        export._check_against_torch(onnx_file, Shifted(), default_torch_model.card)
