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

Perceptual budget (``budget="jnd"``)
-----------------------------------
Inside the hard cap ``eps`` a per-pixel radius map says how much each pixel may change, from a
just-noticeable-difference (JND) model of the original (:func:`jnd_map`): luminance adaptation
and texture masking of Chou & Li (1995), combined by the nonlinear additivity model of Yang et
al. (2005). The change goes where texture hides it and stays small on flat areas; there, where
the eye sees structure first, the projection also takes out the change's local mean (its low
frequencies), so what is left on a flat area is fine-grained. The map is computed once per
image at its native size (:meth:`Budget.perceptual`) and resized, never above its own values,
to the working size (:meth:`Budget.resized`). ``measure`` still reports the largest change
(<= ``eps``); ``holds`` also checks the map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

NORMS = ("linf", "l2")
#: Budget kinds of the public ``budget=`` option: the plain per-pixel cap, or the perceptual map under it.
BUDGETS = ("jnd", "linf")
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
    #: per-pixel radius [B or 1,1,H,W] in [0,1] units, each <= eps/255 (the perceptual budget); None: eps everywhere
    radius_map: torch.Tensor | None = field(default=None, compare=False, repr=False)
    #: [B or 1,1,H,W] in [0,1]: how much of the change's local mean the projection removes (1 on flat areas)
    flat_weight: torch.Tensor | None = field(default=None, compare=False, repr=False)
    #: [B or 1,1,H,W] in [0,1]: how much of the local mean of the change's colour (the change less
    #: its grey part) the projection removes: 1 on the irises (:func:`eye_weight`), so that the
    #: eyes keep their colour; None: nowhere
    colour_weight: torch.Tensor | None = field(default=None, compare=False, repr=False)

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
        if self.radius_map is not None and self.norm != "linf":
            raise ValueError("the perceptual budget (budget='jnd') is a per-pixel cap: use it with norm='linf'")

    # -- the perceptual budget -----------------------------------------------------------
    @classmethod
    def perceptual(cls, x: torch.Tensor, eps: float, scale: float = 1.0, floor: float = 0.5,
                   psnr_floor: float | None = None, texture_scale: float = 1.0) -> "Budget":
        """The perceptual budget of images ``x`` ([B,3,H,W] in [0,1], native size): each pixel
        may change by ``scale * min(jnd_map(x), contrast_masking_map(x))`` /255, at most ``eps``
        and at least ``floor`` (never above ``eps``), and ``texture_scale`` times that where the
        photo is textured (:func:`texture_weight`; smooth areas keep their radius); then, per
        image, the whole map is scaled down where needed so that no change inside it can bring
        the PSNR below ``psnr_floor`` (default :data:`PSNR_FLOOR`; dark photos, where the eye
        forgives most, would otherwise allow the most)."""
        eps = cls(eps).eps  # validated
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"jnd_scale must be a number > 0, got {scale!r}")
        check_texture_scale(texture_scale)
        x = x.detach()
        r = torch.minimum(jnd_map(x), contrast_masking_map(x)) * float(scale)
        r = r.clamp(min=min(float(floor), eps), max=eps) / 255.0
        sd = luminance_std_255(x)  # one 7x7 std for both weights
        if float(texture_scale) != 1.0:
            r = (r * (1 + (float(texture_scale) - 1) * _texture_from_std(sd))).clamp(max=eps / 255.0)
        return cls(eps, "linf", radius_map=with_psnr_floor(r, psnr_floor), flat_weight=_flat_from_std(sd))

    @property
    def perceptual_map(self) -> bool:
        return self.radius_map is not None

    def scaled(self, factor: float) -> "Budget":
        """This budget with its radius map ``factor`` times wider, never over ``eps`` (a plain
        budget is returned as it is): the room :func:`imguard.visibility.within_gate` amplifies in for ``gate="fill"``."""
        if self.radius_map is None:
            return self
        return replace(self, radius_map=(self.radius_map * float(factor)).clamp(max=self.radius))

    def weighted(self, weight: torch.Tensor) -> "Budget":
        """This budget with each pixel's radius multiplied by ``weight`` ([B or 1,1,H,W] in [0,1],
        resized bilinearly to the map's size): where the change may go (``extent="face"``). A
        plain linf budget becomes the map ``eps * weight``; an l2 budget has no per-pixel radius."""
        if self.norm != "linf":
            raise ValueError("extent='face' weights a per-pixel cap: use it with norm='linf'")
        w = weight.detach().float().clamp(0, 1)
        r = self.radius_map if self.radius_map is not None else torch.full_like(w[:1], self.radius)
        if tuple(w.shape[-2:]) != tuple(r.shape[-2:]):
            w = F.interpolate(w, size=tuple(r.shape[-2:]), mode="bilinear", align_corners=False)
        # never below half a level (the perceptual map's own floor): rounding a float image to the
        # 8-bit grid stays inside, and a pixel of an 8-bit image with weight 0 cannot move a level
        return replace(self, radius_map=torch.maximum(r * w.to(r.device, r.dtype), r.clamp(max=0.5 / 255)))

    def keeping_colour(self, weight: torch.Tensor | None) -> "Budget":
        """This budget with :attr:`colour_weight` ``weight`` ([B or 1,1,H,W] in [0,1]; resized
        bilinearly to the map's size). Only the perceptual budget (a per-pixel map) takes it."""
        if weight is None or self.radius_map is None or self.norm != "linf":
            return self
        w = weight.detach().float().clamp(0, 1)
        if tuple(w.shape[-2:]) != tuple(self.radius_map.shape[-2:]):
            w = F.interpolate(w, size=tuple(self.radius_map.shape[-2:]), mode="bilinear", align_corners=False)
        return replace(self, colour_weight=w.to(self.radius_map.device))

    def resized(self, size: tuple[int, int]) -> "Budget":
        """This budget for images of ``size`` (H, W): the radius map is pooled by its minimum
        when shrunk (no pixel gets more than the native map allowed around it), resized
        bilinearly when grown."""
        if self.radius_map is None or tuple(self.radius_map.shape[-2:]) == tuple(size):
            return self
        return replace(self, radius_map=_resize_map(self.radius_map, size, shrink="min"),
                       flat_weight=_resize_map(self.flat_weight, size, shrink="mean"),
                       colour_weight=_resize_map(self.colour_weight, size, shrink="max"))

    def rows(self, r0: int, r1: int) -> "Budget":
        """This budget for rows ``r0:r1`` of its image (for work done in bands)."""
        return self.region(r0, r1, None, None)

    def region(self, y0: int | None, y1: int | None, x0: int | None, x1: int | None) -> "Budget":
        """This budget for the part ``[y0:y1, x0:x1]`` of its image (a face region)."""
        if self.radius_map is None:
            return self
        return replace(self, radius_map=self.radius_map[..., y0:y1, x0:x1], **self._weights(lambda m: m[..., y0:y1, x0:x1]))

    def sample(self, i: int) -> "Budget":
        """This budget for image ``i`` of its batch alone."""
        if self.radius_map is None or self.radius_map.shape[0] == 1:
            return self
        return replace(self, radius_map=self.radius_map[i : i + 1], **self._weights(lambda m: m[i : i + 1] if m.shape[0] > 1 else m))

    def to(self, device: torch.device | str) -> "Budget":
        if self.radius_map is None:
            return self
        return replace(self, radius_map=self.radius_map.to(device), **self._weights(lambda m: m.to(device)))

    def _weights(self, fn) -> dict:
        """The weight maps (``flat_weight``, ``colour_weight``), each through ``fn``; None stays None."""
        return {k: None if getattr(self, k) is None else fn(getattr(self, k)) for k in ("flat_weight", "colour_weight")}

    def _radius_like(self, delta: torch.Tensor):
        """The per-pixel radius for ``delta`` (a float for a plain budget)."""
        if self.radius_map is None:
            return self.radius
        r = self.radius_map
        if tuple(r.shape[-2:]) != tuple(delta.shape[-2:]):
            r = _resize_map(r, tuple(delta.shape[-2:]), shrink="min")
        return r.to(device=delta.device, dtype=delta.dtype)

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
            return (u * 2 - 1).to(like.device) * self._radius_like(like)
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
        """Project delta onto the budget ball (for the perceptual budget: the local mean of the
        change taken out on flat areas, then each pixel clamped to its radius)."""
        if self.norm == "linf":
            if self.radius_map is None:
                return delta.clamp(-self.radius, self.radius)
            r = self._radius_like(delta)
            if self.flat_weight is not None and min(delta.shape[-2:]) >= 5:
                w = self.flat_weight
                if tuple(w.shape[-2:]) != tuple(delta.shape[-2:]):
                    w = _resize_map(w, tuple(delta.shape[-2:]), shrink="mean")
                delta = delta - w.to(delta.device, delta.dtype) * _local_mean(delta)
            if self.colour_weight is not None and delta.shape[1] == 3 and min(delta.shape[-2:]) >= 5:
                c = self.colour_weight
                if tuple(c.shape[-2:]) != tuple(delta.shape[-2:]):
                    c = _resize_map(c, tuple(delta.shape[-2:]), shrink="max")
                delta = _without_colour(delta, c.to(delta.device, delta.dtype))
            return torch.maximum(torch.minimum(delta, r), -r)
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
        """True when every sample is inside the budget (and every pixel inside its radius map;
        tolerance in /255 units)."""
        return self.sized(delta, tol)[1]

    def sized(self, delta: torch.Tensor, tol: float = 1e-4) -> tuple[torch.Tensor, bool]:
        """(:meth:`measure`, :meth:`holds`) of ``delta`` at once: for linf from one ``abs``."""
        if self.norm != "linf":
            size = self.measure(delta)
            return size, bool((size <= self.eps + tol).all())
        moved = delta.detach().abs()
        size = moved.flatten(1).amax(dim=1) * 255.0
        if not bool((size <= self.eps + tol).all()):
            return size, False
        if self.radius_map is None:
            return size, True
        return size, bool((moved <= self._radius_like(moved) + tol / 255.0).all())


