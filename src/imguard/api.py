"""The public entry: :func:`protect` and :class:`Protector`. Type in == type out."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import engine
from .budget import Budget, finalize
from .io import DEFAULT_MAX_PIXELS, from_tensor, resize_image, to_tensor, working_shape  # sizing helpers live in io; api.* kept as aliases
from .methods import ENGINE_OPTIONS, get_method, method_names
from .models import Models
from .photo import BIG_PHOTO_FACTOR
from .presets import DEFAULT_STRENGTH, get_preset
from .runtime import amp_dtype_for, memory_format_for, resolve_device
from .transforms import get_eot

DEFAULT_METHOD = "facelock"
DEFAULT_WORKING_SIZE = 512
#: a photo whose one face region covers at least this share of it is protected as a whole
PORTRAIT_AREA = 0.5


@dataclass
class ProtectionResult:
    """A protected image and what it took."""

    image: Any  #: same type as the input
    method: str
    eps: float  #: budget, /255 units
    norm: str
    achieved: list[float]  #: per image: max |delta| (linf) or RMS (l2) in /255, measured on the returned 8-bit image
    steps: int
    seed: int
    working_size: tuple[int, int]
    models: dict
    loss_history: torch.Tensor  #: [steps, B], the method's own loss per step (its sign: see ``maximize``)
    initial_loss: list[float]  #: per image: the method's own loss at the clean image
    final_loss: list[float]  #: per image: the method's own loss at the result
    seconds: float
    options: dict = field(default_factory=dict)
    strength: str | None = None  #: the preset used, if any
    #: faces first (big photos): per face region, its box (native pixels), working size and check
    faces: list | None = None
    #: per image: the protection check (:class:`imguard.check.ProtectionCheck`), or None when off
    check: list | None = None
    #: per image: the steps it took (fewer than ``steps`` when it stopped early)
    steps_run: list | None = None
    #: whether the method maximises its loss; the *objective* is the loss when it does, its negation when not
    maximize: bool = True
    #: per image: how visible the change is (:class:`imguard.visibility.Visibility`: PSNR, SSIM, LPIPS, flat-region change)
    visibility: list | None = None

    # One number, one sign, everywhere (progress bar, summary, web page, docs): the *objective*
    # is what the method maximises, so higher always means a stronger protection.
    @property
    def sign(self) -> float:
        return 1.0 if self.maximize else -1.0

    @property
    def initial_objective(self) -> list[float]:
        """Per image: the objective (higher = stronger protection) at the clean image."""
        return [self.sign * v for v in self.initial_loss]

    @property
    def final_objective(self) -> list[float]:
        """Per image: the objective (higher = stronger protection) at the result."""
        return [self.sign * v for v in self.final_loss]

    @property
    def objective_history(self) -> torch.Tensor:
        """[steps, B]: the objective at each step, the numbers the progress bar shows."""
        return self.loss_history * self.sign

    def summary(self) -> str:
        ach = ", ".join(f"{a:.2f}" for a in self.achieved)
        text = (
            f"{self.method}{f' ({self.strength})' if self.strength else ''}: eps={self.eps:g}/255 ({self.norm}"
            f"{', perceptual map' if self.options.get('budget') == 'jnd' else ''}), "
            f"achieved {ach}/255, {self.steps} steps, "
            f"objective {objective_text(self.initial_objective[0])} -> {objective_text(self.final_objective[0])} "
            f"(higher = stronger), {self.seconds:.1f}s"
        )
        if self.visibility:
            text += "\n" + "\n".join(v.line() for v in self.visibility)
        if self.check:
            text += "\n" + "\n".join(c.line() for c in self.check)
        return text


def objective_text(value: float) -> str:
    """How the objective is printed, in the progress bar and the summary alike."""
    return f"{value:.4g}"


def _check_working_size(working_size: Any) -> None:
    if working_size is not None and (not isinstance(working_size, int) or isinstance(working_size, bool) or working_size < 8):
        raise ValueError(f"working_size must be a whole number of pixels >= 8 (the long side), or None for the native size; got {working_size!r}")


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

    def models_for(self, strength: str | None = None) -> Models:
        """The (cached) models a protection at ``strength`` uses."""
        if self._fixed_models is not None:
            return self._fixed_models
        preset = get_preset(strength) if strength else None
        vae = self._explicit["vae"] if self._explicit["vae"] is not None else (preset.vae if preset else None)
        face = self._explicit["face_model"] if self._explicit["face_model"] is not None else (preset.face_model if preset else None)
        key = (_model_key(vae), _model_key(face))
        if key not in self._models:
            self._models[key] = Models(vae=vae, face_model=face, device=self.device,
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
        strength = strength if strength is not None else (self.strength if method is None else None)
        m = get_method(method or self.method)
        models = self.models_for(strength if (strength and get_preset(strength).method == m.name) else None)
        models.load(tuple(n for n in m.needs if n in ("autoencoder", "face", "features")))
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
        if rest not in ("protect", "keep"):
            raise ValueError(f"rest must be 'protect' or 'keep', got {rest!r}")
        if faces_first not in (True, False, "auto"):
            raise ValueError(f"faces_first must be True, False or 'auto', got {faces_first!r}")
        call = dict(method=method, strength=strength, eps=eps, steps=steps, seed=seed, progress=progress,
                    callback=callback, early_stop=early_stop, names=names, **method_options)
        loaded = None
        if faces_first and mask is None:
            x_in, info_in = loaded = to_tensor(image, name=(names or [None])[0], max_pixels=self.max_pixels)
            m0 = get_method(method or self.method)
            big = self.working_size is not None and max(x_in.shape[-2:]) > self.working_size * BIG_PHOTO_FACTOR
            if x_in.shape[0] == 1 and "face" in m0.needs and (big or faces_first is True):
                res = self._protect_photo(x_in, info_in, rest, call)
                if res is not None:
                    return res if return_result else res.image
        t0 = time.perf_counter()
        if strength is None:
            strength = self.strength if method is None else None
        preset = get_preset(strength) if strength else None
        m = get_method(method or self.method)  # the call's method, else the protector's (its preset's when unnamed)
        preset_opts = dict(preset.options) if (preset and m.name == preset.method) else {}
        if not preset_opts:
            strength = None  # another method than the preset's: its own defaults
        # every model the method needs loads now, and every failure is reported together, up front
        models = self.load_models(m.name, strength)
        overrides = {k: v for k, v in {**method_options, "eps": eps, "steps": steps}.items() if v is not None}
        opts = m.options(**{**preset_opts, **overrides})
        budget = _budget_of(opts)
        cfg = engine.EngineConfig(
            steps=int(opts["steps"]),
            step_size=float(opts["step_size"]),
            schedule=opts["schedule"],
            optimizer=opts["optimizer"],
            random_start=bool(opts["random_start"]),
            grad_repeats=int(opts["grad_repeats"]),
            restarts=int(opts["restarts"]),
            eot=get_eot(opts["eot"]) if opts["eot"] else (),
            momentum=float(opts["momentum"]),
            ti_kernel=int(opts["ti_kernel"]),
            diversity=float(opts["diversity"]),
            lowres=int(opts["lowres"]),
        )
        cfg.validate()
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())

        x_native, info = loaded or to_tensor(image, name=(names or [None])[0], max_pixels=self.max_pixels)
        B, _, H, W = x_native.shape
        size = working_shape(H, W, self.working_size)
        mask_native = _mask_tensor(mask, B, H, W) if mask is not None else None
        if opts["budget"] == "jnd":  # the perceptual map, once, at the native size
            budget = perceptual_budget(x_native, budget.eps, float(opts["jnd_scale"]))

        with self._lock:  # one optimisation at a time per Protector (models are shared)
            dev = self.device
            x = resize_image(x_native.to(dev), size)
            mask_work = resize_image(mask_native, size).ge(0.5).float().to(dev) if mask_native is not None else None
            prep_opts = {k: v for k, v in opts.items() if k not in ENGINE_OPTIONS}
            prep_opts["names"] = list(names) if names else None
            prep_opts["cache"] = self.speedups
            torch.manual_seed(seed)
            ctx = m.prepare(x, models, prep_opts)
            objective = engine.Objective(loss=lambda xa, i: m.objective(xa, ctx, i, cfg.steps), maximize=m.maximize)
            stop = early_stop if early_stop is not None else _margin_stop(m, ctx, opts, cfg.steps)

            bar = None
            cb = callback
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=cfg.steps, desc=f"imguard {m.name}", unit="step", leave=False)

                sign = 1.0 if m.maximize else -1.0

                def cb(i, n, loss, _user=callback, _sign=sign):
                    bar.update(1)
                    bar.set_postfix(objective=objective_text(_sign * float(loss[0])))
                    if _user is not None:
                        _user(i, n, loss)

            try:
                res = engine.run(
                    x, objective, budget.resized(tuple(size)).to(dev), cfg, mask=mask_work, callback=cb, early_stop=stop, seed=seed,
                    amp_dtype=self.amp_dtype,
                )
            finally:
                if bar is not None:
                    bar.close()

            out, achieved = finalize(x_native, res.delta, budget, mask_native)  # uint8, in row bands
            if not bool((achieved <= budget.eps + 1e-3).all()):
                raise RuntimeError(f"internal error: budget {budget.eps}/255 exceeded after quantisation ({achieved.tolist()})")
            checks = seen = None
            if return_result:
                out_work = resize_image(out.to(dev).float().div_(255), size)
                seen = _visibility(x_native, out, x, out_work)
                if self.check_enabled and "face" in m.needs:
                    checks = self._run_check(x, out_work, models)

        result_image = from_tensor(out, info)
        if not return_result:
            return result_image
        return ProtectionResult(
            image=result_image,
            method=m.name,
            eps=budget.eps,
            norm=budget.norm,
            achieved=[float(a) for a in achieved.cpu()],
            steps=cfg.steps,
            seed=seed,
            working_size=tuple(size),
            models=models.describe(),
            loss_history=res.history,
            initial_loss=[float(v) for v in res.initial_loss.cpu()],
            final_loss=[float(v) for v in res.final_loss.cpu()],
            seconds=time.perf_counter() - t0,
            options={k: v for k, v in opts.items() if isinstance(v, (int, float, str, bool)) or k == "eot"},
            strength=strength,
            check=checks,
            visibility=seen,
            steps_run=[int(v) for v in res.steps_run],
            maximize=m.maximize,
        )

    def _run_check(self, x_work: torch.Tensor, out_work: torch.Tensor, models: Models):
        from .check import Checker

        if self._checker is None:
            judge = self.check_enabled if isinstance(self.check_enabled, str) else "auto"
            self._checker = Checker(self.device, judge=judge, detector=models.detector if models.specs["detector"] == "mtcnn" else None)
        if models.detector is None:  # no detector (tests): the check needs faces, skip it
            return None
        return self._checker.check(x_work, out_work, models.face, models.autoencoder)

    __call__ = protect

    def _protect_photo(self, x: torch.Tensor, info, rest: str, call: dict) -> ProtectionResult | None:
        """Faces first (see :mod:`imguard.photo`); None when the photo has no face."""
        import warnings

        from .photo import compose, face_regions

        t0 = time.perf_counter()
        strength = call["strength"] if call["strength"] is not None else (self.strength if call["method"] is None else None)
        detector = self.models_for(strength).detector
        if detector is None or not hasattr(detector, "detect_all"):
            return None
        regions = face_regions(x.to(self.device), detector)
        label = (call.get("names") or ["the photo"])[0]
        if not regions:
            warnings.warn(f"imguard: no face found in {label}; protecting the whole photo", stacklevel=4)
            return None
        if len(regions) == 1 and regions[0].size[0] * regions[0].size[1] >= PORTRAIT_AREA * x.shape[-2] * x.shape[-1]:
            return None  # a portrait: the face region is most of the photo, protected as a whole it is the crop
        face_results = []
        for r in regions:
            crop = x[..., r.y0 : r.y1, r.x0 : r.x1]
            face_results.append((r, self.protect(crop, return_result=True, faces_first=False, **call)))
        if rest == "protect":
            whole = self.protect(x, return_result=True, faces_first=False, **call)
            rest_img = whole.image
        else:
            whole, rest_img = None, x
        first = face_results[0][1]
        budget = Budget(first.eps, first.norm)
        if first.options.get("budget") == "jnd":
            budget = perceptual_budget(x, first.eps, float(first.options["jnd_scale"]))
        out = compose(x, rest_img, [(r, res.image) for r, res in face_results], budget)
        achieved = budget.measure(out - x)
        if not bool((achieved <= budget.eps + 1e-3).all()):
            raise RuntimeError(f"internal error: budget {budget.eps}/255 exceeded in the composed photo ({achieved.tolist()})")
        ref = whole or first
        return ProtectionResult(
            image=from_tensor(out, info), method=first.method, eps=first.eps, norm=first.norm,
            achieved=[float(a) for a in achieved], steps=first.steps, seed=first.seed,
            working_size=first.working_size, models=first.models, loss_history=ref.loss_history,
            initial_loss=ref.initial_loss, final_loss=ref.final_loss, seconds=time.perf_counter() - t0,
            options={**first.options, "faces_first": len(regions), "rest": rest}, strength=first.strength,
            maximize=first.maximize,
            check=[res.check[0] for _, res in face_results if res.check] or None,
            visibility=_visibility(x, out, resize_image(x, first.working_size), resize_image(out.float(), first.working_size)),
            steps_run=ref.steps_run,
            faces=[{"box": [r.x0, r.y0, r.x1, r.y1], "score": r.score, "working_size": res.working_size,
                    "check": res.check[0].as_dict() if res.check else None} for r, res in face_results],
        )

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
        for idx in groups.values():
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                try:
                    prot = self.protect(torch.cat([loaded[i][0] for i in chunk]), names=[label[i] for i in chunk], **kwargs)
                except Exception as e:  # noqa: BLE001 - retried one by one
                    if len(chunk) == 1:
                        failed(chunk[0], e)
                        continue
                    prot = None
                for j, i in enumerate(chunk):
                    if prot is None:
                        try:
                            one = self.protect(loaded[i][0], names=[label[i]], **kwargs)
                        except Exception as e:  # noqa: BLE001
                            failed(i, e)
                            continue
                    else:
                        one = prot[j : j + 1]
                    out[i] = from_tensor(one, loaded[i][1])
        return out


def _budget_of(opts: dict) -> Budget:
    """The plain budget of a method's options (the perceptual map is added per image)."""
    from .budget import BUDGETS

    kind = opts.get("budget", "linf")
    if kind not in BUDGETS:
        raise ValueError(f"unknown budget {kind!r}; valid: {', '.join(BUDGETS)} "
                         "('jnd': invisible, the change goes where texture hides it; 'linf': eps everywhere, visible at large eps)")
    if kind == "jnd" and opts["norm"] != "linf":
        raise ValueError("budget='jnd' is a per-pixel cap; use it with norm='linf' (or budget='linf' with norm='l2')")
    return Budget(opts["eps"], opts["norm"])


