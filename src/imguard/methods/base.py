"""What a protection method is, and the registry of methods by name.

A method is small: its defaults, ``prepare(x, models, opts) -> ctx`` (targets computed once
on the clean batch) and ``objective(x_adv, ctx, step, steps) -> per-sample loss``, plus the
direction (``maximize``). It never writes its own loop: the engine runs every method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

#: Option names that configure the engine rather than the method's objective.
ENGINE_OPTIONS = (
    "eps", "norm", "steps", "step_size", "schedule", "optimizer", "random_start", "grad_repeats", "restarts", "eot",
    "momentum", "ti_kernel", "diversity", "lowres", "stop_margin", "stop_every", "budget", "jnd_scale", "gate",
)

#: Units of the defaults shared by every method: eps and step_size in /255 pixel units.
COMMON_DEFAULTS = {
    "norm": "linf",
    # "linf": eps is the only cap (the papers' budget); "jnd": a per-pixel perceptual map under
    # eps, jnd_scale times the just-noticeable difference (see imguard.budget). The strength
    # presets use "jnd"; a method named on its own keeps its paper's plain cap.
    "budget": "linf",
    "jnd_scale": 1.0,
    # gate=True: a result that fails the visibility gate (imguard.visibility.GATE) has its
    # perturbation scaled down until it passes (the presets set it)
    "gate": False,
    "schedule": "constant",
    "optimizer": "sign",
    "random_start": True,
    "grad_repeats": 1,
    "restarts": 1,
    "eot": (),  #: expectation over transformation: names from imguard.transforms.eot_names()
    # transfer techniques (see imguard.engine): off by default; the strength presets set them
    "momentum": 0.0,
    "ti_kernel": 0,
    "diversity": 0.0,
    "lowres": 1,
    # early stop (methods with a ``fooled`` test): a sample stops once every attacked model is
    # fooled by this margin below its threshold, checked every ``stop_every`` steps (None = off)
    "stop_margin": None,
    "stop_every": 5,
}


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    maximize: bool
    prepare: Callable[[torch.Tensor, Any, dict], dict]
    objective: Callable[[torch.Tensor, dict, int, int], torch.Tensor]
    defaults: dict = field(default_factory=dict)
    #: which models it uses: any of "autoencoder", "face", "features"
    needs: tuple = ("autoencoder",)
    #: ``fooled(x_adv, ctx, margin) -> bool[B]``: every attacked model fooled by ``margin``
    #: (what the ``stop_margin`` early stop asks); None where the method has no such test
    fooled: Callable[[torch.Tensor, Any, float], torch.Tensor] | None = None

    def options(self, **overrides: Any) -> dict:
        """Defaults merged with ``overrides`` (``None`` means 'use the default')."""
        opts = {**COMMON_DEFAULTS, **self.defaults}
        unknown = [k for k in overrides if k not in opts and overrides[k] is not None]
        if unknown:
            raise TypeError(
                f"method {self.name!r} has no option(s) {', '.join(sorted(unknown))}; "
                f"its options are: {', '.join(sorted(opts))}"
            )
        opts.update({k: v for k, v in overrides.items() if v is not None})
        return opts


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str | Method) -> Method:
    """Remove a registered method (e.g. a plug-in a test registered); returns it."""
    key = name.name if isinstance(name, Method) else name
    try:
        return _REGISTRY.pop(key)
    except KeyError:
        raise ValueError(f"no method named {key!r} is registered; registered: {', '.join(_REGISTRY)}") from None


def get_method(name: str | Method) -> Method:
    if isinstance(name, Method):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(_REGISTRY)}") from None


def method_names() -> list[str]:
    return list(_REGISTRY)


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference per sample: [B]."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)


def resize_like(img: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A target image [1 or B,3,h,w] (or a scalar grey level) resized to x's batch and size."""
    if not torch.is_tensor(img):
        return torch.full_like(x, float(img))
    img = img.to(device=x.device, dtype=x.dtype)
    if img.dim() == 3:
        img = img.unsqueeze(0)
    if img.shape[-2:] != x.shape[-2:]:
        img = torch.nn.functional.interpolate(img, size=x.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
    return img.expand(x.shape[0], -1, -1, -1)
