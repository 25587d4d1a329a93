"""Faces first in big photos.

A whole photo (a person in a scene, 1000+ px) is optimised at a working size of 512: the face,
a small part of the frame, would get a thin, blurred share of the perturbation. Here every face
is found, each face region (the face box widened ``region_scale`` times, like a portrait crop)
is protected at its own working size, exactly as a face crop protected on its own, and blended
back with a feathered mask; the rest of the photo is protected as a whole (or left untouched,
``rest="keep"``). Both perturbations are inside the budget, and so is every convex blend of
them, so the budget holds for the photo too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .budget import Budget, quantize

__all__ = ["FaceRegion", "face_regions", "regions_around", "is_big", "is_portrait", "feather_mask", "compose", "protect_photo", "wants_faces_first"]

#: face box widened this much around its centre: the region protected as a portrait crop
REGION_SCALE = 2.2
#: detection runs on a copy whose long side is at most this (boxes are scaled back)
DETECT_LONG_SIDE = 1024
#: photos whose long side exceeds working size x this are protected faces first
BIG_PHOTO_FACTOR = 1.25
#: a photo whose one face region covers at least this share of it is protected as a whole
PORTRAIT_AREA = 0.5


@dataclass
class FaceRegion:
    """A square region around one face, in native pixel coordinates (clipped to the photo)."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float

    @property
    def size(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def face_regions(x: torch.Tensor, detector: Any, region_scale: float = REGION_SCALE, min_score: float = 0.9, max_faces: int = 8) -> list[FaceRegion]:
    """Regions around every face of one photo [1,3,H,W], largest first, non-overlapping."""
    H, W = x.shape[-2:]
    s = min(1.0, DETECT_LONG_SIDE / max(H, W))
    if min(H, W) * s < 32:  # a strip (e.g. 4000x1): no face region of 32 px fits
        return []
    small = F.interpolate(x, scale_factor=s, mode="bilinear", antialias=True, align_corners=False) if s < 1 else x
    faces = detector.detect_all(small, min_score=min_score)[0]
    return regions_around([tuple(float(v) / s for v in f.box) for f in faces[:max_faces]], (H, W),
                          scores=[float(f.score) for f in faces[:max_faces]], region_scale=region_scale)


def regions_around(boxes: Any, shape: tuple[int, int], scores: Any = None, region_scale: float = REGION_SCALE) -> list[FaceRegion]:
    """The square region around each face box (x0, y0, x1, y1 in native pixels, largest face
    first) of a photo of ``shape`` (H, W): the box widened ``region_scale`` times about its
    centre, clipped to the photo, on the 8-pixel grid; regions under 32 px or overlapping an
    earlier (larger) face's are left out."""
    H, W = shape
    out: list[FaceRegion] = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        side = max(x1 - x0, y1 - y0) * region_scale
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        r = FaceRegion(int(max(0, cx - side / 2)), int(max(0, cy - side / 2)),
                       int(min(W, cx + side / 2)), int(min(H, cy + side / 2)), 1.0 if scores is None else float(scores[i]))
        r.x0, r.y0, r.x1, r.y1 = r.x0 // 8 * 8, r.y0 // 8 * 8, r.x1 // 8 * 8, r.y1 // 8 * 8
        if r.x1 - r.x0 < 32 or r.y1 - r.y0 < 32:
            continue
        if any(not (r.x1 <= o.x0 or o.x1 <= r.x0 or r.y1 <= o.y0 or o.y1 <= r.y0) for o in out):
            continue  # overlapping a larger face's region: that region already covers it
        out.append(r)
    return out


def feather_mask(H: int, W: int, region: FaceRegion, feather: float = 0.08) -> torch.Tensor:
    """[1,1,H,W]: 1 inside the region, falling smoothly to 0 over ``feather`` of its size at
    its edges (edges on the photo's border stay 1)."""
    h, w = region.size
    f = max(2, int(round(feather * min(h, w))))

    def ramp(n: int, lo_edge: bool, hi_edge: bool) -> torch.Tensor:
        r = torch.ones(n)
        k = torch.linspace(0, 1, f + 2)[1:-1]
        ramp_up = 0.5 - 0.5 * torch.cos(torch.pi * k)
        if lo_edge:
            r[:f] = ramp_up[: min(f, n)]
        if hi_edge:
            r[-f:] = torch.minimum(r[-f:], ramp_up.flip(0)[-min(f, n):])
        return r

    m = torch.zeros(1, 1, H, W)
    ry = ramp(h, region.y0 > 0, region.y1 < H)
    rx = ramp(w, region.x0 > 0, region.x1 < W)
    m[..., region.y0 : region.y1, region.x0 : region.x1] = ry[:, None] * rx[None, :]
    return m


def compose(x: torch.Tensor, rest: torch.Tensor, faces: list[tuple[FaceRegion, torch.Tensor]], budget: Budget) -> torch.Tensor:
    """The photo: ``rest`` (a protected whole photo, or ``x``) with each protected face region
    blended in by its feathered mask; quantised inside the budget."""
    H, W = x.shape[-2:]
    delta = rest.float() - x.float()
    for region, crop in faces:
        m = feather_mask(H, W, region).to(x.device)
        d_face = torch.zeros_like(delta)
        d_face[..., region.y0 : region.y1, region.x0 : region.x1] = crop.float() - x[..., region.y0 : region.y1, region.x0 : region.x1].float()
        delta = m * d_face + (1 - m) * delta
    return quantize(x, (x + budget.project(delta)).clamp(0, 1), budget)


def is_big(shape: tuple[int, int], working_size: int | None) -> bool:
    """A photo of ``shape`` (H, W) well over the working size: protected faces first."""
    return working_size is not None and max(shape) > working_size * BIG_PHOTO_FACTOR


def is_portrait(regions: list[FaceRegion], shape: tuple[int, int]) -> bool:
    """One face region covering most of a photo of ``shape`` (H, W): protected as a whole, it is the crop."""
    return len(regions) == 1 and regions[0].size[0] * regions[0].size[1] >= PORTRAIT_AREA * shape[0] * shape[1]


def wants_faces_first(x: torch.Tensor, working_size: int | None, needs: tuple, faces_first: bool | str) -> bool:
    """Faces first for one photo with a face method: always when asked (True), and with
    "auto" when the photo is larger than the working size."""
    return x.shape[0] == 1 and "face" in needs and (is_big(tuple(x.shape[-2:]), working_size) or faces_first is True)


def protect_photo(protector: Any, x: torch.Tensor, info: Any, rest: str, detector: Any, call: dict, budget_choice: Any):
    """Faces first: each face region protected as a crop by ``protector.protect(**call)``, the
    rest as a whole (``rest="protect"``) or kept, blended (:func:`compose`) under the photo's own
    budget (``budget_choice``: the request's :class:`~imguard.request.BudgetChoice`, built on the
    whole photo, so its perceptual map has every option of the crops' maps). A
    :class:`~imguard.result.ProtectionResult`, or None when the photo has no face (or is a
    portrait, whose face region is most of it): then the photo is protected as a whole."""
    import time
    import warnings

    t0 = time.perf_counter()
    if detector is None or not hasattr(detector, "detect_all"):
        return None
    regions = face_regions(x.to(protector.device), detector)
    if not regions:
        label = (call.get("names") or ["the photo"])[0]
        warnings.warn(f"imguard: no face found in {label}; protecting the whole photo", stacklevel=4)
        return None
    if is_portrait(regions, tuple(x.shape[-2:])):
        return None  # a portrait: the face region is most of the photo, protected as a whole it is the crop
    face_results = [(r, protector.protect(x[..., r.y0 : r.y1, r.x0 : r.x1], return_result=True, faces_first=False, **call))
                    for r in regions]
    whole = protector.protect(x, return_result=True, faces_first=False, **call) if rest == "protect" else None
    budget = budget_choice.build(x)  # budget="jnd": the photo's own perceptual map
    out = compose(x, whole.image if whole is not None else x, [(r, res.image) for r, res in face_results], budget)
    achieved = budget.measure(out - x)
    if not bool((achieved <= budget.eps + 1e-3).all()):
        raise RuntimeError(f"internal error: budget {budget.eps}/255 exceeded in the composed photo ({achieved.tolist()})")
    return _photo_result(x, out, info, achieved, face_results, whole, rest, time.perf_counter() - t0)


def _photo_result(x, out, info, achieved, face_results, whole, rest: str, seconds: float):
    from dataclasses import replace

    from .io import from_tensor

    from .io import resize_image
    from .visibility import of_result

    first = face_results[0][1]
    ref = whole or first
    size = tuple(first.working_size)
    return replace(
        first, image=from_tensor(out, info), achieved=[float(a) for a in achieved], loss_history=ref.loss_history,
        initial_loss=ref.initial_loss, final_loss=ref.final_loss, seconds=seconds, steps_run=ref.steps_run,
        options={**first.options, "faces_first": len(face_results), "rest": rest},
        check=[res.check[0] for _, res in face_results if res.check] or None,
        visibility=of_result(x, out, resize_image(x, size), resize_image(out.float(), size)),
        # the largest face's similarity (what the bar showed for it) is first's; each face's is in its own result
        faces=[{"box": [r.x0, r.y0, r.x1, r.y1], "score": r.score, "working_size": res.working_size,
                "check": res.check[0].as_dict() if res.check else None} for r, res in face_results],
    )
