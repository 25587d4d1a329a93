"""Judges: which recognizer and edit proxies judged, and whether the protection attacked them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch

from .. import metrics as M
from ..models import ModelSpec

from .inputs import BASELINE


def same_model(stated: Any, *candidates: Any) -> bool:
    """Whether a stated model id names one of ``candidates`` (specs or models), by
    :meth:`~imguard.models.ModelSpec.same_as`."""
    want = ModelSpec.of(stated)
    return any(c is not None and want.same_as(c) for c in candidates)


def _parse_attacked(attacked: Any, methods: Iterable[str]) -> dict[str, dict | None]:
    """Per method: ``{"face_model": ..., "vae": ...}`` as stated (keys absent = not stated),
    None for the baseline."""
    keys = {"face_model", "vae"}
    attacked = attacked or {}
    if not isinstance(attacked, Mapping):
        raise TypeError("attacked must be a dict like {'face_model': 'facenet', 'vae': 'taesd:/path'} or {method: such a dict}")
    per_method = not (set(attacked) <= keys)
    out: dict[str, dict | None] = {}
    for m in methods:
        if m == BASELINE:
            out[m] = None
            continue
        d = attacked.get(m, {}) if per_method else attacked
        bad = set(d or {}) - keys
        if bad:
            raise ValueError(f"attacked[{m!r}] has unknown keys {sorted(bad)}; use 'face_model' and 'vae'")
        out[m] = dict(d or {})
    return out


def _attacked_flag(stated: dict | None, key: str, *candidates: Any) -> bool | None:
    """True/False when the caller said what was attacked; None when not stated (or baseline)."""
    if stated is None or key not in stated:
        return None
    v = stated[key]
    if v is None or (isinstance(v, str) and v.lower() == "none"):
        return False
    return same_model(v, *candidates)


def _flag_text(flag: bool | None, baseline: bool = False) -> str:
    if baseline:
        return "n/a"
    return {True: "attacked", False: "not attacked", None: "attack not stated"}[flag]



def _num(v: torch.Tensor | float | None) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


@dataclass
class _Judges:
    identity: M.IdentityMetric
    recognizer_spec: str
    lpips: M.LPIPSMetric | None
    clip: M.CLIPImageSimilarity | None


def _imperceptibility(x0: torch.Tensor, xp: torch.Tensor, judges: _Judges) -> dict:
    from ..visibility import flat_region_change

    flat, share = flat_region_change(x0, xp)
    return {
        "linf_255": float(M.linf_in_255(xp, x0)[0]),
        "psnr": float(M.psnr(xp, x0)[0]),
        "ssim": float(M.ssim(xp, x0)[0]),
        "flat_255": float(flat[0]),
        "flat_share": float(share[0]),
        "lpips": float(judges.lpips(xp, x0)[0]) if judges.lpips else None,
    }



def _identity_fields(ident: M.IdentityMetric, ref: torch.Tensor | None, edited: torch.Tensor) -> Callable[[int, str], dict]:
    """Identity numbers of the edited batch; ``fields(row, suffix)`` gives one row's, all None
    when the clean original has no face (nothing to compare with)."""
    if ref is None:
        return lambda j, sfx: {f"fr_sim_{sfx}": None, f"face_found_{sfx}": None, f"identity_lost_{sfx}": None}
    sims, found = ident.similarity(ref, edited)
    lost = ident.identity_lost(sims)
    return lambda j, sfx: {f"fr_sim_{sfx}": _num(sims[j]), f"face_found_{sfx}": bool(found[j]), f"identity_lost_{sfx}": bool(lost[j])}


