"""What every model in imguard is: the interfaces, the one parser of model specs, freezing.

Two kinds of model are attacked (and judged with):

``Autoencoder``  ``encode(x01) -> z`` and ``decode(z) -> x01`` for images in [0,1]: the
                 editor's view of a photo (the SD VAE, a TAESD-family tiny autoencoder).
``Recognizer``   maps aligned faces ``[B,3,h,w]`` in [0,1] (RGB) to unit embeddings ``[B,D]``
                 and says how to align them (``input_size``, ``alignment``, ``template``
                 or ``box_scale``) and when two faces are the same person (``threshold``).

A *model spec* names a model: ``"sface"``, ``"taesd"``, ``"taesd:/path/prefix"``,
``"facenet:/path/weights.h5"``, a hub id such as ``"timbrooks/instruct-pix2pix"``; or a list
of them (an ensemble), given as a Python list or a comma-separated string. :class:`ModelSpec`
is the one place those strings are parsed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn

__all__ = [
    "Autoencoder",
    "ModelLoadError",
    "ModelSpec",
    "Recognizer",
    "freeze",
    "split_specs",
]


class ModelLoadError(RuntimeError):
    """A model could not be loaded. The message names the model and how to give a local path."""


@runtime_checkable
class Autoencoder(Protocol):
    """An image autoencoder: images in [0,1] on both ends."""

    name: str

    def encode(self, x01: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Recognizer(Protocol):
    """A face recognizer on aligned faces.

    ``alignment`` is ``"bbox"`` (crop the detector's box, widened by ``box_scale``, resized to
    ``input_size``) or ``"landmarks5"`` (a similarity transform of the 5 detected landmarks onto
    ``template``, [5,2] in crop pixels; the ArcFace template when ``template`` is None).
    ``differentiable`` is False for judges that give no gradients (dlib).
    """

    name: str
    input_size: tuple[int, int]
    threshold: float
    alignment: str

    def __call__(self, faces01: torch.Tensor) -> torch.Tensor: ...


#: Defaults of the optional recognizer attributes.
RECOGNIZER_DEFAULTS = {"alignment": "bbox", "template": None, "box_scale": 1.0, "differentiable": True}


def recognizer_attr(model: Any, name: str) -> Any:
    """An optional recognizer attribute, or its default."""
    return getattr(model, name, RECOGNIZER_DEFAULTS[name])


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name: ``kind`` (lower case) and an optional ``path``.

    ``"taesd:/models/taef2"`` -> kind ``taesd``, path ``/models/taef2``; ``"sface"`` -> kind
    ``sface``, no path; ``"timbrooks/instruct-pix2pix"`` or ``"/models/vae"`` (no known kind
    before a colon) -> kind ``""`` and the whole text as the path, for the caller to treat
    as a hub id or a local folder.
    """

    kind: str
    path: str | None = None

    @classmethod
    def parse(cls, text: str, kinds: Iterable[str] = ()) -> "ModelSpec":
        """Parse ``text``; ``kinds`` lists the kinds the caller knows (others become paths)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"a model spec must be a non-empty string, got {text!r}")
        text = text.strip()
        known = {k.lower() for k in kinds}
        head, sep, rest = text.partition(":")
        if head.lower() in known:
            return cls(head.lower(), os.path.expanduser(rest) if sep and rest else None)
        return cls("", text)

    @property
    def text(self) -> str:
        if not self.kind:
            return self.path or ""
        return f"{self.kind}:{self.path}" if self.path else self.kind

    def __str__(self) -> str:
        return self.text

    @classmethod
    def of(cls, model: Any) -> "ModelSpec":
        """The spec of a spec string or of a loaded model (its ``name``), parsed with every
        kind imguard knows (recognizers and autoencoders)."""
        text = model if isinstance(model, str) else str(getattr(model, "name", "") or type(model).__name__)
        return cls.parse(text, known_kinds())

    @property
    def label(self) -> str:
        """Which model this is, in one word: the kind (``mobilefacenet`` for
        ``mobilefacenet:/path``), else the hub id or folder as written."""
        return self.kind or (self.path or "").strip().rstrip("/")

    def same_as(self, other: Any) -> bool:
        """Whether ``other`` (a spec, its text, or a loaded model) names the same model: the
        same kind and the same weights (paths compared after ``~`` and ``..`` are resolved)."""
        o = other if isinstance(other, ModelSpec) else ModelSpec.of(other)
        return self.kind == o.kind and _weights_key(self) == _weights_key(o)


def _weights_key(spec: ModelSpec) -> str | None:
    p = spec.path
    if p is None:
        return None
    if spec.kind or p.startswith((".", "/", "~")) or os.path.exists(os.path.expanduser(p)):
        return os.path.realpath(os.path.expanduser(p))
    return p.strip().lower().rstrip("/")  # a hub id


def known_kinds() -> tuple[str, ...]:
    """Every model kind a spec may start with (``kind:path``)."""
    from .autoencoder import AUTOENCODER_KINDS
    from .recognizers import RECOGNIZERS

    return (*RECOGNIZERS, *AUTOENCODER_KINDS)


def split_specs(spec: Any) -> list[Any]:
    """An ensemble spec as a list of members: a comma-separated string or a list/tuple.

    A single model (a name or a module) comes back as a one-item list. Empty members are
    refused with a message that shows the spec.
    """
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",")]
        if any(not p for p in parts):
            raise ValueError(f"empty model name in {spec!r}; separate names with single commas, e.g. 'sface,facenet'")
        return parts
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("an empty list of models was given; name at least one")
        out: list[Any] = []
        for s in spec:
            out.extend(split_specs(s) if isinstance(s, str) else [s])
        return out
    return [spec]


def spec_name(spec: Any) -> str:
    """A short text for a spec or a model (for reports and error messages)."""
    if isinstance(spec, str):
        return spec
    return str(getattr(spec, "name", type(spec).__name__))


def freeze(model: Any, device: torch.device | str, dtype: torch.dtype = torch.float32):
    """Eval mode, no parameter gradients, on ``device``."""
    if isinstance(model, nn.Module):
        model = model.to(device=device, dtype=dtype)
        model.eval()
        model.requires_grad_(False)
    return model


def as_template(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """A [5,2] float32 landmark template (for recognizers that declare their own)."""
    t = np.asarray(points, dtype=np.float32)
    if t.shape != (5, 2):
        raise ValueError(f"a landmark template is [5,2] (x, y per point), got {t.shape}")
    return t
