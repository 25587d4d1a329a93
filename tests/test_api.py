"""protect()/Protector: type in == type out, sizes, alpha, masks, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

import imguard
from imguard.budget import Budget

FAST = {"method": "encoder", "eps": 4, "steps": 3, "seed": 0}


def _rng_uint8(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_pil_round_trip_odd_size(tiny_protector):
    img = Image.fromarray(_rng_uint8(333, 517))
    res = tiny_protector.protect(img, return_result=True, **FAST)
    out = res.image
    assert isinstance(out, Image.Image) and out.size == img.size and out.mode == "RGB"
    d = np.asarray(out).astype(int) - np.asarray(img).astype(int)
    assert np.abs(d).max() <= 4 and np.abs(d).max() >= 1
    assert res.working_size == (40, 64)  # long side 64 here, multiples of 8
    assert max(res.achieved) == pytest.approx(np.abs(d).max(), abs=1e-3)


def test_ndarray_uint8_and_float(tiny_protector):
    a = _rng_uint8(48, 40)
    out = tiny_protector.protect(a, **FAST)
    assert out.dtype == np.uint8 and out.shape == a.shape
    f = np.clip(a.astype(np.float32) / 255 + 0.001, 0, 1)  # off the 8-bit grid
    outf = tiny_protector.protect(f, **FAST)
    assert outf.dtype == np.float32 and outf.shape == f.shape
    assert np.abs(outf - f).max() <= 4 / 255 + 1e-6
    assert np.allclose(outf * 255, np.round(outf * 255), atol=1e-3)  # already 8-bit safe


def test_tensor_shapes_dtype_and_batch(tiny_protector):
    x3 = torch.rand(3, 40, 56)
    out3 = tiny_protector.protect(x3, **FAST)
    assert out3.shape == x3.shape and out3.dtype == x3.dtype
    xb = torch.rand(2, 3, 40, 56, dtype=torch.float64)
    outb = tiny_protector.protect(xb, **FAST)
    assert outb.shape == xb.shape and outb.dtype == torch.float64
    assert Budget(4).holds((outb - xb).float(), tol=1e-3)  # off-grid inputs: the 8-bit rounding's 1e-4 slack plus float32 error (finalize's own check: 1e-3)


def test_rgba_keeps_alpha_and_greyscale_comes_back_rgb(tiny_protector):
    rgba = Image.fromarray(_rng_uint8(40, 40, 4))
    out = tiny_protector.protect(rgba, **FAST)
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[..., 3], np.asarray(rgba)[..., 3])
    grey = Image.fromarray(_rng_uint8(40, 40, 1)[..., 0], mode="L")
    outg = tiny_protector.protect(grey, **FAST)
    assert outg.mode == "RGB" and outg.size == grey.size
    d = np.asarray(outg).astype(int) - np.asarray(grey.convert("RGB")).astype(int)
    assert np.abs(d).max() <= 4


def test_mask_is_respected_at_native_size(tiny_protector):
    img = Image.fromarray(_rng_uint8(50, 70))
    mask = np.zeros((50, 70), dtype=np.uint8)
    mask[10:30, 20:50] = 255
    out = tiny_protector.protect(img, mask=mask, **FAST)
    d = np.abs(np.asarray(out).astype(int) - np.asarray(img).astype(int)).max(axis=2)
    assert d[mask == 0].max() == 0
    assert d[mask > 0].max() > 0
    with pytest.raises(ValueError, match="mask"):
        tiny_protector.protect(img, mask=np.ones((10, 10)), **FAST)


def test_input_is_not_modified(tiny_protector):
    x = torch.rand(1, 3, 32, 32)
    before = x.clone()
    tiny_protector.protect(x, **FAST)
    assert torch.equal(x, before)


def test_protect_many_batches_by_size(tiny_protector):
    imgs = [Image.fromarray(_rng_uint8(32, 48, seed=i)) for i in range(3)] + [Image.fromarray(_rng_uint8(40, 40))]
    outs = tiny_protector.protect_many(imgs, batch_size=2, **FAST)
    assert [o.size for o in outs] == [i.size for i in imgs]


@pytest.mark.parametrize("eps", [0, -3, 500])
def test_bad_eps(tiny_protector, eps):
    with pytest.raises(ValueError, match="eps"):
        tiny_protector.protect(torch.rand(1, 3, 16, 16), method="encoder", eps=eps, steps=1)


def test_bad_inputs_are_named(tmp_path, tiny_protector):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(imguard.ImageReadError, match="broken.png"):
        tiny_protector.protect(str(bad), **FAST)
    with pytest.raises(imguard.ImageReadError, match="not found"):
        tiny_protector.protect(str(tmp_path / "missing.jpg"), **FAST)
    with pytest.raises(imguard.ImageReadError, match=r"\[0,1\]"):
        tiny_protector.protect(np.full((8, 8, 3), 200.0, dtype=np.float32), **FAST)
    with pytest.raises(imguard.ImageReadError, match="unsupported"):
        tiny_protector.protect([1, 2, 3], **FAST)


def test_path_input_returns_pil(tmp_path, tiny_protector):
    p = tmp_path / "a.png"
    Image.fromarray(_rng_uint8(24, 24)).save(p)
    out = tiny_protector.protect(str(p), **FAST)
    assert isinstance(out, Image.Image) and out.size == (24, 24)


def test_default_protect_reuses_its_protector(tiny_vae_dir):
    from conftest import TinyRecognizer

    rec = TinyRecognizer()
    x = torch.rand(1, 3, 32, 32)
    imguard.protect(x, "encoder", eps=2, steps=1, vae=str(tiny_vae_dir), face_model=rec, features="ae", device="cpu")
    from imguard import api

    n = len(api._DEFAULT_PROTECTORS)
    imguard.protect(x, "vae", eps=2, steps=1, vae=str(tiny_vae_dir), face_model=rec, features="ae", device="cpu")
    assert len(api._DEFAULT_PROTECTORS) == n


def test_progress_and_callback(tiny_protector):
    seen = []
    tiny_protector.protect(torch.rand(1, 3, 16, 16), progress=True, callback=lambda i, n, l: seen.append(i), **FAST)
    assert seen == [0, 1, 2]


def test_eot_option_runs_and_is_deterministic(tiny_protector):
    x = torch.rand(1, 3, 32, 32)
    a = tiny_protector.protect(x, eot=["jpeg", "blur"], grad_repeats=2, **FAST)
    b = tiny_protector.protect(x, eot="jpeg,blur", grad_repeats=2, **FAST)
    assert torch.equal(a, b) and Budget(4).holds(a - x, tol=1e-3)  # off-grid inputs: the 8-bit rounding's 1e-4 slack plus float32 error (finalize's own check: 1e-3)
    with pytest.raises(ValueError, match="valid"):
        tiny_protector.protect(x, eot=["sharpen"], **FAST)


def test_16bit_greyscale_png(tmp_path, tiny_protector):
    arr = (np.random.default_rng(0).integers(0, 65536, (20, 24))).astype(np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    out = tiny_protector.protect(str(p), **FAST)
    assert out.mode == "RGB" and out.size == (24, 20)
    ref = np.round(arr.astype(np.float64) / 65535 * 255)
    assert np.abs(np.asarray(out)[..., 0].astype(int) - ref).max() <= 4 + 1


def test_models_as_dict_and_early_stop(tiny_vae_dir):
    from conftest import TinyRecognizer

    p = imguard.Protector("encoder", device="cpu", models={"vae": str(tiny_vae_dir), "face_model": TinyRecognizer(), "detector": None})
    steps_seen = []

    def stop(x_adv, loss, step):
        steps_seen.append(step)
        return torch.ones(x_adv.shape[0], dtype=torch.bool)  # done after the first step

    res = p.protect(torch.rand(2, 3, 16, 16), eps=4, steps=10, seed=0, early_stop=stop, return_result=True)
    assert steps_seen == [0] and res.loss_history.shape[0] == 1
    with pytest.raises(TypeError, match="valid: vae"):
        imguard.Protector(models={"autoencoder": "x"})
