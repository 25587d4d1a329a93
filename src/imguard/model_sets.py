"""The models a :class:`~imguard.Protector` loads once.

One :class:`~imguard.models.Models` per choice of attacked autoencoder and recognizer (a
strength's, or the explicit ``vae=`` / ``face_model=``), the face detector shared between them;
or the one ``Models`` a caller handed in, for every request.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .methods import get_method
from .models import Models
from .request import ProtectionRequest

__all__ = ["ModelSets", "model_key"]

#: what a ``models={...}`` dict may name
_MODEL_KEYS = ("vae", "face_model", "features", "detector")


def model_key(spec: Any) -> Any:
    """A spec as a cache key: itself when it is a plain value, else the object's identity."""
    return spec if isinstance(spec, (str, type(None), int, float)) else id(spec)


class ModelSets:
    """``models`` is a :class:`~imguard.models.Models` (used for every request), a dict of specs
    (``vae``, ``face_model``, ``features``, ``detector``; they override the keywords) or None."""

    def __init__(self, models: Models | dict | None, *, vae: Any, face_model: Any, features: Any, detector: Any,
                 face_weights: Sequence[float] | None, device: torch.device, memory_format: torch.memory_format):
        #: the explicitly chosen models: they override a strength's (None: the strength's)
        self.explicit = {"vae": vae, "face_model": face_model}
        self._args = {"features": features, "detector": detector, "face_weights": face_weights}
        self._fixed = models if isinstance(models, Models) else None
        if isinstance(models, dict):
            unknown = set(models) - set(_MODEL_KEYS)
            if unknown:
                raise TypeError(f"unknown model keys {sorted(unknown)}; valid: {', '.join(_MODEL_KEYS)}")
            self.explicit.update({k: v for k, v in models.items() if k in ("vae", "face_model")})
            self._args.update({k: v for k, v in models.items() if k in ("features", "detector")})
        self.device, self.memory_format = device, memory_format
        self._sets: dict[tuple, Models] = {}

    def of(self, req: ProtectionRequest) -> Models:
        """The (cached, not yet loaded) models of a request."""
        if self._fixed is not None:
            return self._fixed
        key = (model_key(req.autoencoder), model_key(req.recognizer))
        if key not in self._sets:
            self._sets[key] = Models(vae=req.autoencoder, face_model=req.recognizer, device=self.device,
                                     memory_format=self.memory_format, **self._args)
            first = next(iter(self._sets.values()))  # share the detector between the model sets
            if "detector" in first._cache:
                self._sets[key]._cache["detector"] = first._cache["detector"]
        return self._sets[key]

    def load(self, req: ProtectionRequest) -> Models:
        """The models of a request with every model its method needs loaded now (every model
        that fails is reported together: :class:`~imguard.models.ModelLoadError`)."""
        models = self.of(req)
        models.load(tuple(n for n in get_method(req.method).needs if n in ("autoencoder", "face", "features")))
        return models
