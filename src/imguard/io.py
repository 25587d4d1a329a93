"""Images in and out: any supported type to a float batch in [0,1], and back to the same type.

Supported inputs: a file path, a PIL image (any mode; EXIF orientation applied), an
``HxW``, ``HxWx3`` or ``HxWx4`` ndarray (uint8, uint16, bool, or float in [0,1]), a
``[3,H,W]`` or ``[B,3,H,W]`` tensor (float in [0,1], or uint8). An alpha channel is kept
untouched; greyscale comes back as RGB (the protection is a colour perturbation).

Reading rules (never guessed from the pixel values):

- 8-bit modes by 255; 16-bit modes (``I;16*``) by 65535; ``I`` (32-bit integer) by the bit
  depth the file declares (a 16-bit PNG: 65535; a TIFF: its BitsPerSample and SampleFormat);
  ``F`` (float) as [0,1]: values within 1e-3 of the range are clipped, anything further out is
  refused. NaN and inf are refused.
- A file with an ICC profile other than sRGB is converted to sRGB (``PIL.ImageCms``) and the
  output is tagged sRGB, so the change on screen stays within the budget.
- Multi-frame files (animations, multi-page TIFF) are refused: only single-frame images.
- Images larger than ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`) are refused, and so
  are decompression bombs.
- Metadata (EXIF, GPS, XMP, IPTC, comments) is never written to outputs; with
  ``keep_metadata`` the EXIF minus its GPS block is kept (orientation reset: it is applied).
"""

from __future__ import annotations

import contextlib
import glob
import io as _io
import os
import struct
import threading
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F


#: File endings treated as images when a folder is given.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif")

#: Largest image read by default (width x height): 50 megapixels.
DEFAULT_MAX_PIXELS = 50_000_000

#: float images within this of [0,1] are clipped to it; further out is an error
FLOAT_TOLERANCE = 1e-3

_EXIF_GPS_IFD = 0x8825
_EXIF_ORIENTATION = 0x0112


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
    srgb_tagged: bool = False  #: the input was colour-managed: tag the output sRGB


def _register_heif() -> bool:
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    if hasattr(pillow_heif, "register_avif_opener"):
        try:
            pillow_heif.register_avif_opener()
        except Exception:  # pragma: no cover - builds without AVIF
            pass
    return True


HEIF_AVAILABLE = _register_heif()


def srgb_profile_bytes() -> bytes:
    """An sRGB ICC profile (built by littleCMS), for tagging outputs."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _label(image: Any, name: str | None) -> str:
    if name:
        return str(name)
    fn = getattr(image, "filename", None)
    return str(fn) if fn else "the image"


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Open an image file as a PIL image: EXIF orientation applied, converted to sRGB when it
    carries another ICC profile (``info["imguard_srgb"]`` is then True), checked for a single
    frame and at most ``max_pixels`` pixels. Raises :class:`ImageReadError` naming the file."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"image file not found: {p}")
    if p.is_dir():
        raise ImageReadError(f"{p} is a folder, not an image file")
    if p.stat().st_size == 0:
        raise ImageReadError(f"cannot read image {p}: the file is empty (0 bytes)")
    return _decode(p, str(p), max_pixels)


def read_image_bytes(data: bytes | bytearray | memoryview, name: str | None = None,
                     max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """:func:`read_image` for the bytes of an image file (an upload, a blob read from object
    storage): the same decoding and checks, the same pixels as reading that file. ``name``
    labels it in errors (default: ``<bytes>``)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageReadError(f"expected the bytes of an image file, got {type(data).__name__}")
    label = name or "<bytes>"
    data = bytes(data)
    if not data:
        raise ImageReadError(f"cannot read image {label}: it is empty (0 bytes)")
    return _decode(_io.BytesIO(data), label, max_pixels)


