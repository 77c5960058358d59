"""tools/make_protocol_set.py: issue 23's protocol set keeps every scene but the default model's
test photos, KADID's types and the pristine images only, with paths that resolve from its folder."""
from __future__ import annotations

import csv


def _row(path, ref, t, level, score="50"):
    return {"path": path, "reference": ref, "type": t, "level": str(level), "score": score, "proxy_score": "1"}


def test_rows_leave_out_test_photos_camera_types_and_scene_less_crops(load_tool, tmp_path):
    tool = load_tool("make_protocol_set")
    train = [_row("synth_default/reference/a.png", "synth_default/reference/a.png", "pristine", 0, "100"),
             _row("synth_default/distorted/a_jpeg_1.png", "synth_default/reference/a.png", "jpeg", 1),
             _row("synth_default/distorted/a_lowlight_noise_1.png", "synth_default/reference/a.png", "lowlight_noise", 1),
             _row("synth_pristine/reference/a_c3.png", "synth_pristine/reference/a_c3.png", "pristine", 0, "100")]
    heldout = [_row("reference/coffee.png", "reference/coffee.png", "pristine", 0, "100"),
               _row("distorted/coffee_jpeg_1.png", "reference/coffee.png", "jpeg", 1),
               _row("reference/lxqt_flowers.png", "reference/lxqt_flowers.png", "pristine", 0, "100"),
               _row("distorted/lxqt_flowers_gaussian_blur_2.png", "reference/lxqt_flowers.png", "gaussian_blur", 2)]
    rows = tool.protocol_rows(train, heldout, "synth_heldout/")
    assert [r["path"] for r in rows] == ["synth_default/reference/a.png", "synth_default/distorted/a_jpeg_1.png",
                                         "synth_heldout/reference/lxqt_flowers.png",
                                         "synth_heldout/distorted/lxqt_flowers_gaussian_blur_2.png"]
    assert rows[-1]["reference"] == "synth_heldout/reference/lxqt_flowers.png"
    assert all(set(r) == set(tool.COLUMNS) for r in rows)

    # the command line: the held-out set's folder becomes the prefix of its paths
    (tmp_path / "synth_heldout").mkdir()
    for name, table in (("train.csv", train), ("synth_heldout/labels.csv", heldout)):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
    out = tmp_path / "protocol.csv"
    assert tool.main(["--train", str(tmp_path / "train.csv"), "--heldout", str(tmp_path / "synth_heldout/labels.csv"),
                      "--out", str(out)]) == 0
    written = list(csv.DictReader(open(out)))
    assert [r["path"] for r in written] == [r["path"] for r in rows]


def test_one_level_keeps_pristine_and_one_balanced_level_per_type(load_tool):
    tool = load_tool("make_protocol_set")
    rows = []
    for photo in ("a", "b", "c", "d", "e"):
        ref = f"synth_default/reference/{photo}.png"
        rows.append(_row(ref, ref, "pristine", 0, "100"))
        for t in ("jpeg", "gaussian_blur"):
            rows += [_row(f"synth_default/distorted/{photo}_{t}_{lv}.png", ref, t, lv) for lv in range(1, 6)]
    kept = tool.one_level_per_type(rows)
    assert sum(r["type"] == "pristine" for r in kept) == 5
    for t in ("jpeg", "gaussian_blur"):
        mine = [r for r in kept if r["type"] == t]
        # one level per photo, and the five photos cover the five levels once each
        assert sorted(r["reference"] for r in mine) == sorted({r["reference"] for r in rows})
        assert sorted(int(r["level"]) for r in mine) == [1, 2, 3, 4, 5]
    # the two types of one photo are at different levels
    a = {r["type"]: r["level"] for r in kept if r["reference"].endswith("/a.png") and r["type"] != "pristine"}
    assert a["jpeg"] != a["gaussian_blur"]
