"""The harness: every image through every condition, judged; :func:`evaluate`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from .. import metrics as M
from ..io import resize_image, working_shape
from .editor import EditPrompt, select_prompts
from ..models import ModelLoadError, load_face_recognizer
from ..runtime import resolve_device
from ..transforms import parse_purifications

from .conditions import Condition, _autoencoder_proxy, _autoencoder_specs, _conditions, _editor_proxy, _grid_condition, _spec_text
from .grids import _grid_tiles, save_grid
from .inputs import BASELINE, DEFAULT_SIZE, _describe_source, _load, match_inputs
from .judging import _Judges, _attacked_flag, _identity_fields, _imperceptibility, _num, _parse_attacked
from .report import EvalReport, _check_out_dir, _judges_info, _meta

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
    missing: str = "error",
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
    ``missing``            ``"error"``: stop when an original has no protected version;
                           ``"skip"``: evaluate the matched pairs, list the others in
                           ``report.unmatched`` (and the report's JSON and Markdown)
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    unmatched: dict = {}
    stems, orig, methods = match_inputs(originals, protected, include_baseline, missing=missing, unmatched=unmatched)
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
        unmatched=unmatched,
    )
    if out_dir is not None:
        report.save(out_dir, overwrite=overwrite)
    return report


def _make_detector(detector: Any, dev: torch.device):
    if isinstance(detector, str):
        if detector.lower() == "mtcnn":
            from ..models import FaceDetector

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


