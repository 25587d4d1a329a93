"""A corpus of >= 200 malformed and odd image files, generated at test time (never stored).

For every file the reader ends in a correct image or a clean ImageReadError (no other
exception, no silent change: a file that decodes gives the pixels of the intact file), and one
CLI run over the whole folder (fast protector) ends in an output or a one-line failure per
file, with a summary that adds up.
"""

from __future__ import annotations

import io as _io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icc_profiles import matrix_profile
from imguard.io import IMAGE_SUFFIXES, ImageReadError, read_image, to_tensor

OK, ERROR, EITHER = "ok", "error", "either"


@dataclass
class Case:
    name: str
    expect: str  #: ok, error, either
    pixels: np.ndarray | None = None  #: what an "ok" read must give (uint8 HxWx3), when known


def _rgb(h=24, w=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(arr_or_img, fmt: str, **kw) -> bytes:
    img = Image.fromarray(arr_or_img) if isinstance(arr_or_img, np.ndarray) else arr_or_img
    b = _io.BytesIO()
    img.save(b, format=fmt, **kw)
    return b.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    with Image.open(_io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_declaring(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + _png_chunk(b"IEND", b"")


def build_corpus(d: Path) -> list[Case]:
    cases: list[Case] = []

    def add(name: str, data: bytes, expect: str, pixels=None):
        (d / name).write_bytes(data)
        cases.append(Case(name, expect, pixels))

    base = _rgb()
    # truncations of every format at many offsets (lossless ones: the decoded pixels are known)
    for fmt, ext, kw in (("PNG", "png", {}), ("JPEG", "jpg", {"quality": 90}), ("WEBP", "webp", {"lossless": True}),
                         ("TIFF", "tiff", {}), ("GIF", "gif", {})):
        full = _encode(base, fmt, **kw)
        ref = _decoded(full)
        add(f"full.{ext}", full, OK, ref)
        offsets = sorted({1, 2, 4, 8, 12, 16, 24, 33, 50, 64, 100, 150, 200, 300, 500, 800}
                         | {len(full) * k // 10 for k in range(1, 10)} | {len(full) - 1, len(full) - 2})
        for off in (o for o in offsets if 0 < o < len(full)):
            add(f"trunc{off:05d}.{ext}", full[:off], EITHER, ref)
    # random bytes, with and without image endings; zero-byte files
    rng = np.random.default_rng(5)
    for i, ext in enumerate(["png", "jpg", "webp", "tiff", "gif", "bmp", "jpeg", "tif"] * 3):
        add(f"random{i:02d}.{ext}", rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes(), ERROR)
    for ext in ("png", "jpg", "webp", "tiff", "gif", "bmp"):
        add(f"zero.{ext}", b"", ERROR)
    for i, magic in enumerate([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"RIFF\0\0\0\0WEBP", b"II*\0", b"GIF89a", b"BM"]):
        add(f"magiconly{i}.png", magic + b"\0" * 20, ERROR)
    # wrong endings: read by content, pixels intact
    for fmt, ext, kw in (("PNG", "jpg", {}), ("PNG", "webp", {}), ("TIFF", "png", {}), ("BMP", "png", {}),
                         ("WEBP", "tiff", {"lossless": True}), ("GIF", "jpg", {}), ("JPEG", "png", {"quality": 90})):
        data = _encode(base, fmt, **kw)
        add(f"wrongext-{fmt.lower()}.{ext}", data, OK, _decoded(data))
    # extreme sizes
    for w, h in ((1, 1), (1, 5000), (5000, 1), (3, 3), (2, 7), (8, 1)):
        arr = _rgb(h, w, seed=w * h)
        add(f"size{w}x{h}.png", _encode(arr, "PNG"), OK, arr)
    # every Pillow mode, in every format that can hold it
    for mode in ("1", "L", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F", "LA", "RGBa", "RGBX", "La"):
        img = Image.fromarray(_rgb(12, 10, seed=3)).convert("RGB")
        try:
            img = img.convert(mode)
        except ValueError:
            img = Image.new(mode, (10, 12))
        for fmt, ext in (("PNG", "png"), ("TIFF", "tiff"), ("WEBP", "webp"), ("JPEG", "jpg"), ("BMP", "bmp"), ("GIF", "gif")):
            try:
                data = _encode(img, fmt)
            except (OSError, ValueError, KeyError):
                continue
            # 8-bit data converted to 'F' holds 0..255: a float file is read as [0,1], so refused
            add(f"mode-{mode.replace(';', '_')}.{ext}", data, ERROR if (mode, fmt) == ("F", "TIFF") else OK)
    # 16-bit, float, NaN, inf, out of range
    g16 = np.linspace(0, 65535, 120).reshape(10, 12).astype(np.uint16)
    add("g16.png", _encode(g16, "PNG"), OK, np.repeat((np.round(g16 / 65535 * 255)).astype(np.uint8)[..., None], 3, 2))
    add("g16.tiff", _encode(g16, "TIFF"), OK, np.repeat((np.round(g16 / 65535 * 255)).astype(np.uint8)[..., None], 3, 2))
    add("i32.tiff", _encode(np.arange(120, dtype=np.int32).reshape(10, 12) * 1000, "TIFF"), OK)
    f = np.linspace(0, 1, 120, dtype=np.float32).reshape(10, 12)
    add("float.tiff", _encode(f, "TIFF"), OK, np.repeat(np.round(f * 255).astype(np.uint8)[..., None], 3, 2))
    for tag, v in (("nan", np.nan), ("inf", np.inf), ("neginf", -np.inf), ("big", 7.0), ("neg", -0.5)):
        ff = f.copy()
        ff[3, 4] = v
        add(f"float-{tag}.tiff", _encode(ff, "TIFF"), ERROR)
    # ICC profiles: a wide-gamut one (converted), a broken one (refused)
    icc = matrix_profile("Adobe RGB-like corpus profile")
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("TIFF", "tiff"), ("WEBP", "webp")):
        add(f"icc-wide.{ext}", _encode(base, fmt, icc_profile=icc), OK)
        add(f"icc-broken.{ext}", _encode(base, fmt, icc_profile=b"\0garbage profile" * 10), ERROR)
    add("icc-rgb-on-grey.png", _encode(Image.fromarray(base).convert("L"), "PNG", icc_profile=icc), ERROR)
    # multi-frame files
    frames = [Image.fromarray(_rgb(8, 8, seed=s)) for s in range(3)]
    for fmt, ext in (("GIF", "gif"), ("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tiff")):
        b = _io.BytesIO()
        frames[0].save(b, format=fmt, save_all=True, append_images=frames[1:])
        add(f"multiframe.{ext}", b.getvalue(), ERROR)
    # bomb headers
    for w, h in ((100_000, 100_000), (9000, 9000), (2**31 - 1, 1), (60_000, 1000)):
        add(f"bomb{w}x{h}.png", _png_declaring(w, h), ERROR)
    add("zero-width.png", _png_declaring(0, 10), ERROR)
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    return d, build_corpus(d)


def _read(path: Path) -> torch.Tensor:
    return to_tensor(read_image(path), name=str(path))[0]


def test_corpus_is_big_enough(corpus):
    d, cases = corpus
    assert len(cases) >= 200
    assert len({c.name for c in cases}) == len(cases)
    assert sum(c.expect == ERROR for c in cases) >= 50 and sum(c.expect == OK for c in cases) >= 50


def test_every_file_reads_right_or_fails_cleanly(corpus):
    d, cases = corpus
    surprises = []
    for c in cases:
        try:
            x = _read(d / c.name)
        except ImageReadError as e:
            msg = str(e)
            if c.expect == OK:
                surprises.append(f"{c.name}: refused: {msg}")
            elif "\n" in msg or c.name not in msg:
                surprises.append(f"{c.name}: unclear error: {msg!r}")
            continue
        except Exception as e:  # noqa: BLE001 - anything else is a bug
            surprises.append(f"{c.name}: {type(e).__name__}: {e}")
            continue
        if c.expect == ERROR:
            surprises.append(f"{c.name}: read, but should be refused")
            continue
        if x.dim() != 4 or x.shape[:2] != (1, 3) or not bool(torch.isfinite(x).all()) or x.min() < 0 or x.max() > 1:
            surprises.append(f"{c.name}: bad tensor {tuple(x.shape)}")
        elif c.pixels is not None:
            got = np.round(x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            if got.shape != c.pixels.shape or np.abs(got.astype(int) - c.pixels.astype(int)).max() > 0:
                surprises.append(f"{c.name}: decoded, but not the intact file's pixels (a silent change)")
    assert not surprises, "\n".join(surprises)


def test_one_cli_run_over_the_corpus_ends_in_outputs_or_one_line_failures(corpus, tmp_path, monkeypatch, capsys):
    import imguard.cli as cli
    from test_bulk import FastProtector

    d, cases = corpus
    monkeypatch.setattr(cli, "_make_protector", lambda args, settings: FastProtector())
    out = tmp_path / "out"
    rc = cli.main(["protect", str(d), "-o", str(out), "-q", "--batch-size", "3"])
    cap = capsys.readouterr()
    assert rc == 1 and "Traceback" not in cap.err and "Traceback" not in cap.out
    inputs = [c for c in cases if Path(c.name).suffix.lower() in IMAGE_SUFFIXES]
    # same stem, different endings share an output: the later ones fail "same output", never overwrite
    summary = [line for line in cap.out.splitlines() if line.startswith("imguard: ") and "protected" in line][-1]
    n_prot, n_skip, n_fail = (int(part.split()[0]) for part in summary[len("imguard: "):].split(", "))
    assert n_prot + n_skip + n_fail == len(inputs) and n_skip == 0
    # each failure is said once, as it happens, with its reason; the summary names the files again
    failed = {Path(line.split(": ", 3)[2]).name: line for line in cap.err.splitlines() if line.startswith("imguard: failed: ")}
    assert len(failed) == n_fail
    assert {Path(line.split(": ", 1)[1]).name for line in cap.err.splitlines() if line.startswith("  failed: ")} == set(failed)
    outputs = list(out.glob("*.png"))
    assert len(outputs) == n_prot
    for p in outputs:
        with Image.open(p) as im:
            im.load()
    by_name = {c.name: c for c in inputs}
    for name, c in by_name.items():
        if c.expect == ERROR:
            assert name in failed, f"{name} should have failed"
    oks = [c for c in inputs if c.expect == OK and c.name not in failed]
    assert len(oks) >= 30  # the readable ones were protected (or lost only to a shared output name)
    for name, line in failed.items():
        if by_name[name].expect == OK:
            assert "same output" in line, line
