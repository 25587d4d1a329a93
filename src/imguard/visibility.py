"""How visible is a protection? One set of measures for every result, table and page.

``psnr``   peak signal-to-noise ratio of the change, dB (higher = less visible)
``ssim``   structural similarity, 11x11 Gaussian window on [0,1] (kornia's arithmetic), mean of the map
``lpips``  learned perceptual distance (AlexNet LPIPS), where its weights load; else None
``flat``   the **flat-region measure**: the change low-passed by a Gaussian (sigma 1.5, 9x9
           kernel), RMS in /255 over all three channels, taken over the pixels where the
           original is flat: the 7x7 local standard deviation of its luminance
           (0.299 R + 0.587 G + 0.114 B) is below ``FLAT_STD`` = 3/255. Structured patterns in
           smooth skin, sky or a blurred background are what people see first; a change that
           is fine-grained there averages out under the low-pass, a swirl does not.
           0 when the photo has no flat pixel (``flat_share`` says how many there were).

The gate for "invisible" that every strength preset passes (see docs/evaluation.md):
``flat <= 1.0``, ``psnr >= 36``, ``ssim >= 0.95``. For scale, on 256 px portraits: JPEG-90
gives 0.54 / 38.4 dB / 0.969; uniform noise of +-4/255 0.57 / 40.0 dB / 0.955.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .budget import FLAT_STD, SMOOTH_STD, conv_layout, gaussian_smooth, gaussian_valid, local_std, luminance

__all__ = ["FLAT_STD", "GATE", "SMOOTH_STD", "Visibility", "added_texture", "flat_mask", "flat_region_change", "visibility", "measure", "ssim_map"]

#: The invisibility gate: flat-region change at most, PSNR and SSIM at least.
GATE = {"flat": 1.0, "psnr": 36.0, "ssim": 0.95}
#: images with a side under this many pixels are measured enlarged by an integer factor (nearest)
MIN_SIDE = 16


@dataclass
class Visibility:
    """What one protected image's change looks like, next to its original."""

    psnr: float  #: dB (inf for no change)
    ssim: float
    flat: float  #: low-passed change over the flat pixels, RMS in /255
    flat_share: float  #: the share of the photo's pixels that are flat
    lpips: float | None = None  #: None where LPIPS weights could not be loaded

    @property
    def invisible(self) -> bool:
        """Passes the gate (:data:`GATE`)."""
        return self.flat <= GATE["flat"] and self.psnr >= GATE["psnr"] and self.ssim >= GATE["ssim"]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["invisible"] = self.invisible
        if math.isinf(self.psnr):
            d["psnr"] = None  # JSON has no inf: None means "no change"
        return d

    def line(self) -> str:
        lp = "" if self.lpips is None else f", LPIPS {self.lpips:.3f}"
        verdict = "invisible" if self.invisible else "VISIBLE"
        return (f"visibility: {verdict} by the gate (PSNR {self.psnr:.1f} dB, SSIM {self.ssim:.3f}, "
                f"flat-region change {self.flat:.2f}/255{lp})")


def flat_mask(x: torch.Tensor, threshold: float = FLAT_STD) -> torch.Tensor:
    """[B,1,H,W] bool: where ``x`` ([B,3,H,W] in [0,1]) is flat (7x7 luminance std < threshold/255)."""
    return local_std(luminance(x.float())) < threshold / 255.0


def _gaussian_lowpass(d: torch.Tensor, sigma: float = 1.5, size: int = 9) -> torch.Tensor:
    return gaussian_smooth(d, size, sigma, "reflect")


