"""Metrics on ``[B,3,H,W]`` batches in [0,1], one value per sample.

``psnr``, ``ssim``           pixel fidelity (PSNR in dB, ``inf`` for identical images; SSIM
                             with an 11x11 Gaussian window, kornia)
``linf_in_255``              the largest per-pixel change, in /255 units
:class:`LPIPSMetric`         learned perceptual distance (lower = more alike); its backbone
                             weights come from torchvision's download, so
                             :func:`load_lpips_metric` returns ``(None, reason)`` where they
                             cannot be had
:class:`IdentityMetric`      cosine similarity of a face recognizer's embeddings; faces are
                             detected anew on every image it is given
:class:`CLIPImageSimilarity` CLIP-I: cosine similarity of CLIP image embeddings
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

from .budget import linf_in_255
from .models import ModelLoadError

#: CLIP model of the FaceLock paper's CLIP-I / CLIP-S metrics.
DEFAULT_CLIP = "openai/clip-vit-base-patch32"


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
        raise ValueError(f"metrics need two batches of the same shape [B,3,H,W], got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.detach().float(), b.detach().float().to(a.device)


def psnr(a: torch.Tensor, b: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per sample: [B]; ``inf`` where the images are identical."""
    a, b = _pair(a, b)
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(max_val**2 / mse)  # mse == 0 -> inf


