"""extent="face": the change confined to each face box widened extent_scale times (feathered),
through the budget's per-pixel map (imguard.budget.face_extent, Budget.weighted)."""

import numpy as np
import pytest
import torch

from imguard.budget import Budget, face_extent, finalize
from imguard.models import Face, Models

from conftest import TinyRecognizer
from test_photo import BoxDetector


def _face(box):
    return Face(box=np.array(box, dtype=np.float32), landmarks=None, score=0.99)


def test_face_extent_is_one_around_the_face_zero_far_away_and_smooth():
    w = face_extent([_face((20, 20, 40, 40))], (64, 64), 1.6)  # widened: 14..46
    assert w.shape == (1, 1, 64, 64)
    assert float(w[0, 0, 30, 30]) == 1.0 and float(w[0, 0, 17, 30]) == 1.0  # inside the widened box, near its edge
    assert float(w[0, 0, 0, 0]) == 0.0 and float(w[0, 0, 30, 60]) == 0.0 and float(w[0, 0, 12, 30]) == 0.0
    row = w[0, 0, 30]
    assert bool(((row[1:] - row[:-1]).abs() <= 0.5).all())  # a ramp, not a cliff
    assert 0 < float(row[14]) < 1
    wider = face_extent([_face((20, 20, 40, 40))], (64, 64), 2.5)
    assert bool((wider >= w).all()) and float(wider.sum()) > float(w.sum())


def test_face_extent_is_everywhere_for_an_image_whose_face_was_not_found():
    from imguard.models.detection import centre_face

    w = face_extent([centre_face(64, 64), None, _face((0, 0, 10, 10))], (64, 64), 1.6)
    assert bool((w[0] == 1).all()) and bool((w[1] == 1).all()) and float(w[2].mean()) < 0.1


def test_weighted_budget_never_exceeds_the_budget_and_keeps_half_a_level():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    w = torch.zeros(2, 1, 32, 32)
    w[:, :, 8:24, 8:24] = 1.0
    for b in (Budget(8), Budget.perceptual(x, 8, 1.3)):
        wb = b.weighted(w)
        r = wb.radius_map
        assert r.shape[0] == 2 and float(r.max()) <= 8 / 255 + 1e-7
        assert float(r[..., 0, 0].max()) == pytest.approx(0.5 / 255)  # outside: half a level, no more
        full = b._radius_like(x)
        inside = (r - full)[..., 8:24, 8:24].abs().max()
        assert float(inside) < 1e-7  # inside: the budget as it was
        assert wb.sample(1).flat_weight is None or wb.sample(1).flat_weight.shape[0] == 1
    with pytest.raises(ValueError, match="norm='linf'"):
        Budget(8, "l2").weighted(w)


def test_an_8bit_pixel_outside_the_extent_does_not_move():
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(1, 3, 32, 32, generator=g) * 255).round() / 255
    w = torch.zeros(1, 1, 32, 32)
    w[..., 10:20, 10:20] = 1
    delta = (torch.rand(x.shape, generator=g) * 2 - 1) * 8 / 255
    out, achieved = finalize(x, delta, Budget(8).weighted(w))
    moved = (out.float() / 255 - x).abs().amax(1)[0]
    assert float(moved[w[0, 0] == 0].max()) == 0.0 and float(moved[10:20, 10:20].max()) > 4 / 255


def test_protect_with_extent_face_leaves_the_background_as_it_was(tiny_vae_dir):
    """A face method with extent="face": every pixel away from the face keeps its value, the
    face changes, and the result is the same method's otherwise (the gate still holds)."""
    from imguard import Protector

    models = Models(vae=str(tiny_vae_dir), face_model=TinyRecognizer(), features="ae", detector=BoxDetector())
    p = Protector("facelock", device="cpu", models=models, working_size=64, check=False)
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(1, 3, 64, 64, generator=g) * 255).round() / 255
    res = p.protect(x, steps=3, seed=0, extent="face", extent_scale=1.6, budget="jnd", gate=True, return_result=True)
    whole = p.protect(x, steps=3, seed=0, budget="jnd", gate=True, return_result=True)
    box = BoxDetector()._face(64, 64).box
    w = face_extent([_face(box)], (64, 64), 1.6)[0, 0]
    moved = (res.image - x).abs().amax(1)[0]
    assert float(moved[w == 0].max()) == 0.0
    assert float(moved[w == 1].max()) > 0
    assert float((whole.image - x).abs().amax(1)[0][w == 0].max()) > 0  # without it the background moves
    assert res.visibility[0].invisible


def test_extent_is_validated_with_a_clear_message():
    from imguard.request import resolve

    with pytest.raises(ValueError, match="unknown extent 'faces'; valid: image, face"):
        resolve(strength="high", extent="faces")
    with pytest.raises(ValueError, match="extent_scale must be a factor between 1 and 4"):
        resolve(strength="high", extent="face", extent_scale=0.5)
    with pytest.raises(ValueError, match="'photoguard' finds none"):
        resolve(method="photoguard", extent="face")
    assert resolve(strength="high", extent="face").budget.extent == "face"
