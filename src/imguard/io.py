"""Images in and out: any supported type to a float batch in [0,1], and back to the same type.

Supported inputs: a file path, a PIL image (any mode; EXIF orientation applied), an
``HxW``, ``HxWx3`` or ``HxWx4`` ndarray (uint8, or float in [0,1]), a ``[3,H,W]`` or
``[B,3,H,W]`` tensor (float in [0,1], or uint8). An alpha channel is kept untouched;
greyscale comes back as RGB (the protection is a colour perturbation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


#: File endings treated as images when a folder is given.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class ImageReadError(ValueError):
    """An image could not be read or has an unsupported shape/type."""


@dataclass
class ImageInfo:
    kind: str  #: "pil", "ndarray", "tensor"
    dtype: Any = None
    device: Any = None
    batched: bool = False
    alpha: torch.Tensor | None = None  #: [B,1,H,W] in [0,1]
    pil_mode: str | None = None
    channels_last_grey: bool = False


def read_image(path: str | os.PathLike):
    """Open an image file as a PIL image with its EXIF orientation applied."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"image file not found: {p}")
    if p.is_dir():
        raise ImageReadError(f"{p} is a folder, not an image file")
    try:
        with Image.open(p) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot read image {p}: not a readable image file ({type(e).__name__}: {e})") from e
    return im


def to_tensor(image: Any) -> tuple[torch.Tensor, ImageInfo]:
    """Any supported image to a float32 batch [B,3,H,W] in [0,1] (on CPU for PIL/ndarray)."""
    from PIL import Image, ImageOps

    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    if isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)
        mode = image.mode
        alpha = None
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            arr = np.asarray(rgba, dtype=np.float32) / 255.0
            alpha = torch.from_numpy(arr[..., 3].copy())[None, None]
            rgb = arr[..., :3]
        elif mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float greyscale
            g = np.asarray(image, dtype=np.float32)
            g = g / (65535.0 if g.max() > 255 else 255.0)
            rgb = np.repeat(np.clip(g, 0, 1)[..., None], 3, axis=2)
        else:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None]
        return x, ImageInfo(kind="pil", alpha=alpha, pil_mode=mode)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype == np.uint8:
            f = arr.astype(np.float32) / 255.0
        elif np.issubdtype(arr.dtype, np.floating):
            f = arr.astype(np.float32)
            _check_range(f)
        else:
            raise ImageReadError(f"unsupported ndarray dtype {arr.dtype}: use uint8 or float in [0,1]")
        grey = False
        if f.ndim == 2:
            f, grey = np.repeat(f[..., None], 3, axis=2), True
        if f.ndim != 3 or f.shape[2] not in (3, 4):
            raise ImageReadError(f"ndarray image must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
        alpha = torch.from_numpy(f[..., 3].copy())[None, None] if f.shape[2] == 4 else None
        x = torch.from_numpy(f[..., :3].copy()).permute(2, 0, 1)[None]
        return x, ImageInfo(kind="ndarray", dtype=arr.dtype, alpha=alpha, channels_last_grey=grey)
    if torch.is_tensor(image):
        t = image.detach()
        batched = t.dim() == 4
        if t.dim() == 3:
            t = t[None]
        if t.dim() != 4 or t.shape[1] != 3:
            raise ImageReadError(f"tensor image must be [3,H,W] or [B,3,H,W], got {tuple(image.shape)}")
        if t.dtype == torch.uint8:
            x = t.float() / 255.0
        elif t.is_floating_point():
            x = t.float()
            _check_range(x)
        else:
            raise ImageReadError(f"unsupported tensor dtype {t.dtype}: use float in [0,1] or uint8")
        return x, ImageInfo(kind="tensor", dtype=image.dtype, device=image.device, batched=batched)
    raise ImageReadError(
        f"unsupported image type {type(image).__name__}: pass a file path, a PIL image, an ndarray or a tensor"
    )


def _check_range(x) -> None:
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ImageReadError(
            f"float image values must be in [0,1], got [{lo:.3g}, {hi:.3g}] "
            "(for 0..255 data pass uint8; for [-1,1] data use (x+1)/2)"
        )


def from_tensor(x: torch.Tensor, info: ImageInfo):
    """Back to the input's type. ``x``: [B,3,H,W] in [0,1], already on the 8-bit grid."""
    from PIL import Image

    x = x.detach().float().clamp(0, 1).cpu()
    if info.kind == "tensor":
        out = (x * 255).round().to(torch.uint8) if info.dtype == torch.uint8 else x.to(info.dtype)
        out = out.to(info.device)
        return out if info.batched else out[0]
    rgb = x[0].permute(1, 2, 0).numpy()
    if info.alpha is not None:
        rgb = np.concatenate([rgb, info.alpha[0, 0].numpy()[..., None]], axis=2)
    if info.kind == "ndarray":
        if info.dtype == np.uint8:
            return np.round(rgb * 255).astype(np.uint8)
        return rgb.astype(info.dtype)
    arr = np.round(rgb * 255).astype(np.uint8)
    return Image.fromarray(arr, mode="RGBA" if arr.shape[2] == 4 else "RGB")


def save_image(image, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save a PIL image; never replaces an existing file unless ``overwrite``."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists; refusing to overwrite it (choose another output folder or pass overwrite)")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(p.suffix.lower(), "PNG")
    kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    img = image.convert("RGB") if fmt == "JPEG" and image.mode != "RGB" else image
    img.save(tmp, format=fmt, **kwargs)
    os.replace(tmp, p)
    return p


# ---------------------------------------------------------------------------------------
# Sizing helpers
# ---------------------------------------------------------------------------------------
def working_shape(h: int, w: int, long_side: int | None) -> tuple[int, int]:
    """The optimisation size: long side ``long_side`` (None: native), both sides multiples of 8.

    Images smaller than ``long_side`` are not enlarged: the optimisation runs at their own
    size (rounded to multiples of 8), which is also the size an editor would see.
    """
    if long_side is None or max(h, w) <= long_side:
        s = 1.0
    else:
        s = long_side / max(h, w)
    hh = max(8, int(round(h * s / 8)) * 8)
    ww = max(8, int(round(w * s / 8)) * 8)
    return hh, ww


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a [B,C,H,W] batch (antialiased when shrinking); no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)
