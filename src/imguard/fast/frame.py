"""The canonical face frame: the ArcFace 5-point template inside a larger square, so that one
perturbation learned in it covers every recognizer's crop (tight 112 px landmark crops and
loose box crops alike) once warped onto a face."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..models.alignment import ARCFACE_TEMPLATE_112, similarity_transform
from ..models.detection import Face

__all__ = ["frame_template", "frame_matrix", "frame_faces", "to_frame", "from_frame", "frame_box"]


def frame_template(size: int, margin: float) -> np.ndarray:
    """The 5-point template in a ``size`` px frame that spans ``margin`` times ArcFace's 112 px crop."""
    scale = size / (112.0 * margin)
    return ((ARCFACE_TEMPLATE_112 - 56.0) * scale + size / 2.0).astype(np.float32)


def frame_matrix(face: Face, size: int, margin: float) -> np.ndarray:
    """2x3 matrix: image pixels -> frame pixels, from the face's 5 landmarks."""
    if face.landmarks is None:
        raise ValueError("the fast mode needs a face's 5 landmarks to align it; this face has none")
    return similarity_transform(np.asarray(face.landmarks, np.float32), frame_template(size, margin))


def frame_box(face: Face, matrix: np.ndarray) -> np.ndarray:
    """The face's detection box in frame pixels (bounding box of its mapped corners)."""
    x0, y0, x1, y1 = [float(v) for v in face.box]
    pts = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float32) @ matrix.T
    return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()], np.float32)


def frame_faces(boxes: Sequence[np.ndarray], size: int, margin: float) -> list[Face]:
    """Face records in frame coordinates (landmarks at the template), for the recognizers' alignment."""
    t = frame_template(size, margin)
    return [Face(box=np.asarray(b, np.float32), landmarks=t.copy(), score=1.0) for b in boxes]


def to_frame(x01: torch.Tensor, matrices: torch.Tensor, size: int) -> torch.Tensor:
    """Warp faces into the frame: x01 [B,3,H,W] (one matrix per image) -> [B,3,size,size]."""
    from kornia.geometry.transform import warp_affine

    m = matrices.to(device=x01.device, dtype=torch.float32)
    return warp_affine(x01.float(), m, dsize=(size, size), mode="bilinear", padding_mode="border", align_corners=True)


def from_frame(t: torch.Tensor, matrix: np.ndarray, region: tuple[int, int, int, int]) -> torch.Tensor:
    """Warp a frame-space tensor [C,S,S] back onto the image region (x0, y0, x1, y1) with the
    inverse of ``matrix`` (image -> frame): [C, y1-y0, x1-x0], zeros outside the frame."""
    from kornia.geometry.transform import warp_affine

    x0, y0, x1, y1 = region
    m = np.vstack([matrix, [0, 0, 1]]).astype(np.float64)
    inv = np.linalg.inv(m)
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
    back = (shift @ inv)[:2].astype(np.float32)
    mat = torch.from_numpy(back)[None].to(t.device)
    return warp_affine(t[None].float(), mat, dsize=(y1 - y0, x1 - x0), mode="bilinear", padding_mode="zeros",
                       align_corners=True)[0]


def frame_region(matrix: np.ndarray, size: int, H: int, W: int) -> tuple[int, int, int, int] | None:
    """The image region (x0, y0, x1, y1) the frame covers, clipped to the image; None if outside."""
    m = np.vstack([matrix, [0, 0, 1]]).astype(np.float64)
    inv = np.linalg.inv(m)[:2]
    c = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64) @ inv.T
    x0, y0 = int(max(0, np.floor(c[:, 0].min()))), int(max(0, np.floor(c[:, 1].min())))
    x1, y1 = int(min(W, np.ceil(c[:, 0].max()) + 1)), int(min(H, np.ceil(c[:, 1].max()) + 1))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1, y1
