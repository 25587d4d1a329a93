"""Perceptual feature distances: ``distance(a01, b01) -> [B]``.

``lpips``  LPIPS (AlexNet or VGG backbone with its learned linear heads). Its backbone
           weights come from torchvision's download; where that fails, this raises
           :class:`ModelLoadError` and FaceLock falls back to ``ae``.
``ae``     a weighted multi-layer distance between an autoencoder encoder's intermediate
           activations (channel-normalised, as LPIPS does), the multi-layer protection loss
           of FastProtect. Needs no extra weights: it reuses the attacked autoencoder.

Both split the distance in two, so that the side that never changes (the clean image) is
computed once per protection, not once per step: ``targets(b01)`` and
``from_targets(a01, targets) == distance(a01, b01)``.

Both take an optional spatial ``weight`` ([B or 1,1,H,W], >= 0): each layer's distance map is
then averaged with the weight (area-resized to that layer) instead of uniformly, so the
distance can be confined to a region (FaceLock's ``fe_region="face"``).
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

    def forward(self, a01: torch.Tensor, b01: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is not None:
            return self.from_targets(a01, self.targets(b01), weight)
        return self.model(a01 * 2 - 1, b01 * 2 - 1).flatten(1).mean(dim=1).float()

    def targets(self, b01: torch.Tensor) -> list[torch.Tensor]:
        """The normalised backbone features of ``b01`` (what ``forward`` computes for it)."""
        from lpips import normalize_tensor

        m = self.model
        return [normalize_tensor(f) for f in m.net.forward(m.scaling_layer(b01 * 2 - 1))]

    def from_targets(self, a01: torch.Tensor, targets: list[torch.Tensor], weight: torch.Tensor | None = None) -> torch.Tensor:
        """``forward(a01, b01, weight)`` with ``targets = self.targets(b01)``."""
        from lpips import normalize_tensor

        m = self.model
        fa = m.net.forward(m.scaling_layer(a01 * 2 - 1))
        total = 0.0
        for k, (x, y) in enumerate(zip(fa, targets)):
            d = (normalize_tensor(x) - y) ** 2
            d = m.lins[k](d) if m.lpips else d.sum(dim=1, keepdim=True)
            total = total + spatial_mean(d, weight).view(-1, 1, 1, 1)
        return total.flatten(1).mean(dim=1).float()


def spatial_mean(d: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Per sample: the mean of a distance map ``d`` [B,C,h,w] over space (and channels), weighted
    by ``weight`` [B or 1,1,H,W] area-resized to (h, w) when given: [B]."""
    if weight is None:
        return d.flatten(1).mean(dim=1)
    w = torch.nn.functional.adaptive_avg_pool2d(weight.to(d.device, d.dtype), d.shape[-2:])
    return (d * w).flatten(1).sum(dim=1) / (w.flatten(1).sum(dim=1) * d.shape[1]).clamp_min(1e-12)


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

    def forward(self, a01: torch.Tensor, b01: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_targets(a01, self.targets(b01), weight)

    @staticmethod
    def _unit(f: torch.Tensor) -> torch.Tensor:
        f = f.float()
        return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)

    def targets(self, b01: torch.Tensor) -> list[torch.Tensor]:
        """The channel-normalised features of ``b01`` (what ``forward`` computes for it)."""
        return [self._unit(f) for f in self.autoencoder.features(b01)]

    def from_targets(self, a01: torch.Tensor, targets: list[torch.Tensor], weight: torch.Tensor | None = None) -> torch.Tensor:
        """``forward(a01, b01, weight)`` with ``targets = self.targets(b01)``."""
        fa = self.autoencoder.features(a01)
        w = self.weights or [1.0 / len(fa)] * len(fa)
        total = 0.0
        for wi, x, y in zip(w, fa, targets):
            total = total + wi * spatial_mean((self._unit(x) - y).pow(2).sum(1, keepdim=True), weight)
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
