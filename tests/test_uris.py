"""Inputs named by URI (file:// here; s3:// and gs:// go through the same pyarrow calls)."""
from __future__ import annotations

import re
import shutil

import pytest

from qfmiqm.data.images import decode_image_bytes, open_image, to_rgb_array
from qfmiqm.data.sources import expand_inputs
from qfmiqm.data.uris import is_uri, read_uri
from qfmiqm.errors import ImageError


def test_folder_uris_are_listed_like_folders(samples, tmp_path):
    (tmp_path / "sub dir").mkdir()
    shutil.copy(samples["chelsea"], tmp_path / "a.jpg")
    shutil.copy(samples["coffee"], tmp_path / "sub dir" / "b c.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    root = f"file://{tmp_path}"
    flat, _ = expand_inputs([root])
    assert flat == [f"{root}/a.jpg"]
    deep, duplicates = expand_inputs([root, f"{root}/a.jpg"], recursive=True)
    assert deep == [f"{root}/a.jpg", f"{root}/sub%20dir/b%20c.jpg"] and duplicates == 1
    assert (to_rgb_array(deep[1]) == open_image(tmp_path / "sub dir" / "b c.jpg")).all()


def test_a_uri_decodes_to_the_same_pixels_as_the_file(samples):
    path = str(samples["rocket"])
    assert is_uri(f"file://{path}") and not is_uri(path)
    by_uri = to_rgb_array(f"file://{path}", min_short_side=224)
    assert (by_uri == to_rgb_array(path, min_short_side=224)).all()
    assert (decode_image_bytes(samples["rocket"].read_bytes(), min_short_side=224) == by_uri).all()


@pytest.mark.parametrize("name, reason", [("missing.jpg", "no such file"), ("", "is a directory, not an image file"),
                                          ("empty.jpg", "empty file (0 bytes)")])
def test_unreadable_uris_say_why_in_the_words_of_local_files(tmp_path, name, reason):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=f"^{re.escape(reason)}$"):
        read_uri(f"file://{tmp_path}/{name}")
    with pytest.raises(ImageError, match="cannot open its filesystem"):
        read_uri("nosuchscheme://bucket/key.jpg")


def test_the_local_engine_scores_uris(default_model, samples, tmp_path):
    uri = f"file://{samples['coffee']}"
    got = list(default_model.iter_scores([uri, f"file://{tmp_path}/gone.jpg"], batch_size=2, workers=0))
    assert got[0].path == uri and got[0].score == pytest.approx(default_model.score(str(samples["coffee"])), abs=1e-6)
    assert got[1].error == "no such file"
