"""Bad input through the API: clear errors, which item failed, errors="return"; the native-size
finalisation in row bands gives the same image as the whole-image one."""

import numpy as np
import pytest
import torch

import imguard
from imguard import ImageReadError, ItemError, Protector
from imguard.budget import Budget, _finalize_whole, finalize

FAST = {"method": "encoder", "eps": 4, "steps": 2, "seed": 0}


def test_empty_images_are_refused(tiny_protector):
    for bad in (np.zeros((0, 4, 3), np.uint8), torch.zeros(1, 3, 0, 5), np.zeros((4, 0), np.float32)):
        with pytest.raises(ImageReadError, match="empty"):
            tiny_protector.protect(bad, **FAST)


@pytest.mark.parametrize("ws", [0, -1, 7, 3.5, True, "512"])
def test_working_size_must_be_8_or_more_or_none(ws):
    with pytest.raises(ValueError, match="working_size must be a whole number of pixels >= 8"):
        Protector("encoder", device="cpu", working_size=ws)


def test_working_size_none_is_native(tiny_models):
    p = Protector("facelock", device="cpu", models=tiny_models, working_size=None)
    res = p.protect(torch.rand(1, 3, 72, 40), return_result=True, **FAST)
    assert res.working_size == (72, 40)


@pytest.mark.parametrize("bs", [0, -2, 1.5, None])
def test_protect_many_batch_size_must_be_positive(tiny_protector, bs):
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
        tiny_protector.protect_many([torch.rand(3, 16, 16)], batch_size=bs, **FAST)
    with pytest.raises(ValueError, match="errors must be"):
        tiny_protector.protect_many([torch.rand(3, 16, 16)], errors="ignore", **FAST)


def test_protect_many_names_the_item_that_failed(tiny_protector):
    imgs = [torch.rand(3, 16, 16), torch.rand(3, 16, 16), np.full((16, 16, 3), np.nan, np.float32), torch.rand(3, 16, 16)]
    with pytest.raises(ItemError, match=r"image 2 \(item 2\) failed: ImageReadError: item 2 contains NaN") as e:
        tiny_protector.protect_many(imgs, batch_size=2, **FAST)
    assert e.value.index == 2 and isinstance(e.value.__cause__, ImageReadError)
    out = tiny_protector.protect_many(imgs, batch_size=2, errors="return", names=["a", "b", "c", "d"], **FAST)
    assert isinstance(out[2], ItemError) and out[2].index == 2 and out[2].name == "c" and "NaN" in out[2].reason
    for i in (0, 1, 3):
        assert torch.is_tensor(out[i]) and out[i].shape == (3, 16, 16)
        assert Budget(4).holds(out[i] - imgs[i], tol=1e-3)  # off-grid inputs: the 8-bit rounding's 1e-4 slack plus float32 error (finalize's own check: 1e-3)
    assert tiny_protector.protect_many([], **FAST) == []


def test_protect_many_a_failing_batch_falls_back_to_one_at_a_time(tiny_protector, monkeypatch):
    calls = []
    real = Protector.protect

    def flaky(self, x, **kw):
        calls.append(x.shape[0])
        if x.shape[0] > 1:
            raise RuntimeError("out of memory (simulated)")
        return real(self, x, **kw)

    monkeypatch.setattr(Protector, "protect", flaky)
    out = tiny_protector.protect_many([torch.rand(3, 16, 16) for _ in range(3)], batch_size=3, **FAST)
    assert calls == [3, 1, 1, 1] and all(o.shape == (3, 16, 16) for o in out)


def test_max_pixels_in_the_api(tiny_models):
    p = Protector("encoder", device="cpu", models=tiny_models, working_size=64, max_pixels=1000)
    with pytest.raises(ImageReadError, match="above the limit of 1000 pixels"):
        p.protect(np.zeros((40, 40, 3), np.uint8), **FAST)
    assert p.protect(np.zeros((20, 20, 3), np.uint8), **FAST).shape == (20, 20, 3)
    with pytest.raises(ValueError, match="max_pixels"):
        Protector("encoder", device="cpu", max_pixels=0)


@pytest.mark.parametrize("masked", [False, True])
def test_banded_finalize_matches_the_whole_image(masked):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 301, 203, generator=g)
    delta = (torch.rand(2, 3, 48, 32, generator=g) * 2 - 1) * 6 / 255
    mask = (torch.rand(1, 1, 301, 203, generator=g) > 0.3).float() if masked else None
    b = Budget(4)
    banded, ach = finalize(x, delta, b, mask, band_rows=37)
    whole, ach_w = _finalize_whole(x, delta, b, mask)
    assert banded.dtype == torch.uint8 and banded.shape == x.shape
    diff = (banded.int() - whole.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3  # float summation order only
    assert torch.allclose(ach, ach_w, atol=1 / 255 * 255) and bool((ach <= 4 + 1e-3).all())
    assert bool(((banded.float() / 255 - x).abs() <= 4 / 255 + 1e-6).all())
    if masked:
        off = mask.expand_as(x) == 0
        assert torch.equal(banded[off], (x * 255).round().to(torch.uint8)[off])


def test_protect_function_rejects_bad_working_size():
    with pytest.raises(ValueError, match="working_size"):
        imguard.protect(torch.rand(3, 16, 16), "encoder", working_size=0, device="cpu")
