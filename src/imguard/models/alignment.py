"""Face alignment: 2x3 matrices found once on the clean image, a differentiable warp (kornia).

Each recognizer states how it was trained to see a face: ``"landmarks5"`` (a similarity
transform of 5 landmarks onto its ``template``) or ``"bbox"`` (the detector's box, widened by
``box_scale`` around its centre, resized to ``input_size``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .base import recognizer_attr

__all__ = ["ARCFACE_TEMPLATE_112", "alignment_matrices", "similarity_transform", "template_for", "warp_faces"]

#: Five-point ArcFace alignment template for a 112x112 crop, in pixel coordinates
#: (x, y): left eye, right eye, nose tip, left mouth corner, right mouth corner
#: ("left"/"right" as seen in the image).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama) mapping src [N,2] onto dst [N,2]: 2x3."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(2)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[1, 1] = -1
    R = U @ D @ Vt
    var = (s0**2).sum() / len(src)
    scale = np.trace(np.diag(S) @ D) / max(var, 1e-12)
    t = mu_d - scale * R @ mu_s
    return np.concatenate([scale * R, t[:, None]], axis=1).astype(np.float32)


def template_for(recognizer: Any) -> np.ndarray:
    """The recognizer's 5-point template in crop pixels (ArcFace's, scaled, by default)."""
    template = recognizer_attr(recognizer, "template")
    if template is not None:
        return np.asarray(template, dtype=np.float32)
    h, w = recognizer.input_size
    return ARCFACE_TEMPLATE_112 * np.array([w / 112.0, h / 112.0], dtype=np.float32)


def _box_matrix(box: Sequence[float], size: tuple[int, int], scale: float) -> np.ndarray:
    h, w = size
    x0, y0, x1, y1 = [float(v) for v in box]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bw, bh = max(x1 - x0, 1e-3) * scale, max(y1 - y0, 1e-3) * scale
    x0, y0 = cx - bw / 2, cy - bh / 2
    sx, sy = w / bw, h / bh
    return np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]], dtype=np.float32)


def alignment_matrices(faces: Sequence[Any], recognizer: Any) -> torch.Tensor:
    """The 2x3 matrices (image pixels -> face crop pixels) for a recognizer: [B,2,3]."""
    size = tuple(recognizer.input_size)
    mats = []
    for f in faces:
        if recognizer_attr(recognizer, "alignment") == "landmarks5" and f.landmarks is not None:
            mats.append(similarity_transform(np.asarray(f.landmarks, np.float32), template_for(recognizer)))
        else:
            mats.append(_box_matrix(f.box, size, float(recognizer_attr(recognizer, "box_scale"))))
    return torch.from_numpy(np.stack(mats))


#: a face shrunk by its warp is low-passed first unless the Gaussian's sigma (image pixels) is at
#: most this (a shrink by 0.625 or more). At 256 px the offline recognizers' warps of 20 of the 25
#: faces of faces/dev and faces/wild measured stay under it, so their results are plain
#: sampling's, to the bit; at 512 px nearly every face is blurred
MIN_SIGMA = 0.3


def shrink_sigma(matrices: torch.Tensor) -> torch.Tensor:
    """[B]: the Gaussian sigma (image pixels) that low-passes each face before its warp shrinks
    it: (1/s - 1)/2 for a shrink by s (0 where the warp does not shrink)."""
    s = matrices[:, :, :2].float().det().abs().sqrt().clamp(min=1e-6)  # crop pixels per image pixel
    return ((1.0 / s - 1.0) / 2.0).clamp(min=0.0)


def _source_box(m: torch.Tensor, size: tuple[int, int], pad: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The image rows/columns ``(y0, y1, x0, x1)`` a warp by the 2x3 ``m`` to ``size`` reads,
    widened by ``pad`` pixels and clipped to the image of ``shape``."""
    h, w = size
    full = torch.cat([m.double(), m.new_tensor([[0.0, 0.0, 1.0]]).double()])
    inv = torch.linalg.inv(full)[:2]
    corners = torch.tensor([[0.0, 0.0, 1.0], [w - 1.0, 0.0, 1.0], [0.0, h - 1.0, 1.0], [w - 1.0, h - 1.0, 1.0]], dtype=torch.float64)
    pts = corners @ inv.T  # [4, 2]: (x, y) in the image
    H, W = shape
    x0 = max(0, int(math.floor(float(pts[:, 0].min()))) - pad)
    x1 = min(W, int(math.ceil(float(pts[:, 0].max()))) + pad + 1)
    y0 = max(0, int(math.floor(float(pts[:, 1].min()))) - pad)
    y1 = min(H, int(math.ceil(float(pts[:, 1].max()))) + pad + 1)
    return y0, y1, x0, x1


def warp_faces(x01: torch.Tensor, matrices: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Differentiable crop/align of faces: [B,3,H,W] -> [B,3,h,w] (bilinear, kornia).

    ``antialias`` (the default): a warp that shrinks the face by s is preceded by a Gaussian
    low-pass of sigma (1/s - 1)/2 image pixels (skipped at :data:`MIN_SIGMA` or less), as
    dlib's chip extraction and any resize with antialiasing do; plain bilinear sampling at a
    shrink of 0.3 reads about a third of the pixels under the crop, so the gradient reaches only
    those. Only the part of the image the crop reads is blurred (the result equals blurring the
    whole image). Measured: on `high` at 512 px dlib's distance after TAESD rose by 0.02-0.025
    on two dev portraits, and on the fast mode's ``refine=10`` by 0.03 on average over the eight
    (docs/benchmarks.md, "`high` at 512 px"). ``antialias=False`` samples plainly."""
    m = matrices.to(device=x01.device, dtype=torch.float32)
    x = x01.float()
    if antialias:
        sig = shrink_sigma(m)
        if bool((sig > MIN_SIGMA).any()):
            return torch.cat([_warp_one(x[b : b + 1], m[b if m.shape[0] > 1 else 0][None], size, float(sig[b if sig.shape[0] > 1 else 0]))
                              for b in range(x.shape[0])])
    return _plain_warp(x, m, size)


def _plain_warp(x: torch.Tensor, m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    from kornia.geometry.transform import warp_affine

    return warp_affine(x, m, dsize=tuple(size), mode="bilinear", padding_mode="border", align_corners=True)


def _warp_one(x: torch.Tensor, m: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    from kornia.filters import gaussian_blur2d

    if sigma <= MIN_SIGMA:
        return _plain_warp(x, m, size)
    k = 2 * int(math.ceil(3 * sigma)) + 1
    # the pixels the crop reads, with the blur's reach and bilinear's neighbour around them
    y0, y1, x0, x1 = _source_box(m[0], size, k // 2 + 2, tuple(x.shape[-2:]))
    if min(y1 - y0, x1 - x0) <= k // 2:  # the crop reads (almost) nothing of the image: no blur to take
        return _plain_warp(x, m, size)
    part = gaussian_blur2d(x[..., y0:y1, x0:x1], (k, k), (sigma, sigma), border_type="reflect")
    shifted = m.clone()
    shifted[:, :, 2] = m[:, :, 2] + m[:, :, :2] @ m.new_tensor([float(x0), float(y0)])
    return _plain_warp(part, shifted, size)
