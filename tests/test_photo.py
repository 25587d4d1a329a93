"""Faces first in big photos: each face region protected as a crop of its own, blended back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import imguard
from imguard.budget import Budget
from imguard.models import Face, Models
from imguard.photo import FaceRegion, face_regions, feather_mask

from conftest import TinyRecognizer


class BoxDetector:
    """Finds one 'face' at a fixed box of the image it is given (scaled to its size)."""

    def __init__(self, box_frac=(0.55, 0.2, 0.75, 0.4)):
        self.box_frac = np.array(box_frac, dtype=np.float32)

    def _face(self, h, w):
        box = self.box_frac * np.array([w, h, w, h], dtype=np.float32)
        cx, cy, s = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0]
        lm = np.array([[cx - s / 4, cy - s / 8], [cx + s / 4, cy - s / 8], [cx, cy], [cx - s / 5, cy + s / 4], [cx + s / 5, cy + s / 4]], np.float32)
        return Face(box=box, landmarks=lm, score=0.99)

    def detect(self, x01):
        return [self._face(*x01.shape[-2:]) for _ in range(x01.shape[0])]

    def detect_all(self, x01, min_score=0.9):
        return [[self._face(*x01.shape[-2:])] for _ in range(x01.shape[0])]


def test_feather_mask_is_one_inside_and_zero_outside():
    m = feather_mask(100, 120, FaceRegion(40, 20, 80, 60, 1.0))
    assert m.shape == (1, 1, 100, 120)
    assert m[0, 0, 40, 60] == 1 and m[0, 0, 10, 10] == 0 and m[0, 0, 20, 40] < 0.2
    assert float(m.max()) == 1.0 and float(m.min()) == 0.0


def test_face_regions_are_widened_boxes_in_native_pixels():
    x = torch.rand(1, 3, 1000, 1000)
    (r,) = face_regions(x, BoxDetector())
    # a 200 px box at x 550..750, y 200..400 -> 2.2x = 440 px around its centre, on the 8-pixel grid
    assert 420 <= r.x1 - r.x0 <= 448 and 420 <= r.y1 - r.y0 <= 448 and r.x0 % 8 == 0 and r.y0 % 8 == 0
    assert r.x0 < 550 < 750 < r.x1 and r.y0 < 200 < 400 < r.y1


def test_big_photo_face_region_is_protected_like_a_crop(tiny_vae_dir):
    models = Models(vae=str(tiny_vae_dir), face_model=TinyRecognizer(), features="ae", detector=BoxDetector())
    p = imguard.Protector("cvl", models=models, working_size=64, check=False)
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 24, 24, generator=g), size=(192, 192), mode="bilinear")
    x = (x * 255).round() / 255
    res = p.protect(x, eps=6, steps=6, seed=0, return_result=True)
    assert res.faces and len(res.faces) == 1 and res.options["faces_first"] == 1
    out = res.image
    assert Budget(6).holds(out - x, tol=1e-4) and max(res.achieved) <= 6 + 1e-4
    x0, y0, x1, y1 = res.faces[0]["box"]
    crop_alone = p.protect(x[..., y0:y1, x0:x1], eps=6, steps=6, seed=0, faces_first=False)
    inner = (slice(None), slice(None), slice(y0 + 12, y1 - 12), slice(x0 + 12, x1 - 12))
    ci = (slice(None), slice(None), slice(12, -12), slice(12, -12))
    assert torch.allclose(out[..., y0:y1, x0:x1][ci], crop_alone[ci], atol=1.5 / 255)  # the face is the protected crop
    # the rest of the photo is protected too (whole-photo pass), or kept with rest="keep"
    assert (out - x)[..., :, :40].abs().max() > 0
    kept = p.protect(x, eps=6, steps=6, seed=0, rest="keep")
    assert torch.equal(kept[..., :, :40], x[..., :, :40])
    # off: the old path, no faces
    assert p.protect(x, eps=6, steps=6, seed=0, faces_first=False, return_result=True).faces is None


def test_faces_first_options_are_checked(tiny_protector, image64):
    with pytest.raises(ValueError, match="rest"):
        tiny_protector.protect(image64, rest="blur")
    with pytest.raises(ValueError, match="faces_first"):
        tiny_protector.protect(image64, faces_first="yes")


def test_a_portrait_is_protected_as_a_whole(tiny_vae_dir):
    # the face region (2.2x a box of 40 % of the side) covers most of the photo: one pass, no blend
    models = Models(vae=str(tiny_vae_dir), face_model=TinyRecognizer(), features="ae", detector=BoxDetector((0.3, 0.3, 0.7, 0.7)))
    p = imguard.Protector("cvl", models=models, working_size=64, check=False)
    x = torch.rand(1, 3, 192, 192, generator=torch.Generator().manual_seed(1))
    res = p.protect(x, eps=6, steps=3, seed=0, return_result=True)
    assert res.faces is None and "faces_first" not in res.options
    assert torch.equal(res.image, p.protect(x, eps=6, steps=3, seed=0, faces_first=False))
