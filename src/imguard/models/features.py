"""Perceptual feature distances: ``distance(a01, b01) -> [B]``.

``lpips``  LPIPS (AlexNet or VGG backbone with its learned linear heads). Its backbone
           weights come from torchvision's download; where that fails, this raises
           :class:`ModelLoadError` and FaceLock falls back to ``ae``.
``ae``     a weighted multi-layer distance between an autoencoder encoder's intermediate
           activations (channel-normalised, as LPIPS does), the multi-layer protection loss
           of FastProtect. Needs no extra weights: it reuses the attacked autoencoder.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .base import ModelLoadError, freeze

FEATURES = ("lpips", "lpips-alex", "lpips-vgg", "ae")


class LPIPSDistance(nn.Module):
    """LPIPS on [0,1] images, one value per sample."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model = model
        self.name = name

    def forward(self, a01: torch.Tensor, b01: torch.Tensor) -> torch.Tensor:
        return self.model(a01 * 2 - 1, b01 * 2 - 1).flatten(1).mean(dim=1).float()


def load_lpips(net: str = "alex", pretrained_backbone: bool = True) -> LPIPSDistance:
    """LPIPS with its shipped linear heads. ``pretrained_backbone=False`` builds an untrained
    backbone (only for tests of the mechanics: its numbers mean nothing)."""
    import warnings

    import lpips

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(net=net, pnet_rand=not pretrained_backbone, verbose=False)
    except Exception as e:  # noqa: BLE001 - torchvision download failures vary
        raise ModelLoadError(
            f"could not load LPIPS ({net}): its {net} backbone weights come from torchvision's "
            f"download ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Put the "
            "torchvision checkpoint in $TORCH_HOME/hub/checkpoints, or use features='ae'."
        ) from e
    return LPIPSDistance(model, name=f"lpips-{net}" + ("" if pretrained_backbone else "-untrained"))


class AEFeatureDistance(nn.Module):
    """Weighted multi-layer feature distance through an autoencoder's encoder."""

    def __init__(self, autoencoder: Any, weights: Sequence[float] | None = None):
        super().__init__()
        if not hasattr(autoencoder, "features"):
            raise TypeError("features='ae' needs an autoencoder with a features(x01) method")
        self.autoencoder = autoencoder
        self.weights = list(weights) if weights is not None else None
        self.name = f"ae-features({getattr(autoencoder, 'name', type(autoencoder).__name__)})"

    def forward(self, a01: torch.Tensor, b01: torch.Tensor) -> torch.Tensor:
        fa = self.autoencoder.features(a01)
        fb = self.autoencoder.features(b01)
        w = self.weights or [1.0 / len(fa)] * len(fa)
        total = 0.0
        for wi, x, y in zip(w, fa, fb):
            x = x.float() / (x.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            y = y.float() / (y.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + wi * (x - y).pow(2).sum(1).flatten(1).mean(1)
        return total


def load_features(spec: Any, autoencoder: Any = None, device: torch.device | str = "cpu") -> nn.Module:
    """Resolve a feature-distance spec: a name from :data:`FEATURES` or a module."""
    if isinstance(spec, nn.Module) or (callable(spec) and not isinstance(spec, str)):
        return freeze(spec, device)
    if spec in ("lpips", "lpips-alex"):
        return freeze(load_lpips("alex"), device)
    if spec == "lpips-vgg":
        return freeze(load_lpips("vgg"), device)
    if spec == "ae":
        if autoencoder is None:
            raise ValueError("features='ae' needs an autoencoder")
        return AEFeatureDistance(autoencoder)
    raise ValueError(f"unknown features {spec!r}; valid: {', '.join(FEATURES)}, or a module(a01, b01) -> [B]")
