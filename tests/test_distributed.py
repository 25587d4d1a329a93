"""`imguard protect --ray` and imguard.distributed on a local Ray cluster (2 CPUs, tiny models):
failed files become failure rows, a rerun does nothing, and the outputs and manifest are those of
`imguard protect` without Ray and of Protector.protect_many with the same batches and seed."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imguard.cli as cli
from imguard.bulk import MANIFEST_NAME
from imguard.cli import main

STEPS, SEED, BATCH = 2, 7, 4
N_GOOD = 37


def build_protector(vae_dir: str):
    """The tiny facelock protector of these tests (built inside each Ray worker)."""
    import torch

    from imguard import Protector
    from imguard.models import Models

    class Recognizer(torch.nn.Module):
        name, input_size, threshold, alignment = "tiny-recognizer", (32, 32), 0.5, "bbox"

        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                                           torch.nn.Flatten(), torch.nn.Linear(8 * 16 * 16, 16))

        def forward(self, x):
            return torch.nn.functional.normalize(self.net(x), dim=-1)

    models = Models(vae=vae_dir, face_model=Recognizer(), features="ae", detector=None)
    return Protector("facelock", device="cpu", models=models, working_size=32)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster for the module (Ray takes seconds to start)."""
    ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "imguard[ray]")')
    pytest.importorskip("ray.data")
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test file
    src = str(Path(__file__).resolve().parents[1] / "src")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
                                       "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture
