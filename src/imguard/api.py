"""The public entry: :func:`protect` and :class:`Protector`. Type in == type out."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

import torch

from . import pipeline
from .check import LazyChecker
from .io import DEFAULT_MAX_PIXELS, from_tensor, resize_image, to_tensor, working_shape  # noqa: F401 - sizing helpers live in io; api.* kept as aliases
from .methods import get_method, method_names
from .model_sets import ModelSets, model_key
from .models import Models
from .photo import protect_photo, wants_faces_first
from .presets import DEFAULT_STRENGTH
from .request import DEFAULT_METHOD, ProtectionRequest, resolve
from .result import ItemError, ProtectionResult, batch_then_singly, objective_text  # noqa: F401 - objective_text: documented here
from .runtime import amp_dtype_for, memory_format_for, resolve_device

__all__ = ["DEFAULT_METHOD", "DEFAULT_WORKING_SIZE", "ItemError", "ProtectionResult", "Protector", "methods", "protect"]

DEFAULT_WORKING_SIZE = 512


def _check_working_size(working_size: Any) -> int | None:
    if working_size is not None and (not isinstance(working_size, int) or isinstance(working_size, bool) or working_size < 8):
        raise ValueError(f"working_size must be a whole number of pixels >= 8 (the long side), or None for the native size; got {working_size!r}")
    return working_size


def _check_max_pixels(max_pixels: Any) -> int | None:
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a whole number >= 1, or None for no limit; got {max_pixels!r}")
    return max_pixels


def _check_faces_first(faces_first: Any, rest: Any) -> None:
    if rest not in ("protect", "keep"):
        raise ValueError(f"rest must be 'protect' or 'keep', got {rest!r}")
    if faces_first not in (True, False, "auto"):
        raise ValueError(f"faces_first must be True, False or 'auto', got {faces_first!r}")


class Protector:
    """Loads models once and protects many images with them.

    >>> p = imguard.Protector(strength="high")           # FaceLock against an ensemble, offline
    >>> protected = p.protect(img)                        # same type as img
    >>> result = p.protect(img, return_result=True); print(result.summary())   # incl. the check

    ``strength`` ("low", "medium", "high", "max", "fast"; see :mod:`imguard.presets`) picks the surrogate
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

    def __init__(self, method: str | None = None, *, strength: str | None = None, device: str | torch.device | None = None,
                 models: Models | dict | None = None, vae: Any = None, face_model: Any = None,
                 face_weights: Sequence[float] | None = None, features: Any = "ae", detector: Any = "mtcnn",
                 precision: str = "auto", working_size: int | None = DEFAULT_WORKING_SIZE, check: bool | str = True,
                 speedups: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.strength, self.method = _strength_and_method(method, strength)
        self.device = resolve_device(device)
        self.amp_dtype = amp_dtype_for(self.device, precision)
        self.speedups = bool(speedups)
        self.working_size = _check_working_size(working_size)
        self._models = ModelSets(models, vae=vae, face_model=face_model, features=features, detector=detector,
                                 face_weights=face_weights, device=self.device, memory_format=memory_format_for(
                                     self.device, self.amp_dtype) if self.speedups else torch.contiguous_format)
        self.max_pixels = _check_max_pixels(max_pixels)
        self.check_enabled = check
        self._check = LazyChecker(self.device, judge=check if isinstance(check, str) else "auto")
        self._lock = threading.Lock()  # one optimisation at a time per Protector (models are shared)

    def request(self, method: str | None = None, strength: str | None = None, eps: float | None = None,
                steps: int | None = None, **method_options: Any) -> ProtectionRequest:
        """The :class:`~imguard.request.ProtectionRequest` a :meth:`protect` call with these
        arguments runs: the call's method and strength, else the protector's (its strength
        only when no method is named), with the protector's explicit models."""
        return resolve(method=method or self.method, strength=self._strength_of(method, strength), eps=eps,
                       steps=steps, **self._models.explicit, **method_options)

    def _strength_of(self, method: str | None, strength: str | None) -> str | None:
        return strength if strength is not None else (self.strength if method is None else None)

    def models_for(self, strength: str | None = None) -> Models:
        """The (cached) models a protection at ``strength`` uses."""
        return self._models.of(resolve(method=None if strength else DEFAULT_METHOD, strength=strength, **self._models.explicit))

    def load_models(self, method: str | None = None, strength: str | None = None) -> Models:
        """Load now every model a protection (by default the protector's own) needs; every
        model that fails is reported together (:class:`~imguard.models.ModelLoadError`)."""
        return self._models.load(self.request(method, strength))

    @property
    def models(self) -> Models:
        """The models of the protector's own strength."""
        return self.models_for(self.strength)

    def protect(self, image: Any, *, method: str | None = None, strength: str | None = None, eps: float | None = None,
                steps: int | None = None, seed: int | None = None, mask: Any = None, progress: bool = False,
                callback: Callable[[int, int, torch.Tensor], None] | None = None,
                early_stop: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
                return_result: bool = False, names: Sequence[str] | None = None, faces_first: bool | str = "auto",
                rest: str = "protect", **method_options: Any):
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
        if self._strength_of(method, strength) == "fast":  # the pre-trained mode: no optimisation unless refine=N
            from .fast.protect import protect_fast

            return protect_fast(self, image, eps=eps, steps=steps, seed=seed, progress=progress, callback=callback,
                                return_result=return_result, names=names, mask=mask, **method_options)
        _check_faces_first(faces_first, rest)
        req = self.request(method, strength, eps, steps, **method_options)
        x, info = to_tensor(image, name=(names or [None])[0], max_pixels=self.max_pixels)
        if faces_first and mask is None and wants_faces_first(x, self.working_size, get_method(req.method).needs, faces_first):
            res = protect_photo(self, x, info, rest, self._models.of(req).detector, dict(
                method=method, strength=strength, eps=eps, steps=steps, seed=seed, progress=progress, callback=callback,
                early_stop=early_stop, names=names, **method_options), req.budget)
            if res is not None:
                return res if return_result else res.image
        t0 = time.perf_counter()
        models = self._models.load(req)  # every model the method needs, every failure reported together, up front
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else seed
        with self._lock:
            work = pipeline.working_copy(x, mask, req, self.working_size, self.device)
            run, sims = pipeline.optimise(req, models, work, seed, amp_dtype=self.amp_dtype, cache=self.speedups, names=names,
                                          progress=progress, callback=callback, early_stop=early_stop, similarity=return_result)
            gated: list = []  # the gate's measure of each result, reported as it is
            out, achieved = pipeline.within_budget(req, x, run.delta, work, seen=gated)
            check = self._check if self.check_enabled else None
            checks, seen = pipeline.report(req, x, out, work, models, check, seen=gated) if return_result else (None, None)
        image_out = from_tensor(out, info)
        if not return_result:
            return image_out
        return pipeline.result_of(req, image_out, achieved, run, seed, work, models, time.perf_counter() - t0, checks, seen, sims)

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
        return _protect_many(self, images, batch_size, errors, names, kwargs)


def _strength_and_method(method: str | None, strength: str | None) -> tuple[str | None, str]:
    """A protector's own strength (its canonical name; the default strength when neither is
    named) and method (the named one, else its strength's), as :func:`resolve` decides them."""
    if strength is None and method is None:
        strength = DEFAULT_STRENGTH
    if strength is not None:
        strength = resolve(strength=strength).strength
    return strength, resolve(method=method or None, strength=strength).method


def _protect_many(protector: Protector, images: Sequence[Any], batch_size: int, errors: str,
                  names: Sequence[str] | None, kwargs: dict) -> list:
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
            loaded[i] = to_tensor(img, name=label[i], max_pixels=protector.max_pixels)
        except Exception as e:  # noqa: BLE001 - reported for this item
            failed(i, e)
            continue
        groups.setdefault(tuple(loaded[i][0].shape[-3:]), []).append(i)

    def done(i: int, one: torch.Tensor) -> None:
        out[i] = from_tensor(one, loaded[i][1])

    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            batch_then_singly(
                idx[s : s + batch_size],
                lambda c: list(protector.protect(torch.cat([loaded[i][0] for i in c]), names=[label[i] for i in c], **kwargs).split(1)),
                lambda i: protector.protect(loaded[i][0], names=[label[i]], **kwargs),
                done, failed,
            )
    return out


_DEFAULT_PROTECTORS: dict[tuple, Protector] = {}
_DEFAULT_LOCK = threading.Lock()


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
    when no ``method`` is named), "high"; "max": high to the edge of the gate, visible when zoomed in; "fast") picks surrogate models, budget and transfer techniques (:mod:`imguard.presets`);
    ``eps`` (in /255 pixel units), ``steps``, models and method options override it.
    Models are loaded once and cached between calls; for control over their lifetime use
    :class:`Protector`. With ``return_result=True`` the :class:`ProtectionResult` carries the
    measured budget and the protection check. Images above ``max_pixels`` (default 50
    megapixels; None: no limit) are refused with :class:`~imguard.ImageReadError`.
    """
    dev = resolve_device(device)
    key = (str(dev), model_key(vae), model_key(face_model), model_key(features), working_size, max_pixels)
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
