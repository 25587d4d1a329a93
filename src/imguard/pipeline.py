"""The steps of one protection, in the order :meth:`imguard.Protector.protect` runs them:

1. :func:`working_copy`: the image and mask at the working size, the budget (its perceptual
   map once, at the native size) at both sizes;
2. :func:`optimise`: the method's targets once (``prepare``), then the engine;
3. :func:`within_budget`: the change at the native size, inside the budget, 8-bit, invisible
   by the gate when the request asks for it;
4. :func:`report`: what a result carries besides the image (visibility, the protection check);
5. :func:`result_of`: the :class:`~imguard.result.ProtectionResult`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import engine, visibility
from .budget import Budget, finalize
from .io import resize_image, working_shape
from .methods import get_method
from .models import Models
from .progress import progress_bar, similarity_to_original
from .request import ProtectionRequest
from .result import ProtectionResult, objective_sign

__all__ = ["Work", "mask_tensor", "optimise", "report", "result_of", "within_budget", "working_copy"]


@dataclass
class Work:
    """One protection's inputs at the working size, and the native ones it is finalised at."""

    size: tuple[int, int]  #: the working size (H, W)
    x: torch.Tensor  #: [B,3,h,w] in [0,1], on the device
    mask: torch.Tensor | None  #: [B or 1,1,h,w] in {0,1}, on the device (None: everywhere)
    budget: Budget  #: at the working size, on the device
    native_mask: torch.Tensor | None
    native_budget: Budget
    native_size: tuple[int, int] = (0, 0)  #: (H, W) of the image the result is finalised at


def working_copy(x: torch.Tensor, mask: Any, req: ProtectionRequest, working_size: int | None, device: torch.device) -> Work:
    """Step 1: ``x`` [B,3,H,W] (and the user's ``mask``) at the working size on ``device``."""
    B, _, H, W = x.shape
    size = working_shape(H, W, working_size)
    native_mask = mask_tensor(mask, B, H, W) if mask is not None else None
    x_work = resize_image(x.to(device), size)
    mask_work = resize_image(native_mask, size).ge(0.5).float().to(device) if native_mask is not None else None
    budget = req.budget.build(x)  # the perceptual map (budget="jnd"), once, at the native size
    return Work(size, x_work, mask_work, budget.resized(size).to(device), native_mask, budget, (H, W))


def mask_tensor(mask: Any, B: int, H: int, W: int) -> torch.Tensor:
    """A user mask (PIL / ndarray / tensor; nonzero = may change) as [B or 1,1,H,W] in {0,1}."""
    from PIL import Image

    if isinstance(mask, Image.Image):
        m = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)
    elif isinstance(mask, np.ndarray):
        m = torch.from_numpy(mask.astype(np.float32))
        if mask.dtype == np.uint8:
            m = m / 255.0
    elif torch.is_tensor(mask):
        m = mask.detach().float().cpu()
    else:
        raise TypeError(f"mask must be a PIL image, ndarray or tensor, got {type(mask).__name__}")
    if m.dim() == 3 and m.shape[-1] in (3, 4) and m.shape[0] not in (1, B):  # HxWxC ndarray
        m = m[..., 0]
    while m.dim() < 4:
        m = m.unsqueeze(0)
    if m.shape[1] != 1:
        m = m[:, :1]
    if tuple(m.shape[-2:]) != (H, W):
        raise ValueError(f"mask is {tuple(m.shape[-2:])} (HxW) but the image is {(H, W)}; give a mask of the image's size")
    if m.shape[0] not in (1, B):
        raise ValueError(f"mask batch {m.shape[0]} does not match the image batch {B}")
    return (m >= 0.5).float()


def optimise(req: ProtectionRequest, models: Models, work: Work, seed: int, *, amp_dtype: torch.dtype | None,
             cache: bool, names: Sequence[str] | None = None, progress: bool = False, callback: Callable | None = None,
             early_stop: Callable | None = None, similarity: bool = False):
    """Step 2: prepare (targets once) -> the engine, at the working size. Returns the engine's
    result and, for face methods (when asked or shown on the bar), the attacked recognizers'
    similarity to the original before and after (else None). With ``extent="face"``, ``work``'s
    budgets are confined to the faces the method found (:func:`confine`)."""
    m = get_method(req.method)
    cfg = req.engine.config()
    torch.manual_seed(seed)
    ctx = m.prepare(work.x, models, {**req.options, "names": list(names) if names else None, "cache": cache})
    confine(req, ctx, work)
    keep_eye_colour(ctx, work)
    objective = engine.Objective(loss=lambda xa, i: m.objective(xa, ctx, i, cfg.steps), maximize=m.maximize)
    stop = early_stop if early_stop is not None else margin_stop(m, ctx, req.merged(), cfg.steps)
    sim0 = similarity_to_original(ctx, work.x, amp_dtype) if (progress or similarity) else None
    shown = progress_bar(cfg.steps, m.name, callback, stop, sign=objective_sign(m.maximize), similarity=sim0,
                         ctx=ctx, amp_dtype=amp_dtype) if progress else nullcontext((callback, stop))
    with shown as (callback, stop):
        run = engine.run(work.x, objective, work.budget, cfg, mask=work.mask, callback=callback, early_stop=stop,
                         seed=seed, amp_dtype=amp_dtype)
    sim1 = similarity_to_original(ctx, work.x + run.delta, amp_dtype) if similarity and sim0 is not None else None
    return run, (sim0, sim1)


