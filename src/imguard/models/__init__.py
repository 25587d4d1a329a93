"""Model loaders behind small interfaces, and :class:`Models`, a lazy cache of them.

Models know nothing of protection methods. Everything loaded here is frozen (eval mode,
``requires_grad_(False)``) and loaded once per :class:`Models` instance.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ._errors import ModelLoadError
from .autoencoder import DEFAULT_VAE, DiffusersVAE, load_autoencoder
from .face import FaceDetector, FaceEmbedder, NoFaceError, find_faces, load_face_recognizer
from .features import FEATURES, load_features

__all__ = [
    "DEFAULT_VAE",
    "DiffusersVAE",
    "FaceDetector",
    "FaceEmbedder",
    "FEATURES",
    "ModelLoadError",
    "Models",
    "NoFaceError",
    "find_faces",
    "load_autoencoder",
    "load_face_recognizer",
    "load_features",
]


class Models:
    """The models a protection needs, loaded lazily on first use and then kept.

    ``vae``         autoencoder spec (see :func:`load_autoencoder`); default InstructPix2Pix's VAE
    ``face_model``  recognizer spec (see :func:`load_face_recognizer`); default ``"facenet"``
    ``features``    ``"auto"`` (LPIPS-alex, or ``ae`` with one warning when LPIPS cannot
                    load), ``"lpips"``, ``"lpips-vgg"``, ``"ae"`` or a module
    ``detector``    ``"mtcnn"`` (default), ``None`` (always the centre crop), or an object with
                    ``detect(x01) -> list[Face | None]``
    """

    def __init__(
        self,
        vae: Any = None,
        face_model: Any = "facenet",
        features: Any = "auto",
        detector: Any = "mtcnn",
        device: torch.device | str = "cpu",
    ):
        self.device = torch.device(device)
        self.specs = {"vae": vae, "face_model": face_model, "features": features, "detector": detector}
        self._cache: dict[str, Any] = {}

    def _get(self, key: str, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def autoencoder(self):
        return self._get("vae", lambda: load_autoencoder(self.specs["vae"], self.device))

    @property
    def face(self):
        return self._get("face", lambda: load_face_recognizer(self.specs["face_model"], self.device))

    @property
    def detector(self):
        spec = self.specs["detector"]
        if spec is None:
            return None
        if spec == "mtcnn":
            return self._get("detector", lambda: FaceDetector(self.device))
        return spec

    @property
    def features(self):
        return self._get("features", self._load_features)

    def _load_features(self):
        spec = self.specs["features"]
        if spec == "auto":
            try:
                return load_features("lpips", device=self.device)
            except ModelLoadError as e:
                warnings.warn(
                    f"imguard: LPIPS could not load ({str(e).split(':')[0]}); using features='ae' "
                    "(multi-layer autoencoder features) instead. Pass features='ae' to silence this.",
                    stacklevel=4,
                )
                return load_features("ae", autoencoder=self.autoencoder, device=self.device)
        return load_features(spec, autoencoder=self.autoencoder if spec == "ae" else None, device=self.device)

    def describe(self) -> dict:
        """Names of the models loaded so far (for reports)."""
        out = {}
        for key, attr in (("vae", "autoencoder"), ("face", "face"), ("features", "features")):
            if (key if key != "vae" else "vae") in self._cache:
                m = self._cache[key]
                out[attr] = getattr(m, "name", type(m).__name__)
        return out
