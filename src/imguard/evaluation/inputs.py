"""Inputs: originals and protected versions, matched by file stem."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..io import IMAGE_SUFFIXES, ImageReadError, read_image, to_tensor

BASELINE = "none"
CLEAN = "clean"  #: the index-0 row of every batch: the clean original
DEFAULT_SIZE = 512


class MissingImageError(FileNotFoundError):
    """A protected version of an original is missing (or the inputs do not pair up)."""


def list_images(folder: str | os.PathLike) -> dict[str, Path]:
    """The image files of a folder by stem (not recursive). Two files with one stem are an error."""
    d = Path(folder).expanduser()
    if not d.is_dir():
        raise MissingImageError(f"image folder not found: {d}")
    found: dict[str, Path] = {}
    for p in sorted(d.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem in found:
                raise ValueError(f"two images share the stem {p.stem!r} in {d}: {found[p.stem].name} and {p.name}")
            found[p.stem] = p
    if not found:
        raise MissingImageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {d}")
    return found


def _as_sources(obj: Any, what: str, stems: Sequence[str] | None = None) -> dict[str, Any]:
    """A folder, a list of images (paired by position with ``stems``) or a dict stem -> image."""
    if isinstance(obj, (str, os.PathLike)):
        return dict(list_images(obj))
    if isinstance(obj, Mapping):
        return {str(k): v for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if stems is None:
            return {f"image{i:03d}": v for i, v in enumerate(obj)}
        if len(obj) != len(stems):
            raise MissingImageError(f"{what}: {len(obj)} images for {len(stems)} originals; give one per original, in order")
        return dict(zip(stems, obj))
    raise TypeError(f"{what} must be a folder, a list of images or a dict stem -> image, got {type(obj).__name__}")


def _is_method_dict(obj: Any) -> bool:
    """``{method: folder | list | stem dict}`` (rather than one stem dict of images)."""
    if not isinstance(obj, Mapping) or not obj:
        return False

    def is_set(v: Any) -> bool:
        if isinstance(v, (list, tuple, Mapping)):
            return True
        if isinstance(v, (str, os.PathLike)):
            p = Path(v).expanduser()
            return p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES
        return False

    return all(is_set(v) for v in obj.values())


def match_inputs(
    originals: Any, protected: Any, include_baseline: bool = True, missing: str = "error",
    unmatched: dict | None = None,
) -> tuple[list[str], dict[str, Any], dict[str, dict[str, Any]]]:
    """Pair originals with protected versions by stem.

    ``protected``: a folder / list / stem dict (one method, named after the folder or
    ``"protected"``), or ``{method: folder | list | stem dict}``. Returns the stems, the
    originals by stem and ``{method: {stem: image}}`` (``none`` first when included).

    ``missing="error"`` (default) stops when an original has no protected version;
    ``missing="skip"`` evaluates the originals every method has, and lists the others. Either
    way ``unmatched`` (a dict, when given) is filled with ``{"no_protected": {method: [stems]},
    "no_original": {method: [stems]}}``.
    """
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
    lists = unmatched if unmatched is not None else {}
    lists.setdefault("no_protected", {})
    lists.setdefault("no_original", {})
    orig = _as_sources(originals, "originals")
    stems = list(orig)
    if not _is_method_dict(protected):
        name = Path(protected).expanduser().name if isinstance(protected, (str, os.PathLike)) else "protected"
        protected = {name or "protected": protected}
    methods: dict[str, dict[str, Any]] = {BASELINE: dict(orig)} if include_baseline else {}
    for name, src in protected.items():
        if name in (BASELINE, CLEAN):
            raise ValueError(f"{name!r} is reserved (the no-protection baseline / the clean image); rename that method")
        sources = _as_sources(src, f"protected[{name!r}]", stems if isinstance(originals, (list, tuple)) else None)
        absent = [s for s in stems if s not in sources]
        if absent:
            lists["no_protected"][name] = absent
        if absent and missing == "error":
            where = f"folder {Path(src).expanduser()}" if isinstance(src, (str, os.PathLike)) else "the given images"
            shown = ", ".join(absent[:10]) + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
            raise MissingImageError(
                f"method {name!r}: no protected version of {len(absent)} original(s) in {where}: {shown}. "
                "Protected files are matched to originals by file name without extension (stem)."
            )
        extra = sorted(set(sources) - set(stems))
        if extra:
            lists["no_original"][name] = extra
        if extra and unmatched is None:
            warnings.warn(f"imguard eval: method {name!r} has {len(extra)} image(s) without an original, ignored: {', '.join(extra[:5])}", stacklevel=3)
        methods[name] = {s: sources[s] for s in stems if s in sources}
    if missing == "skip":
        stems = [s for s in stems if all(s in m for m in methods.values())]
        if not stems:
            raise MissingImageError(
                "no original has a protected version in every set; protected files are matched to originals "
                "by file name without extension (stem)"
            )
        orig = {s: orig[s] for s in stems}
        methods = {name: {s: m[s] for s in stems} for name, m in methods.items()}
    if len(methods) == (1 if include_baseline else 0):
        raise ValueError("no protected images given")
    return stems, orig, methods


def _load(src: Any) -> torch.Tensor:
    """One image as [1,3,H,W] float in [0,1] (a tensor batch must hold one image)."""
    x, _ = to_tensor(read_image(src) if isinstance(src, (str, os.PathLike)) else src)
    if x.shape[0] != 1:
        raise ImageReadError(f"each image must be a single image, got a batch of {x.shape[0]}")
    return x


def _describe_source(src: Any) -> str:
    return str(src) if isinstance(src, (str, os.PathLike)) else f"<in-memory {type(src).__name__}>"


