"""The public entry: :func:`protect` and :class:`Protector`. Type in == type out."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import engine, visibility
from .budget import finalize
from .io import DEFAULT_MAX_PIXELS, from_tensor, resize_image, to_tensor, working_shape  # sizing helpers live in io; api.* kept as aliases
from .methods import get_method, method_names
from .models import Models
from .photo import protect_photo, wants_faces_first
from .presets import DEFAULT_STRENGTH, get_preset
from .request import DEFAULT_METHOD, ProtectionRequest, resolve
from .result import ItemError, ProtectionResult, batch_then_singly, objective_sign, objective_text
from .runtime import amp_dtype_for, memory_format_for, resolve_device

__all__ = ["DEFAULT_METHOD", "DEFAULT_WORKING_SIZE", "ItemError", "ProtectionResult", "Protector", "methods", "protect"]

DEFAULT_WORKING_SIZE = 512


def _check_working_size(working_size: Any) -> None:
    if working_size is not None and (not isinstance(working_size, int) or isinstance(working_size, bool) or working_size < 8):
        raise ValueError(f"working_size must be a whole number of pixels >= 8 (the long side), or None for the native size; got {working_size!r}")


def _check_faces_first(faces_first: Any, rest: Any) -> None:
    if rest not in ("protect", "keep"):
        raise ValueError(f"rest must be 'protect' or 'keep', got {rest!r}")
    if faces_first not in (True, False, "auto"):
        raise ValueError(f"faces_first must be True, False or 'auto', got {faces_first!r}")


def _mask_tensor(mask: Any, B: int, H: int, W: int) -> torch.Tensor:
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


class Protector:
    """Loads models once and protects many images with them.

    >>> p = imguard.Protector(strength="high")           # FaceLock against an ensemble, offline
    >>> protected = p.protect(img)                        # same type as img
    >>> result = p.protect(img, return_result=True); print(result.summary())   # incl. the check

    ``strength`` ("low", "medium", "high"; see :mod:`imguard.presets`) picks the surrogate
    models, budget, steps and transfer techniques; ``vae``, ``face_model`` and method options
    given explicitly override the preset's. ``method`` other than the preset's (e.g.
    ``"photoguard"``) uses that method's own defaults. ``models`` may be a
    :class:`~imguard.models.Models` to share loaded models between protectors, or a dict of
    specs (``{"vae": ..., "face_model": ...}``). ``check`` (default True) adds the protection
    check of :mod:`imguard.check` to every result.

    ``precision`` ("auto": bf16 autocast on GPUs and on CPUs with bf16 hardware, else fp32;
    "fp32", "bf16", "fp16") sets the model forwards' precision (:mod:`imguard.runtime`).
    ``speedups=False`` turns off what is meant to save time without changing results (targets
    of the clean image cached, unused decoder passes skipped, channels-last weights): for
    checking that they change nothing.
    """

    def __init__(
        self,
        method: str | None = None,
        *,
        strength: str | None = None,
        device: str | torch.device | None = None,
        models: Models | dict | None = None,
        vae: Any = None,
        face_model: Any = None,
        face_weights: Sequence[float] | None = None,
        features: Any = "ae",
        detector: Any = "mtcnn",
        precision: str = "auto",
        working_size: int | None = DEFAULT_WORKING_SIZE,
        check: bool | str = True,
        speedups: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        # a named method without a strength runs with that method's own (paper) defaults
        if strength is None and method is None:
            strength = DEFAULT_STRENGTH
        self.strength = get_preset(strength).name if strength is not None else None
        self.method = get_method(method or self._preset_method(self.strength)).name
        self.device = resolve_device(device)
        self.amp_dtype = amp_dtype_for(self.device, precision)
        self.speedups = bool(speedups)
        _check_working_size(working_size)
        self._explicit = {"vae": vae, "face_model": face_model}
        self._model_args = {"features": features, "detector": detector, "face_weights": face_weights}
        self._models: dict[tuple, Models] = {}
        if isinstance(models, Models):
            self._fixed_models: Models | None = models
        elif isinstance(models, dict):
            unknown = set(models) - {"vae", "face_model", "features", "detector"}
            if unknown:
                raise TypeError(f"unknown model keys {sorted(unknown)}; valid: vae, face_model, features, detector")
            self._explicit.update({k: v for k, v in models.items() if k in ("vae", "face_model")})
            self._model_args.update({k: v for k, v in models.items() if k in ("features", "detector")})
            self._fixed_models = None
        else:
            self._fixed_models = None
        if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
            raise ValueError(f"max_pixels must be a whole number >= 1, or None for no limit; got {max_pixels!r}")
        self.max_pixels = max_pixels
        self.working_size = working_size
        self.check_enabled = check
        self._checker = None
        self._lock = threading.Lock()

    @staticmethod
    def _preset_method(strength: str | None) -> str:
        return get_preset(strength).method if strength else DEFAULT_METHOD

    def request(self, method: str | None = None, strength: str | None = None, eps: float | None = None,
                steps: int | None = None, **method_options: Any) -> ProtectionRequest:
        """The :class:`~imguard.request.ProtectionRequest` a :meth:`protect` call with these
        arguments runs: the call's method and strength, else the protector's (its strength
        only when no method is named), with the protector's explicit models."""
        if strength is None:
            strength = self.strength if method is None else None
        return resolve(method=method or self.method, strength=strength, eps=eps, steps=steps,
                       vae=self._explicit["vae"], face_model=self._explicit["face_model"], **method_options)

    def models_for(self, strength: str | None = None) -> Models:
        """The (cached) models a protection at ``strength`` uses."""
        return self._models_of(resolve(method=None if strength else DEFAULT_METHOD, strength=strength,
                                       vae=self._explicit["vae"], face_model=self._explicit["face_model"]))

    def _models_of(self, req: ProtectionRequest) -> Models:
        if self._fixed_models is not None:
            return self._fixed_models
        key = (_model_key(req.autoencoder), _model_key(req.recognizer))
        if key not in self._models:
            self._models[key] = Models(vae=req.autoencoder, face_model=req.recognizer, device=self.device,
                                       memory_format=memory_format_for(self.device, self.amp_dtype) if self.speedups else torch.contiguous_format,
                                       **self._model_args)
            if self._models:  # share the detector between the protector's model sets
                first = next(iter(self._models.values()))
                if "detector" in first._cache:
                    self._models[key]._cache["detector"] = first._cache["detector"]
        return self._models[key]

    def load_models(self, method: str | None = None, strength: str | None = None) -> Models:
        """Load now every model a protection (by default the protector's own) needs; every
        model that fails is reported together (:class:`~imguard.models.ModelLoadError`)."""
        return self._load(self.request(method, strength))

    def _load(self, req: ProtectionRequest) -> Models:
        models = self._models_of(req)
        models.load(tuple(n for n in get_method(req.method).needs if n in ("autoencoder", "face", "features")))
        return models

    @property
    def models(self) -> Models:
        """The models of the protector's own strength."""
        return self.models_for(self.strength)

    def protect(
        self,
        image: Any,
        *,
        method: str | None = None,
        strength: str | None = None,
        eps: float | None = None,
        steps: int | None = None,
        seed: int | None = None,
        mask: Any = None,
        progress: bool = False,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        early_stop: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
        return_result: bool = False,
        names: Sequence[str] | None = None,
        faces_first: bool | str = "auto",
        rest: str = "protect",
        **method_options: Any,
    ):
        """Protect ``image`` (PIL, ndarray, tensor or file path); returns the same type and size.

        ``eps`` and ``step_size`` are in /255 pixel units. Other keyword options are the
        method's (see :func:`imguard.methods`). ``early_stop(x_adv, loss, step) -> bool[B]``
        freezes the images it marks as done (at the working size). With ``return_result=True`` a
        :class:`ProtectionResult` carries the image and the measured budget.

        ``faces_first`` ("auto": for a single photo larger than the working size, with a
        face method): every face region is protected at its own working size and blended into
        the photo (see :mod:`imguard.photo`); the rest of the photo is protected as a whole
        (``rest="protect"``) or left as it is (``rest="keep"``).
        """
        if (strength if strength is not None else (self.strength if method is None else None)) == "fast":
            from .fast.protect import protect_fast  # the pre-trained mode: no optimisation unless refine=N

            return protect_fast(self, image, eps=eps, steps=steps, seed=seed, progress=progress, callback=callback,
                                return_result=return_result, names=names, mask=mask, **method_options)
        _check_faces_first(faces_first, rest)
        req = self.request(method, strength, eps, steps, **method_options)
        x, info = to_tensor(image, name=(names or [None])[0], max_pixels=self.max_pixels)
        if faces_first and mask is None and wants_faces_first(x, self.working_size, get_method(req.method).needs, faces_first):
            call = dict(method=method, strength=strength, eps=eps, steps=steps, seed=seed, progress=progress,
                        callback=callback, early_stop=early_stop, names=names, **method_options)
            res = protect_photo(self, x, info, rest, self._models_of(req).detector, call)
            if res is not None:
                return res if return_result else res.image
        t0 = time.perf_counter()
        models = self._load(req)  # every model the method needs, every failure reported together, up front
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else seed
        B, _, H, W = x.shape
        size = working_shape(H, W, self.working_size)
        mask_native = _mask_tensor(mask, B, H, W) if mask is not None else None
        with self._lock:  # one optimisation at a time per Protector (models are shared)
            x_work = resize_image(x.to(self.device), size)
            mask_work = resize_image(mask_native, size).ge(0.5).float().to(self.device) if mask_native is not None else None
            budget = req.budget.build(x)  # the perceptual map (budget="jnd"), once, at the native size
            run, sims = self._optimise(req, models, x_work, mask_work, budget.resized(tuple(size)).to(self.device), seed,
                                       names, progress, callback, early_stop, return_result)
            out, achieved = finalize(x, run.delta, budget, mask_native)  # uint8, in row bands
            if req.budget.gate:  # invisible by the gate, whatever the optimiser did
                out, achieved = visibility.within_gate(x, run.delta, budget, mask_native, out, achieved)
            if not bool((achieved <= req.budget.eps + 1e-3).all()):
                raise RuntimeError(f"internal error: budget {req.budget.eps}/255 exceeded after quantisation ({achieved.tolist()})")
            checks = seen = None
            if return_result:
                out_work = resize_image(out.to(self.device).float().div_(255), size)
                seen = visibility.of_result(x, out, x_work, out_work)
                if self.check_enabled and "face" in get_method(req.method).needs:
                    checks = self._run_check(x_work, out_work, models)
        image_out = from_tensor(out, info)
        if not return_result:
            return image_out
        return _result(req, image_out, achieved, run, seed, size, models, time.perf_counter() - t0, checks, seen, sims)

    def _optimise(self, req: ProtectionRequest, models: Models, x: torch.Tensor, mask: torch.Tensor | None, budget,
                  seed: int, names, progress: bool, callback, early_stop, similarity: bool):
        """prepare (targets once) -> the engine, at the working size. Returns the engine's result
        and, for face methods (when asked or shown on the bar), the attacked recognizers'
        similarity to the original before and after."""
        m = get_method(req.method)
        cfg = req.engine.config()
        torch.manual_seed(seed)
        ctx = m.prepare(x, models, {**req.options, "names": list(names) if names else None, "cache": self.speedups})
        objective = engine.Objective(loss=lambda xa, i: m.objective(xa, ctx, i, cfg.steps), maximize=m.maximize)
        stop = early_stop if early_stop is not None else _margin_stop(m, ctx, req.merged(), cfg.steps)
        sim0 = _similarity_to_original(ctx, x, self.amp_dtype) if (progress or similarity) else None
        bar = None
        cb = callback
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, desc=f"imguard {m.name}", unit="step", leave=False)
            if sim0 is not None:  # face methods: one readable number, the similarity, falling
                bar.set_postfix(similarity=f"{float(sim0[0]):.2f}")
                stop = _showing_similarity(stop, ctx, bar, cfg.steps, self.amp_dtype)

            def cb(i, n, loss, _user=callback, _sign=objective_sign(m.maximize), _face=sim0 is not None):
                bar.update(1)
                if not _face:  # other methods: their objective (higher = stronger)
                    bar.set_postfix(objective=objective_text(_sign * float(loss[0])))
                if _user is not None:
                    _user(i, n, loss)

        try:
            run = engine.run(x, objective, budget, cfg, mask=mask, callback=cb, early_stop=stop,
                             seed=seed, amp_dtype=self.amp_dtype)
        finally:
            if bar is not None:
                bar.close()
        sim1 = _similarity_to_original(ctx, x + run.delta, self.amp_dtype) if similarity and sim0 is not None else None
        return run, (sim0, sim1)

    def _run_check(self, x_work: torch.Tensor, out_work: torch.Tensor, models: Models):
        from .check import Checker

        if self._checker is None:
            judge = self.check_enabled if isinstance(self.check_enabled, str) else "auto"
            self._checker = Checker(self.device, judge=judge, detector=models.detector if models.specs["detector"] == "mtcnn" else None)
        if models.detector is None:  # no detector (tests): the check needs faces, skip it
            return None
        return self._checker.check(x_work, out_work, models.recognizer, models.autoencoder)

    __call__ = protect

    def protect_many(self, images: Sequence[Any], *, batch_size: int = 8, errors: str = "raise",
                     names: Sequence[str] | None = None, **kwargs: Any) -> list:
        """Protect a list of images, batching those that share a size (platform use).

        A batch that fails is retried one image at a time, so one bad image does not take its
        batch mates down. ``errors="raise"`` (default) raises :class:`ItemError` (its
        ``index``, ``name`` and ``reason``; the original exception as ``__cause__``) for the
        first image that fails; ``errors="return"`` puts the :class:`ItemError` in that
        image's slot of the returned list instead and goes on.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        if names is not None and len(names) != len(images):
            raise ValueError(f"names has {len(names)} entries for {len(images)} images; give one name per image")
        label = [str(names[i]) if names is not None else f"item {i}" for i in range(len(images))]
        kwargs.pop("return_result", None)
        out: list = [None] * len(images)

        def failed(i: int, e: Exception) -> None:
            err = ItemError(i, label[i], e)
            if errors == "raise":
                raise err from e
            out[i] = err

        groups: dict[tuple, list[int]] = {}
        loaded: dict[int, tuple] = {}
        for i, img in enumerate(images):
            try:
                loaded[i] = to_tensor(img, name=label[i], max_pixels=self.max_pixels)
            except Exception as e:  # noqa: BLE001 - reported for this item
                failed(i, e)
                continue
            groups.setdefault(tuple(loaded[i][0].shape[-3:]), []).append(i)

        def done(i: int, one: torch.Tensor) -> None:
            out[i] = from_tensor(one, loaded[i][1])

        for idx in groups.values():
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                batch_then_singly(
                    chunk,
                    lambda c: list(self.protect(torch.cat([loaded[i][0] for i in c]), names=[label[i] for i in c], **kwargs).split(1)),
                    lambda i: self.protect(loaded[i][0], names=[label[i]], **kwargs),
                    done, failed,
                )
        return out


def _margin_stop(m, ctx, opts: dict, steps: int):
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


def _result(req: ProtectionRequest, image: Any, achieved: torch.Tensor, run: engine.EngineResult, seed: int,
            size, models: Models, seconds: float, checks, seen, sims) -> ProtectionResult:
    opts = req.merged()
    sim0, sim1 = sims
    return ProtectionResult(
        image=image, method=req.method, eps=req.budget.eps, norm=req.budget.norm,
        achieved=[float(a) for a in achieved.cpu()], steps=int(req.engine.steps), seed=seed, working_size=tuple(size),
        models=models.describe(), loss_history=run.history,
        initial_loss=[float(v) for v in run.initial_loss.cpu()], final_loss=[float(v) for v in run.final_loss.cpu()],
        seconds=seconds, options={k: v for k, v in opts.items() if isinstance(v, (int, float, str, bool)) or k == "eot"},
        strength=req.strength, check=checks, steps_run=[int(v) for v in run.steps_run], maximize=get_method(req.method).maximize,
        visibility=seen,
        initial_similarity=[float(v) for v in sim0] if sim1 is not None else None,
        similarity=[float(v) for v in sim1] if sim1 is not None else None,
    )


def _similarity_to_original(ctx: Any, x: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor | None:
    """[B]: the attacked recognizers' mean similarity to the original after the attacked
    autoencoders' round trips (mean over them); None for methods without a recognizer."""
    embedder, ref = getattr(ctx, "embedder", None), getattr(ctx, "emb_clean", None)
    if embedder is None or ref is None:
        return None
    aes = list(getattr(ctx, "autoencoders", None) or [])
    with torch.no_grad(), torch.autocast(x.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        trips = [ae.decode(ae.encode(x)).float().clamp(0, 1) for ae in aes] or [x]
        return torch.stack([embedder.similarity(t, ref).float() for t in trips]).mean(0).cpu()


def _showing_similarity(stop, ctx: Any, bar: Any, steps: int, amp_dtype: torch.dtype | None):
    """Wraps the early stop (which sees x') to put the similarity on the progress bar about
    ten times per run and at the last step (an extra forward pass each time, no gradient)."""
    every = max(1, steps // 10)

    def wrapped(x_adv, loss, i):
        if (i + 1) % every == 0 or i + 1 == steps:
            sim = _similarity_to_original(ctx, x_adv, amp_dtype)
            if sim is not None:
                bar.set_postfix(similarity=f"{float(sim[0]):.2f}")
        return stop(x_adv, loss, i) if stop is not None else torch.zeros(x_adv.shape[0], dtype=torch.bool)

    return wrapped


_DEFAULT_PROTECTORS: dict[tuple, Protector] = {}
_DEFAULT_LOCK = threading.Lock()


def _model_key(spec: Any) -> Any:
    return spec if isinstance(spec, (str, type(None), int, float)) else id(spec)


def protect(
    image: Any,
    method: str | None = None,
    *,
    strength: str | None = None,
    eps: float | None = None,
    steps: int | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    mask: Any = None,
    progress: bool = False,
    vae: Any = None,
    face_model: Any = None,
    features: Any = "ae",
    working_size: int | None = DEFAULT_WORKING_SIZE,
    return_result: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    **method_options: Any,
):
    """Protect one image (or a batch tensor) against diffusion editing.

    Returns the same type and size as ``image``. ``strength`` ("low", "medium" (the default
    when no ``method`` is named), "high") picks surrogate models, budget and transfer techniques (:mod:`imguard.presets`);
    ``eps`` (in /255 pixel units), ``steps``, models and method options override it.
    Models are loaded once and cached between calls; for control over their lifetime use
    :class:`Protector`. With ``return_result=True`` the :class:`ProtectionResult` carries the
    measured budget and the protection check. Images above ``max_pixels`` (default 50
    megapixels; None: no limit) are refused with :class:`~imguard.ImageReadError`.
    """
    dev = resolve_device(device)
    key = (str(dev), _model_key(vae), _model_key(face_model), _model_key(features), working_size, max_pixels)
    with _DEFAULT_LOCK:
        p = _DEFAULT_PROTECTORS.get(key)
        if p is None:
            p = Protector(device=dev, vae=vae, face_model=face_model, features=features, working_size=working_size,
                          max_pixels=max_pixels)
            _DEFAULT_PROTECTORS[key] = p
    return p.protect(
        image, method=method, strength=strength, eps=eps, steps=steps, seed=seed, mask=mask, progress=progress,
        return_result=return_result, **method_options,
    )


def methods() -> dict[str, dict]:
    """The registered methods: ``{name: {"description", "maximize", "defaults", "needs"}}``."""
    out = {}
    for name in method_names():
        m = get_method(name)
        out[name] = {"description": m.description, "maximize": m.maximize, "defaults": m.options(), "needs": m.needs}
    return out
