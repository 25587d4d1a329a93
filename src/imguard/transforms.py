"""Image transforms on ``[B,3,H,W]`` batches in [0,1]: purifications and EOT transforms.

Two families, both built on kornia:

**Purifications** (:data:`PURIFICATIONS`, :func:`get_purification`) are the fixed,
documented things that happen to a photo before someone edits it. The evaluation harness
applies them to a protected image to see whether the protection survives. Their parameters
never change, so numbers from different runs compare:

==============  ==========================================================================
``none``        the image unchanged
``jpeg60``      real JPEG (PIL/libjpeg, 4:2:0 chroma subsampling) at quality 60, decoded
``jpeg75``      the same at quality 75
``jpeg90``      the same at quality 90
``blur``        Gaussian blur, kernel 5x5, sigma 1.5, reflected borders
``rot+10``      rotation by +10 degrees (counter-clockwise) about the centre, bilinear,
                reflected borders (no black corners), same size
``rot-10``      the same by -10 degrees
``resize0.5``   down to half size (bilinear, antialiased) and back up (bilinear)
``jitter``      colour jitter with fixed factors: brightness +0.05 (additive), contrast
                x1.1, saturation x1.1, hue +0.05 rad (about +3 degrees), in that order
==============  ==========================================================================

The JPEG purifications use a real codec (they quantise to 8 bits first, as saving a file
does) and are not differentiable; every other purification is.

**EOT transforms** (:func:`get_eot`) are random, differentiable versions for expectation
over transformation during the optimisation. Each has the signature the engine expects,
``t(x01, generator) -> x01``, draws its random parameters (one set per sample where the
operation allows it) from ``generator`` only, so a seeded run repeats exactly, and lets
gradients flow to ``x01``. ``jpeg`` uses kornia's differentiable JPEG
(:func:`kornia.enhance.jpeg_codec_differentiable`); ``jpeg-codec`` the real codec forward and
the identity backward (:func:`jpeg_straight_through`; it runs on the CPU, whatever the device).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

#: Fixed parameters of the evaluation purifications (documented above; reported in JSON).
BLUR_KERNEL = 5
BLUR_SIGMA = 1.5
ROTATION_DEGREES = 10.0
RESIZE_FACTOR = 0.5
JITTER = {"brightness": 0.05, "contrast": 1.1, "saturation": 1.1, "hue": 0.05}


# ---------------------------------------------------------------------------------------
# Building blocks (differentiable unless stated)
# ---------------------------------------------------------------------------------------
def _check(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"transforms expect images shaped [B,3,H,W] in [0,1], got {tuple(x.shape)}")


def jpeg_pil(x01: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG: 8-bit quantise, encode with PIL at ``quality``, decode. Not differentiable."""
    from PIL import Image

    _check(x01)
    arrs = (x01.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for a in arrs:
        buf = io.BytesIO()
        Image.fromarray(a, mode="RGB").save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as im:
            out.append(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
    y = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return y.to(device=x01.device, dtype=x01.dtype)


def jpeg_differentiable(x01: torch.Tensor, quality: torch.Tensor | float) -> torch.Tensor:
    """kornia's differentiable JPEG; ``quality`` a number or one per sample ([B])."""
    from kornia.enhance import jpeg_codec_differentiable

    _check(x01)
    q = torch.as_tensor(quality, dtype=torch.float32).reshape(-1).to(x01.device)
    return jpeg_codec_differentiable(x01.float(), q).clamp(0, 1).to(x01.dtype)


def gaussian_blur(x01: torch.Tensor, sigma: torch.Tensor | float, kernel: int = BLUR_KERNEL) -> torch.Tensor:
    """Gaussian blur; ``sigma`` a number or one per sample ([B])."""
    from kornia.filters import gaussian_blur2d

    _check(x01)
    s = torch.as_tensor(sigma, dtype=x01.dtype, device=x01.device).reshape(-1, 1)
    s = s.expand(x01.shape[0], 2).contiguous()
    return gaussian_blur2d(x01, (kernel, kernel), s, border_type="reflect")


def rotate(x01: torch.Tensor, degrees: torch.Tensor | float) -> torch.Tensor:
    """Rotate about the centre (counter-clockwise for positive angles), same size, reflected borders."""
    from kornia.geometry.transform import rotate as k_rotate

    _check(x01)
    a = torch.as_tensor(degrees, dtype=x01.dtype, device=x01.device).reshape(-1).expand(x01.shape[0])
    return k_rotate(x01, a.contiguous(), mode="bilinear", padding_mode="reflection", align_corners=True)


def resize_roundtrip(x01: torch.Tensor, factor: float) -> torch.Tensor:
    """Down to ``factor`` of the size (antialiased) and back up to the original size."""
    _check(x01)
    H, W = x01.shape[-2:]
    h, w = max(1, int(round(H * factor))), max(1, int(round(W * factor)))
    small = F.interpolate(x01, size=(h, w), mode="bilinear", align_corners=False, antialias=factor < 1)
    return F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)


def color_jitter(
    x01: torch.Tensor,
    brightness: torch.Tensor | float,
    contrast: torch.Tensor | float,
    saturation: torch.Tensor | float,
    hue: torch.Tensor | float,
) -> torch.Tensor:
    """Brightness (additive), contrast and saturation (multiplicative), hue (radians), in that order.

    Each factor is a number or one per sample ([B]).
    """
    from kornia.enhance import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation

    _check(x01)

    def per_sample(v):
        return torch.as_tensor(v, dtype=x01.dtype, device=x01.device).reshape(-1).expand(x01.shape[0]).contiguous()

    y = adjust_brightness(x01, per_sample(brightness))
    y = adjust_contrast(y, per_sample(contrast))
    y = adjust_saturation(y, per_sample(saturation)).clamp(0, 1)
    return adjust_hue(y, per_sample(hue)).clamp(0, 1)


# ---------------------------------------------------------------------------------------
# Purifications: fixed parameters, by name
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Purification:
    """A fixed transform ``fn(x01) -> x01`` applied before an edit, with its description."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    description: str
    differentiable: bool = True

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        _check(x01)
        return self.fn(x01)


def _jpeg_purification(q: int) -> Purification:
    return Purification(f"jpeg{q}", lambda x: jpeg_pil(x, q), f"real JPEG (PIL) at quality {q}", differentiable=False)


def _rotation_purification(deg: float) -> Purification:
    return Purification(
        f"rot{deg:+g}", lambda x: rotate(x, deg),
        f"rotate {deg:+g} degrees about the centre, bilinear, reflected borders",
    )


PURIFICATIONS: dict[str, Purification] = {
    p.name: p
    for p in (
        Purification("none", lambda x: x, "no purification"),
        _jpeg_purification(60),
        _jpeg_purification(75),
        _jpeg_purification(90),
        Purification(
            "blur", lambda x: gaussian_blur(x, BLUR_SIGMA),
            f"Gaussian blur, kernel {BLUR_KERNEL}, sigma {BLUR_SIGMA}",
        ),
        _rotation_purification(+ROTATION_DEGREES),
        _rotation_purification(-ROTATION_DEGREES),
        Purification(
            f"resize{RESIZE_FACTOR:g}", lambda x: resize_roundtrip(x, RESIZE_FACTOR),
            f"resize to {RESIZE_FACTOR:g}x (antialiased bilinear) and back up (bilinear)",
        ),
        Purification(
            "jitter", lambda x: color_jitter(x, **JITTER),
            "colour jitter: brightness +{brightness:g}, contrast x{contrast:g}, "
            "saturation x{saturation:g}, hue +{hue:g} rad".format(**JITTER),
        ),
    )
}


def purification_names() -> list[str]:
    return list(PURIFICATIONS)


def get_purification(name: str | Purification) -> Purification:
    """A purification by name (see :data:`PURIFICATIONS`)."""
    if isinstance(name, Purification):
        return name
    key = str(name).strip().lower()
    if key not in PURIFICATIONS:
        raise ValueError(f"unknown purification {name!r}; valid: {', '.join(PURIFICATIONS)} (or 'all')")
    return PURIFICATIONS[key]


def parse_purifications(spec: str | Iterable[str] | None) -> list[Purification]:
    """``"jpeg75,blur"``, ``"all"``, a list of names, or None (just ``none``). ``none`` is
    always included, first, as the reference condition."""
    if spec is None:
        names: list[str] = []
    elif isinstance(spec, str):
        names = [s for s in (p.strip() for p in spec.split(",")) if s]
    else:
        names = [n if isinstance(n, str) else n.name for n in spec]
    if any(n.lower() == "all" for n in names):
        names = purification_names()
    out = [PURIFICATIONS["none"]]
    for n in names:
        p = get_purification(n)
        if p not in out:
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------
# EOT transforms: random parameters from the given generator, differentiable
# ---------------------------------------------------------------------------------------
def _uniform(generator: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    """``n`` uniform draws in [lo, hi) from ``generator`` (on the generator's device)."""
    dev = generator.device if generator is not None else "cpu"
    return torch.rand(n, generator=generator, device=dev) * (hi - lo) + lo


def _eot_jpeg(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return jpeg_differentiable(x, _uniform(g, x.shape[0], 50.0, 95.0).round())


def jpeg_straight_through(x01: torch.Tensor, quality: Sequence[int] | int) -> torch.Tensor:
    """Real JPEG (PIL, :func:`jpeg_pil`) in the forward pass, the identity in the backward pass
    (a straight-through estimate, BPDA): the loss sees exactly what a saved JPEG holds, and its
    gradient reaches ``x01`` unchanged. ``quality`` one number or one per sample."""
    qs = [int(quality)] * x01.shape[0] if isinstance(quality, (int, float)) else [int(q) for q in quality]
    y = torch.cat([jpeg_pil(x01[i:i + 1], q) for i, q in enumerate(qs)])
    return x01 + (y - x01).detach()


def _eot_jpeg_codec(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return jpeg_straight_through(x, _uniform(g, x.shape[0], 50.0, 95.0).round().tolist())


def _eot_blur(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return gaussian_blur(x, _uniform(g, x.shape[0], 0.5, 2.0).to(x.device))


def _eot_rotate(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return rotate(x, _uniform(g, x.shape[0], -15.0, 15.0).to(x.device))


def _eot_resize(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return resize_roundtrip(x, float(_uniform(g, 1, 0.5, 1.0)))  # one size per batch


def _eot_jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    B = x.shape[0]
    b, c, s, h = (_uniform(g, B, lo, hi).to(x.device) for lo, hi in ((-0.1, 0.1), (0.8, 1.2), (0.8, 1.2), (-0.1, 0.1)))
    return color_jitter(x, b, c, s, h)


def _eot_noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    dev = g.device if g is not None else "cpu"
    std = _uniform(g, x.shape[0], 0.0, 4.0 / 255.0).view(-1, 1, 1, 1)
    n = torch.randn(x.shape, generator=g, device=dev) * std
    return (x + n.to(device=x.device, dtype=x.dtype)).clamp(0, 1)


def _eot_identity(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x


#: name -> (transform, what it draws). Parameters are drawn per sample unless stated.
EOT_TRANSFORMS: dict[str, tuple[Transform, str]] = {
    "jpeg": (_eot_jpeg, "differentiable JPEG (kornia), quality uniform in [50, 95], rounded"),
    "jpeg-codec": (_eot_jpeg_codec, "real JPEG (PIL) forward, identity backward (straight-through), quality uniform in [50, 95], rounded"),
    "blur": (_eot_blur, "Gaussian blur 5x5, sigma uniform in [0.5, 2.0]"),
    "rotate": (_eot_rotate, "rotation uniform in [-15, 15] degrees, reflected borders"),
    "resize": (_eot_resize, "resize to a factor uniform in [0.5, 1.0] (one per batch) and back"),
    "jitter": (_eot_jitter, "brightness +-0.1, contrast and saturation x[0.8, 1.2], hue +-0.1 rad"),
    "noise": (_eot_noise, "Gaussian noise, std uniform in [0, 4/255]"),
    "identity": (_eot_identity, "no change (mix clean gradients into the expectation)"),
}
_EOT_ALIASES = {"rot": "rotate", "rotation": "rotate", "none": "identity", "color": "jitter", "colour": "jitter", "gaussian": "noise"}


def eot_names() -> list[str]:
    return list(EOT_TRANSFORMS)


def get_eot(names: str | Sequence[str | Transform] | None) -> list[Transform]:
    """EOT transforms by name (``"jpeg,blur"`` or ``["jpeg", "blur"]``); callables pass through.

    Each returned ``t(x01, generator) -> x01`` is differentiable with respect to ``x01`` and
    draws its random parameters from ``generator`` only.
    """
    if names is None:
        return []
    if isinstance(names, str):
        names = [s.strip() for s in names.split(",") if s.strip()]
    out: list[Transform] = []
    for n in names:
        if callable(n):
            out.append(n)
            continue
        key = _EOT_ALIASES.get(str(n).strip().lower(), str(n).strip().lower())
        if key not in EOT_TRANSFORMS:
            raise ValueError(f"unknown EOT transform {n!r}; valid: {', '.join(EOT_TRANSFORMS)}")
        out.append(EOT_TRANSFORMS[key][0])
    return out


def describe_purifications(purifications: Iterable[Purification]) -> dict[str, str]:
    """``{name: description}`` for reports."""
    return {p.name: p.description for p in purifications}


__all__ = [
    "BLUR_KERNEL", "BLUR_SIGMA", "EOT_TRANSFORMS", "JITTER", "PURIFICATIONS", "Purification",
    "RESIZE_FACTOR", "ROTATION_DEGREES", "color_jitter", "describe_purifications", "eot_names",
    "gaussian_blur", "get_eot", "get_purification", "jpeg_differentiable", "jpeg_pil", "jpeg_straight_through",
    "parse_purifications", "purification_names", "resize_roundtrip", "rotate",
]
