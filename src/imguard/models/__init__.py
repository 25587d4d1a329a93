"""Models behind declared interfaces, and :class:`Models`, a lazy cache of them.

Models know nothing of protection methods. Everything loaded here is frozen (eval mode,
``requires_grad_(False)``) and loaded once per :class:`Models` instance.

``base``         the interfaces (:class:`Autoencoder`, :class:`Recognizer`), :class:`ModelSpec`
``autoencoder``  SD VAE through diffusers, the bundled TAESD-family tiny autoencoders, ensembles
``recognizers``  recognizers by name, ensembles, :class:`FaceEmbedder`
``detection``    MTCNN, once per clean image;  ``alignment``: templates and the warp
``features``     perceptual distances (autoencoder features, LPIPS)
"""

from __future__ import annotations

from typing import Any

import torch

from .alignment import alignment_matrices, warp_faces
from .autoencoder import (
    DEFAULT_VAE, EDITOR_VAE, AutoencoderEnsemble, DiffusersVAE, autoencoders_of, load_autoencoder,
)
from .base import Autoencoder, ModelLoadError, ModelSpec, Recognizer, freeze
from .detection import Face, FaceDetector, NoFaceError, centre_face, find_faces
from .features import FEATURES, load_features
from .recognizers import RECOGNIZERS, FaceEmbedder, RecognizerEnsemble, load_face_recognizer, members_of

__all__ = [
    "DEFAULT_FACE_MODEL",
    "DEFAULT_VAE",
    "EDITOR_VAE",
    "FEATURES",
    "RECOGNIZERS",
    "Autoencoder",
    "AutoencoderEnsemble",
    "DiffusersVAE",
    "Face",
    "FaceDetector",
    "FaceEmbedder",
    "ModelLoadError",
    "ModelSpec",
    "Models",
    "NoFaceError",
    "Recognizer",
    "RecognizerEnsemble",
    "alignment_matrices",
    "autoencoders_of",
    "centre_face",
    "find_faces",
    "freeze",
    "load_autoencoder",
    "load_face_recognizer",
    "load_features",
    "members_of",
    "warp_faces",
]

#: The recognizer attacked when none is named (offline; the presets name ensembles).
DEFAULT_FACE_MODEL = "sface"


class Models:
    """The models a protection needs, loaded lazily on first use and then kept.

    ``vae``          autoencoder spec (see :func:`load_autoencoder`); default the bundled TAESD
    ``face_model``   recognizer spec (see :func:`load_face_recognizer`), or an ensemble
    ``face_weights`` optional weights of the ensemble's members (normalised)
    ``features``     ``"ae"`` (the autoencoder's own multi-layer features, offline; default),
                     ``"lpips"``, ``"lpips-vgg"`` or a module
    ``detector``     ``"mtcnn"`` (default), ``None`` (always the centre crop), or an object with
                     ``detect(x01) -> list[Face | None]``
    ``memory_format`` layout of the loaded models' 4-D weights (``torch.channels_last`` where
                     the forward passes run under autocast: see :mod:`imguard.runtime`)
    """

    def __init__(
        self,
        vae: Any = None,
        face_model: Any = None,
        features: Any = "ae",
        detector: Any = "mtcnn",
        device: torch.device | str = "cpu",
        face_weights: Any = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        self.device = torch.device(device)
        self.memory_format = memory_format
        self.specs = {
            "vae": DEFAULT_VAE if vae is None else vae,
            "face_model": DEFAULT_FACE_MODEL if face_model is None else face_model,
            "features": features,
            "detector": detector,
        }
        self.face_weights = face_weights
        self._cache: dict[str, Any] = {}

    def _get(self, key: str, build):
        if key not in self._cache:
            model = build()
            if isinstance(model, torch.nn.Module) and self.memory_format is not torch.contiguous_format:
                model = model.to(memory_format=self.memory_format)
            self._cache[key] = model
        return self._cache[key]

    @property
    def autoencoder(self):
        return self._get("vae", lambda: load_autoencoder(self.specs["vae"], self.device))

    @property
    def recognizer(self):
        return self._get("recognizer", lambda: load_face_recognizer(self.specs["face_model"], self.device, weights=self.face_weights))

    @property
    def face(self):
        """The recognizer, by the name methods' ``needs`` use (``"face"``)."""
        return self.recognizer

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
        if spec == "auto":  # kept for compatibility: the offline choice
            spec = "ae"
        autoencoder = autoencoders_of(self.autoencoder)[0] if spec == "ae" else None
        return load_features(spec, autoencoder=autoencoder, device=self.device)

    def load(self, needs: tuple = ("autoencoder", "face", "features")) -> None:
        """Load what ``needs`` names now, and report every model that fails, together."""
        errors = []
        for attr in needs:
            try:
                getattr(self, attr)
            except ModelLoadError as e:
                if str(e) not in errors:  # e.g. 'ae' features fail with their autoencoder: say it once
                    errors.append(str(e))
        if errors:
            raise ModelLoadError(errors[0] if len(errors) == 1 else "models could not load:\n- " + "\n- ".join(errors))

    def describe(self) -> dict:
        """Names of the models loaded so far (for reports)."""
        out = {}
        for key, attr in (("vae", "autoencoder"), ("recognizer", "face"), ("features", "features")):
            if key in self._cache:
                m = self._cache[key]
                out[attr] = getattr(m, "name", type(m).__name__)
        return out