def _decode(source: Path | _io.BytesIO, label: str, max_pixels: int | None):
    """The decoding :func:`read_image` and :func:`read_image_bytes` share (``source``: a path
    or an in-memory file; ``label`` names it in errors)."""
    import re

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings(), _bomb_limit(max_pixels):
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                _check_frames(im, label)
                check_pixels(im.size, max_pixels, label)
                im.load()
                info = dict(im.info)
                fmt = im.format
                tags = _tiff_tags(im)
                im = ImageOps.exif_transpose(im)
                im.format = fmt
                im.info.update({k: v for k, v in info.items() if k not in im.info})
                im.info["imguard_tiff"] = tags
                im.info["imguard_read"] = True
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"cannot read image {label}: it declares too many pixels to decode safely ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, EOFError,
            IndexError, KeyError, struct.error, MemoryError) as e:
        why = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "<bytes>", str(e))  # no memory address
        raise ImageReadError(f"cannot read image {label}: not a readable image file ({type(e).__name__}: {why})") from e
    return to_srgb(im, label)


_BOMB_LOCK = threading.Lock()


@contextlib.contextmanager
def _bomb_limit(max_pixels: int | None):
    """Pillow's decompression-bomb limit raised to ``max_pixels`` while a file is opened (the
    size is checked against ``max_pixels`` before decoding); None keeps Pillow's own limit."""
    from PIL import Image

    default = Image.MAX_IMAGE_PIXELS
    if max_pixels is None or default is None or max_pixels <= default:
        yield
        return
    with _BOMB_LOCK:
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = default


def _tiff_tags(im) -> dict:
    tag = getattr(im, "tag_v2", None)
    if tag is None:
        return {}
    out = {}
    for key, num in (("bits", 258), ("sample_format", 339)):
        v = tag.get(num)
        if isinstance(v, tuple):
            v = v[0] if v else None
        out[key] = v
    return out


def _check_frames(im, label) -> None:
    n = getattr(im, "n_frames", 1) or 1
    if n > 1:
        raise ImageReadError(
            f"{label} has {n} frames (an animation or multi-page file); only single-frame images are "
            "supported: export the frame you want as a PNG or JPEG"
        )


def check_pixels(size: tuple[int, int], max_pixels: int | None, label: Any = "the image") -> None:
    """Refuse an image of ``size`` (width, height) above ``max_pixels`` (None: no limit)."""
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageReadError(f"{label} is empty ({w}x{h} pixels)")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageReadError(
            f"{label} is {w}x{h} = {w * h / 1e6:.1f} megapixels ({w * h} pixels), above the limit of {max_pixels} pixels; "
            "shrink it, or raise the limit (--max-pixels / max_pixels=)"
        )


def _is_srgb(profile_bytes: bytes) -> bool:
    from PIL import ImageCms

    try:
        prof = ImageCms.ImageCmsProfile(_io.BytesIO(profile_bytes))
        desc = (ImageCms.getProfileDescription(prof) or "").lower()
    except (OSError, ImageCms.PyCMSError):
        return False
    return "srgb" in desc


