"""The Ray engine (qfmiqm score --engine ray) and qfmiqm.ray.QualityScorer, on a local Ray with 2 CPUs.

Same rows, scores (|delta| < 1e-3) and error texts as the local engine; a model actor killed
mid-batch and a file that crashes the decoder still give every input exactly once.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("ray.data")

import ray_hooks  # noqa: E402 - tests/ is on sys.path under pytest

from qfmiqm.cli import app  # noqa: E402
from qfmiqm.engines import ModelSpec, create_engine  # noqa: E402
from qfmiqm.outputs import read_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, samples) -> list[str]:
    """Three real photos (one by URI), a corrupt file, an empty one and a missing one."""
    folder = tmp_path_factory.mktemp("ray_inputs")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    return [str(samples["chelsea"]), str(folder / "corrupt.jpg"), str(samples["coffee"]),
            str(folder / "missing.jpg"), "file://" + str(samples["rocket"]), str(folder / "empty.png")]


@pytest.fixture(scope="module")
def local_results(default_model, inputs):
    return list(create_engine("local", ModelSpec(device="cpu")).run(inputs, batch_size=2))


def _same(got, expected):
    assert [r.path for r in got] == [r.path for r in expected]
    assert [r.error for r in got] == [r.error for r in expected]
    for g, e in zip(got, expected):
        assert (g.score is None) == (e.score is None)
        if e.score is not None:
            assert abs(g.score - e.score) < 1e-3, g.path


def test_missing_ray_is_a_usage_error(monkeypatch, samples):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    result = CliRunner().invoke(app, ["score", str(samples["chelsea"]), "--engine", "ray"])
    assert result.exit_code == 2
    assert result.stderr.strip() == 'error: the Ray engine needs Ray Data: pip install "qfmiqm[ray]"'


def test_ray_only_flags_need_the_ray_engine(samples):
    result = CliRunner().invoke(app, ["score", str(samples["chelsea"]), "--num-workers", "2"])
    assert result.exit_code == 2 and "need --engine ray" in result.stderr
    result = CliRunner().invoke(app, ["score", str(samples["chelsea"]), "--engine", "ray", "--workers", "2"])
    assert result.exit_code == 2 and "--num-workers" in result.stderr


def test_cli_starts_and_stops_its_own_local_ray(inputs, local_results, tmp_path):
    """Runs before the module's Ray starts: the command starts a local Ray and shuts it down."""
    out = tmp_path / "scores.csv"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "qfmiqm", "score", *inputs, "--engine", "ray", "-o", str(out),
                           "-b", "2", "--num-workers", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    _same(read_results(out), local_results)
    assert out.read_text().splitlines()[0] == "path,score,error"
    assert f"error: {inputs[3]}: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray for this module: 2 CPUs, the test hooks in every worker."""
    import ray
    from ray import cloudpickle

    arm = tmp_path_factory.mktemp("ray_fault") / "die-once"
    os.environ[ray_hooks.DIE_ONCE_ENV] = str(arm)  # the workers inherit it
    cloudpickle.register_pickle_by_value(ray_hooks)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"worker_process_setup_hook": ray_hooks.setup_worker})
    try:
        yield arm
    finally:
        ray.shutdown()
        os.environ.pop(ray_hooks.DIE_ONCE_ENV, None)


def _ray(inputs, batch_size=2, **options):
    return list(create_engine("ray", ModelSpec(device="cpu"), **options).run(inputs, batch_size=batch_size))


def test_same_scores_and_errors_as_the_local_engine(ray_cluster, inputs, local_results):
    got = _ray(inputs, num_workers=2)
    _same(got, local_results)
    assert [r.ok for r in got] == [True, False, True, False, True, False]
    assert got[3].error == "no such file" and got[5].error == "empty file (0 bytes)"


def test_cli_parquet_output_and_resume(ray_cluster, inputs, local_results, tmp_path):
    out = tmp_path / "scores.parquet"
    runner = CliRunner()
    first = runner.invoke(app, ["score", *inputs[:3], "--engine", "ray", "-o", str(out), "-b", "2"])
    assert first.exit_code == 1, first.output  # the corrupt file
    assert [r.path for r in read_results(out)] == inputs[:3]
    again = runner.invoke(app, ["score", *inputs, "--engine", "ray", "-o", str(out), "-b", "2", "--resume"])
    assert again.exit_code == 1, again.output
    assert f"error: {inputs[1]}" not in again.stderr  # kept from the first run, not scored again
    assert f"error: {inputs[3]}: no such file" in again.stderr
    assert "3 of 6 file(s) could not be scored" in again.stderr
    _same(read_results(out), local_results)  # every input exactly once, in order


