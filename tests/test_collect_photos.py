"""tools/collect_photos.py: photos read from inside wheels, scipy's raw face file, and the held-out
sets (the photos added for validation never reach training, and the test set is unchanged)."""
import bz2
import io
import tarfile
import zipfile

import numpy as np
from PIL import Image


def test_package_member_is_read_from_an_already_downloaded_wheel(load_tool, tmp_path, capsys):
    tool = load_tool("collect_photos")
    wheels = tmp_path / "wheels" / "somepkg"
    wheels.mkdir(parents=True)
    photo = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(photo, format="PNG")
    with zipfile.ZipFile(wheels / "somepkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr("somepkg/assets/photo.png", photo.getvalue())
        z.writestr("somepkg/__init__.py", "")
    # the folder exists, so no download is tried: a network call here would fail the test offline
    raw = tool._package_member("somepkg==1.0", "assets/photo.png", tmp_path)
    assert Image.open(io.BytesIO(raw)).getpixel((3, 2)) == (10, 200, 30)
    assert tool._package_member("somepkg==1.0", "assets/missing.png", tmp_path) is None
    assert "has no assets/missing.png" in capsys.readouterr().err


def test_sdist_member_is_read_from_an_already_downloaded_sdist(load_tool, tmp_path, capsys):
    tool = load_tool("collect_photos")
    sdists = tmp_path / "sdists" / "somepkg"
    sdists.mkdir(parents=True)
    photo = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 40, 90)).save(photo, format="JPEG", quality=100)
    with tarfile.open(sdists / "somepkg-1.0.tar.gz", "w:gz") as t:
        info = tarfile.TarInfo("somepkg-1.0/tests/images/person.jpg")
        info.size = len(photo.getvalue())
        t.addfile(info, io.BytesIO(photo.getvalue()))
    raw = tool._package_member("somepkg==1.0", "tests/images/person.jpg", tmp_path, "sdist")
    assert raw == photo.getvalue()
    # a member the sdist lacks is named in a note
    assert tool._package_member("somepkg==1.0", "tests/images/other.jpg", tmp_path, "sdist") is None
    assert "somepkg-1.0.tar.gz has no tests/images/other.jpg" in capsys.readouterr().err


def test_npm_member_is_read_from_an_already_packed_tarball(load_tool, tmp_path):
    tool = load_tool("collect_photos")
    packed = tmp_path / "npms" / "some-pkg"
    packed.mkdir(parents=True)
    with tarfile.open(packed / "some-pkg-0.1.0.tgz", "w:gz") as t:
        info = tarfile.TarInfo("package/test/photo.jpg")
        info.size = 3
        t.addfile(info, io.BytesIO(b"abc"))
    assert tool._package_member("some-pkg@0.1.0", "package/test/photo.jpg", tmp_path, "npm") == b"abc"


def test_everyday_photos_go_to_training_under_unique_names(load_tool):
    tool = load_tool("collect_photos")
    rows = tool.SDIST_PHOTOS + tool.NPM_PHOTOS + tool.DEBIAN_PHOTOS + tool.DEBIAN_EVERYDAY_PHOTOS + tool.WHEEL_PHOTOS
    names = [name for _, _, name, _ in rows]
    assert len(set(names)) == len(names)
    assert len(tool.EVERYDAY_ADDED) == 28
    assert not tool.EVERYDAY_ADDED & tool.HELD_OUT
    assert {tool.split_of(name) for name in tool.EVERYDAY_ADDED} == {"everyday"}
    assert tool.split_of("facerec_obama") == "everyday"
    assert tool.split_of("ultralytics_bus") == "heldout" and tool.split_of("coffee") == "heldout"
    assert tool.split_of("astronaut") == "train"


def test_scipy_face_file_decodes_to_its_768_by_1024_rgb_photo(load_tool):
    tool = load_tool("collect_photos")
    pixels = np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    image = tool._decode_scipy_face(bz2.compress(pixels.tobytes()))
    assert image.size == (1024, 768) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), pixels)


def test_added_validation_photos_are_held_out_and_the_test_set_is_unchanged(load_tool):
    tool = load_tool("collect_photos")
    assert len(tool.VALIDATION_ADDED) == 11
    assert tool.VALIDATION_ADDED <= tool.HELD_OUT
    assert not tool.VALIDATION_ADDED & set(tool.CARD_HELD_OUT)
    assert len(tool.CARD_HELD_OUT) == 7
    names = [name for _, _, name, _ in tool.WHEEL_PHOTOS]
    assert len(names) == len(set(names))
    assert all("==" in spec for spec, *_ in tool.WHEEL_PHOTOS)  # pinned, so a rebuild gets the same photos


def test_print_lists_the_validation_and_test_photos(load_tool):
    tool = load_tool("collect_photos")
    validation, test = tool.held_out_names("validation"), tool.held_out_names("test")
    assert len(validation) == 40 and len(test) == 7 and not set(validation) & set(test)
    assert sorted(validation + test) == tool.held_out_names("heldout")
    assert "ultralytics_bus" in validation and "china" in test
