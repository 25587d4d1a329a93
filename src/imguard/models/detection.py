"""Face detection: MTCNN (weights ship inside facenet-pytorch), run once per clean image."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .alignment import ARCFACE_TEMPLATE_112

__all__ = ["Face", "FaceDetector", "NoFaceError", "centre_face", "find_faces"]


@dataclass
class Face:
    """One detected face in image pixel coordinates (x, y)."""

    box: np.ndarray  #: [4] x0, y0, x1, y1
    landmarks: np.ndarray | None  #: [5,2]
    score: float
    found: bool = True  #: False for the centre-crop fall-back


class NoFaceError(RuntimeError):
    """No face was found and the caller asked for one (``require_face=True``)."""


def centre_face(h: int, w: int) -> Face:
    """The fall-back when no face is found: a central square of 60% of the short side."""
    s = 0.6 * min(h, w)
    cx, cy = w / 2.0, h / 2.0
    box = np.array([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], dtype=np.float32)
    # landmarks of the template mapped into the box, so landmark alignment degrades to a crop
    lm = box[:2] + ARCFACE_TEMPLATE_112 / 112.0 * s
    return Face(box=box, landmarks=lm.astype(np.float32), score=0.0, found=False)


class FaceDetector:
    """MTCNN from facenet-pytorch (weights shipped in the package), created once."""

    #: images whose short side is below this hold no face MTCNN can find (its smallest is 20 px)
    MIN_SIDE = 24

    def __init__(self, device: torch.device | str = "cpu", keep_all: bool = False):
        from facenet_pytorch import MTCNN

        self.keep_all = keep_all
        self.mtcnn = MTCNN(select_largest=True, keep_all=keep_all, device=torch.device(device))

    def _detect_one(self, img: np.ndarray) -> list[Face]:
        if min(img.shape[:2]) < self.MIN_SIDE:  # too small to hold a detectable face
            return []
        with torch.no_grad():
            try:
                boxes, probs, points = self.mtcnn.detect(img, landmarks=True)
            except (RuntimeError, ValueError):  # MTCNN fails on degenerate inputs: no face
                return []
        if boxes is None or len(boxes) == 0:
            return []
        return [
            Face(box=np.asarray(b, np.float32), landmarks=np.asarray(p, np.float32), score=float(s))
            for b, s, p in zip(boxes, probs, points)
        ]

    @staticmethod
    def _to_numpy(x01: torch.Tensor) -> np.ndarray:
        return (x01.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    def detect(self, x01: torch.Tensor) -> list[Face | None]:
        """Faces in a batch [B,3,H,W] in [0,1]: the largest one per image, or None."""
        out: list[Face | None] = []
        for img in self._to_numpy(x01):  # one at a time: MTCNN's batched path needs equal sizes anyway
            faces = self._detect_one(img)
            out.append(faces[0] if faces else None)
        return out

    def detect_all(self, x01: torch.Tensor, min_score: float = 0.9) -> list[list[Face]]:
        """Every face of each image in a batch (score >= ``min_score``), largest first."""
        out = []
        for img in self._to_numpy(x01):
            faces = [f for f in self._detect_one(img) if f.score >= min_score]
            faces.sort(key=lambda f: -float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))
            out.append(faces)
        return out


def find_faces(x01: torch.Tensor, detector: FaceDetector | None, require_face: bool = False, names: Sequence[str] | None = None) -> list[Face]:
    """Detect one face per image; fall back to a centre crop with a warning (or raise)."""
    B, _, H, W = x01.shape
    dets = detector.detect(x01) if detector is not None else [None] * B
    faces = []
    for i, f in enumerate(dets):
        if f is None:
            label = names[i] if names else f"image {i}"
            if require_face:
                raise NoFaceError(f"no face found in {label}; allow the centre-crop fall-back (require_face=False) or give a photo with a visible face")
            if detector is not None:
                warnings.warn(f"imguard: no face found in {label}; using a centre crop for the face-recognition loss", stacklevel=3)
            f = centre_face(H, W)
        faces.append(f)
    return faces
