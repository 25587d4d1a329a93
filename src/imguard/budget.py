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


#: rows of the native-size image processed at once when a delta is mapped back (bounded memory)
BAND_ROWS = 256


def _rows_upsampled(delta: torch.Tensor, r0: int, r1: int, H: int, W: int) -> torch.Tensor:
    """Rows ``r0:r1`` of ``F.interpolate(delta, (H, W), mode="bilinear", align_corners=False)``
    without making the full-size tensor (the same source index rule as PyTorch's)."""
    import torch.nn.functional as F

    h, w = delta.shape[-2:]
    i = torch.arange(r0, r1, device=delta.device, dtype=torch.float64)
    src = ((i + 0.5) * (h / H) - 0.5).clamp(min=0)
    y0 = src.floor().long().clamp(max=h - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    wy = (src - y0.double()).float().view(1, 1, -1, 1)
    rows = delta[:, :, y0] * (1 - wy) + delta[:, :, y1] * wy
    if w == W:
        return rows
    return F.interpolate(rows, size=(r1 - r0, W), mode="bilinear", align_corners=False)


def finalize(x: torch.Tensor, delta: torch.Tensor, budget: Budget, mask: torch.Tensor | None = None,
             band_rows: int = BAND_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """Map a working-size ``delta`` onto the native image ``x`` [B,3,H,W]: upsample, mask,
    project, add, quantize to the 8-bit grid inside the budget.

    Returns (the protected image as uint8 [B,3,H,W] on ``x``'s device, the achieved size [B]
    in /255). For linf every step is per pixel, so it runs in bands of ``band_rows`` rows
    on ``delta``'s device and never holds a full-size float copy; l2 projects the whole image.
    """
    B, _, H, W = x.shape
    dev = delta.device
    if budget.norm != "linf":
        return _finalize_whole(x, delta, budget, mask)
    out = torch.empty((B, 3, H, W), dtype=torch.uint8, device=x.device)
    achieved = torch.zeros(B, device=dev)
    for r0 in range(0, H, band_rows):
        r1 = min(H, r0 + band_rows)
        xb = x[:, :, r0:r1].to(dev, torch.float32)
        d = _rows_upsampled(delta.float(), r0, r1, H, W)
        mb = mask[:, :, r0:r1].to(dev) if mask is not None else None
        if mb is not None:
            d = d * mb
        q = quantize(xb, (xb + budget.project(d)).clamp(0, 1), budget)
        if mb is not None:  # rounding must not touch pixels outside the mask
            q = torch.where(mb.expand_as(q) > 0, q, quantize(xb, xb, budget))
        achieved = torch.maximum(achieved, budget.measure(q - xb))
        out[:, :, r0:r1] = (q * 255.0).round_().to(torch.uint8).to(x.device)
    return out, achieved


def _finalize_whole(x: torch.Tensor, delta: torch.Tensor, budget: Budget, mask: torch.Tensor | None):
    import torch.nn.functional as F

    H, W = x.shape[-2:]
    xd = x.to(delta.device, torch.float32)
    if tuple(delta.shape[-2:]) != (H, W):
        delta = F.interpolate(delta, size=(H, W), mode="bilinear", align_corners=False)
    if mask is not None:
        delta = delta * mask.to(delta.device)
    q = quantize(xd, (xd + budget.project(delta)).clamp(0, 1), budget)
    if mask is not None:
        q = torch.where(mask.to(delta.device).expand_as(q) > 0, q, quantize(xd, xd, budget))
    return (q * 255.0).round_().to(torch.uint8).to(x.device), budget.measure(q - xd)