# -- the just-noticeable-difference model ----------------------------------------------------
# Chou & Li, "A perceptually tuned subband image coder based on the measure of
# just-noticeable-distortion profile", IEEE TCSVT 5(6), 1995: background luminance (a 5x5
# weighted mean), the largest of four directional 5x5 gradients, a luminance-adaptation and a
# spatial-masking threshold. Yang et al., "Just noticeable distortion model and its
# applications in video coding", Signal Processing: Image Communication 20(7), 2005: the two
# combined by the nonlinear additivity model, JND = T_l + T_t - C * min(T_l, T_t), C = 0.3.
_BG = [[1, 1, 1, 1, 1], [1, 2, 2, 2, 1], [1, 2, 0, 2, 1], [1, 2, 2, 2, 1], [1, 1, 1, 1, 1]]
_GRADS = [
    [[0, 0, 0, 0, 0], [1, 3, 8, 3, 1], [0, 0, 0, 0, 0], [-1, -3, -8, -3, -1], [0, 0, 0, 0, 0]],
    [[0, 0, 1, 0, 0], [0, 8, 3, 0, 0], [1, 3, 0, -3, -1], [0, 0, -3, -8, 0], [0, 0, -1, 0, 0]],
    [[0, 0, 1, 0, 0], [0, 0, 3, 8, 0], [-1, -3, 0, 3, 1], [0, -8, -3, 0, 0], [0, 0, -1, 0, 0]],
    [[0, 1, 0, -1, 0], [0, 3, 0, -3, 0], [0, 8, 0, -8, 0], [0, 3, 0, -3, 0], [0, 1, 0, -1, 0]],
]
NAMM_OVERLAP = 0.3