def confine(req: ProtectionRequest, ctx, work: Work) -> None:
    """For ``extent="face"``: ``work``'s budgets (working and native) weighted by where the
    change may go (:func:`~imguard.budget.face_extent`), from the faces the method found."""
    if req.budget.extent == "image":
        return
    from .budget import face_extent

    w = face_extent(getattr(ctx, "faces", None) or [None] * work.x.shape[0], work.size, req.budget.extent_scale)
    work.budget = work.budget.weighted(w.to(work.x.device))
    native = resize_image(w, work.native_size) if tuple(work.native_size) != tuple(work.size) else w
    work.native_budget = work.native_budget.weighted(native)


def keep_eye_colour(ctx, work: Work) -> None:
    """The perceptual budget keeps the colour of the eyes of the faces the method found
    (:func:`~imguard.budget.eye_weight`; :attr:`~imguard.budget.Budget.colour_weight`), in
    ``work``'s budgets, working and native. A plain ``linf`` budget (``budget="linf"``) is left
    as it is."""
    from .budget import eye_weight

    faces = getattr(ctx, "faces", None)
    if not faces or work.budget.radius_map is None:
        return
    w = eye_weight(faces, work.size)
    if w is None:
        return
    work.budget = work.budget.keeping_colour(w.to(work.x.device))
    native = resize_image(w, work.native_size) if tuple(work.native_size) != tuple(work.size) else w
    work.native_budget = work.native_budget.keeping_colour((native > 0.5).float())


def margin_stop(m, ctx, opts: dict, steps: int):
    """The ``stop_margin`` early stop: checked every ``stop_every`` steps once the identity
    term is on (before that the attacked models are not being fooled yet)."""
    margin = opts.get("stop_margin")
    if margin is None:
        return None
    if m.fooled is None:
        raise ValueError(f"stop_margin needs a method that can tell when its models are fooled; {m.name!r} cannot")
    every = int(opts.get("stop_every") or 5)
    if every < 1:
        raise ValueError(f"stop_every must be >= 1, got {every}")
    start = float(opts.get("fr_start", 0.0)) * steps

    def stop(x_adv, loss, i):
        if i < start or (i + 1) % every:
            return torch.zeros(x_adv.shape[0], dtype=torch.bool)
        return m.fooled(x_adv, ctx, float(margin))

    return stop


def within_budget(req: ProtectionRequest, x: torch.Tensor, delta: torch.Tensor, work: Work,
                  seen: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 3: the protected image (uint8, native size; finalised in row bands) and the budget
    each image used (/255 units); scaled down until it passes the visibility gate when the
    request's budget has ``gate``, whatever the optimiser did (and, for ``gate="fill"``, amplified
    up to it when well inside). Re-measured: never over eps. ``seen``: a list that receives the
    gate's measure of each result (left empty without the gate), for :func:`report`."""
    out, achieved = finalize(x, delta, work.native_budget, work.native_mask)
    if req.budget.gate:  # gate="fill": the optimiser's direction, as far as the gate allows
        out, achieved = visibility.within_gate(x, delta, work.native_budget, work.native_mask, out, achieved,
                                               fill=req.budget.gate == "fill", seen=seen,
                                               fill_max=req.budget.fill_max)
    if not bool((achieved <= req.budget.eps + 1e-3).all()):
        raise RuntimeError(f"internal error: budget {req.budget.eps}/255 exceeded after quantisation ({achieved.tolist()})")
    return out, achieved


def report(req: ProtectionRequest, x: torch.Tensor, out: torch.Tensor, work: Work, models: Models,
           check: Callable | None, seen: list | None = None) -> tuple[list | None, list]:
    """Step 4: (the protection check, or None; the visibility) of a result. The check (``check``,
    None when off) runs for face methods, at the working size. ``seen``: the gate's measure of
    each result (from :func:`within_budget`), not taken again."""
    out_work = resize_image(out.to(work.x.device).float().div_(255), work.size)
    seen = visibility.of_result(x, out, work.x, out_work, seen=seen or None)
    checks = check(work.x, out_work, models) if check is not None and "face" in get_method(req.method).needs else None
    return checks, seen


def result_of(req: ProtectionRequest, image: Any, achieved: torch.Tensor, run: engine.EngineResult, seed: int,
              work: Work, models: Models, seconds: float, checks, seen, sims) -> ProtectionResult:
    """Step 5: the result (``sims``: the similarity before and after, from :func:`optimise`)."""
    opts = req.merged()
    sim0, sim1 = sims
    return ProtectionResult(
        image=image, method=req.method, eps=req.budget.eps, norm=req.budget.norm,
        achieved=[float(a) for a in achieved.cpu()], steps=int(req.engine.steps), seed=seed, working_size=work.size,
        models=models.describe(), loss_history=run.history,
        initial_loss=[float(v) for v in run.initial_loss.cpu()], final_loss=[float(v) for v in run.final_loss.cpu()],
        seconds=seconds, options={k: v for k, v in opts.items() if isinstance(v, (int, float, str, bool)) or k == "eot"},
        strength=req.strength, check=checks, steps_run=[int(v) for v in run.steps_run], maximize=get_method(req.method).maximize,
        visibility=seen,
        initial_similarity=[float(v) for v in sim0] if sim1 is not None else None,
        similarity=[float(v) for v in sim1] if sim1 is not None else None,
    )
