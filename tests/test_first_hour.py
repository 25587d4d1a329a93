"""A new user's first hour: the sample portrait, errors that say what to do, a run that says
when the protection is weak, the README's Python blocks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imguard
from conftest import ROOT, TinyRecognizer
from imguard.cli import main

SRC_ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "2"}
FAST = ["--method", "encoder", "--steps", "1", "--vae", "taesd", "--device", "cpu", "--working-size", "64"]


def _noise(path: Path, size=(40, 32)) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_sample_portrait_ships_with_its_source_and_licence():
    from imguard.samples import EXAMPLE

    with Image.open(EXAMPLE) as im:
        im.load()
    assert im.size == (256, 256) and im.mode == "RGB" and EXAMPLE.stat().st_size < 200_000
    source = (EXAMPLE.parent / "SOURCE.md").read_text()
    assert "public domain" in source and "scikit-image" in source and "Eileen Collins" in source


def test_example_runs_in_a_folder_with_no_shared_assets_beside_it(tmp_path):
    """`imguard protect --example -o out` from a folder with no ../shared: the sample is in the package."""
    work = tmp_path / "clone"
    work.mkdir()
    assert not (work.parent / "shared").exists()
    r = subprocess.run([sys.executable, "-m", "imguard", "protect", "--example", "-o", "out", *FAST],
                       cwd=work, capture_output=True, text=True, env=SRC_ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    with Image.open(work / "out" / "astronaut.png") as out:
        assert out.size == (256, 256)
    assert "1 protected" in r.stdout and "estimate: about" in r.stdout and "1 step," in r.stdout


def test_device_cuda_without_cuda_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["protect", str(_noise(tmp_path / "a.png")), "-o", str(tmp_path / "o"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and "--device cpu" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_unknown_or_missing_face_model_is_a_usage_error(tmp_path, capsys, monkeypatch):
    img = str(_noise(tmp_path / "a.png"))
    rc = main(["protect", img, "-o", str(tmp_path / "o"), "--face-model", "arcface", "--vae", "taesd", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "arcface" in err and "valid" in err
    monkeypatch.setenv("IMGUARD_CACHE", str(tmp_path / "empty-cache"))
    rc = main(["protect", img, "-o", str(tmp_path / "o"), "--offline", "--face-model", "mobilefacenet", "--vae", "taesd",
               "--device", "cpu", "--method", "facelock"])
    err = capsys.readouterr().err
    assert rc == 2 and "imguard models fetch mobilefacenet" in err
    assert not (tmp_path / "o").exists()


def test_a_file_name_for_o_is_refused_before_any_work(tmp_path, capsys):
    rc = main(["protect", str(_noise(tmp_path / "me.png")), "-o", str(tmp_path / "me-protected.jpg"), *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "looks like a file name" in err and "-o" in err
    assert not (tmp_path / "me-protected.jpg").exists()


def test_jpeg_output_is_refused_with_the_reason(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["protect", str(_noise(tmp_path / "me.png")), "-o", str(tmp_path / "o"), "--format", "jpeg"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "lossless" in err and "budget" in err and "invalid choice" not in err


def test_a_non_image_is_reported_once_with_what_to_do(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    rc = main(["protect", str(notes), "-o", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("not a readable image") == 1 and "check that it is an image file" in err


def test_subfolders_without_r_get_a_warning_naming_r(tmp_path, capsys):
    (tmp_path / "photos" / "2024").mkdir(parents=True)
    _noise(tmp_path / "photos" / "top.png")
    _noise(tmp_path / "photos" / "2024" / "inner.png")
    rc = main(["protect", str(tmp_path / "photos"), "-o", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err
    assert rc == 0 and "2024" in err and "-r" in err and "warning" in err
    assert (tmp_path / "o" / "top.png").exists() and not (tmp_path / "o" / "2024").exists()


def test_thin_strip_images_do_not_fail_inside_face_detection():
    from imguard.photo import face_regions

    for shape in ((1, 4000), (4000, 1)):
        assert face_regions(torch.rand(1, 3, *shape), detector=None) == []


def test_a_32_bit_tiff_using_a_tiny_part_of_its_range_warns(tmp_path):
    from imguard.io import read_image, to_tensor

    arr = np.linspace(0, 255000, 64 * 64).reshape(64, 64).astype(np.int32)
    Image.fromarray(arr, mode="I").save(tmp_path / "int32.tif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, _ = to_tensor(read_image(tmp_path / "int32.tif"))
    assert float(x.max()) < 1 / 255
    assert any("almost black" in str(w.message) and "255000" in str(w.message) for w in caught)


def test_summary_counts_outputs_still_recognisable_and_names_the_flag():
    from imguard.bulk import Job, Report, stronger_hint

    job = Job(src=Path("a.png"), dst=Path("o/a.png"), rel="a.png")
    rep = Report(protected=[job], recognisable=[job], hint=stronger_hint({"strength": "medium"}))
    text = rep.summary()
    assert "1 protected (1 still recognisable by the check" in text and "--strength high" in text
    assert "--steps" in stronger_hint({"strength": "high"}) and "--strength medium" in stronger_hint({"strength": "low"})
    assert "--strength max" in stronger_hint({"strength": "high"}) and "--strength max" not in stronger_hint({"strength": "max"})
    assert "recognisable" not in Report(protected=[job]).summary()


def test_imguard_warnings_print_as_one_line():
    line = warnings.formatwarning("imguard: no face found in item 0; protecting the whole photo", UserWarning, "api.py", 412)
    assert line == "imguard: warning: no face found in item 0; protecting the whole photo\n"
    other = warnings.formatwarning("something else", UserWarning, "x.py", 3)
    assert "UserWarning" in other  # other libraries' warnings keep their format


def test_result_and_bar_show_the_attacked_recognizers_similarity(tiny_models, image64, bar_postfixes):
    shown = bar_postfixes
    p = imguard.Protector("facelock", models=tiny_models, working_size=64, check=False, precision="fp32")
    res = p.protect(image64, eps=8, steps=10, seed=0, return_result=True, progress=True)
    assert res.similarity is not None and res.similarity[0] < res.initial_similarity[0] <= 1.0001
    values = [float(kw["similarity"]) for kw in shown]
    assert all(set(kw) == {"similarity"} for kw in shown) and len(values) >= 3  # one number, no objective beside it
    assert values[0] == pytest.approx(res.initial_similarity[0], abs=0.006)
    assert values[-1] == pytest.approx(res.similarity[0], abs=0.006)
    enc = p.protect(image64, method="encoder", steps=2, seed=0, return_result=True)
    assert enc.similarity is None  # no recognizer: the objective stays its number


def _readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_blocks_run(monkeypatch, tiny_vae_dir, capsys):
    """The README's Python blocks, in order and in one namespace, with tiny models in place of
    the real ones (the mechanics, not the weights): no undefined name, no missing path, no GPU."""
    import imguard.models as models_mod
    from imguard.check import LazyChecker
    from imguard.models.taesd import TinyAutoencoder

    blocks = _readme_python_blocks()
    assert len(blocks) >= 2
    real_features = models_mod.load_features

    def tiny_ae(spec, device=None, *a, **k):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            ae = TinyAutoencoder(4)
        ae.name = str(spec)
        return ae

    monkeypatch.setattr(models_mod, "load_autoencoder", tiny_ae)
    monkeypatch.setattr(models_mod, "load_face_recognizer", lambda spec, device=None, **k: TinyRecognizer())
    monkeypatch.setattr(models_mod, "load_features", lambda spec, autoencoder=None, device=None: real_features(
        "ae", autoencoder=autoencoder, device=device))
    monkeypatch.setattr(LazyChecker, "__call__", lambda self, *a, **k: None)
    monkeypatch.setattr(imguard.api, "_DEFAULT_PROTECTORS", {})  # imguard.protect's cache: not shared with other tests
    monkeypatch.setattr(imguard.Protector, "__init__", _fast_init(imguard.Protector.__init__))
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    out = capsys.readouterr().out
    assert "eps=" in out and "achieved" in out
    assert isinstance(namespace["result"].similarity, list)
    assert len(namespace["outs"]) == 2 and not any(isinstance(o, imguard.ItemError) for o in namespace["outs"])


def _fast_init(init):
    """Protector(...) as the README writes it, on the CPU, at 64 px, 3 steps a call."""

    def fast(self, *a, **k):
        k["device"] = "cpu"
        k["working_size"] = 64
        init(self, *a, **k)
        real = self.protect

        def protect(image, **kw):
            kw["steps"] = 3
            return real(image, **kw)

        self.protect = protect

    return fast
