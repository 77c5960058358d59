from __future__ import annotations

from typer.testing import CliRunner

from qfmiqm.bench import run_bench
from qfmiqm.cli import app


def test_bench_measures_all_three_paths_and_memory(default_model):
    result = run_bench(default_model, images=4, batch_size=2, size=(320, 240), workers=0, memory_images=(4, 8))
    assert result.backbone_ips > 0 and result.model_ips > 0 and result.end_to_end_ips > 0
    assert result.peak_rss_mb > 100
    assert result.memory["small"] == 4 and result.memory["large"] == 8
    text = "\n".join(result.lines())
    assert "b/a =" in text and "c/a =" in text and "growth" in text
    assert "JPEGs decoded in this process" in text  # workers=0
    assert "(a') the same in PyTorch eager" in text and "onnxruntime" in text  # the limit is ONNX Runtime's
    assert "(d) BRISQUE" in text  # measured when the bench extra is installed, else says how to get it
    assert result.other_decode_ips is None and "(c')" not in text  # the comparison needs a GPU with nvJPEG


def test_bench_cli_usage_errors():
    bad = CliRunner().invoke(app, ["bench", "--size", "big"])
    assert bad.exit_code == 2 and "--size" in bad.stderr
