"""``strength="fast"`` behind :class:`imguard.Protector`: the protector's models of ``high``
(detector, recognizers, autoencoders) are reused, the fast weights load once per protector."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from .infer import FastProtect

__all__ = ["protect_fast", "fast_for"]


def fast_for(protector: Any, weights: Any = None) -> FastProtect:
    """The protector's :class:`FastProtect` for ``weights`` (a file made by ``imguard
    train-fast``; None: the shipped one), made once per file with the models of the ``fast``
    strength."""
    cache = protector.__dict__.setdefault("_fast", {})
    key = None if weights is None else str(weights)
    fp = cache.get(key)
    if fp is None:
        models = protector.models_for("fast")
        det = models.detector
        if det is not None and not hasattr(det, "detect_all"):
            det = None
        fp = FastProtect(weights, device=protector.device, face_model=models.face, vae=models.autoencoder, detector=det)
        cache[key] = fp
    return fp


def protect_fast(
    protector: Any,
    image: Any,
    *,
    eps: float | None = None,
    steps: int | None = None,
    refine: int | None = 0,
    seed: int | None = None,
    progress: bool = False,
    callback: Callable | None = None,
    return_result: bool = False,
    names: Sequence[str] | None = None,
    **options: Any,
):
    """Protect ``image`` (any type :func:`imguard.protect` takes) with the fast mode;
    ``fast_weights``: a weights file made by ``imguard train-fast`` (default: the shipped one)."""
    from ..result import ProtectionResult
    from ..visibility import of_result as _visibility
    from ..io import from_tensor, resize_image, to_tensor, working_shape
    from ..request import resolve

    unknown = sorted(k for k, v in options.items()
                     if v is not None and k not in ("early_stop", "faces_first", "rest", "mask", "method", "fast_weights",
                                                    "texture_scale", "psnr_floor"))
    if unknown or options.get("mask") is not None:
        raise TypeError(f"strength='fast' takes eps, refine, seed, fast_weights, texture_scale, psnr_floor (not "
                        f"{', '.join(unknown) or 'mask'}); use strength='low', 'medium' or 'high' for the optimisation's options")
    # the fast preset's map, with what was given over it (validated as every request's)
    chosen = resolve(strength="fast", texture_scale=options.get("texture_scale"), psnr_floor=options.get("psnr_floor")).budget
    if steps is not None:
        raise TypeError("strength='fast' does not optimise; pass refine=N (N optimisation steps from the fast start) instead of steps")
    refine = int(refine or 0)
    if refine < 0:
        raise ValueError(f"refine must be a whole number >= 0, got {refine}")
    eps = float(chosen.eps if eps is None else eps)
    if not 0 < eps <= 8:
        raise ValueError(f"strength='fast' was trained for eps <= 8 (/255); got eps={eps:g}")
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else int(seed)
    t0 = time.perf_counter()
    x_all, info = to_tensor(image, name=(names or [None])[0], max_pixels=protector.max_pixels)
    fp = fast_for(protector, options.get("fast_weights"))
    outs, results = [], []
    with protector._lock:
        for b in range(x_all.shape[0]):
            x = x_all[b : b + 1].to(protector.device)
            res = fp.protect(x, eps=eps, texture_scale=chosen.texture_scale, psnr_floor=chosen.psnr_floor)
            if refine:
                bar = None
                cb = callback
                if progress:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=refine, desc="imguard fast refine", unit="step", leave=False)

                    def cb(i, n, loss, _user=callback):
                        if bar.total != n:  # a photo refined faces first: refine steps per face
                            bar.total = n
                        bar.update(1)
                        if _user is not None:
                            _user(i, n, loss)
                try:
                    res = fp.refine(x, res, refine, protector.models_for("fast"), seed=seed + b,
                                    amp_dtype=protector.amp_dtype, callback=cb, size=protector.working_size)
                finally:
                    if bar is not None:
                        bar.close()
            outs.append(res.image)
            results.append(res)
    out = torch.cat(outs)
    result_image = from_tensor(out, info)
    if not return_result:
        return result_image
    H, W = x_all.shape[-2:]
    size = working_shape(H, W, protector.working_size)
    x_work = resize_image(x_all.to(protector.device), size)
    out_work = resize_image(out.to(protector.device).float().div(255), size)
    gated = [r.visibility for r in results]  # measured by the gate already: a big photo is not measured twice
    seen = _visibility(x_all, out, x_work, out_work, seen=gated if None not in gated else None)
    models = protector.models_for("fast")
    checks = protector._check(x_work, out_work, models) if protector.check_enabled else None
    hist = results[0].loss_history if refine else torch.zeros(0, len(results))
    return ProtectionResult(
        image=result_image, method="fast", eps=eps, norm="linf", achieved=[r.achieved for r in results],
        steps=refine, seed=seed, working_size=tuple(size), models=models.describe(),
        loss_history=hist if hist is not None else torch.zeros(0, len(results)),
        initial_loss=[r.initial_loss for r in results], final_loss=[r.final_loss for r in results],
        seconds=time.perf_counter() - t0,
        options={"budget": "jnd", "refine": refine, "texture_scale": chosen.texture_scale, "psnr_floor": chosen.psnr_floor,
                 "weights": fp.weights.meta, "timings": [r.timings for r in results]},
        strength="fast", faces=[f for r in results for f in r.faces] or None, check=checks, visibility=seen,
        steps_run=[r.refine_steps for r in results], maximize=True,
    )