def flat_region_change(original: torch.Tensor, protected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: (flat-region measure in /255, flat share). See the module docstring."""
    a, b = original.detach().float(), protected.detach().float().to(original.device)
    t = _band_sums(a, b, 0, a.shape[-2], ssim=False)
    return _flat_of(t), t["flat_n"] / t["pixels"]


#: rows measured at once: bands of this many rows (and a halo of :data:`MEASURE_HALO` rows
#: either side, the widest window of the measures: SSIM's 11x11) keep the temporaries of a big
#: photo in cache; the sums are the whole image's
MEASURE_BAND_ROWS = 256
MEASURE_HALO = 8


def _as_float(t: torch.Tensor) -> torch.Tensor:
    """[0,1] floats of an image (8-bit levels as uint8 divided by 255), contiguous."""
    return t.float().div_(255) if t.dtype == torch.uint8 else t.float().contiguous()


def _band_sums(a: torch.Tensor, b: torch.Tensor, r0: int, r1: int, ssim: bool = True) -> dict:
    """Per sample, over rows ``r0:r1`` of the pair (windows read up to :data:`MEASURE_HALO`
    rows beyond): the sums the measures are made of."""
    H = a.shape[-2]
    h0, h1 = max(0, r0 - MEASURE_HALO), min(H, r1 + MEASURE_HALO)
    ab, bb = a[..., h0:h1, :].contiguous(), _as_float(b[..., h0:h1, :])
    own = slice(r0 - h0, r0 - h0 + (r1 - r0))
    d = bb - ab
    lp = _gaussian_lowpass(d)[..., own, :]
    flat = flat_mask(ab)[..., own, :]
    out = {"sq": d[..., own, :].pow(2).flatten(1).sum(1),
           "flat_sq": (lp.pow(2) * flat).flatten(1).sum(1), "flat_n": flat.flatten(1).sum(1).float(),
           "pixels": torch.full((a.shape[0],), float((r1 - r0) * a.shape[-1]), device=a.device)}
    if ssim:
        out["ssim"] = ssim_map(ab, bb)[..., own, :].flatten(1).sum(1)
    return out


#: SSIM's constants for images in [0,1] (Wang et al. 2004: K1 0.01, K2 0.03) and its window
_C1, _C2, SSIM_WINDOW, SSIM_SIGMA = 0.01**2, 0.03**2, 11, 1.5


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The SSIM map of two images [B,C,H,W] in [0,1] (no gradient): 11x11 Gaussian window, sigma
    1.5, reflected borders: ``kornia.metrics.ssim(a, b, 11, max_val=1.0)`` to float rounding
    (tests hold the two equal). Both images are padded once and, on a CPU, convolved
    channels-last (kornia pads each moment before each of its two passes), and four moments are
    blurred, not five (the denominator needs only the sum of the two variances): well under half
    kornia's time on a big photo."""
    r = SSIM_WINDOW // 2
    a, b = (conv_layout(F.pad(t, (r, r, r, r), mode="reflect")) for t in (a, b))

    def blur(t: torch.Tensor) -> torch.Tensor:  # products of the padded images are the padded products
        return gaussian_valid(t, SSIM_WINDOW, SSIM_SIGMA)

    with torch.no_grad():
        mu1, mu2 = blur(a), blur(b)
        mu12 = mu1 * mu2
        msq = mu1.pow_(2).add_(mu2.pow_(2))
        del mu2
        # the denominator needs only sigma1^2 + sigma2^2: one blur of a^2 + b^2 (blurring is linear)
        var = blur(torch.addcmul(a * a, b, b)).sub_(msq)
        den = msq.add_(_C1).mul_(var.add_(_C2))
        del var
        s12 = blur(a * b).sub_(mu12)
        num = mu12.mul_(2.0).add_(_C1).mul_(s12.mul_(2.0).add_(_C2))
        return num.div_(den.add_(1e-12))


def added_texture(original: torch.Tensor, protected: torch.Tensor, smooth_std: float = SMOOTH_STD) -> torch.Tensor:
    """Per sample [B], in /255: how much texture the change adds where the original is smooth.

    Over the pixels whose original has a 7x7 luminance std below ``smooth_std``/255 (smooth and
    lightly textured skin, sky, a blurred background), the mean rise of that local std from the
    original to the protected image (a fall counts as 0). Not part of the gate: it is the
    measure of what the gate misses (docs/evaluation.md), the faint mottling a zoomed look finds
    on cheeks. A compression smooths (its rise is small), noise and patterns add texture. On the
    two dev portraits at 256 px: JPEG-90 0.08, uniform noise of +-2/255 0.09-0.12, +-4/255
    0.24-0.32, ``high`` 0.23-0.25, ``gate="fill"`` 0.47-0.54 (a mesh a 2x zoom shows), the visible
    pre-perceptual-budget ``medium`` 0.97-1.43. Both images [B,3,H,W] in [0,1]."""
    a = luminance(original.detach().float())
    b = luminance(_as_float(protected.detach().to(original.device)))
    sa, sb = local_std(a), local_std(b)
    smooth = (sa < smooth_std / 255.0).to(sa.dtype)
    rise = (sb - sa).clamp_min(0) * smooth
    return rise.flatten(1).sum(1) / smooth.flatten(1).sum(1).clamp_min(1) * 255.0


def _flat_of(t: dict) -> torch.Tensor:
    n = t["flat_n"]
    rms = (t["flat_sq"] / (3 * n).clamp_min(1)).sqrt() * 255.0  # RMS over the three channels of the flat pixels
    return torch.where(n > 0, rms, torch.zeros_like(rms))


def measure(original: torch.Tensor, protected: torch.Tensor, lpips: Any = None) -> list[Visibility]:
    """Visibility of each pair of a batch ([B,3,H,W] in [0,1]; ``protected`` may also be 8-bit
    levels as uint8, converted band by band). ``lpips``: an :class:`~imguard.metrics.LPIPSMetric`,
    or None to leave LPIPS out. Big photos are measured in bands of rows
    (:data:`MEASURE_BAND_ROWS`), with the same result as the whole image."""
    if original.shape != protected.shape:
        raise ValueError(f"visibility needs the original and the protected image at the same size, "
                         f"got {tuple(original.shape)} and {tuple(protected.shape)}")
    a = original.detach().float()
    b = protected.detach().to(original.device)
    b = b if b.dtype == torch.uint8 else b.float()
    side = min(a.shape[-2:])
    if side < MIN_SIDE:  # too small for SSIM's window: measured enlarged (nearest), which keeps PSNR exact
        k = -(-MIN_SIDE // side)
        a, b = (F.interpolate(_as_float(t), scale_factor=k, mode="nearest") for t in (a, b))
    H = a.shape[-2]
    bands = [_band_sums(a, b, r0, min(H, r0 + MEASURE_BAND_ROWS)) for r0 in range(0, H, MEASURE_BAND_ROWS)]
    t = {k: sum(s[k] for s in bands) for k in bands[0]}
    mse = t["sq"] / (3 * t["pixels"])
    p = 10.0 * torch.log10(1.0 / mse)  # mse == 0 -> inf
    s = t["ssim"] / (3 * t["pixels"])
    fl, share = _flat_of(t), t["flat_n"] / t["pixels"]
    lp = [None] * a.shape[0]
    if lpips is not None:
        with torch.no_grad():
            lp = [float(v) for v in lpips(a, _as_float(b)).flatten()]
    return [Visibility(psnr=float(p[i]), ssim=float(s[i]), flat=float(fl[i]), flat_share=float(share[i]), lpips=lp[i])
            for i in range(a.shape[0])]


_LPIPS: dict = {}


#: torchvision's AlexNet weights, LPIPS' backbone (in torch hub's cache once downloaded)
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def _default_lpips(device: torch.device | str):
    """AlexNet LPIPS on ``device`` where its weights are already in torch hub's cache (cached),
    else None: measuring visibility never starts a download."""
    import os

    key = str(device)
    if key not in _LPIPS:
        _LPIPS[key] = None
        if os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", ALEXNET_FILE)):
            from .metrics import load_lpips_metric

            _LPIPS[key] = load_lpips_metric("alex", device)[0]
    return _LPIPS[key]


def visibility(original: Any, protected: Any, lpips: bool | Any = True) -> Visibility | list[Visibility]:
    """How visible the change from ``original`` to ``protected`` is (PIL, ndarray, tensor or path).

    Returns one :class:`Visibility` for a single image, a list for a batch tensor. ``lpips``:
    True (AlexNet LPIPS where its weights load), False, or an LPIPS metric to use.
    """
    from .io import to_tensor

    a, _ = to_tensor(original, name="the original")
    b, _ = to_tensor(protected, name="the protected image")
    metric = _default_lpips(a.device) if lpips is True else (lpips or None)
    out = measure(a, b, metric)
    return out[0] if len(out) == 1 and not (torch.is_tensor(original) and original.dim() == 4) else out


# -- what the API does with it ----------------------------------------------------------------
#: above this many pixels, a result's visibility is measured on the working-size pair (bounded time and memory)
VISIBILITY_MAX_PIXELS = 16_000_000
#: the gate enforced with this much to spare (flat, PSNR, SSIM), so rounding never tips a result over
GATE_MARGIN = {"flat": 0.05, "psnr": 0.3, "ssim": 0.003}


def of_result(x_native: torch.Tensor, out_native: torch.Tensor, x_work: torch.Tensor, out_work: torch.Tensor,
              seen: list[Visibility] | None = None) -> list[Visibility]:
    """Visibility of each result (``out_native``: 8-bit levels as uint8, or [0,1] floats): PSNR,
    SSIM and the flat-region change at the native size (at the working size above
    :data:`VISIBILITY_MAX_PIXELS`), LPIPS at the working size. ``seen``: those already measured
    (by :func:`within_gate`: at the size its gate measured, the native one for the fast mode at
    any size), one per image: only LPIPS is added to them."""
    H, W = x_native.shape[-2:]
    if seen is not None and len(seen) == x_native.shape[0]:
        seen = list(seen)
    elif H * W <= VISIBILITY_MAX_PIXELS:
        seen = measure(x_native.float(), out_native.to(x_native.device))  # uint8: converted band by band
    else:
        seen = measure(x_work, out_work)
    lp = _default_lpips(x_work.device)
    if lp is not None:
        with torch.no_grad():
            for v, d in zip(seen, lp(x_work.float(), out_work.float()).flatten()):
                v.lpips = float(d)
    return seen


def passes(v: Visibility) -> bool:
    """Inside the gate with :data:`GATE_MARGIN` to spare."""
    return (v.flat <= GATE["flat"] - GATE_MARGIN["flat"] and v.psnr >= GATE["psnr"] + GATE_MARGIN["psnr"]
            and v.ssim >= GATE["ssim"] + GATE_MARGIN["ssim"])


#: gate="fill": the most a result's change is amplified (its map widened as much, never over eps)
FILL_MAX = 2.0


def within_gate(x_native: torch.Tensor, delta: torch.Tensor, budget, mask, out: torch.Tensor, achieved: torch.Tensor,
                tries: int = 7, fill: bool = False, fill_tries: int = 6,
                seen: list | None = None, fill_max: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The gate on each result (``out``, uint8), measured once per image (with :data:`GATE_MARGIN`):

    - ``gate=True``: a result that fails it gets its perturbation scaled down, by bisection on
      the factor in [0, 1], to the largest that passes;
    - ``gate="fill"`` (``fill=True``): also, a result that passes gets its change amplified, by
      bisection on the factor in [1, ``fill_max``] (None: :data:`FILL_MAX`), to the largest that still passes: the
      optimiser chose the direction, the gate sets how far it goes (a change that stopped short
      of the visibility the gate allows protects less than it could). The change is projected
      on the budget with its map widened by the same factor (:meth:`~imguard.budget.Budget.scaled`,
      never over eps); flat areas keep their local mean removed.

    Returns the new (out, achieved). ``seen``: a list that receives, per image, the
    :class:`Visibility` of the result returned, as the gate measured it (LPIPS left out), so a
    caller need not measure a big photo twice.
    """
    from .budget import finalize

    for i in range(x_native.shape[0]):
        v = _seen(x_native, delta, i, out[i : i + 1])
        inside = passes(v)
        if inside and not fill:
            if seen is not None:
                seen.append(v)
            continue
        bi = budget.sample(i)
        mi = mask[i : i + 1] if mask is not None and mask.shape[0] > 1 else mask
        if inside:
            top = FILL_MAX if fill_max is None else float(fill_max)
            best = _largest_passing(x_native, delta, i, bi, mi, 1.0, top, 1, (None, v), at=top)  # all the way, if it passes
            if best[0] is None:
                best = _largest_passing(x_native, delta, i, bi, mi, 1.0, top, fill_tries, (None, v))
        else:
            zero = finalize(x_native[i : i + 1], delta[i : i + 1] * 0, bi, mi)
            best = _largest_passing(x_native, delta, i, bi, mi, 0.0, 1.0, tries, (zero, None))
        result, v = best
        if result is not None:
            out[i : i + 1], achieved[i] = result[0], result[1][0]
        if seen is not None:
            seen.append(v if v is not None else _seen(x_native, delta, i, out[i : i + 1]))
    return out, achieved


def _largest_passing(x_native, delta, i: int, budget, mask, lo: float, hi: float, tries: int, best,
                     at: float | None = None):
    """Bisection on the factor of image ``i``'s change in [lo, hi]: (the finalised result (uint8,
    achieved), its visibility) at the largest factor found that passes the gate, else ``best``.
    Above 1 the budget's map is widened by the factor (:meth:`~imguard.budget.Budget.scaled`).
    ``at``: the first factor tried, instead of the middle."""
    from .budget import finalize

    for k in range(tries):
        mid = at if (k == 0 and at is not None) else (lo + hi) / 2
        cand = finalize(x_native[i : i + 1], delta[i : i + 1] * mid, budget.scaled(mid) if mid > 1 else budget, mask)
        v = _seen(x_native, delta, i, cand[0])
        if passes(v):
            lo, best = mid, (cand, v)
        else:
            hi = mid
    return best


def _seen(x_native: torch.Tensor, delta: torch.Tensor, i: int, o: torch.Tensor) -> Visibility:
    """The visibility of result ``o`` (uint8) of image ``i`` (at the working size above
    :data:`VISIBILITY_MAX_PIXELS`)."""
    from .io import resize_image

    a, b = x_native[i : i + 1].float(), o.to(x_native.device)  # uint8: measured band by band
    if a.shape[-2] * a.shape[-1] > VISIBILITY_MAX_PIXELS:
        a, b = resize_image(a, tuple(delta.shape[-2:])), resize_image(_as_float(b), tuple(delta.shape[-2:]))
    return measure(a, b)[0]
