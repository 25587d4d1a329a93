"""Perturbation budgets: the one place where /255 units become [0,1] image units.

Public code speaks of ``eps`` in /255 pixel units (``eps=8`` means 8/255 in [0,1] image
space). Every conversion goes through :class:`Budget`; the engine and the API never divide
by 255 themselves.

Norms
-----
``linf``  every pixel channel changes by at most ``eps/255``.
``l2``    the root-mean-square change over all pixel channels is at most ``eps/255``,
          i.e. ``||delta||_2 <= eps/255 * sqrt(3*H*W)``. Stating the L2 budget as an RMS in
          the same /255 unit keeps it independent of the image size, so one number means
          the same at the working size and at the native size.

A norm is three hooks (random start, step direction, projection), as in foolbox.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NORMS = ("linf", "l2")
#: Largest eps accepted, in /255 units. Beyond this a "protection" is a visible edit.
MAX_EPS = 64.0


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, shaped [B,1,1,1] for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


@dataclass(frozen=True)
class Budget:
    """A perturbation budget ``eps`` (in /255 units) under a norm (``linf`` or ``l2``)."""

    eps: float
    norm: str = "linf"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; valid norms: {', '.join(NORMS)}")
        try:
            eps = float(self.eps)
        except (TypeError, ValueError):
            raise ValueError(f"eps must be a number in /255 units (e.g. 8), got {self.eps!r}") from None
        if not math.isfinite(eps) or eps <= 0:
            raise ValueError(
                f"eps must be > 0 in /255 pixel units (eps=8 means 8/255 per pixel), got {self.eps!r}"
            )
        if eps > MAX_EPS:
            raise ValueError(
                f"eps={eps:g}/255 is too large for an invisible protection (max {MAX_EPS:g}); "
                "eps is in /255 pixel units: did you pass a [0,1] value times 255 twice, "
                "or mean eps=8 (8/255)?"
            )
        object.__setattr__(self, "eps", eps)

    @property
    def radius(self) -> float:
        """eps in [0,1] image units (per pixel for linf, RMS for l2)."""
        return self.eps / 255.0

    def _l2_radius(self, delta: torch.Tensor) -> float:
        return self.radius * math.sqrt(delta[0].numel())

    # -- the three hooks ------------------------------------------------------------
    def random_start(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random delta drawn uniformly from the budget ball (same shape as ``like``)."""
        if self.norm == "linf":
            u = torch.rand(like.shape, generator=generator, device="cpu", dtype=torch.float32)
            return ((u * 2 - 1) * self.radius).to(like.device)
        g = torch.randn(like.shape, generator=generator, device="cpu", dtype=torch.float32)
        g = g / _per_sample_norm(g).clamp_min(1e-12)
        n = g[0].numel()
        r = torch.rand((like.shape[0],) + (1,) * (like.dim() - 1), generator=generator, dtype=torch.float32)
        r = r ** (1.0 / n)
        return (g * r * self._l2_radius(like)).to(like.device)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest-ascent direction of unit size under the norm (sign for linf)."""
        if self.norm == "linf":
            return grad.sign()
        # normalised so that a step of size alpha moves the RMS by alpha
        n = math.sqrt(grad[0].numel())
        return grad / _per_sample_norm(grad).clamp_min(1e-20) * n

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        """Project delta onto the budget ball."""
        if self.norm == "linf":
            return delta.clamp(-self.radius, self.radius)
        r = self._l2_radius(delta)
        norm = _per_sample_norm(delta)
        factor = torch.where(norm > r, r / norm.clamp_min(1e-20), torch.ones_like(norm))
        return delta * factor

    # -- measurement -----------------------------------------------------------------
    def measure(self, delta: torch.Tensor) -> torch.Tensor:
        """The size of each sample's delta in this budget's units (/255): [B]."""
        if self.norm == "linf":
            return delta.detach().abs().flatten(1).amax(dim=1) * 255.0
        d = delta.detach().flatten(1)
        return d.pow(2).mean(dim=1).sqrt() * 255.0

    def holds(self, delta: torch.Tensor, tol: float = 1e-4) -> bool:
        """True when every sample is inside the budget (tolerance in /255 units)."""
        return bool((self.measure(delta) <= self.eps + tol).all())


def linf_in_255(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample max |a-b| in /255 units, for [0,1] images shaped [B,3,H,W]."""
    return (a.detach().float() - b.detach().float()).abs().flatten(1).amax(dim=1) * 255.0


def quantize(x: torch.Tensor, x_adv: torch.Tensor, budget: Budget) -> torch.Tensor:
    """Round ``x_adv`` to the 8-bit grid while keeping it inside ``budget`` around ``x``.

    ``x`` may itself be off the 8-bit grid (a float input). For linf every pixel is rounded
    to the nearest level inside ``[x - eps, x + eps]`` (that interval always holds one when
    eps >= 1/255). For l2 the delta is shrunk until the rounded result fits.
    The result is on the 8-bit grid, so saving it as 8-bit changes nothing.
    """
    x = x.float()
    x_adv = x_adv.float()
    if budget.norm == "linf":
        lo = torch.ceil(((x - budget.radius) * 255.0 - 1e-4).clamp(0, 255))
        hi = torch.floor(((x + budget.radius) * 255.0 + 1e-4).clamp(0, 255))
        q = torch.round(x_adv * 255.0)
        q = torch.maximum(torch.minimum(q, hi), lo)
        # an interval with no level in it (eps < 1/255 and x off-grid): nearest level to x
        empty = lo > hi
        q = torch.where(empty, torch.round(x * 255.0), q)
        return q / 255.0
    delta = x_adv - x
    out = torch.round((x + delta).clamp(0, 1) * 255.0) / 255.0
    for _ in range(30):
        bad = budget.measure(out - x) > budget.eps + 1e-6
        if not bool(bad.any()):
            break
        delta = torch.where(bad.view(-1, 1, 1, 1), delta * 0.9, delta)
        out = torch.round((x + delta).clamp(0, 1) * 255.0) / 255.0
    bad = budget.measure(out - x) > budget.eps + 1e-6
    if bool(bad.any()):  # give those samples back unchanged (rounded only)
        out = torch.where(bad.view(-1, 1, 1, 1), torch.round(x * 255.0) / 255.0, out)
    return out