def test_a_model_actor_killed_mid_batch_is_restarted_and_its_batch_rerun(ray_cluster, samples, tmp_path):
    items = []
    for i in range(8):
        copy = tmp_path / f"photo{i}.jpg"
        shutil.copy(samples[("chelsea", "coffee", "rocket")[i % 3]], copy)
        items.append(str(copy))
    ray_cluster.touch()  # arms the hook: the first actor to reach its model step dies
    got = _ray(items, num_workers=2)
    assert not ray_cluster.exists(), "no actor died"
    assert [r.path for r in got] == items
    expected = create_engine("local", ModelSpec(device="cpu")).run(items, batch_size=2)
    _same(got, list(expected))


def test_a_file_that_crashes_the_decoder_twice_is_an_error_row(ray_cluster, samples, tmp_path):
    poison = tmp_path / "poison.jpg"
    poison.write_bytes(b"POISON" + b"\0" * 100)
    items = [str(samples["chelsea"]), str(poison), str(samples["coffee"]), str(samples["rocket"])]
    got = _ray(items, num_workers=1)
    ray_hooks.register_poison()
    try:  # the local engine, decoding in worker processes, isolates the file the same way
        expected = list(create_engine("local", ModelSpec(device="cpu"), workers=2).run(items, batch_size=2))
    finally:
        ray_hooks.unregister_poison()
    assert "decoder crashed" in got[1].error and "SIGKILL" in got[1].error
    _same(got, expected)


def test_quality_scorer_in_a_users_pipeline(ray_cluster, inputs, local_results):
    import numpy as np
    import ray

    from qfmiqm.ray import QualityScorer

    files = [inputs[0], inputs[1], inputs[2]]
    ds = ray.data.read_binary_files(files, include_paths=True)
    ds = ds.map_batches(QualityScorer, fn_constructor_kwargs={"model": "default", "device": "cpu"},
                        concurrency=1, batch_size=2)
    rows = {os.path.basename(r["path"]): r for r in ds.take_all()}
    assert set(rows) == {"chelsea.jpg", "corrupt.jpg", "coffee.jpg"}
    assert "bytes" not in rows["chelsea.jpg"]  # dropped: keep_bytes=True keeps it
    for expected in local_results[:3]:
        row = rows[os.path.basename(expected.path)]
        if expected.ok:
            assert row["error"] is None and abs(row["score"] - expected.score) < 1e-3
        else:
            assert row["error"] == expected.error and np.isnan(row["score"])


def test_a_restarted_actor_decodes_the_batch_it_died_on_in_isolation(tmp_path):
    from qfmiqm.ray import _CrashLedger

    ledger = _CrashLedger(tmp_path / "actor.json")
    assert ledger.begin("a") == 0
    reborn = _CrashLedger(tmp_path / "actor.json")  # the process died with batch "a" in flight
    assert reborn.begin("b") == 0 and reborn.begin("a") == 1
    again = _CrashLedger(tmp_path / "actor.json")  # and died again, on "a" (and "b")
    assert again.begin("a") == 2
    again.end("a")
    assert again.begin("b") == 1
    again.end("b")
    assert not (tmp_path / "actor.json").exists()  # nothing left behind once all is done


def test_an_error_raised_in_a_model_actor_keeps_its_kind_and_words():
    from qfmiqm.engines.ray_engine import _as_user_error
    from qfmiqm.errors import QfmiqmError, UsageError

    class ActorDied(Exception):  # Ray carries an actor's creation error as text only
        error_msg = ("The actor died because of an error raised in its creation task\n"
                     "Traceback (most recent call last):\n  ...\n"
                     "qfmiqm.errors.UsageError: unknown runtime 'bogus' (use auto, onnx, torch)\n")

    err = _as_user_error(ActorDied("The actor died"))
    assert type(err) is UsageError and str(err) == "unknown runtime 'bogus' (use auto, onnx, torch)"
    other = _as_user_error(RuntimeError("raylet gone\nmore"))
    assert type(other) is QfmiqmError and str(other) == "the Ray job failed: RuntimeError: raylet gone"