def one_thread():
    """The workers run torch on one thread each (one CPU each); float sums are only
    bit-identical with the same thread count, so the runs compared here use one too."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, tiny_vae_dir):
    """40 files: 37 images of one size and 3 broken ones (two without an image header, one
    cut off after its header: that one fails in a worker, the others while planning)."""
    d = tmp_path_factory.mktemp("uploads")
    for i in range(N_GOOD):
        arr = np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(d / f"img{i:02d}.png")
    (d / "img05b.png").write_bytes(b"this is not a png")
    (d / "img20b.jpg").write_bytes(b"")
    whole = (d / "img00.png").read_bytes()
    (d / "img99.png").write_bytes(whole[: len(whole) // 2])  # the last one: it only shortens the last batch
    return d


def _factory(vae_dir):
    return functools.partial(build_protector, str(vae_dir))


def _protect_cli(monkeypatch, vae_dir, args: list[str], batch: int = BATCH) -> int:
    monkeypatch.setattr(cli, "_protector_factory", lambda a, s: _factory(vae_dir))
    monkeypatch.setattr(cli, "_make_protector", lambda a, s: _factory(vae_dir)())
    return main(["protect", *args, "--method", "facelock", "--steps", str(STEPS), "--seed", str(SEED),
                 "--batch-size", str(batch), "-q", "--threads", "1"])  # the workers run one thread each too


def _final_records(out: Path) -> dict[str, dict]:
    recs: dict[str, dict] = {}
    for line in (out / MANIFEST_NAME).read_text().splitlines():
        r = json.loads(line)
        r.pop("time")
        recs[r["output"]] = r
    return recs


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_ray_run_matches_plain_run_and_protect_many_and_resumes(ray_cluster, photos, tiny_vae_dir, tmp_path,
                                                                monkeypatch, capsys, one_thread):
    out_ray, out_plain = tmp_path / "ray", tmp_path / "plain"
    assert _protect_cli(monkeypatch, tiny_vae_dir, [str(photos), "-o", str(out_ray), "--ray", "--workers", "2"]) == 1
    assert "37 protected, 0 skipped, 3 failed" in capsys.readouterr().out
    outputs = sorted(p.name for p in out_ray.glob("*.png"))
    assert len(outputs) == N_GOOD and "img99.png" not in outputs
    recs = _final_records(out_ray)
    assert len(recs) == 40
    failed = {k for k, r in recs.items() if r["status"] == "failed"}
    assert failed == {"img05b.png", "img20b.png", "img99.png"}
    assert all(r["error"] for k, r in recs.items() if k in failed)
    done = [r for r in recs.values() if r["status"] == "done"]
    for r in done:
        assert len(r["input_sha256"]) == 64 and r["settings"]["seed"] == SEED, r
        assert 0 < r["achieved"] <= r["eps"] + 1e-3, r

    # the same command without Ray: the same bytes and the same manifest (but for the times)
    assert _protect_cli(monkeypatch, tiny_vae_dir, [str(photos), "-o", str(out_plain)]) == 1
    capsys.readouterr()
    for name in outputs:
        assert (out_ray / name).read_bytes() == (out_plain / name).read_bytes(), name
    assert _final_records(out_plain) == recs

    # Protector.protect_many with the same seed and batch size: the same pixels, the same failures
    files = sorted(p for p in photos.iterdir())
    results = _factory(tiny_vae_dir)().protect_many([str(p) for p in files], batch_size=BATCH, errors="return",
                                                    steps=STEPS, seed=SEED)
    for path, res in zip(files, results):
        if isinstance(res, Exception):
            assert f"{path.stem}.png" in failed
        else:
            assert np.array_equal(np.asarray(res.convert("RGB")), _pixels(out_ray / f"{path.stem}.png")), path.name

    # a rerun protects nothing: every output is skipped, the broken files fail again
    stamps = {p.name: p.stat().st_mtime_ns for p in out_ray.glob("*.png")}
    assert _protect_cli(monkeypatch, tiny_vae_dir, [str(photos), "-o", str(out_ray), "--ray", "--workers", "2"]) == 1
    assert "0 protected, 37 skipped, 3 failed" in capsys.readouterr().out
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out_ray.glob("*.png")}


def test_ray_run_redoes_what_a_cut_off_run_left(ray_cluster, photos, tiny_vae_dir, tmp_path, monkeypatch, capsys,
                                                one_thread):
    """A run cut off after the workers wrote files but before their records: those files are
    redone (the driver recorded them as started), the finished ones are kept. With batches of
    one an image's result depends on nothing else, so the redone file is the same bytes."""
    out = tmp_path / "out"
    good = sorted(photos.glob("img0*.png"))[:6]
    args = [*map(str, good), "-o", str(out), "--ray"]
    assert _protect_cli(monkeypatch, tiny_vae_dir, args, batch=1) == 0
    first = (out / "img01.png").read_bytes()
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    kept = [ln for ln in lines if not (json.loads(ln)["output"] == "img01.png" and json.loads(ln)["status"] == "done")]
    (out / MANIFEST_NAME).write_text("\n".join(kept) + "\n")  # img01's record never arrived
    (out / "img01.png").write_bytes(b"half written")
    capsys.readouterr()
    assert _protect_cli(monkeypatch, tiny_vae_dir, args, batch=1) == 0
    assert "1 protected, 5 skipped, 0 failed" in capsys.readouterr().out
    assert (out / "img01.png").read_bytes() == first


def failing_protector():
    from imguard.models import ModelLoadError

    raise ModelLoadError("the model 'missing-vae' is not on this computer; pass a local path")


def test_a_worker_that_cannot_load_its_models_stops_the_run(ray_cluster, photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_protector_factory", lambda a, s: failing_protector)
    rc = main(["protect", str(photos / "img01.png"), "-o", str(tmp_path / "out"), "--ray", "--method", "facelock", "-q"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "the Ray run stopped" in err and "missing-vae" in err and "run the same command again" in err
    assert not (tmp_path / "out" / "img01.png").exists()


def test_without_ray_the_error_says_what_to_install(monkeypatch, tmp_path, capsys):
    from imguard import distributed

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r'pip install "imguard\[ray\]"'):
        distributed.require_ray()
    assert main(["protect", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--ray", "-q"]) == 2
    assert 'pip install "imguard[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_ray_flags_are_checked_before_any_work(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert main(["protect", "-o", str(tmp_path / "out"), "--ray", str(tmp_path / "a.png"), str(tmp_path / "a.png")]) == 2
    assert "not a Ray address" in capsys.readouterr().err
    assert main(["protect", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "--workers" in err and "use it with --ray" in err
