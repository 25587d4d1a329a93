"""`imguard protect` over many files: failures isolated, summary and exit codes, resume from the
manifest, outputs never taken for inputs, folders mirrored, presets, metadata.

Most tests replace the protector with a fast one (no optimisation): they test the command's
mechanics, not the protection.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import imguard.cli as cli
from imguard.bulk import MANIFEST_NAME
from imguard.cli import main

ROOT = Path(__file__).resolve().parents[1]


class FastProtector:
    """Adds a fixed +-2/255 pattern; fails for any batch holding a file named *boom*."""

    eps = 2.0

    def __init__(self, check_line: str | None = None):
        self.calls: list[list[str]] = []
        self.models = SimpleNamespace(specs={"vae": "fake-vae", "face_model": "fake-face", "features": "ae"})
        self.check_line = check_line

    def protect(self, x, *, return_result=True, names=None, progress=False, **kw):
        self.calls.append(list(names or []))
        if any("boom" in Path(n).name for n in names or []):
            raise RuntimeError("the fake protector fails on files named boom")
        from imguard.io import from_tensor, to_tensor

        image = x
        x, info = to_tensor(image)
        g = torch.Generator().manual_seed(0)
        pattern = torch.randint(0, 2, x.shape[1:], generator=g).float() * 4 - 2
        out = ((x * 255).round() + pattern).clamp(0, 255) / 255
        achieved = [round(float((o - i).abs().max() * 255), 3) for o, i in zip(out, x)]
        out = from_tensor(out, info)  # type in == type out, as the real one
        check = [SimpleNamespace(line=lambda s=self.check_line: s) for _ in names] if self.check_line else None
        return SimpleNamespace(image=out, achieved=achieved, eps=self.eps, method="fake", steps=1, seconds=0.0, check=check)


@pytest.fixture
def fast(monkeypatch):
    """The CLI with the fast protector; yields it (its .calls and the Protector() arguments)."""
    made = {}
    prot = FastProtector()

    def factory(args, settings):
        made["args"], made["settings"] = args, settings
        return prot

    monkeypatch.setattr(cli, "_make_protector", factory)
    prot.made = made
    return prot


def _img(path: Path, size=(24, 16), seed=0, **save):
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **save)
    return arr


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]


def _run(*argv) -> int:
    return main(["protect", *map(str, argv)])


def test_30_good_5_bad_gives_30_outputs_and_names_the_5(tmp_path, fast, capsys):
    src = tmp_path / "in"
    for i in range(30):
        _img(src / f"good{i:02d}.png", seed=i)
    bad = {"trunc.png": (src / "good00.png").read_bytes()[:60], "empty.jpg": b"", "text.png": b"hello, not a png",
           "random.webp": os.urandom(300), "boom.png": None}
    for name, data in bad.items():
        if data is None:
            _img(src / name, seed=99)
        else:
            (src / name).write_bytes(data)
    rc = _run(src, "-o", tmp_path / "out", "-q", "--batch-size", "4")
    cap = capsys.readouterr()
    assert rc == 1
    assert "30 protected, 0 skipped, 5 failed" in cap.out
    assert len(list((tmp_path / "out").glob("good*.png"))) == 30
    summary = cap.err.split("\n")
    listed = [line for line in summary if line.startswith("  failed: ")]
    assert sorted(Path(line.split(": ")[1]).name for line in listed) == sorted(bad)
    assert "Traceback" not in cap.err
    said = [line for line in summary if line.startswith("imguard: failed: ")]
    assert len(said) == len(bad)  # each failure said once, as it happened, with what was wrong
    for line in said:
        assert len(line.split(": ", 3)[3]) > 10
    assert "0 bytes" in cap.err and "boom" in cap.err


def test_a_failure_inside_a_batch_falls_back_to_one_file_at_a_time(tmp_path, fast, capsys):
    src = tmp_path / "in"
    for name in ("a", "b", "boom", "c"):
        _img(src / f"{name}.png", seed=len(name))
    rc = _run(src, "-o", tmp_path / "out", "-q", "--batch-size", "4")
    assert rc == 1
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a.png", "b.png", "c.png"]
    assert len(fast.calls[0]) == 4  # tried as one batch first
    assert all(len(c) == 1 for c in fast.calls[1:]) and len(fast.calls) == 5


def test_fail_fast_stops_at_the_first_failure(tmp_path, fast, capsys):
    src = tmp_path / "in"
    for name in ("a", "boom", "c", "d"):
        _img(src / f"{name}.png")
    rc = _run(src, "-o", tmp_path / "out", "-q", "--fail-fast")
    cap = capsys.readouterr()
    assert rc == 1 and "1 protected, 0 skipped, 1 failed" in cap.out and "--fail-fast" in cap.err
    assert [p.name for p in (tmp_path / "out").glob("*.png")] == ["a.png"]


def test_resume_skips_done_redoes_changed_cut_off_and_corrupt(tmp_path, fast, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(4):
        _img(src / f"p{i}.png", seed=i)
    assert _run(src, "-o", out, "-q", "--seed", "1") == 0
    first = {p.name: p.read_bytes() for p in out.glob("*.png")}
    capsys.readouterr()
    # the same command again: nothing to do
    assert _run(src, "-o", out, "-q", "--seed", "1") == 0
    assert "0 protected, 4 skipped, 0 failed" in capsys.readouterr().out
    # an output cut off (truncated), one deleted, one input changed: exactly those are redone
    (out / "p0.png").write_bytes(first["p0.png"][:40])
    (out / "p1.png").unlink()
    _img(src / "p2.png", seed=77)
    assert _run(src, "-o", out, "-q", "--seed", "1") == 0
    assert "3 protected, 1 skipped, 0 failed" in capsys.readouterr().out
    assert (out / "p3.png").read_bytes() == first["p3.png"]
    assert Image.open(out / "p0.png").load() is not None
    # other settings: everything redone
    assert _run(src, "-o", out, "-q", "--seed", "2") == 0
    assert "4 protected, 0 skipped, 0 failed" in capsys.readouterr().out
    recs = _manifest(out)
    last = {r["output"]: r for r in recs}
    assert set(last) == {"p0.png", "p1.png", "p2.png", "p3.png"}
    for r in last.values():
        assert r["status"] == "done" and r["settings"]["seed"] == 2 and len(r["input_sha256"]) == 64
        assert r["achieved"] <= r["eps"] and r["input"].endswith(r["output"])
    # --overwrite redoes all
    assert _run(src, "-o", out, "-q", "--seed", "2", "--overwrite") == 0
    assert "4 protected, 0 skipped, 0 failed" in capsys.readouterr().out


def test_outputs_in_the_input_folder_are_not_taken_for_inputs(tmp_path, fast, capsys):
    src = tmp_path / "photos"
    for i in range(3):
        _img(src / f"img{i}.jpg", seed=i, quality=95)
    assert _run(src, "-o", src, "-q") == 0
    assert len(list(src.glob("*.png"))) == 3
    capsys.readouterr()
    assert _run(src, "-o", src, "-q") == 0
    assert "0 protected, 3 skipped, 0 failed" in capsys.readouterr().out
    # even named one by one, the outputs are not inputs
    assert _run(*sorted(src.glob("*")), "-o", src, "-q") == 0
    assert "0 protected, 3 skipped, 0 failed" in capsys.readouterr().out
    assert not list(src.glob("*.png.png")) and len(list(src.glob("*.png"))) == 3


def test_output_paths_that_cannot_work_are_usage_errors(tmp_path, fast, capsys):
    _img(tmp_path / "a.png")
    f = tmp_path / "afile"
    f.write_text("x")
    assert _run(tmp_path / "a.png", "-o", f, "-q") == 2
    assert "existing file" in capsys.readouterr().err
    assert _run(tmp_path / "a.png", "-o", f / "sub", "-q") == 2
    assert "cannot write into the output folder" in capsys.readouterr().err
    assert fast.calls == []  # no work was done
    with pytest.raises(SystemExit) as e:  # argparse: exit 2
        _run(tmp_path / "a.png", "-o", tmp_path / "o", "--batch-size", "0")
    assert e.value.code == 2
    assert _run(tmp_path / "a.png", "-o", tmp_path / "o", "--working-size", "-5") == 2
    assert "working-size" in capsys.readouterr().err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root user for permissions")
def test_unwritable_output_is_a_usage_error(tmp_path, fast, capsys):
    _img(tmp_path / "a.png")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert _run(tmp_path / "a.png", "-o", ro, "-q") == 2
        assert "cannot write" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_recursive_mirrors_the_tree(tmp_path, fast, capsys):
    src = tmp_path / "in"
    _img(src / "a.png")
    _img(src / "trip" / "day1" / "b.jpg", quality=95)
    _img(src / "trip" / "c.webp")
    assert _run(src, "-o", tmp_path / "flat", "-q") == 0
    assert [p.relative_to(tmp_path / "flat").as_posix() for p in (tmp_path / "flat").rglob("*.png")] == ["a.png"]
    assert _run(src, "-o", tmp_path / "out", "-q", "-r", "--format", "webp") == 0
    got = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.webp"))
    assert got == ["a.webp", "trip/c.webp", "trip/day1/b.webp"]
    a = np.asarray(Image.open(tmp_path / "out" / "trip" / "day1" / "b.webp")).astype(int)
    b = np.asarray(Image.open(src / "trip" / "day1" / "b.jpg")).astype(int)
    assert np.abs(a - b).max() <= 2  # lossless WebP: the budget holds in the file


def test_strength_default_method_own_defaults_and_models_line(tmp_path, fast, capsys):
    _img(tmp_path / "a.png")
    assert _run(tmp_path / "a.png", "-o", tmp_path / "o1") == 0
    out = capsys.readouterr().out
    assert fast.made["args"].strength is None and fast.made["settings"]["strength"] == "medium"
    assert fast.made["settings"]["method"] == "facelock"
    assert fast.made["args"].face_model is None and fast.made["args"].vae is None
    assert out.splitlines()[0].startswith("imguard: facelock (strength medium); autoencoder fake-vae, face recognizer fake-face")
    assert _run(tmp_path / "a.png", "-o", tmp_path / "o2", "--method", "photoguard", "-q") == 0
    assert fast.made["settings"]["strength"] is None and fast.made["settings"]["method"] == "photoguard"
    assert _run(tmp_path / "a.png", "-o", tmp_path / "o3", "--strength", "high", "-q") == 0
    assert fast.made["settings"]["strength"] == "high"
    assert _manifest(tmp_path / "o3")[-1]["settings"]["strength"] == "high"
    with pytest.raises(SystemExit):
        _run(tmp_path / "a.png", "-o", tmp_path / "o4", "--strength", "extreme")


def test_check_line_printed_after_the_files_line(tmp_path, fast, capsys):
    fast.check_line = "check: identity hidden (similarity 0.10, threshold 0.30) by fake"
    _img(tmp_path / "a.png")
    assert _run(tmp_path / "a.png", "-o", tmp_path / "o") == 0
    lines = capsys.readouterr().out.splitlines()
    i = next(k for k, line in enumerate(lines) if "a.png ->" in line)
    assert lines[i + 1].strip() == fast.check_line
    assert _manifest(tmp_path / "o")[-1]["check"] == fast.check_line


def _exif_with_gps() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    exif[0x0112] = 1
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)}
    return exif.tobytes()


def test_metadata_is_stripped_and_keep_metadata_drops_only_gps(tmp_path, fast):
    src = tmp_path / "in"
    src.mkdir()
    arr = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(arr).save(src / "cam.jpg", exif=_exif_with_gps(), quality=95, comment=b"secret comment")
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">secret place</x:xmpmeta>'
    Image.fromarray(arr).save(src / "x.png", exif=_exif_with_gps(), pnginfo=_pnginfo(xmp))
    for fmt in ("png", "webp", "tiff"):
        out = tmp_path / f"out-{fmt}"
        assert _run(src, "-o", out, "-q", "--format", fmt) == 0
        for name in ("cam", "x"):
            p = out / f"{name}.{fmt}"
            raw = p.read_bytes()
            assert b"TestCam" not in raw and b"secret" not in raw, p
            with Image.open(p) as im:
                ex = im.getexif()
                assert 0x010F not in ex and 0x8825 not in ex and 0x0112 not in ex, p  # TIFF keeps only its own layout tags
                assert not im.info.get("xmp") and "XML:com.adobe.xmp" not in im.info and "Comment" not in im.info
    kept = tmp_path / "kept"
    assert _run(src, "-o", kept, "-q", "--keep-metadata") == 0
    ex = Image.open(kept / "cam.png").getexif()
    assert ex.get(0x010F) == "TestCam" and 0x8825 not in ex
    assert b"secret" not in (kept / "cam.png").read_bytes()


def _pnginfo(xmp: bytes):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    info.add_text("Comment", "secret text")
    return info


def test_save_image_writes_no_metadata_in_any_format(tmp_path):
    from imguard.io import save_image

    img = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    img.info.update({"exif": _exif_with_gps(), "comment": b"secret", "xmp": b"secret xmp", "dpi": (300, 300)})
    for suffix in (".png", ".jpg", ".webp", ".tiff"):
        p = save_image(img, tmp_path / f"a{suffix}")
        assert b"TestCam" not in p.read_bytes() and b"secret" not in p.read_bytes(), suffix
        with Image.open(p) as im:
            ex = im.getexif()
            assert 0x010F not in ex and 0x8825 not in ex and 0x0112 not in ex, suffix
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*"))
    with pytest.raises(FileExistsError):
        save_image(img, tmp_path / "a.png")


@pytest.mark.skipif(os.name != "posix", reason="process liveness is probed on POSIX only")
def test_a_killed_writers_temporary_file_is_removed_by_the_next_save(tmp_path):
    from imguard.io import save_image

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".a.png.{dead.pid}.part"
    stale.write_bytes(b"half a png")
    live = tmp_path / f".a.png.{os.getppid()}.part"  # a writer that is still running
    live.write_bytes(b"being written")
    other = tmp_path / f".b.png.{dead.pid}.part"  # another file's: not this save's business
    other.write_bytes(b"x")
    save_image(Image.fromarray(np.zeros((8, 8, 3), np.uint8)), tmp_path / "a.png")
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "a.png").exists()


def test_kill_minus_9_then_rerun_completes_only_the_missing(tmp_path, tiny_vae_dir):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(5):
        _img(src / f"k{i}.png", seed=i)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "IMGUARD_TEST_SLEEP_PER_IMAGE": "1.5"}
    cmd = [sys.executable, "-m", "imguard", "protect", str(src), "-o", str(out), "--method", "encoder", "--eps", "4",
           "--steps", "1", "--seed", "0", "--vae", str(tiny_vae_dir), "--device", "cpu", "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    def done_lines():
        path = out / MANIFEST_NAME
        return path.exists() and b'"status": "done"' in path.read_bytes()

    while not (list(out.glob("*.png")) and done_lines()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # the first output is there and recorded; the run sleeps 1.5 s before the next
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {r["output"] for r in _manifest(out) if r["status"] == "done"}
    assert 1 <= len(done_before) < 5
    env.pop("IMGUARD_TEST_SLEEP_PER_IMAGE")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    n = len(done_before)
    assert f"{5 - n} protected, {n} skipped, 0 failed" in res.stdout
    last = {}
    for r in _manifest(out):
        last[r["output"]] = r
    assert sorted(last) == [f"k{i}.png" for i in range(5)] and all(r["status"] == "done" for r in last.values())
    for i in range(5):
        im = Image.open(out / f"k{i}.png")
        im.load()
        d = np.abs(np.asarray(im).astype(int) - np.asarray(Image.open(src / f"k{i}.png")).astype(int))
        assert d.max() <= 4
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


def test_keep_metadata_on_a_colour_managed_photo_tags_srgb(tmp_path, fast):
    from icc_profiles import matrix_profile
    from PIL import ImageCms
    import io as _io

    arr = np.random.default_rng(0).integers(30, 200, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "wide.jpg", icc_profile=matrix_profile("Adobe RGB-like"), exif=_exif_with_gps(), quality=95)
    for flag in ([], ["--keep-metadata"]):
        out = tmp_path / f"o{len(flag)}"
        assert _run(tmp_path / "wide.jpg", "-o", out, "-q", *flag) == 0
        with Image.open(out / "wide.png") as im:
            prof = ImageCms.ImageCmsProfile(_io.BytesIO(im.info["icc_profile"]))
            assert "srgb" in ImageCms.getProfileDescription(prof).lower()
            ex = im.getexif()
            assert (ex.get(0x010F) == "TestCam") == bool(flag) and 0x8825 not in ex
