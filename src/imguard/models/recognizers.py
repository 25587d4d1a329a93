"""Face recognizers by name, ensembles of them, and the embedder that ties them to faces.

Every recognizer follows :class:`~imguard.models.base.Recognizer`. Names resolve through
:data:`RECOGNIZERS`; each loader takes an optional local path (``"NAME:PATH"``) and otherwise
finds its weights itself (a packaged file, or the model cache of :mod:`imguard.models.hub`).

An ensemble (``"sface,facenet"`` or a list) is a :class:`RecognizerEnsemble`: the members keep
their own alignment and input size, and :class:`FaceEmbedder` combines their cosine
similarities with normalised weights, so no member dominates by the scale of its embedding.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .alignment import alignment_matrices, warp_faces
from .base import ModelLoadError, ModelSpec, freeze, recognizer_attr, spec_name, split_specs

__all__ = [
    "RECOGNIZERS",
    "FaceEmbedder",
    "RecognizerEnsemble",
    "RecognizerInfo",
    "load_face_recognizer",
    "recognizer_names",
]


@dataclass(frozen=True)
class RecognizerInfo:
    """How to load one named recognizer."""

    loader: str  #: "module:function" inside imguard.models; function(path or None) -> module
    what: str  #: a few words for messages and `imguard models list`
    path_hint: str  #: the kind of local file NAME:PATH takes
    attackable: bool = True  #: False for judges (dlib): never an attack surrogate


#: The recognizers imguard knows by name.
RECOGNIZERS: dict[str, RecognizerInfo] = {
    "sface": RecognizerInfo("sface:load_sface", "SFace (OpenCV Zoo, MobileFaceNet-style, 128-d, 112 px)", "an SFace .onnx file"),
    "facenet": RecognizerInfo("facenet:load_facenet", "FaceNet Inception-ResNet-v1 (MS-Celeb-1M, 128-d, 160 px)", "a Keras .h5 file or converted .safetensors"),
    "mobilefacenet": RecognizerInfo("mobilefacenet:load_mobilefacenet", "MobileFaceNet (192-d, 112 px)", "a .tflite file or converted .safetensors"),
    "faceres": RecognizerInfo("faceres:load_faceres", "HSE FaceRes MobileNet-v1 (1024-d, 224 px)", "a TF.js faceres.json (weights beside it) or converted .safetensors"),
    "vggface2": RecognizerInfo("facenet:load_vggface2", "facenet-pytorch InceptionResnetV1 (VGGFace2, 512-d, 160 px; downloads its weights)", "a facenet-pytorch state dict (.pt)"),
    "dlib": RecognizerInfo("dlib_face:load_dlib_recognizer", "dlib ResNet (128-d, evaluation only)", "dlib_face_recognition_resnet_model_v1.dat", attackable=False),
}


def recognizer_names(attackable_only: bool = False) -> list[str]:
    return [k for k, v in RECOGNIZERS.items() if v.attackable or not attackable_only]


def _loader(info: RecognizerInfo) -> Callable[[str | None], nn.Module]:
    module, fn = info.loader.split(":")
    return getattr(importlib.import_module(f".{module}", __package__), fn)


def _check_module(model: nn.Module) -> nn.Module:
    for attr in ("input_size", "threshold"):
        if not hasattr(model, attr):
            raise TypeError(f"a face recognizer module must define {attr!r} (see imguard.models.base.Recognizer)")
    if not hasattr(model, "name"):
        model.name = type(model).__name__
    if not hasattr(model, "alignment"):
        model.alignment = "bbox"
    return model


def _load_one(spec: Any) -> nn.Module:
    if isinstance(spec, nn.Module):
        return _check_module(spec)
    if not isinstance(spec, str):
        raise TypeError(f"face_model must be a name, a list of names, or a module, got {type(spec).__name__}")
    parsed = ModelSpec.parse(spec, RECOGNIZERS)
    if not parsed.kind:
        raise ValueError(
            f"unknown face model {spec!r}; valid: {', '.join(RECOGNIZERS)} (each also as NAME:PATH for a "
            "local file), a comma-separated ensemble such as 'sface,facenet', or a module"
        )
    info = RECOGNIZERS[parsed.kind]
    try:
        model = _loader(info)(parsed.path)
    except ModelLoadError:
        raise
    except (ImportError, OSError, ValueError, KeyError) as e:
        raise ModelLoadError(
            f"could not load the {parsed.kind} recognizer ({info.what}): {e}. "
            f"Fetch it with `imguard models fetch {parsed.kind}`, or give a local file as "
            f"'{parsed.kind}:/path/to/file' ({info.path_hint})."
        ) from e
    if parsed.path and not str(getattr(model, "name", "")).endswith(parsed.path):
        model.name = f"{getattr(model, 'name', parsed.kind)}:{parsed.path}"
    return _check_module(model)


class RecognizerEnsemble(nn.Module):
    """Several recognizers judged together; ``weights`` are normalised to sum to 1."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one recognizer")
        self.members = nn.ModuleList(members)
        w = torch.ones(len(members)) if weights is None else torch.tensor([float(v) for v in weights])
        if w.numel() != len(members) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"face_weights must be {len(members)} non-negative numbers with a positive sum, got {list(weights or [])}")
        self.weights = (w / w.sum()).tolist()
        self.name = "+".join(spec_name(m) for m in members)
        self.differentiable = all(recognizer_attr(m, "differentiable") for m in members)
        # the ensemble's "same person" threshold: the weighted mean of its members'
        self.threshold = float(sum(wi * float(m.threshold) for wi, m in zip(self.weights, members)))

    def __iter__(self):
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)


