"""The pre-trained perturbations (a mixture of K in the face frame, one tile for the rest) and
the surrogate loss shared by training and inference's per-face assignment."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..budget import Budget
from ..models import FaceEmbedder
from .frame import frame_faces

__all__ = ["FastWeights", "SHIPPED", "load_weights", "unit_delta", "identity_loss"]

#: the weights shipped inside the package
SHIPPED = Path(__file__).resolve().parent / "weights" / "fastprotect-k4.safetensors"


@dataclass
class FastWeights:
    """K face perturbations ``faces`` [K,3,S,S] and a tile ``tile`` [3,T,T], both in [-1,1]
    units of the per-pixel perceptual radius (1 = the whole radius the map allows there)."""

    faces: torch.Tensor
    tile: torch.Tensor
    margin: float  #: the frame spans this many times ArcFace's 112 px crop
    meta: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.faces.shape[0])

    @property
    def size(self) -> int:
        return int(self.faces.shape[-1])

    @property
    def jnd_scale(self) -> float:
        """The perceptual map's scale the perturbations were trained to fill (1.0 for files
        written before it was recorded)."""
        return float(self.meta.get("jnd_scale", 1.0))

    def to(self, device: torch.device | str) -> "FastWeights":
        return FastWeights(self.faces.to(device), self.tile.to(device), self.margin, dict(self.meta))

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"margin": str(self.margin), "meta": json.dumps(self.meta, sort_keys=True)}
        tmp = path.with_name(path.name + ".tmp")
        save_file({"faces": self.faces.detach().cpu().half().contiguous(),
                   "tile": self.tile.detach().cpu().half().contiguous()}, str(tmp), metadata=meta)
        tmp.replace(path)


def load_weights(path: str | Path | None = None, device: torch.device | str = "cpu") -> FastWeights:
    """The fast mode's perturbations from a safetensors file (default: the shipped one)."""
    from safetensors import safe_open

    p = Path(path) if path is not None else SHIPPED
    if not p.is_file():
        raise FileNotFoundError(f"fast-mode weights not found at {p}; train them with `imguard train-fast --faces DIR --out {p.name}` "
                                "or reinstall imguard (the package ships them)")
    with safe_open(str(p), framework="pt") as f:
        md = f.metadata() or {}
        keys = set(f.keys())
        if not {"faces", "tile"} <= keys or "margin" not in md:
            raise ValueError(f"{p} is not a fast-mode weights file (needs tensors 'faces' and 'tile' and a 'margin' entry)")
        faces, tile = f.get_tensor("faces").float().clamp(-1, 1), f.get_tensor("tile").float().clamp(-1, 1)
    if faces.dim() != 4 or faces.shape[1] != 3 or faces.shape[-1] != faces.shape[-2] or tile.dim() != 3:
        raise ValueError(f"{p}: faces must be [K,3,S,S] and tile [3,T,T], got {tuple(faces.shape)} and {tuple(tile.shape)}")
    return FastWeights(faces.to(device), tile.to(device), float(md["margin"]), json.loads(md.get("meta", "{}"))).to(device)


def unit_delta(frames: torch.Tensor, units: torch.Tensor, eps: float, scale: float = 1.0) -> tuple[torch.Tensor, Budget]:
    """The perturbation of frame crops ``frames`` [B,3,S,S] for ``units`` [B,3,S,S] in [-1,1]:
    scaled by each crop's perceptual radius map (``scale`` times the JND, <= eps/255) and
    projected onto that budget."""
    budget = Budget.perceptual(frames, eps, scale)
    return budget.project(units * budget.radius_map), budget


def identity_loss(embedder: FaceEmbedder, clean: list[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over the members of the recognizers between ``images``' faces
    and the clean embeddings: [B] (lower = identity hidden better)."""
    embs = embedder.embed_all(images)
    sims = [(e * r.to(e.device)).sum(dim=1) for e, r in zip(embs, clean)]
    return torch.stack(sims).mean(0)


def frame_embedder(face_model: Any, boxes: list, size: int, margin: float) -> FaceEmbedder:
    """A :class:`FaceEmbedder` for frame crops whose detection boxes (in frame pixels) are ``boxes``."""
    return FaceEmbedder(face_model, frame_faces(boxes, size, margin))


def smooth_units(p: torch.Tensor) -> torch.Tensor:
    """The learned parameters as units in [-1,1]."""
    return torch.tanh(p)


def tile_to(tile: torch.Tensor, H: int, W: int, period: int) -> torch.Tensor:
    """The tile [3,T,T] repeated over [3,H,W] with a period of ``period`` image pixels."""
    t = tile
    if period != tile.shape[-1]:
        t = F.interpolate(tile[None], size=(period, period), mode="bilinear", align_corners=False)[0]
    reps = (H + period - 1) // period, (W + period - 1) // period
    return t.repeat(1, reps[0], reps[1])[:, :H, :W]
