"""Transfer techniques usable by every method: what the loss sees (EOT, input diversity), how
the gradient is smoothed (translation invariance) and which variable is optimised (the
perturbation at full or at low resolution)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..budget import Budget

__all__ = ["DeltaParam", "LowResParam", "LumaParam", "diverse_input", "gaussian_kernel", "parameterisation", "smooth_gradient", "what_the_loss_sees"]


def gaussian_kernel(size: int, sigma: float | None = None) -> torch.Tensor:
    """A normalised 2-D Gaussian kernel [size,size] (sigma = size/4 by default)."""
    sigma = sigma or size / 4.0
    ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


def smooth_gradient(grad: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise convolution of a [B,C,H,W] gradient with a [k,k] kernel (reflected borders)."""
    C = grad.shape[1]
    k = kernel.to(device=grad.device, dtype=grad.dtype).expand(C, 1, *kernel.shape)
    pad = kernel.shape[-1] // 2
    g = torch.nn.functional.pad(grad, (pad, pad, pad, pad), mode="reflect")
    return torch.nn.functional.conv2d(g, k, groups=C)


def diverse_input(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Shrink ``x`` by a random factor in [1 - amount, 1] and pad it back at a random offset."""
    H, W = x.shape[-2:]
    f = 1.0 - amount * float(torch.rand(1, generator=gen))
    h, w = max(1, int(round(H * f))), max(1, int(round(W * f)))
    if (h, w) == (H, W):
        return x
    small = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    top = int(torch.randint(0, H - h + 1, (1,), generator=gen))
    left = int(torch.randint(0, W - w + 1, (1,), generator=gen))
    return torch.nn.functional.pad(small, (left, W - w - left, top, H - h - top), mode="replicate")


def what_the_loss_sees(xa: torch.Tensor, eot: Sequence[Callable], diversity: float, gen: torch.Generator) -> torch.Tensor:
    """EOT (one transform of the list, drawn with ``gen``), then input diversity."""
    if eot:
        k = int(torch.randint(len(eot), (1,), generator=gen))
        xa = eot[k](xa, gen)
    if diversity > 0:
        xa = diverse_input(xa, diversity, gen)
    return xa


class DeltaParam:
    """The perturbation itself is the optimised variable. ``constrain`` maps a perturbation
    onto the feasible set (spatial mask, budget, [0,1])."""

    def __init__(self, x: torch.Tensor, budget: Budget, constrain: Callable[[torch.Tensor], torch.Tensor]):
        self.x, self.budget, self.constrain = x, budget, constrain

    def start(self, random_start: bool, gen: torch.Generator) -> torch.Tensor:
        if random_start:
            return self.constrain(self.budget.random_start(self.x, generator=gen))
        return torch.zeros_like(self.x)

    def start_from(self, init: torch.Tensor) -> torch.Tensor:
        """The variable for a given start perturbation ``init`` (e.g. the fast mode's), made feasible."""
        return self.constrain(init.detach().to(device=self.x.device, dtype=self.x.dtype))

    def image(self, p: torch.Tensor) -> torch.Tensor:
        """The (differentiable) image the loss sees for variable ``p``."""
        return self.x + p

    def delta(self, p: torch.Tensor) -> torch.Tensor:
        """The feasible full-resolution perturbation of ``p``."""
        return self.constrain(p)

    def project(self, p: torch.Tensor) -> torch.Tensor:
        return self.constrain(p)


class LowResParam(DeltaParam):
    """Low-frequency perturbations: the variable is a grid ``factor`` times coarser,
    upsampled (bilinear) to the image, so the perturbation survives JPEG and resizing."""

    def __init__(self, x: torch.Tensor, budget: Budget, constrain: Callable[[torch.Tensor], torch.Tensor], factor: int):
        super().__init__(x, budget, constrain)
        self.size = (max(1, x.shape[-2] // factor), max(1, x.shape[-1] // factor))

    def start(self, random_start: bool, gen: torch.Generator) -> torch.Tensor:
        if random_start:
            return self.budget.project(self.budget.random_start(self.x[..., : self.size[0], : self.size[1]], generator=gen))
        return self.x.new_zeros(self.x.shape[0], 3, *self.size)

    def start_from(self, init: torch.Tensor) -> torch.Tensor:
        p0 = init.detach().to(device=self.x.device, dtype=self.x.dtype)
        return self.budget.project(torch.nn.functional.interpolate(p0, size=self.size, mode="area"))

    def image(self, p: torch.Tensor) -> torch.Tensor:
        return self.x + self.delta(p)

    def delta(self, p: torch.Tensor) -> torch.Tensor:
        return self.constrain(torch.nn.functional.interpolate(p, size=self.x.shape[-2:], mode="bilinear", align_corners=False))

    def project(self, p: torch.Tensor) -> torch.Tensor:
        return self.budget.project(p)


class LumaParam(DeltaParam):
    """Luminance-only perturbations: the variable is one channel [B,1,H,W], added to R, G and B
    alike (a grey change moves Y and leaves Cb and Cr untouched). JPEG keeps luminance at full
    resolution and quantises it more finely than colour, which it subsamples 2x2; the same
    per-pixel cap then spends nothing on colour, where the eye notices tints."""

    def __init__(self, x: torch.Tensor, budget: Budget, constrain: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__(x, budget, constrain)
        # a grey change keeps every channel inside [0,1] between these
        self.lo, self.hi = -x.amin(dim=1, keepdim=True), 1 - x.amax(dim=1, keepdim=True)

    def _grey(self, p: torch.Tensor) -> torch.Tensor:
        return p.expand(-1, self.x.shape[1], -1, -1)

    def start(self, random_start: bool, gen: torch.Generator) -> torch.Tensor:
        if random_start:
            return self.project(self.budget.random_start(self.x[:, :1], generator=gen))
        return torch.zeros_like(self.x[:, :1])

    def start_from(self, init: torch.Tensor) -> torch.Tensor:
        return self.project(init.detach().to(device=self.x.device, dtype=self.x.dtype).mean(dim=1, keepdim=True))

    def image(self, p: torch.Tensor) -> torch.Tensor:
        return self.x + self._grey(p)

    def delta(self, p: torch.Tensor) -> torch.Tensor:
        return self._grey(p)

    def project(self, p: torch.Tensor) -> torch.Tensor:
        # the feasible set's projection (mask, budget, [0,1]) of the grey change, averaged back to
        # one channel, then kept where no channel leaves [0,1]: grey and feasible
        q = self.constrain(self._grey(p)).mean(dim=1, keepdim=True)
        return torch.maximum(torch.minimum(q, self.hi), self.lo)


def parameterisation(x: torch.Tensor, budget: Budget, constrain: Callable, lowres: int, color: str = "rgb") -> DeltaParam:
    if color == "luma":
        return LumaParam(x, budget, constrain)
    return LowResParam(x, budget, constrain, lowres) if lowres > 1 else DeltaParam(x, budget, constrain)