def ssim(a: torch.Tensor, b: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """Structural similarity per sample (mean of the SSIM map, Gaussian window of sigma 1.5): [B].
    The 11x11 window is :func:`imguard.visibility.ssim_map`'s, the one every visibility report
    uses; other sizes are kornia's."""
    a, b = _pair(a, b)
    if window_size == 11:
        from .visibility import ssim_map

        return ssim_map(a, b).flatten(1).mean(dim=1)
    from kornia.metrics import ssim as k_ssim

    return k_ssim(a, b, window_size, max_val=1.0).flatten(1).mean(dim=1)


def device_of(module: Any, default: torch.device | str = "cpu") -> torch.device:
    """The device of a module's first parameter (``default`` for parameter-free modules)."""
    p = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return p.device if p is not None else torch.device(default)


def cosine(e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of embeddings row by row: [B]."""
    return F.cosine_similarity(e1.float(), e2.float().to(e1.device), dim=-1)


# ---------------------------------------------------------------------------------------
# Optional learned metrics: load or say why not
# ---------------------------------------------------------------------------------------
def try_load(what: str, build: Callable[[], Any]) -> tuple[Any, str | None]:
    """``(model, None)``, or ``(None, reason)`` when ``build`` cannot load its weights."""
    try:
        return build(), None
    except (ModelLoadError, OSError, ImportError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, f"{what} unavailable: {first}"


class LPIPSMetric:
    """LPIPS on [0,1] images, one value per sample (lower = more alike)."""

    def __init__(self, distance: torch.nn.Module, name: str | None = None):
        self.distance = distance
        self.name = name or getattr(distance, "name", type(distance).__name__)

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = _pair(a, b)
        dev = device_of(self.distance)
        return self.distance(a.to(dev), b.to(dev)).float().reshape(-1).cpu()


def load_lpips_metric(spec: Any = "alex", device: torch.device | str = "cpu") -> tuple[LPIPSMetric | None, str | None]:
    """``spec``: ``"alex"``/``"vgg"`` (the LPIPS backbones), ``None`` (off) or a module
    ``(a01, b01) -> [B]``. Returns ``(metric, None)`` or ``(None, reason)``."""
    if spec is None or (isinstance(spec, str) and spec.lower() in ("none", "off")):
        return None, "LPIPS switched off by the caller"
    if isinstance(spec, LPIPSMetric):
        return spec, None
    if isinstance(spec, torch.nn.Module):
        return LPIPSMetric(spec.to(device).eval()), None
    from .models.features import load_lpips

    net = str(spec).lower().removeprefix("lpips-")
    return try_load(f"LPIPS ({net})", lambda: LPIPSMetric(load_lpips(net).to(device).eval()))


# ---------------------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------------------
class IdentityMetric:
    """A face recognizer judging identity, with faces detected anew on each image.

    ``detector``: an object with ``detect(x01) -> list[Face | None]`` (e.g.
    :class:`~imguard.models.FaceDetector`), or ``None`` for a fixed centre crop (only for
    aligned, centred portraits and for tests: no image then counts as "no face").
    """

    def __init__(self, recognizer: torch.nn.Module, detector: Any = None):
        self.recognizer = recognizer
        self.detector = detector
        self.name = getattr(recognizer, "name", type(recognizer).__name__)
        self.threshold = float(recognizer.threshold)

    @property
    def detector_name(self) -> str:
        if self.detector is None:
            return "none (fixed centre crop)"
        inner = getattr(self.detector, "mtcnn", None)
        return "mtcnn (facenet-pytorch)" if inner is not None else type(self.detector).__name__

    @torch.no_grad()
    def embed(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit embeddings ``[B,D]`` (rows of NaN where no face was found) and ``found`` [B]."""
        from .models import FaceEmbedder, centre_face

        B, _, H, W = x01.shape
        dets = self.detector.detect(x01) if self.detector is not None else [centre_face(H, W)] * B
        found = torch.tensor([d is not None for d in dets], dtype=torch.bool)
        dev = device_of(self.recognizer, x01.device)
        idx = [i for i, d in enumerate(dets) if d is not None]
        if not idx:
            return torch.full((B, 1), float("nan")), found
        emb = FaceEmbedder(self.recognizer, [dets[i] for i in idx]).embed(x01[idx].float().to(dev)).float().cpu()
        out = torch.full((B, emb.shape[1]), float("nan"))
        out[idx] = emb
        return out, found

    def similarity(self, reference: torch.Tensor, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine similarity of each image's face to ``reference`` embeddings ([B] or [1] rows):
        ``(sim [B] with NaN where no face, found [B])``."""
        emb, found = self.embed(x01)
        if emb.shape[1] != reference.shape[1]:  # no face anywhere in x01
            return torch.full((x01.shape[0],), float("nan")), found
        return cosine(emb, reference.expand_as(emb)), found

    def identity_lost(self, sim: torch.Tensor) -> torch.Tensor:
        """Identity lost: similarity below the threshold, or no face (NaN)."""
        return torch.isnan(sim) | (sim < self.threshold)


# ---------------------------------------------------------------------------------------
# CLIP-I
# ---------------------------------------------------------------------------------------
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub host answers a TCP connection (and offline mode is off)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:  # noqa: BLE001
        endpoint = "https://huggingface.co"
    u = urlparse(endpoint)
    try:
        with socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


class CLIPImageSimilarity:
    """CLIP-I: cosine similarity of CLIP image embeddings (transformers ``CLIPModel``)."""

    def __init__(self, model: torch.nn.Module, processor: Any, name: str):
        self.model = model
        self.processor = processor
        self.name = name

    @torch.no_grad()
    def embed(self, x01: torch.Tensor) -> torch.Tensor:
        from .io import from_tensor, ImageInfo

        pil = [from_tensor(x01[i : i + 1], ImageInfo(kind="pil")) for i in range(x01.shape[0])]
        inputs = self.processor(images=pil, return_tensors="pt")
        feats = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(device_of(self.model)))
        if not torch.is_tensor(feats):  # some transformers versions return a model output
            feats = feats.pooler_output
        return feats.float().cpu()

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = _pair(a, b)
        return cosine(self.embed(a), self.embed(b))


def _load_clip(spec: str, device: torch.device | str) -> CLIPImageSimilarity:
    from transformers import CLIPImageProcessor, CLIPModel

    local = os.path.isdir(os.path.expanduser(spec))
    path = os.path.expanduser(spec) if local else spec
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True)
        proc = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
    except OSError as first:
        if local or not hub_reachable():
            raise ModelLoadError(
                f"could not load the CLIP model {spec!r} ({'local folder' if local else 'not cached and the Hugging Face hub is not reachable'}: "
                f"{str(first).splitlines()[0] if str(first) else type(first).__name__}). Download it elsewhere "
                "and pass a local folder, e.g. --clip /path/to/clip-vit-base-patch32"
            ) from first
        try:
            model = CLIPModel.from_pretrained(path)
            proc = CLIPImageProcessor.from_pretrained(path)
        except OSError as e:
            raise ModelLoadError(f"could not download the CLIP model {spec!r} ({e}); pass a local folder instead") from e
    model = model.to(device).eval().requires_grad_(False)
    return CLIPImageSimilarity(model, proc, name=f"clip:{spec}")


def load_clip_metric(spec: Any = DEFAULT_CLIP, device: torch.device | str = "cpu") -> tuple[CLIPImageSimilarity | None, str | None]:
    """``spec``: a hub id or a local folder (CLIPModel + its image processor), ``None`` (off),
    or a ready :class:`CLIPImageSimilarity`. Returns ``(metric, None)`` or ``(None, reason)``."""
    if spec is None or (isinstance(spec, str) and spec.lower() in ("none", "off")):
        return None, "CLIP-I switched off by the caller"
    if isinstance(spec, CLIPImageSimilarity):
        return spec, None
    return try_load(f"CLIP ({spec})", lambda: _load_clip(str(spec), device))


__all__ = [
    "CLIPImageSimilarity", "DEFAULT_CLIP", "IdentityMetric", "LPIPSMetric", "cosine", "hub_reachable",
    "linf_in_255", "load_clip_metric", "load_lpips_metric", "psnr", "ssim", "try_load",
]
