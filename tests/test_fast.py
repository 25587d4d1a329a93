"""The fast mode (strength="fast"): training mechanics on tiny models, the shipped weights,
inference on a real face (budget and the invisibility gate), refine, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TinyRecognizer, requires_assets
from imguard.fast import SHIPPED, load_weights
from imguard.fast.train import TrainConfig, train
from imguard.models.autoencoder import IdentityAutoencoder


def _synthetic_faces(folder, n=4, size=64):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    return folder


TINY = dict(k=2, size=32, tile=16, iterations=2, batch=2, save_every=1, load_size=64)


def _train(tmp, tiny_models, name, **kw):
    cfg = TrainConfig(**{**TINY, **kw})
    return train(tmp / "faces", tmp / name, cfg, face_model=TinyRecognizer(), vae=tiny_models.autoencoder,
                 detector=None, progress=False, log=lambda s: None)


def test_train_tiny_runs_saves_and_is_deterministic(tmp_path, tiny_models):
    _synthetic_faces(tmp_path / "faces")
    a = _train(tmp_path, tiny_models, "a.safetensors")
    b = _train(tmp_path, tiny_models, "b.safetensors")
    assert a.faces.shape == (2, 3, 32, 32) and a.tile.shape == (3, 16, 16)
    assert torch.equal(a.faces, b.faces) and torch.equal(a.tile, b.tile)  # same seed, same weights
    loaded = load_weights(tmp_path / "a.safetensors")
    assert loaded.k == 2 and loaded.meta["iterations"] == 2
    assert torch.allclose(loaded.faces, a.faces, atol=1e-3)  # stored as fp16
    c = _train(tmp_path, tiny_models, "c.safetensors", seed=1)
    assert not torch.equal(a.faces, c.faces)


def test_train_resumes_like_an_unbroken_run(tmp_path, tiny_models):
    _synthetic_faces(tmp_path / "faces")
    whole = _train(tmp_path, tiny_models, "whole.safetensors", iterations=4)
    _train(tmp_path, tiny_models, "parts.safetensors", iterations=2)
    logs = []
    parts = train(tmp_path / "faces", tmp_path / "parts.safetensors", TrainConfig(**{**TINY, "iterations": 4}),
                  face_model=TinyRecognizer(), vae=tiny_models.autoencoder, detector=None, progress=False, log=logs.append)
    assert any("resumed" in s and "iteration 2" in s for s in logs)
    assert parts.meta["iterations"] == 4
    assert torch.allclose(whole.faces, parts.faces, atol=1e-6)


def test_train_refuses_a_checkpoint_of_other_settings(tmp_path, tiny_models):
    _synthetic_faces(tmp_path / "faces")
    _train(tmp_path, tiny_models, "w.safetensors")
    with pytest.raises(ValueError, match="other settings"):
        _train(tmp_path, tiny_models, "w.safetensors", k=3)


def test_train_fast_cli_four_faces_two_iterations(tmp_path):
    from imguard.cli import main

    _synthetic_faces(tmp_path / "faces")
    out = tmp_path / "w.safetensors"
    rc = main(["train-fast", "--faces", str(tmp_path / "faces"), "--out", str(out), "--iterations", "2", "--k", "2",
               "--size", "32", "--batch", "2", "--face-model", "sface", "--vae", "taesd", "--threads", "2", "-q"])
    assert rc == 0 and out.is_file() and (tmp_path / "w.safetensors.ckpt").is_file()
    assert load_weights(out).meta["iterations"] == 2


def test_train_fast_cli_says_what_is_wrong(tmp_path, capsys):
    from imguard.cli import main

    rc = main(["train-fast", "--faces", str(tmp_path / "nothing"), "--out", str(tmp_path / "w.safetensors")])
    assert rc == 1 and "is not a folder" in capsys.readouterr().err


def test_shipped_weights_load():
    w = load_weights()
    assert SHIPPED.is_file() and SHIPPED.stat().st_size < 5_000_000
    assert w.k >= 1 and w.faces.shape[1:] == (3, w.size, w.size)
    assert float(w.faces.abs().max()) <= 1.0 and float(w.tile.abs().max()) <= 1.0
    assert w.meta["iterations"] > 0 and "sface" in w.meta["face_model"]


def test_engine_starts_from_init():
    from imguard import engine
    from imguard.budget import Budget

    x = torch.full((1, 3, 16, 16), 0.5)
    init = torch.full_like(x, 3 / 255)
    obj = engine.Objective(loss=lambda xa, i: (xa * 0).flatten(1).sum(1), maximize=True)  # zero gradient
    res = engine.run(x, obj, Budget(8), engine.EngineConfig(steps=1, random_start=False), init=init, seed=0)
    assert torch.allclose(res.delta, init, atol=1e-6)


def test_cli_refine_needs_fast(tmp_path, capsys):
    from imguard.cli import main

    img = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(img)
    rc = main(["protect", str(img), "-o", str(tmp_path / "out"), "--strength", "low", "--refine", "3"])
    assert rc == 2 and "--strength fast" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fast_protector():
    from imguard import Protector

    return Protector(strength="fast", device="cpu", check=False)


@requires_assets
def test_fast_on_a_real_face_keeps_budget_and_gate(dev_face, fast_protector):
    from imguard.budget import Budget
    from imguard.io import read_image, to_tensor

    img = Image.open(dev_face).convert("RGB")
    res = fast_protector.protect(img, return_result=True)
    x, _ = to_tensor(img)
    y, _ = to_tensor(res.image)
    d = y - x
    assert res.strength == "fast" and max(res.achieved) <= 8 + 1e-3
    assert float(d.abs().max()) > 0  # it changed something
    assert Budget.perceptual(x, 8, load_weights().jnd_scale).holds(d, tol=1.01)  # inside the perceptual map (8-bit rounding)
    assert res.visibility[0].invisible, res.visibility[0].line()
    assert res.faces and res.faces[0]["member"] in range(load_weights().k)
    steps = res.options["timings"][0]
    assert {"detect", "assign", "warp", "map", "finalize", "gate"} <= set(steps) and all(v >= 0 for v in steps.values())
    again = fast_protector.protect(img)
    assert np.array_equal(np.asarray(again), np.asarray(res.image))  # no randomness without refine
    # the eyes keep their colour, as under every preset's perceptual budget: the colour part of
    # the change averages out over each eye's disk (8-bit rounding aside) and not elsewhere
    from imguard.budget import _local_mean, eye_weight
    from imguard.fast.protect import fast_for

    faces = fast_for(fast_protector).detect(x)
    eyes = eye_weight(faces, tuple(x.shape[-2:]), merged=True).bool()
    colour = d - d.mean(1, keepdim=True)
    def tint(where):  # the largest of the channels' mean colour over the pixels, /255
        return 255 * float(torch.stack([colour[:, k][where[:, 0]].mean() for k in range(3)]).abs().max())
    ring = (_local_mean(eyes.float()) > 0).logical_and(~eyes)  # nothing of the eyes; their neighbours
    assert tint(eyes) < 0.1, tint(eyes)
    assert tint(eyes) < tint(torch.nn.functional.max_pool2d(ring.float(), 9, 1, 4).bool() & ~eyes) / 3


@requires_assets
def test_fast_refine_runs_and_is_seeded(dev_face, fast_protector, monkeypatch):
    from imguard.methods.facelock import FaceContext

    img = Image.open(dev_face).convert("RGB").resize((128, 128))
    fast = np.asarray(fast_protector.protect(img)).astype(int)
    attacked = []
    real = FaceContext.round_trips

    def spy(self, x_adv, step, decode=True):
        attacked.append([a.name for a in self.autoencoders])
        return real(self, x_adv, step, decode)

    monkeypatch.setattr(FaceContext, "round_trips", spy)
    r1 = fast_protector.protect(img, refine=2, seed=5, return_result=True)
    monkeypatch.undo()
    # every step through the editor's latent space only (TAESD; the fast mode's TAEF2 judges)
    assert attacked and all(len(names) == 1 and names[0].startswith("taesd") for names in attacked), attacked
    r2 = fast_protector.protect(img, refine=2, seed=5)
    assert r1.steps_run == [2] and r1.loss_history.shape[0] == 2
    assert np.array_equal(np.asarray(r1.image), np.asarray(r2))
    assert not np.array_equal(np.asarray(r1.image).astype(int), fast)
    assert max(r1.achieved) <= 8 + 1e-3 and r1.visibility[0].invisible


def _spy_engine_sizes(monkeypatch):
    """The size of every image the engine optimises."""
    from imguard import engine

    sizes, real = [], engine.run

    def spy(x, *a, **k):
        sizes.append(tuple(x.shape[-2:]))
        return real(x, *a, **k)

    monkeypatch.setattr(engine, "run", spy)
    return sizes


@requires_assets
def test_fast_refine_works_at_the_working_size(dev_face, fast_protector, monkeypatch):
    """refine optimises at the size the editor sees: the image's own up to the protector's working
    size (made at 256 px and enlarged, the change hid no 288-512 px face), shrunk above it."""
    from imguard.fast.protect import fast_for
    from imguard.io import to_tensor

    fp, models = fast_for(fast_protector), fast_protector.models_for("fast")
    x, _ = to_tensor(Image.open(dev_face).convert("RGB").resize((160, 160)))
    start = fp.protect(x)
    sizes = _spy_engine_sizes(monkeypatch)
    native = fp.refine(x, start, 1, models, size=None)
    small = fp.refine(x, start, 1, models, size=80)
    assert sizes == [(160, 160), (80, 80)]
    for r in (native, small):
        assert r.achieved <= 8 + 1e-3 and r.visibility.invisible
        assert not torch.equal(r.image, start.image)
    sizes.clear()
    fast_protector.protect(Image.open(dev_face).convert("RGB").resize((320, 320)), refine=1, seed=0)
    assert sizes == [(320, 320)]  # the protector's working size (512) is over it: the face's own size


@requires_assets
def test_fast_refine_of_a_big_photo_goes_to_its_face(dev_face, fast_protector, monkeypatch):
    """A photo well over the working size is refined faces first: the region around the face at
    the working size; outside it the fast start is kept (within the one 8-bit level of the whole
    change's second projection and rounding)."""
    from imguard.fast.protect import fast_for
    from imguard.io import to_tensor

    fp, models = fast_for(fast_protector), fast_protector.models_for("fast")
    canvas = Image.new("RGB", (640, 480), (118, 124, 131))
    canvas.paste(Image.open(dev_face).convert("RGB").resize((160, 160)), (400, 60))
    x, _ = to_tensor(canvas)
    start = fp.protect(x)
    assert start.faces, "the detector finds the pasted face"
    (region,) = fp.refine_regions(x, start, 128)
    assert region.x0 >= 320 and region.y1 <= 300  # around the face, not the photo
    assert fp.refine_regions(x, start, 512) == [None]  # not a big photo at 512: refined whole
    sizes = _spy_engine_sizes(monkeypatch)
    ticks = []
    r = fp.refine(x, start, 2, models, size=128, callback=lambda i, n, loss: ticks.append((i, n)))
    assert len(sizes) == 1 and max(sizes[0]) <= 128 and ticks == [(0, 2), (1, 2)]
    moved = (r.image.int() - start.image.int()).abs().amax(dim=1)[0]
    assert int(moved[region.y0 : region.y1, region.x0 : region.x1].max()) > 0
    outside = torch.ones_like(moved, dtype=torch.bool)
    outside[region.y0 : region.y1, region.x0 : region.x1] = False
    assert int(moved[outside].max()) <= 1 and float(moved[outside].float().mean()) < 0.2
    assert float(moved[region.y0 : region.y1, region.x0 : region.x1].float().mean()) > 3 * float(moved[outside].float().mean())
    assert r.achieved <= 8 + 1e-3 and r.visibility.invisible


def test_fast_refuses_steps_and_large_eps(fast_protector):
    with pytest.raises(TypeError, match="refine"):
        fast_protector.protect(torch.rand(1, 3, 32, 32), steps=5)
    with pytest.raises(ValueError, match="eps <= 8"):
        fast_protector.protect(torch.rand(1, 3, 32, 32), eps=12)


def _weights_file(path, faces_scale=1.0, jnd_scale=None):
    """The shipped weights, changed: a file of the kind ``imguard train-fast`` writes."""
    w = load_weights()
    meta = dict(w.meta) | ({"jnd_scale": jnd_scale} if jnd_scale is not None else {})
    type(w)((w.faces * faces_scale).clamp(-1, 1), w.tile, w.margin, meta).save(path)
    return path


@requires_assets
def test_fast_weights_option_uses_the_given_file(dev_face, fast_protector, tmp_path):
    img = Image.open(dev_face).convert("RGB").resize((160, 160))
    shipped = fast_protector.protect(img, return_result=True)
    mine = fast_protector.protect(img, fast_weights=_weights_file(tmp_path / "neg.safetensors", -1.0), return_result=True)
    assert not np.array_equal(np.asarray(mine.image), np.asarray(shipped.image))
    assert mine.options["weights"]["iterations"] == shipped.options["weights"]["iterations"]
    with pytest.raises(FileNotFoundError, match="train-fast"):
        fast_protector.protect(img, fast_weights=tmp_path / "missing.safetensors")


@requires_assets
def test_fast_result_that_fails_the_gate_is_scaled_into_it(dev_face, tmp_path):
    """Saturated weights (+-1 everywhere) over a map that allows eps everywhere fail the gate as
    they are; the fast mode measures every result and scales such a one down until it passes."""
    from imguard.budget import Budget
    from imguard.fast.infer import FastProtect
    from imguard.io import to_tensor
    from imguard.models import load_face_recognizer
    from imguard.visibility import measure

    path = _weights_file(tmp_path / "loud.safetensors", 1e4)
    fp = FastProtect(path, face_model=load_face_recognizer("sface"), vae=IdentityAutoencoder(), detector="mtcnn")
    x, _ = to_tensor(Image.open(dev_face).convert("RGB").resize((256, 256)))
    everywhere = Budget(8, "linf", radius_map=torch.full((1, 1, 256, 256), 8 / 255))
    loud = fp.protect(x, budget=everywhere, gate=False)
    kept = fp.protect(x, budget=everywhere)
    seen_loud = measure(x, loud.image.float() / 255)[0]
    seen_kept = measure(x, kept.image.float() / 255)[0]
    assert not seen_loud.invisible and seen_kept.invisible, (seen_loud.line(), seen_kept.line())
    assert 0 < kept.achieved <= loud.achieved <= 8 + 1e-3
    # the gate's own measure of the result it kept is handed on (a big photo is not measured twice)
    assert loud.visibility is None and kept.visibility is not None
    assert (kept.visibility.psnr, kept.visibility.ssim, kept.visibility.flat) == pytest.approx(
        (seen_kept.psnr, seen_kept.ssim, seen_kept.flat), abs=1e-6)


def test_fast_score_choices_are_checked():
    from imguard.fast.infer import FastProtect

    with pytest.raises(ValueError, match="image, roundtrip"):
        FastProtect(face_model=TinyRecognizer(), vae=IdentityAutoencoder(), detector=None, score="latent")


def test_cli_fast_weights_needs_fast(tmp_path, capsys):
    from imguard.cli import main

    img = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(img)
    rc = main(["protect", str(img), "-o", str(tmp_path / "out"), "--strength", "low", "--fast-weights", "w.safetensors"])
    assert rc == 2 and "--strength fast" in capsys.readouterr().err


@requires_assets
def test_fast_takes_the_maps_texture_scale_and_psnr_floor(dev_face, fast_protector):
    from imguard.budget import Budget
    from imguard.io import to_tensor

    img = Image.open(dev_face).convert("RGB").resize((160, 160))
    plain = fast_protector.protect(img, return_result=True)  # its own map: 1.3 x the JND, floor 37
    wide = fast_protector.protect(img, texture_scale=2, psnr_floor=36, return_result=True)
    x, _ = to_tensor(img)
    jnd = load_weights().jnd_scale
    d = to_tensor(wide.image)[0] - x
    assert Budget.perceptual(x, 8, jnd, psnr_floor=36, texture_scale=2).holds(d, tol=1.01)
    assert not Budget.perceptual(x, 8, jnd).holds(d, tol=1.01)  # it used the room texture gives
    assert Budget.perceptual(x, 8, jnd).holds(to_tensor(plain.image)[0] - x, tol=1.01)
    assert wide.options["texture_scale"] == 2 and wide.options["psnr_floor"] == 36
    assert plain.options["texture_scale"] == 1 and plain.options["psnr_floor"] is None  # the default floor, 37 dB
    assert wide.visibility[0].invisible and plain.visibility[0].invisible
    with pytest.raises(ValueError, match="texture_scale"):
        fast_protector.protect(img, texture_scale=9)
    with pytest.raises(TypeError, match="texture_scale, psnr_floor"):
        fast_protector.protect(img, momentum=0.5)