#: rows of the native image the JND map is computed on at once (bounded memory for big photos)
JND_BAND_ROWS = 1024


def perceptual_budget(x: torch.Tensor, eps: float, scale: float) -> Budget:
    """:meth:`Budget.perceptual` of a native-size image, computed in bands of rows (with a halo)
    so a big photo never needs more than a band's worth of temporaries."""
    H = x.shape[-2]
    if H <= JND_BAND_ROWS:
        return Budget.perceptual(x, eps, scale)
    halo = 4
    maps, weights = [], []
    for r0 in range(0, H, JND_BAND_ROWS):
        r1 = min(H, r0 + JND_BAND_ROWS)
        a, b = max(0, r0 - halo), min(H, r1 + halo)
        band = Budget.perceptual(x[..., a:b, :].float(), eps, scale)
        maps.append(band.radius_map[..., r0 - a : r0 - a + (r1 - r0), :])
        weights.append(band.flat_weight[..., r0 - a : r0 - a + (r1 - r0), :])
    return Budget(eps, "linf", radius_map=torch.cat(maps, -2), flat_weight=torch.cat(weights, -2))


#: above this many pixels, visibility is measured on the working-size pair (bounded time and memory)
VISIBILITY_MAX_PIXELS = 16_000_000


def _visibility(x_native: torch.Tensor, out_native: torch.Tensor, x_work: torch.Tensor, out_work: torch.Tensor) -> list:
    """Visibility of each result (``out_native``: 8-bit levels as uint8, or [0,1] floats): PSNR,
    SSIM and the flat-region change at the native size (at the working size above
    :data:`VISIBILITY_MAX_PIXELS`), LPIPS at the working size."""
    from .visibility import _default_lpips, measure

    H, W = x_native.shape[-2:]
    if H * W <= VISIBILITY_MAX_PIXELS:
        out01 = out_native.float().div(255) if out_native.dtype == torch.uint8 else out_native.float()
        seen = measure(x_native.float(), out01.to(x_native.device))
    else:
        seen = measure(x_work, out_work)
    lp = _default_lpips(x_work.device)
    if lp is not None:
        with torch.no_grad():
            for v, d in zip(seen, lp(x_work.float(), out_work.float()).flatten()):
                v.lpips = float(d)
    return seen


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


class ItemError(Exception):
    """One image of :meth:`Protector.protect_many` failed: which one and why."""

    def __init__(self, index: int, name: str, error: BaseException):
        self.index, self.name, self.error = index, name, error
        self.reason = str(error) or type(error).__name__
        super().__init__(f"image {index} ({name}) failed: {type(error).__name__}: {self.reason}")


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
    if strength is None and method is None:
        strength = DEFAULT_STRENGTH
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
