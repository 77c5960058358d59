"""qfmiqm search: candidates drawn from a grid, trained on a protocol's splits, ranked by median
validation SRCC; test sides are never evaluated; a finished run is not recomputed."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from qfmiqm.cli import app
from qfmiqm.errors import UsageError
from qfmiqm.eval.search import draw_candidates, parse_param

FAST = ["--set", "optim.epochs=1", "--set", "optim.batch_size=4", "--set", "train.crops_per_image=1",
        "--set", "train.workers=0", "--set", "train.progress=false"]


def test_grid_parsing_and_the_seeded_draw():
    assert parse_param("qfm.match_tau=2, 5,10") == ("qfm.match_tau", [2, 5, 10])
    assert parse_param("qfm.adv=true,false") == ("qfm.adv", [True, False])
    with pytest.raises(UsageError, match="KEY=V1"):
        parse_param("qfm.match_tau")
    grid = {"a": [1, 2, 3], "b": [0.1, 0.2]}
    drawn = draw_candidates(grid, budget=4, seed=0)
    assert drawn[0] == {} and len(drawn) == 4  # the base config first, then 3 distinct points
    assert len({tuple(sorted(c.items())) for c in drawn[1:]}) == 3
    assert drawn == draw_candidates(grid, budget=4, seed=0)  # seeded
    assert len(draw_candidates(grid, budget=100)) == 7  # the whole grid, and the base config


@pytest.fixture(scope="module")
def protocol_splits(tmp_path_factory, synth_from_samples):
    root = tmp_path_factory.mktemp("search")
    labels = synth_from_samples(root, "gaussian_blur,white_noise", size=160)
    proto = CliRunner().invoke(app, ["protocol", "-c", "configs/synthetic_deiqt.yaml", "--splits", "3", "--out",
                                     str(root / "p"), "--set", f"data.dataset={labels}", "--set",
                                     "data.val_fraction=0.3", "--set", f"train.cache_dir={root / 'cache'}", *FAST])
    assert proto.exit_code == 0, proto.output
    return root, labels, root / "p" / "splits.json"


def test_search_ranks_candidates_on_validation_sides_and_resumes(protocol_splits, tmp_path):
    root, labels, splits = protocol_splits
    out = tmp_path / "s"
    args = ["search", "-c", "configs/synthetic_qfm.yaml", "--param", "qfm.match_tau=2,10", "--param",
            "qfm.lambda_adv=0.1,1", "--split-file", str(splits), "--split", "0,2", "--budget", "3", "--out", str(out),
            "--set", f"data.dataset={labels}", "--set", f"train.cache_dir={root / 'cache'}", *FAST]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    doc = json.loads((out / "search.json").read_text())
    cands = doc["candidates"]
    assert len(cands) == 3 and {c["candidate"] for c in cands} == {0, 1, 2}
    assert [c["median_val_srcc"] for c in cands] == sorted((c["median_val_srcc"] for c in cands), reverse=True)
    base = next(c for c in cands if c["candidate"] == 0)
    assert base["overrides"] == {}
    for c in cands:
        assert len(c["val"]) == 2 and all("srcc" in v for v in c["val"])
        for i in (0, 2):
            record = json.loads((out / f"cand{c['candidate']:02d}" / f"split{i:02d}" / "result.json").read_text())
            assert "test" not in record  # the test side was never scored
            assert record["overrides"] == c["overrides"]
        # each run really trained with its candidate's values
        cfg = (out / f"cand{c['candidate']:02d}" / "split00" / "config.yaml").read_text()
        for key, value in c["overrides"].items():
            assert f"{key.split('.')[-1]}: {value}" in cfg
    assert "best:" in first.output and (out / "search.md").read_text().count("\n") == 5

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "] split" not in again.stderr  # nothing retrained
    assert json.loads((out / "search.json").read_text())["candidates"] == cands


def test_a_bad_key_or_split_fails_before_training(protocol_splits, tmp_path):
    root, labels, splits = protocol_splits
    common = ["search", "-c", "configs/synthetic_qfm.yaml", "--split-file", str(splits), "--out", str(tmp_path / "x"),
              "--set", f"data.dataset={labels}", *FAST]
    bad_key = CliRunner().invoke(app, [*common, "--param", "qfm.no_such_key=1,2"])
    assert bad_key.exit_code != 0 and "no_such_key" in bad_key.output
    bad_split = CliRunner().invoke(app, [*common, "--param", "qfm.match_tau=2", "--split", "0,7"])
    assert bad_split.exit_code != 0 and "0..2" in bad_split.output
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