def members_of(recognizer: Any) -> tuple[list[nn.Module], list[float]]:
    """(members, normalised weights) of a recognizer or an ensemble."""
    if isinstance(recognizer, RecognizerEnsemble):
        return list(recognizer.members), list(recognizer.weights)
    return [recognizer], [1.0]


def load_face_recognizer(spec: Any = "sface", device: torch.device | str = "cpu", weights: Sequence[float] | None = None) -> nn.Module:
    """Resolve a recognizer spec to a frozen recognizer (or a :class:`RecognizerEnsemble`).

    ``spec``: a name from :data:`RECOGNIZERS` (``"sface"``, ``"facenet"``, ``"mobilefacenet"``,
    ``"faceres"``, ``"vggface2"``, ``"dlib"``: a judge only), ``"NAME:PATH"`` for a local file,
    a module following the interface, or several of these (a list, or names separated by
    commas) for an ensemble with optional ``weights``.
    """
    if spec is None:
        spec = "sface"
    if isinstance(spec, RecognizerEnsemble):
        return freeze(spec, device)
    items = split_specs(spec)
    errors: list[str] = []
    members = []
    for item in items:
        try:
            members.append(freeze(_load_one(item), device))
        except ModelLoadError as e:  # report every member that failed, together
            errors.append(str(e))
    if errors:
        raise ModelLoadError(errors[0] if len(errors) == 1 else "several face models could not load:\n- " + "\n- ".join(errors))
    if len(members) == 1 and weights is None:
        return members[0]
    return RecognizerEnsemble(members, weights)


class FaceEmbedder:
    """Recognizer(s) + alignment fixed on a clean batch: ``embed(x)`` / ``similarity`` for later images.

    Members that see the face the same way (same alignment, template and input size) share
    one warp per call.
    """

    def __init__(self, recognizer: nn.Module, faces: Sequence[Any]):
        self.recognizer = recognizer
        self.members, self.weights = members_of(recognizer)
        self.faces = list(faces)
        self.found = torch.tensor([f.found for f in self.faces])
        self._groups: list[tuple[torch.Tensor, tuple[int, int], list[int]]] = []
        for i, m in enumerate(self.members):
            mats = alignment_matrices(self.faces, m)
            size = tuple(m.input_size)
            for g_mats, g_size, idx in self._groups:
                if g_size == size and torch.equal(g_mats, mats):
                    idx.append(i)
                    break
            else:
                self._groups.append((mats, size, [i]))
        self.matrices = self._groups[0][0]  # of the first member (reports, tests)

    def crops(self, x01: torch.Tensor, member: int = 0) -> torch.Tensor:
        for mats, size, idx in self._groups:
            if member in idx:
                return warp_faces(x01, mats, size)
        raise IndexError(member)

    def embed_all(self, x01: torch.Tensor) -> list[torch.Tensor]:
        """One unit embedding batch per member: list of [B,D_i]."""
        out: list[torch.Tensor | None] = [None] * len(self.members)
        for mats, size, idx in self._groups:
            crops = warp_faces(x01, mats, size)
            for i in idx:
                out[i] = F.normalize(self.members[i](crops).float(), dim=-1)
        return out  # type: ignore[return-value]

    def embed(self, x01: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The embedding [B,D] of a single recognizer, or the list for an ensemble."""
        embs = self.embed_all(x01)
        return embs[0] if len(embs) == 1 else embs

    def similarity(self, x01: torch.Tensor, reference: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Weighted mean cosine similarity of ``x01``'s faces to ``reference`` embeddings: [B]."""
        refs = reference if isinstance(reference, list) else [reference]
        embs = self.embed_all(x01)
        return sum(w * (e * r.to(e.device)).sum(dim=1) for w, e, r in zip(self.weights, embs, refs))