def jnd_map(x: torch.Tensor) -> torch.Tensor:
    """Just-noticeable difference of each pixel of ``x`` ([B,3,H,W] in [0,1]), in /255 units:
    [B,1,H,W]. Small (about 3/255) on flat mid-grey, larger on texture and edges and in the
    dark. See the comment above for the model."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"jnd_map expects images shaped [B,3,H,W], got {tuple(x.shape)}")
    y = luminance(x.float()) * 255.0
    yp = F.pad(y, (2, 2, 2, 2), mode="replicate")
    kernels = torch.cat([torch.tensor(_BG, dtype=torch.float32) / 32.0, torch.tensor(_GRADS, dtype=torch.float32).flatten(0, 1) / 16.0])
    bg_g = F.conv2d(yp, kernels.view(5, 1, 5, 5).to(x.device))  # one pass: the background and the four gradients
    bg = bg_g[:, :1]
    mg = bg_g[:, 1:].abs().amax(dim=1, keepdim=True)
    lum = torch.where(bg <= 127, 17.0 * (1 - (bg / 127.0).clamp_min(0).sqrt()) + 3.0, 3.0 / 128.0 * (bg - 127.0) + 3.0)
    tex = (mg * (0.0001 * bg + 0.115) + (0.5 - 0.01 * bg)).clamp_min(0)
    return lum + tex - NAMM_OVERLAP * torch.minimum(lum, tex)


#: the structural similarity each pixel's neighbourhood keeps under a change at the contrast-masking bound
SSIM_TARGET = 0.965
_SSIM_C2 = (0.03 * 255.0) ** 2  # SSIM's contrast constant, in (/255)^2


def gaussian_smooth(z: torch.Tensor, size: int, sigma: float, border: str = "reflect") -> torch.Tensor:
    """The fixed Gaussian smoothing of the maps and measures (no gradient; the attack's blur
    transform is :func:`imguard.transforms.gaussian_blur`, differentiable). Equal to float
    rounding to ``kornia.filters.gaussian_blur2d(z, (size, size), (sigma, sigma),
    border_type=border)``: the image is padded once (``border``: ``"reflect"`` or
    ``"replicate"``) and convolved by the two 1-D kernels, on a CPU channels-last (oneDNN's fast
    layout for depthwise convolutions), where kornia pads before each pass: about twice as fast
    on a big photo."""
    r = size // 2
    with torch.no_grad():
        return gaussian_valid(conv_layout(F.pad(z, (r, r, r, r), mode=border)), size, sigma)


def conv_layout(z: torch.Tensor) -> torch.Tensor:
    """``z`` (a padded image) in the memory layout :func:`gaussian_valid`'s depthwise convolutions
    are fastest in: channels-last on a CPU (oneDNN), as it is elsewhere."""
    return z.contiguous(memory_format=torch.channels_last if z.device.type == "cpu" else torch.contiguous_format)


def gaussian_valid(zp: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """The ``size`` x ``size`` Gaussian (kornia's kernel) of an image already padded by
    ``size // 2`` on every side: the two 1-D passes, each channel on its own, the 'valid' part
    (the image's own size)."""
    from kornia.filters import get_gaussian_kernel1d

    C = zp.shape[1]
    k = get_gaussian_kernel1d(size, sigma, device=zp.device, dtype=zp.dtype)
    return F.conv2d(F.conv2d(zp, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C),
                    k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def contrast_masking_map(x: torch.Tensor, target: float | None = None) -> torch.Tensor:
    """Contrast masking, in /255: the largest change per pixel (RMS over its neighbourhood) that
    keeps the local structural similarity (Wang et al., "Image quality assessment: from error
    visibility to structural similarity", IEEE TIP 13(4), 2004) at ``target``. For a change of
    variance n^2 uncorrelated with the image, SSIM's contrast-structure term is
    (2 s^2 + C2) / (2 s^2 + n^2 + C2) with s the local standard deviation (SSIM's 11x11
    Gaussian window, sigma 1.5), so n^2 <= (2 s^2 + C2)(1/target - 1): about 1.5/255 on a flat
    area, growing in proportion to the local contrast on texture. The smallest of the three
    channels counts. [B,1,H,W]."""
    xf = x.float() * 255.0
    mu = gaussian_smooth(xf, 11, 1.5, "replicate")
    var = (gaussian_smooth(xf * xf, 11, 1.5, "replicate") - mu * mu).clamp_min(0)
    target = SSIM_TARGET if target is None else float(target)
    bound = ((2 * var + _SSIM_C2) * (1.0 / target - 1.0)).sqrt()
    return bound.amin(dim=1, keepdim=True)


#: No change inside a perceptual budget brings an image's PSNR below this (dB): the gate's 36 plus a margin.
PSNR_FLOOR = 37.0


def with_psnr_floor(radius: torch.Tensor, psnr_floor: float | None = None) -> torch.Tensor:
    """``radius`` ([B,1,H,W] in [0,1] units) scaled down per image where its RMS exceeds what
    ``psnr_floor`` allows: since |delta| <= radius, MSE <= mean(radius^2), so any change inside
    the result keeps PSNR >= psnr_floor (quantisation included: it stays inside the radius)."""
    floor = PSNR_FLOOR if psnr_floor is None else float(psnr_floor)
    rms_max = 10.0 ** (-floor / 20.0)
    rms = radius.float().pow(2).flatten(1).mean(1).sqrt().view(-1, 1, 1, 1)
    return radius * (rms_max / rms.clamp_min(1e-12)).clamp(max=1.0)


#: Below this 7x7 local luminance standard deviation (in /255) a pixel counts as flat (the
#: perceptual budget's flat weight and the flat-region measure of imguard.visibility alike)
FLAT_STD = 3.0
#: Below this one a pixel counts as smooth: :func:`imguard.visibility.added_texture` looks there,
#: and :func:`texture_weight` starts above it (smooth skin and backgrounds are below it)
SMOOTH_STD = 10.0


def luminance(x: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W] luminance (0.299 R + 0.587 G + 0.114 B) of [B,3,H,W] RGB."""
    w = torch.tensor((0.299, 0.587, 0.114), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _window_counts(n: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """How many of the ``size`` window's places along an axis of ``n`` fall inside it, per index."""
    p = size // 2
    i = torch.arange(n, device=like.device)
    return ((i + p).clamp(max=n - 1) - (i - p).clamp(min=0) + 1).to(like.dtype)


def box_mean(z: torch.Tensor, size: int) -> torch.Tensor:
    """The mean of ``z`` [B,C,H,W] over a ``size`` x ``size`` window centred on each pixel, ``size``
    odd (borders: the pixels inside the image only), as ``F.avg_pool2d(z, size, 1, size // 2,
    count_include_pad=False)`` computes it, equal to float rounding. A box is separable, and its
    sums are ``size - 1`` shifted additions per axis: on a CPU about 9 times faster than the
    pooling (which a 12-megapixel photo's perceptual map and visibility measure spend most of
    their time in)."""
    p = size // 2
    H, W = z.shape[-2:]
    zp = F.pad(z, (0, 0, p, p))
    rows = zp[..., 0:H, :].clone()
    for k in range(1, size):
        rows.add_(zp[..., k : k + H, :])
    rp = F.pad(rows, (p, p, 0, 0))
    out = rp[..., 0:W].clone()
    for k in range(1, size):
        out.add_(rp[..., k : k + W])
    return out / (_window_counts(H, size, z).view(-1, 1) * _window_counts(W, size, z).view(1, -1))


def local_std(y: torch.Tensor, size: int = 7) -> torch.Tensor:
    """Standard deviation of ``y`` [B,1,H,W] over a ``size`` x ``size`` window (borders: the
    pixels inside the image only)."""
    both = box_mean(torch.cat([y, y * y], 1), size)
    mu, m2 = both[:, : y.shape[1]], both[:, y.shape[1] :]
    return (m2 - mu * mu).clamp_min(0).sqrt()


#: :func:`texture_weight` rises from 0 at this 7x7 luminance std (/255; where
#: :func:`imguard.visibility.added_texture` stops looking: smooth skin and backgrounds are below it)
TEXTURE_FROM = SMOOTH_STD
#: ... to 1 at this one (hair, eyelashes, brows, fabric, edges)
TEXTURE_FULL = 20.0
#: the largest ``texture_scale`` accepted
MAX_TEXTURE_SCALE = 4.0


def check_texture_scale(texture_scale: float) -> float:
    t = float(texture_scale)
    if not (math.isfinite(t) and 1.0 <= t <= MAX_TEXTURE_SCALE):
        raise ValueError(f"texture_scale must be a factor between 1 and {MAX_TEXTURE_SCALE:g} (how much wider the perceptual "
                         f"map is where the photo is textured; 1 = as the JND model says), got {texture_scale!r}")
    return t


def texture_weight(x: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W] in [0,1]: 0 where ``x`` is smooth (7x7 luminance std <= :data:`TEXTURE_FROM`/255),
    rising linearly to 1 at :data:`TEXTURE_FULL`/255: where ``texture_scale`` widens the
    perceptual map. Texture masks a change (Legge & Foley, "Contrast masking in human vision",
    JOSA 70(12), 1980: the threshold rises with the masker's contrast); the JND model's
    spatial-masking term grows with the local gradient only slowly. On ``high``, twice the map
    here (smooth areas unchanged) raised dlib's distance after TAESD on the two dev portraits from
    0.645 / 0.670 to 0.695 / 0.697 with the texture added to smooth areas unchanged
    (docs/benchmarks.md, "Where texture hides it")."""
    return _texture_from_std(luminance_std_255(x))


def luminance_std_255(x: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W]: the 7x7 luminance std of ``x`` ([B,3,H,W] in [0,1]) in /255, what
    :func:`texture_weight` and :func:`flat_weight` read."""
    return local_std(luminance(x.float())) * 255.0


def _texture_from_std(sd: torch.Tensor) -> torch.Tensor:
    return ((sd - TEXTURE_FROM) / (TEXTURE_FULL - TEXTURE_FROM)).clamp(0, 1)


#: where :func:`flat_weight` has faded to 0 (7x7 luminance std, /255)
FLAT_FADE_END = 2 * FLAT_STD


def flat_weight(x: torch.Tensor, upper: float = FLAT_FADE_END) -> torch.Tensor:
    """[B,1,H,W] in [0,1]: 1 where ``x`` is flat (7x7 luminance std <= 3/255), falling linearly
    to 0 at ``upper``/255 (default 6/255)."""
    if not upper > FLAT_STD:
        raise ValueError(f"the flat weight must fade out above {FLAT_STD:g}/255 (where it is full), got {upper:g}")
    return _flat_from_std(luminance_std_255(x), upper)


def _flat_from_std(sd: torch.Tensor, upper: float = FLAT_FADE_END) -> torch.Tensor:
    span = upper - FLAT_STD
    return (upper / span - sd / span).clamp(0, 1)  # at the default, exactly 2 - sd/3 (the map every preset was measured with)


def _local_mean(d: torch.Tensor) -> torch.Tensor:
    """The change's local mean: a 5x5 box average per channel (borders: pixels inside only)."""
    return box_mean(d, 5)


def _without_colour(delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``delta`` [B,3,H,W] less ``weight`` [B or 1,1,H,W] times the local mean of its colour (the
    change less its grey part). The weight is zero but for a few small disks (the eyes), so the
    local mean is computed only in the box around them (widened by the 5x5 window's half: the
    same values as over the whole image); a 12-megapixel photo pays for the eyes, not the photo."""
    H, W = delta.shape[-2:]
    on = weight.detach().amax(dim=(0, 1)) > 0
    rows, cols = torch.nonzero(on.any(1)).flatten(), torch.nonzero(on.any(0)).flatten()
    if rows.numel() == 0:
        return delta
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    p = 2  # the 5x5 window's half
    Y0, Y1, X0, X1 = max(0, y0 - p), min(H, y1 + p), max(0, x0 - p), min(W, x1 + p)
    d = delta[..., Y0:Y1, X0:X1]
    mean = _local_mean(d - d.mean(dim=1, keepdim=True))[..., y0 - Y0 : y1 - Y0, x0 - X0 : x1 - X0]
    return delta - F.pad(weight[..., y0:y1, x0:x1] * mean, (x0, W - x1, y0, H - y1))


#: the disk around each eye landmark whose colour the perceptual budget keeps, as a share of the
#: distance between the eyes: the iris and the pupil (benchmarks/eye_colour.py's disk). 0.2 (the
#: eye white and lids too) cost 3 of 7 hidden faces on 8 at 256 px, 0.12 one (docs/evaluation.md)
EYE_RADIUS = 0.12


def eye_weight(faces, shape: tuple[int, int], radius: float = EYE_RADIUS, merged: bool = False) -> torch.Tensor | None:
    """[B,1,H,W] in {0,1}: 1 within ``radius`` times the eye distance of each eye landmark of
    each face found (``faces``: one Face or None per image, landmarks in pixels of ``shape``); None
    when no face was found. The perceptual budget's projection keeps the change's colour locally
    zero-mean there (:attr:`Budget.colour_weight`): a change of the irises' colour is what the
    gate does not see (docs/evaluation.md, "The colour of the eyes"). ``merged``: ``faces`` are
    the faces of one image, all drawn in one map [1,1,H,W]."""
    H, W = (int(v) for v in shape)
    found = [f is not None and getattr(f, "found", True) and getattr(f, "landmarks", None) is not None for f in faces]
    if not any(found):
        return None
    out = torch.zeros(1 if merged else len(faces), 1, H, W)
    for i, (f, ok) in enumerate(zip(faces, found)):
        if not ok:
            continue
        b = 0 if merged else i
        lm = np.asarray(f.landmarks, np.float32)
        r = float(radius) * float(np.linalg.norm(lm[1] - lm[0]))
        for ex, ey in lm[:2]:
            # the disk, drawn in its own box only (a big photo's few eyes cost their pixels)
            y0, y1 = max(0, int(np.floor(ey - r))), min(H, int(np.ceil(ey + r)) + 1)
            x0, x1 = max(0, int(np.floor(ex - r))), min(W, int(np.ceil(ex + r)) + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            yy = torch.arange(y0, y1, dtype=torch.float32)[:, None]
            xx = torch.arange(x0, x1, dtype=torch.float32)[None, :]
            disk = (((xx - float(ex)) ** 2 + (yy - float(ey)) ** 2) <= r * r).float()
            out[b, 0, y0:y1, x0:x1] = torch.maximum(out[b, 0, y0:y1, x0:x1], disk)
    return out


#: where the change may go (``extent=``): anywhere, or only in and around each face
EXTENTS = ("image", "face")
#: extent="face": the weight falls from 1 to 0 over this share of the widened box's short side
EXTENT_FEATHER = 0.1


def face_extent(faces, shape: tuple[int, int], scale: float, feather: float = EXTENT_FEATHER) -> torch.Tensor:
    """[B,1,H,W] in [0,1]: where the change may go for ``extent="face"``: 1 inside each face's
    box (``faces``: one :class:`~imguard.models.Face` per image, in pixels of an image of
    ``shape`` (H, W)) widened ``scale`` times about its centre, falling smoothly to 0 over its
    last ``feather`` share; 1 everywhere for an image whose face was not found (its centre-crop
    fall-back is a guess, not a face). The change outside a face buys little and shows most:
    kept only inside the face box widened 1.6 times, ``high``'s change (filled 1.25 times) kept
    most of its effect on dlib's full pipeline (11/12 faces hidden after TAESD, 6/12 after
    JPEG-75 first, as unmasked; the distance 0.02 lower) with PSNR 37.3 -> 39.4 dB; optimised
    under it, ``high`` loses about as much (docs/benchmarks.md, "Where the change goes")."""
    H, W = int(shape[0]), int(shape[1])
    out = torch.ones(len(faces), 1, H, W)
    ys = torch.arange(H, dtype=torch.float32).view(H, 1) + 0.5
    xs = torch.arange(W, dtype=torch.float32).view(1, W) + 0.5
    for i, f in enumerate(faces):
        if f is None or not getattr(f, "found", True):
            continue
        x0, y0, x1, y1 = [float(v) for v in f.box]
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * scale / 2, (y1 - y0) * scale / 2
        ramp = max(2.0, feather * 2 * min(hw, hh))

        def edge(d: torch.Tensor) -> torch.Tensor:  # distance inside the edge -> weight, smoothstep
            t = (d / ramp).clamp(0, 1)
            return t * t * (3 - 2 * t)
        out[i, 0] = edge(hh - (ys - cy).abs()) * edge(hw - (xs - cx).abs())
    return out


def _resize_map(m: torch.Tensor | None, size: tuple[int, int], shrink: str) -> torch.Tensor | None:
    if m is None:
        return None
    H, W = m.shape[-2:]
    if size[0] <= H and size[1] <= W:
        if shrink == "min":
            return -F.adaptive_max_pool2d(-m, size)
        if shrink == "max":
            return F.adaptive_max_pool2d(m, size)
        return F.adaptive_avg_pool2d(m, size)
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


def linf_in_255(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample max |a-b| in /255 units, for [0,1] images shaped [B,3,H,W]."""
    return (a.detach().float() - b.detach().float()).abs().flatten(1).amax(dim=1) * 255.0


def quantize(x: torch.Tensor, x_adv: torch.Tensor, budget: Budget) -> torch.Tensor:
    """Round ``x_adv`` to the 8-bit grid while keeping it inside ``budget`` around ``x``.

    ``x`` may itself be off the 8-bit grid (a float input). For linf every pixel is rounded
    to the nearest level inside ``[x - eps, x + eps]`` (that interval always holds one when
    eps >= 1/255; for a perceptual budget, each pixel's own radius, where a radius under
    1/255 may leave the pixel as it was). For l2 the delta is shrunk until the rounded result fits.
    The result is on the 8-bit grid, so saving it as 8-bit changes nothing.
    """
    x = x.float()
    x_adv = x_adv.float()
    if budget.norm == "linf":
        r = budget._radius_like(x)
        lo = torch.ceil(((x - r) * 255.0 - 1e-4).clamp(0, 255))
        hi = torch.floor(((x + r) * 255.0 + 1e-4).clamp(0, 255))
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
    if (h, w) == (H, W):
        return delta[:, :, r0:r1]
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
    budget = budget.resized((H, W))
    for r0 in range(0, H, band_rows):
        r1 = min(H, r0 + band_rows)
        xb = x[:, :, r0:r1].to(dev, torch.float32)
        bb = budget.rows(r0, r1).to(dev)
        d = _rows_upsampled(delta.float(), r0, r1, H, W)
        mb = mask[:, :, r0:r1].to(dev) if mask is not None else None
        if mb is not None:
            d = d * mb
        q = quantize(xb, (xb + bb.project(d)).clamp(0, 1), bb)
        if mb is not None:  # rounding must not touch pixels outside the mask
            q = torch.where(mb.expand_as(q) > 0, q, quantize(xb, xb, bb))
        size, ok = bb.sized(q - xb, tol=1e-3)
        if not ok:
            raise RuntimeError("internal error: the perceptual budget's map was exceeded after quantisation")
        achieved = torch.maximum(achieved, size.to(achieved.device))
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


#: rows of the native image the JND map is computed on at once (bounded memory for big photos)
JND_BAND_ROWS = 256
#: rows each band of the perceptual map reads beyond its own on either side: the widest window
#: of the map (contrast masking's 11x11 Gaussian, radius 5), so bands join without seams
JND_HALO = 8


def perceptual_budget(x: torch.Tensor, eps: float, scale: float = 1.0, band_rows: int | None = None,
                      psnr_floor: float | None = None, texture_scale: float = 1.0) -> Budget:
    """:meth:`Budget.perceptual` of a native-size image, computed in bands of rows (with a halo)
    so a big photo never needs more than a band's worth of temporaries (bands of 256 rows keep
    them in cache: a 12-megapixel map costs about half of what 1024-row bands did on a 2-core
    CPU); the PSNR floor (default :data:`PSNR_FLOOR`) is the whole photo's."""
    rows = band_rows or JND_BAND_ROWS
    H = x.shape[-2]
    if H <= rows:
        return Budget.perceptual(x, eps, scale, psnr_floor=psnr_floor, texture_scale=texture_scale)
    halo = JND_HALO
    maps, weights = [], []
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        a, b = max(0, r0 - halo), min(H, r1 + halo)
        band = Budget.perceptual(x[..., a:b, :].float().contiguous(), eps, scale, psnr_floor=float("-inf"), texture_scale=texture_scale)
        maps.append(band.radius_map[..., r0 - a : r0 - a + (r1 - r0), :])
        weights.append(band.flat_weight[..., r0 - a : r0 - a + (r1 - r0), :])
    return Budget(eps, "linf", radius_map=with_psnr_floor(torch.cat(maps, -2), psnr_floor), flat_weight=torch.cat(weights, -2))