def to_srgb(im, label: str | None = None):
    """``im`` with an embedded non-sRGB ICC profile converted to sRGB (RGB/RGBA, 8 bits);
    other images are returned as they are. Converted images carry ``info["imguard_srgb"]``."""
    from PIL import ImageCms

    icc = im.info.get("icc_profile")
    if not icc or _is_srgb(icc):
        return im
    try:
        src = ImageCms.ImageCmsProfile(_io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError) as e:
        raise ImageReadError(f"{_label(im, label)} has an unreadable ICC colour profile ({e}); "
                             "re-save it with an sRGB profile or without one") from e
    alpha = None
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        alpha = rgba.getchannel("A")
        base = rgba.convert("RGB")
    elif im.mode in ("RGB", "CMYK", "L", "LAB"):
        base = im
    elif im.mode.startswith("I") or im.mode == "F":
        base = _high_bit_to_rgb(im, label)
    else:
        base = im.convert("RGB")
    in_mode = base.mode if base.mode in ("RGB", "CMYK", "L", "LAB") else "RGB"
    try:
        out = ImageCms.profileToProfile(base, src, ImageCms.createProfile("sRGB"),
                                        renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB")
    except (OSError, ImageCms.PyCMSError, ValueError) as e:
        raise ImageReadError(f"{_label(im, label)}: its ICC colour profile does not fit its {in_mode} pixels ({e}); "
                             "re-save it as sRGB") from e
    if alpha is not None:
        out.putalpha(alpha)
    out.info = {k: v for k, v in im.info.items() if k != "icc_profile"}
    out.info["imguard_srgb"] = True
    return out


def _high_bit_to_rgb(im, label):
    from PIL import Image

    g = _grey_high_bit(im, label)
    return Image.fromarray(np.round(g * 255).astype(np.uint8), mode="L").convert("RGB")


def _int_scale(im, label) -> float:
    """The full-scale value of a 32-bit integer ('I') PIL image, from its file type."""
    if im.mode.startswith("I;16"):
        return 65535.0
    fmt = getattr(im, "format", None)
    tags = im.info.get("imguard_tiff") or _tiff_tags(im)
    if fmt == "PNG":
        return 65535.0  # PNG integer greyscale is at most 16 bits
    if fmt == "TIFF" and tags.get("bits"):
        bits = int(tags["bits"])
        signed = tags.get("sample_format") == 2
        return float(2 ** (bits - 1) - 1 if signed else 2**bits - 1)
    raise ImageReadError(
        f"{_label(im, label)} is a 32-bit integer ('I' mode) image of unknown bit depth (format {fmt}); "
        "convert it to 'I;16' (16-bit) or 'L' (8-bit) first"
    )


def _grey_high_bit(im, label) -> np.ndarray:
    """An 'I', 'I;16*' or 'F' PIL image as float32 HxW in [0,1]."""
    name = _label(im, label)
    if im.mode == "F":
        g = np.asarray(im, dtype=np.float32)
        return _checked_float(g, name)
    scale = _int_scale(im, label)
    g = np.asarray(im).astype(np.float64)
    if g.size and g.min() < 0:
        raise ImageReadError(f"{name} has negative pixel values ({g.min():g}); only non-negative integer images are supported")
    if g.size and g.max() > scale:
        raise ImageReadError(f"{name} has values up to {g.max():g}, above its declared full scale {scale:g}")
    if g.size and 0 < g.max() * 255 < scale:  # e.g. 0..255000 in a 32-bit TIFF: reads as black
        import warnings

        warnings.warn(f"imguard: {name} uses only values up to {g.max():g} of its declared full scale {scale:g} "
                      f"({8 * np.dtype(np.uint32).itemsize if scale > 65535 else 16}-bit): it reads as almost black "
                      "(brightest pixel below 1/255 of white) and is protected as such; if its values mean another "
                      "scale, convert it to 8 or 16 bit first", stacklevel=2)
    return (g / scale).astype(np.float32)


def _checked_float(f: np.ndarray, name: str) -> np.ndarray:
    """Float pixels: finite, in [0,1] (clipped when within FLOAT_TOLERANCE of it)."""
    if f.size == 0:
        raise ImageReadError(f"{name} is empty (shape {f.shape})")
    finite = bool(np.isfinite(f).all())
    _check_float_values(name, finite, float(f.min()) if finite else 0.0, float(f.max()) if finite else 0.0, "e.g. numpy.nan_to_num")
    return np.clip(f, 0, 1).astype(np.float32, copy=False)


def _check_float_values(name: str, finite: bool, lo: float, hi: float, fix: str) -> None:
    """The rules for float pixels (arrays and tensors alike): finite, and in [0,1] up to FLOAT_TOLERANCE."""
    if not finite:
        raise ImageReadError(f"{name} contains NaN or infinite values; replace them ({fix}) before protecting")
    if lo < -FLOAT_TOLERANCE or hi > 1 + FLOAT_TOLERANCE:
        raise ImageReadError(
            f"{name}: float values must be in [0,1], got [{lo:.3g}, {hi:.3g}] "
            "(for 0..255 data pass uint8; for [-1,1] data use (x+1)/2)"
        )


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _prepared(image, label):
    """A caller's PIL image: orientation applied (file type kept), converted to sRGB."""
    from PIL import ImageOps

    fmt, tags = image.format, _tiff_tags(image)
    info = dict(image.info)
    out = ImageOps.exif_transpose(image)
    if out is not image:
        out.format = fmt
        out.info.update({k: v for k, v in info.items() if k not in out.info})
    out.info["imguard_tiff"] = tags
    return to_srgb(out, label)


def _pil_to_array(image, name):
    """A PIL image to (rgb float32 HxWx3, alpha HxW or None); 8-bit modes stay uint8 until here."""
    mode = image.mode
    check_pixels(image.size, None, name)
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        g = _grey_high_bit(image, name)
        return np.repeat(g[..., None], 3, axis=2), None
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        arr = _la_to_rgba(image) if mode == "La" else np.asarray(image.convert("RGBA"))
        return arr[..., :3].astype(np.float32) / 255.0, arr[..., 3].astype(np.float32) / 255.0
    if mode == "LAB":
        image = _lab_to_rgb(image)
    try:
        rgb = np.asarray(image if mode == "RGB" else image.convert("RGB"))
    except ValueError as e:
        raise ImageReadError(f"{name}: PIL mode {mode!r} is not supported ({e}); convert it to RGB first") from e
    return rgb, None  # uint8: made float once, in torch (bounded memory for big photos)


def _la_to_rgba(image) -> np.ndarray:
    """'La' (luminance premultiplied by alpha) to straight RGBA uint8 (Pillow cannot convert it)."""
    la = np.asarray(image).astype(np.float32)
    a = la[..., 1:2]
    lum = np.where(a > 0, np.clip(la[..., :1] * 255.0 / np.maximum(a, 1), 0, 255), 0)
    return np.concatenate([np.repeat(np.round(lum), 3, axis=2), a], axis=2).astype(np.uint8)


def _lab_to_rgb(image):
    from PIL import ImageCms

    t = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    return ImageCms.applyTransform(image, t)


def to_tensor(image: Any, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, ImageInfo]:
    """Any supported image to a float32 batch [B,3,H,W] in [0,1] (on CPU for PIL/ndarray).

    ``name`` labels the image in errors; images above ``max_pixels`` (width x height) are
    refused (None: no limit)."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        name = name or str(image)
        image = read_image(image, max_pixels=max_pixels)
    if isinstance(image, Image.Image):
        label = _label(image, name)
        _check_frames(image, label)
        check_pixels(image.size, max_pixels, label)
        if not image.info.get("imguard_read"):
            image = _prepared(image, label)
        rgb, a = _pil_to_array(image, label)
        alpha = torch.from_numpy(a.copy())[None, None] if a is not None else None
        x = torch.from_numpy(np.require(rgb, requirements=["C", "W"])).permute(2, 0, 1)[None]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
        return x, ImageInfo(kind="pil", alpha=alpha, pil_mode=image.mode, srgb_tagged=bool(image.info.get("imguard_srgb")))
    if isinstance(image, np.ndarray):
        return _ndarray_to_tensor(image, name or "the array", max_pixels)
    if torch.is_tensor(image):
        return _tensor_to_tensor(image, name or "the tensor", max_pixels)
    raise ImageReadError(
        f"unsupported image type {type(image).__name__}: pass a file path, a PIL image, an ndarray or a tensor"
    )


def _ndarray_to_tensor(arr: np.ndarray, name: str, max_pixels):
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageReadError(f"{name}: ndarray image must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.size == 0:
        raise ImageReadError(f"{name} is empty (shape {arr.shape})")
    check_pixels((arr.shape[1], arr.shape[0]), max_pixels, name)
    if arr.dtype == np.uint8:
        f = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        f = (arr.astype(np.float32) / 65535.0)
    elif arr.dtype == np.bool_:
        f = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        f = _checked_float(arr.astype(np.float32), name)
    else:
        raise ImageReadError(f"{name}: unsupported ndarray dtype {arr.dtype}: use uint8, uint16 or float in [0,1]")
    grey = False
    if f.ndim == 2:
        f, grey = np.repeat(f[..., None], 3, axis=2), True
    alpha = torch.from_numpy(f[..., 3].copy())[None, None] if f.shape[2] == 4 else None
    x = torch.from_numpy(np.ascontiguousarray(f[..., :3])).permute(2, 0, 1)[None]
    return x, ImageInfo(kind="ndarray", dtype=arr.dtype, alpha=alpha, channels_last_grey=grey)


def _tensor_to_tensor(image: torch.Tensor, name: str, max_pixels):
    t = image.detach()
    batched = t.dim() == 4
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[1] != 3:
        raise ImageReadError(f"{name}: tensor image must be [3,H,W] or [B,3,H,W], got {tuple(image.shape)}")
    if t.numel() == 0:
        raise ImageReadError(f"{name} is empty (shape {tuple(image.shape)})")
    check_pixels((t.shape[-1], t.shape[-2]), max_pixels, name)
    if t.dtype == torch.uint8:
        x = t.float() / 255.0
    elif t.is_floating_point():
        x = t.float()
        lo_t, hi_t = torch.aminmax(x)  # one pass; a NaN or an inf anywhere shows in them
        finite = bool(torch.isfinite(lo_t) & torch.isfinite(hi_t))
        lo, hi = (float(lo_t), float(hi_t)) if finite else (0.0, 0.0)
        _check_float_values(name, finite, lo, hi, "torch.nan_to_num")
        if lo < 0 or hi > 1:  # within the tolerance: clipped (no full-size copy otherwise)
            x = x.clamp(0, 1)
    else:
        raise ImageReadError(f"{name}: unsupported tensor dtype {t.dtype}: use float in [0,1] or uint8")
    return x, ImageInfo(kind="tensor", dtype=image.dtype, device=image.device, batched=batched)


def _check_range(x) -> None:
    """Kept for callers: float values must lie in [0,1]."""
    _checked_float(np.asarray(x, dtype=np.float32), "float image")


def from_tensor(x: torch.Tensor, info: ImageInfo):
    """Back to the input's type. ``x``: [B,3,H,W] in [0,1], already on the 8-bit grid."""
    from PIL import Image

    x = x.detach()
    if info.kind == "tensor":
        if x.dtype == torch.uint8:  # 8-bit levels (the protected image from budget.finalize)
            out = x if info.dtype == torch.uint8 else x.float().div_(255.0).to(info.dtype)
        else:
            x = x.float().clamp(0, 1)
            out = (x * 255).round().to(torch.uint8) if info.dtype == torch.uint8 else x.to(info.dtype)
        out = out.to(info.device)
        return out if info.batched else out[0]
    arr8 = to_uint8_hwc(x[0])
    if info.kind == "ndarray":
        if info.dtype == np.uint8 or info.dtype == np.bool_:
            rgb = arr8 if info.dtype == np.uint8 else arr8 >= 128
        elif info.dtype == np.uint16:
            rgb = arr8.astype(np.uint16) * 257  # 8-bit levels on the 16-bit scale (x/255 == y/65535)
        else:
            rgb = arr8.astype(info.dtype) / 255
        if info.alpha is not None:
            a = info.alpha[0, 0].numpy()
            a = {np.dtype(np.uint8): np.round(a * 255), np.dtype(np.uint16): np.round(a * 65535)}.get(np.dtype(info.dtype), a)
            rgb = np.concatenate([rgb, a.astype(rgb.dtype)[..., None]], axis=2)
        return rgb
    if info.alpha is not None:
        a = np.round(info.alpha[0, 0].numpy() * 255).astype(np.uint8)
        img = Image.fromarray(np.concatenate([arr8, a[..., None]], axis=2), mode="RGBA")
    else:
        img = Image.fromarray(arr8, mode="RGB")
    if info.srgb_tagged:
        img.info["icc_profile"] = srgb_profile_bytes()
    return img


def to_uint8_hwc(x: torch.Tensor, band: int = 512) -> np.ndarray:
    """[3,H,W] uint8, or float in [0,1] (on the 8-bit grid), to an HxWx3 uint8 array, in row
    bands so no full-size float copy is made."""
    _, H, W = x.shape
    out = np.empty((H, W, 3), dtype=np.uint8)
    for r in range(0, H, band):
        b = x[:, r : r + band]
        if b.dtype != torch.uint8:
            b = b.float().clamp(0, 1).mul(255).round_().to(torch.uint8)
        b = b.cpu()
        out[r : r + band] = b.permute(1, 2, 0).numpy()
    return out


_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


def exif_without_location(image) -> bytes | None:
    """The EXIF of a PIL image minus the GPS block and with orientation reset (already applied)."""
    try:
        exif = image.getexif()
    except Exception:  # a broken EXIF block: keep nothing
        return None
    if not exif:
        return None
    exif.pop(_EXIF_GPS_IFD, None)
    if _EXIF_ORIENTATION in exif:
        exif[_EXIF_ORIENTATION] = 1
    return exif.tobytes()


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # no safe liveness probe: treat every writer as alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_parts(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``.NAME.PID.part``) that writers of ``path`` killed
    mid-save (kill -9, power loss) left behind; a live writer's file is left alone."""
    p = Path(path)
    removed = []
    for part in p.parent.glob(f".{glob.escape(p.name)}.*.part"):
        pid = part.name[len(p.name) + 2 : -len(".part")].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                part.unlink()
                removed.append(part)
            except OSError:
                pass
    return removed


def save_image(image, path: str | os.PathLike, overwrite: bool = False, exif: bytes | None = None) -> Path:
    """Save a PIL image atomically (temp file, fsync, rename); never replaces an existing file
    unless ``overwrite``. Only the pixels, an ICC profile in ``image.info`` and ``exif`` (when
    given) are written: no other metadata."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists; refusing to overwrite it (choose another output folder or pass overwrite)")
    p.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(p)
    fmt = _FORMATS.get(p.suffix.lower(), "PNG")
    clean, kwargs = _for_saving(image, fmt, exif)
    atomic_write(p, lambda tmp: clean.save(tmp, format=fmt, **kwargs))
    return p


def encode_image(image, fmt: str = "PNG", exif: bytes | None = None) -> bytes:
    """The bytes :func:`save_image` writes for ``image`` as a ``fmt`` file (PNG by default),
    in memory: only the pixels, an ICC profile in ``image.info`` and ``exif``."""
    fmt = fmt.upper()
    clean, kwargs = _for_saving(image, fmt, exif)
    buf = _io.BytesIO()
    clean.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _for_saving(image, fmt: str, exif: bytes | None):
    """(a copy of ``image`` without its metadata, the save options) for a ``fmt`` file."""
    kwargs: dict = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "WEBP":
        kwargs["lossless"] = True
    icc = image.info.get("icc_profile")
    if icc and fmt != "BMP":
        kwargs["icc_profile"] = icc
    if exif and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        kwargs["exif"] = exif
    img = image.convert("RGB") if fmt == "JPEG" and image.mode != "RGB" else image
    clean = img.copy()
    clean.info = {}
    return clean, kwargs


def atomic_write(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``target`` (``.NAME.PID.TOKEN.part``, which
    :func:`remove_stale_parts` clears when its writer died), fsync it, give it the usual mode
    of a new file, rename it over ``target`` and make the rename durable."""
    target = Path(target)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
    try:
        write(tmp)
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the usual mode of a new file (some writers use 0600)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(target.parent)


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


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def decodes(path: str | os.PathLike) -> bool:
    """True when ``path`` is an image file that decodes completely."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
        return True
    except Exception:
        return False


#: Names Windows keeps for devices, with any extension (``nul.png`` opens the null device).
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", "conin$", "conout$", "clock$"} | {
    f"{d}{i}" for d in ("com", "lpt") for i in list("123456789") + ["\u00b9", "\u00b2", "\u00b3"]}
_FORBIDDEN_CHARS = set('<>:"/\\|?*')


def safe_filename(name: str, default: str = "image", max_length: int = 120) -> str:
    """A file name safe on every platform, for downloads and zip entries.

    Only the last component is kept (after ``/`` or ``\\``); NUL, control and format
    characters (bidirectional overrides) and ``<>:"/\\|?*`` become ``_``; leading and trailing
    dots and spaces go (``..`` and ``.`` become ``default``); Windows device names (``con``,
    ``nul``, ``com1``, ... with any extension) get a ``_`` in front; the result is at most
    ``max_length`` characters, keeping the extension.
    """
    import unicodedata

    name = unicodedata.normalize("NFC", str(name))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join("_" if c in _FORBIDDEN_CHARS or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") else c
                   for c in name)
    name = name.strip(" .")
    if not name or set(name) <= {"_"}:
        name = default
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    if stem.split(".", 1)[0].rstrip(" ").lower() in _WINDOWS_RESERVED:
        name = "_" + name
    if len(name) > max_length:
        ext = f".{ext}" if dot and 0 < len(ext) <= 10 else ""
        name = name[: max_length - len(ext)].rstrip(" .") + ext
    return name
