"""The hostile-input corpus: every kind of file people point a quality tool at, built from the
real sample photos at test time (no binary blobs in the repository), with its expected outcome.

Used by tests/test_robustness.py and by tools/robustness_table.py (which writes docs/robustness.md).
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SCORED = "scored"


@dataclass(frozen=True)
class Case:
    kind: str
    arg: str  # what is passed on the command line
    expected: str  # SCORED, or a fragment of the error reason
    row_path: str | None = None  # path of the output row, when it differs from arg

    @property
    def expects_score(self) -> bool:
        return self.expected == SCORED


def _photo(size: tuple[int, int] | None = None) -> Image.Image:
    im = Image.open(SAMPLES / "chelsea.jpg").convert("RGB")
    return im.resize(size, Image.BICUBIC) if size else im


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A tiny PNG that declares a huge canvas: the classic decompression bomb."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def build_corpus(root: Path, huge: bool = True) -> list[Case]:
    """Write the corpus under ``root``; returns the cases in command-line order."""
    root.mkdir(parents=True, exist_ok=True)
    photo = _photo()
    cases: list[Case] = []

    def add(kind: str, path: Path, expected: str) -> None:
        cases.append(Case(kind, str(path), expected))

    p = root / "empty.jpg"
    p.write_bytes(b"")
    add("zero-byte file", p, "empty file")

    jpeg = io.BytesIO()
    photo.save(jpeg, "JPEG", quality=90)
    p = root / "truncated.jpg"
    p.write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    add("truncated JPEG", p, "cannot decode")

    png = io.BytesIO()
    photo.save(png, "PNG")
    p = root / "truncated.png"
    p.write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    add("truncated PNG", p, "cannot decode")

    p = root / "random.jpg"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    add("random bytes named .jpg", p, "not a recognised image format")

    p = root / "notes.png"
    p.write_text("this is a text file, not a picture\n")
    add("text file named .png", p, "not a recognised image format")

    p = root / "folder.jpg"
    p.mkdir()
    add("directory named x.jpg", p, "is a directory")

    p = root / "one_pixel.png"
    Image.new("RGB", (1, 1), (200, 30, 30)).save(p)
    add("1x1 image", p, SCORED)

    p = root / "strip.png"
    Image.new("RGB", (50000, 1), (90, 90, 90)).save(p)
    add("1x50000 strip", p, "extreme aspect ratio")

    p = root / "bomb.png"
    _png_header_only(p, 100_000, 100_000)
    add("decompression bomb (declares 100000x100000)", p, "too large")

    p = root / "cmyk.jpg"
    photo.convert("CMYK").save(p, "JPEG", quality=90)
    add("CMYK JPEG", p, SCORED)

    p = root / "sixteen_bit.png"
    grey16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(p)
    add("16-bit PNG", p, SCORED)

    p = root / "grey.jpg"
    photo.convert("L").save(p, "JPEG", quality=90)
    add("greyscale JPEG", p, SCORED)

    p = root / "palette_transparent.png"
    pal = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.info["transparency"] = 0
    pal.save(p, transparency=0)
    add("palette PNG with transparency", p, SCORED)

    p = root / "la.png"
    photo.convert("LA").save(p)
    add("LA (grey + alpha) PNG", p, SCORED)

    p = root / "rgba.png"
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(p)
    add("RGBA PNG (half transparent)", p, SCORED)

    p = root / "animated.gif"
    frames = [photo.convert("P"), photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM).convert("P")]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    add("animated GIF (first frame)", p, SCORED)

    p = root / "multipage.tif"
    photo.save(p, save_all=True, append_images=[photo.rotate(180)])
    add("multi-page TIFF (first page)", p, SCORED)

    p = root / "exif_rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.transpose(Image.Transpose.ROTATE_90).save(p, "JPEG", quality=90, exif=exif)
    add("EXIF-rotated JPEG (orientation 6)", p, SCORED)

    p = root / "photo.webp"
    photo.save(p, "WEBP", quality=85)
    add("WebP", p, SCORED)

    p = root / "photo.jp2"
    photo.save(p, "JPEG2000")
    add("JPEG 2000", p, SCORED)

    p = root / "really_png.jpg"
    photo.save(p, "PNG")
    add("PNG data with a .jpg extension", p, SCORED)

    p = root / "fotos über" / "été photo ✓.jpg"
    p.parent.mkdir()
    photo.save(p, "JPEG", quality=90)
    add("unicode and spaces in the path", p, SCORED)

    p = root / "float.tif"
    Image.fromarray(np.asarray(photo.convert("L"), dtype=np.float32)).save(p)
    add("32-bit float TIFF", p, SCORED)

    p = root / "no_permission.jpg"
    photo.save(p, "JPEG", quality=90)
    os.chmod(p, 0)
    # root reads any file whatever its mode bits, so there the file is scored
    add("unreadable file (mode 000)", p, SCORED if os.geteuid() == 0 else "permission denied")

    p = root / "broken_link.jpg"
    p.symlink_to(root / "gone.jpg")
    add("broken symbolic link", p, "broken symbolic link")

    a, b = root / "loop_a.jpg", root / "loop_b.jpg"
    a.symlink_to(b)
    b.symlink_to(a)
    add("symbolic link loop (file)", a, "symbolic link loop")

    p = root / "does_not_exist.jpg"
    add("path that does not exist", p, "no such file")

    if huge:
        p = root / "huge.jpg"
        _photo((9000, 6000)).save(p, "JPEG", quality=85)
        add("huge valid JPEG (9000x6000, 54 Mpx)", p, SCORED)

    folder = root / "tree"
    (folder / "sub").mkdir(parents=True)
    photo.save(folder / "a.jpg", "JPEG", quality=90)
    photo.save(folder / "sub" / "b.png")
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)
    cases.append(Case("folder with a symlink loop, --recursive", str(folder), SCORED, str(folder / "a.jpg")))

    p = root / "dup.jpg"
    photo.save(p, "JPEG", quality=90)
    add("the same file named twice", p, SCORED)
    return cases


def command_line(cases: list[Case]) -> list[str]:
    """Arguments for ``qfmiqm score``: every case once, the duplicate case twice."""
    args = [c.arg for c in cases]
    return args + [cases[-1].arg]


def observed_outcome(row) -> str:
    return SCORED if row.ok else f"error: {row.error}"


TABLE_HEADER = "| kind | expected | outcome |\n|---|---|---|\n"


def render_table(cases: list[Case], rows_by_path: dict) -> str:
    """The docs/robustness.md table: one line per corpus kind, outcome as observed."""
    lines = []
    for c in cases:
        expected = SCORED if c.expects_score else f"error containing '{c.expected}'"
        outcome = observed_outcome(rows_by_path[c.row_path or c.arg])
        lines.append(f"| {c.kind} | {expected} | {outcome} |")
    return TABLE_HEADER + "\n".join(lines) + "\n"
