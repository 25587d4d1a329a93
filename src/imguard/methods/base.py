"""What a protection method is, and the registry of methods by name.

A method is small: its defaults, ``prepare(x, models, opts) -> ctx`` (targets computed once
on the clean batch) and ``objective(x_adv, ctx, step, steps) -> per-sample loss``, plus the
direction (``maximize``). It never writes its own loop: the engine runs every method.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Callable

import torch

#: Option names that configure the engine rather than the method's objective.
ENGINE_OPTIONS = (
    "eps", "norm", "steps", "step_size", "schedule", "optimizer", "random_start", "grad_repeats", "restarts", "eot",
    "momentum", "ti_kernel", "diversity", "lowres", "color", "soft_sign", "stop_margin", "stop_every", "budget", "jnd_scale", "psnr_floor", "gate",
    "fill_max", "extent", "extent_scale", "texture_scale",
)


@dataclass(frozen=True, kw_only=True)
class Options:
    """The options every method has: budget and engine (``eps`` and ``step_size`` in /255
    pixel units). A method's ``Options`` subclass sets its budget and adds its own options;
    the defaults live there and nowhere else."""

    eps: float | None = None
    step_size: float | None = None
    steps: int | None = None
    norm: str = "linf"
    # "linf": eps is the only cap (the papers' budget); "jnd": a per-pixel perceptual map under
    # eps, jnd_scale times the just-noticeable difference (see imguard.budget). The strength
    # presets use "jnd"; a method named on its own keeps its paper's plain cap.
    budget: str = "linf"
    jnd_scale: float = 1.0
    # budget="jnd": the PSNR no change inside the map can go below (None: imguard.budget.PSNR_FLOOR)
    psnr_floor: float | None = None
    # gate=True: a result that fails the visibility gate (imguard.visibility.GATE) has its
    # perturbation scaled down until it passes; gate="fill": also, a result well inside it is
    # amplified, up to the gate (imguard.visibility.within_gate)
    gate: bool | str = False
    # gate="fill": the most the change is amplified (imguard.visibility.FILL_MAX when None)
    fill_max: float | None = None
    # where the change may go: "image" (anywhere) or "face" (inside each face box widened
    # extent_scale times, feathered; the budget's map weighted by it, imguard.budget.face_extent)
    extent: str = "image"
    extent_scale: float = 1.6
    # budget="jnd": the map this many times wider where the photo is textured (7x7 luminance std
    # rising from 10/255 to 20/255; smooth areas keep theirs: imguard.budget.texture_weight)
    texture_scale: float = 1.0
    schedule: str = "constant"
    optimizer: str = "sign"
    random_start: bool = True
    grad_repeats: int = 1
    restarts: int = 1
    eot: Any = ()  #: expectation over transformation: names from imguard.transforms.eot_names()
    # transfer techniques (see imguard.engine): off by default; the strength presets set them
    momentum: float = 0.0
    ti_kernel: int = 0
    diversity: float = 0.0
    lowres: int = 1
    # "luma": the change is grey (R, G and B by the same amount): nothing spent on colour, which
    # JPEG subsamples and quantises coarsely (see imguard.engine)
    color: str = "rgb"
    # 0: a sign step moves every pixel a whole step; k > 0: a pixel whose gradient is under k
    # times the mean |gradient| takes that share of a step (imguard.engine.updates.soft_sign)
    soft_sign: float = 0.0
    # early stop (methods with a ``fooled`` test): a sample stops once every attacked model is
    # fooled by this margin below its threshold, checked every ``stop_every`` steps (None = off)
    stop_margin: float | None = None
    stop_every: int = 5

    def as_dict(self) -> dict:
        """Every option by name (a shallow copy: image targets stay the objects given)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: the engine's defaults shared by every method (kept as a dict for plug-ins that read it)
COMMON_DEFAULTS = {k: v for k, v in Options().as_dict().items() if k not in ("eps", "step_size", "steps")}


def options_from_defaults(name: str, defaults: dict) -> type[Options]:
    """An :class:`Options` subclass from a plug-in's ``defaults`` dict."""
    spec = []
    for k, v in defaults.items():
        hashable = getattr(type(v), "__hash__", None) is not None
        spec.append((k, Any, field(default=v) if hashable else field(default_factory=lambda v=v: v)))
    return make_dataclass(f"{name}_Options", spec, bases=(Options,), frozen=True, kw_only=True)


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    maximize: bool
    prepare: Callable[[torch.Tensor, Any, dict], Any]
    objective: Callable[[torch.Tensor, Any, int, int], torch.Tensor]
    #: a plug-in's defaults as a dict (built-in methods declare ``options_type`` instead)
    defaults: dict = field(default_factory=dict)
    #: which models it uses: any of "autoencoder", "face", "features"
    needs: tuple = ("autoencoder",)
    #: ``fooled(x_adv, ctx, margin) -> bool[B]``: every attacked model fooled by ``margin``
    #: (what the ``stop_margin`` early stop asks); None where the method has no such test
    fooled: Callable[[torch.Tensor, Any, float], torch.Tensor] | None = None
    #: the method's :class:`Options` dataclass (its defaults); built from ``defaults`` when not given
    options_type: type[Options] | None = None

    def __post_init__(self) -> None:
        if self.options_type is None:
            object.__setattr__(self, "options_type", options_from_defaults(self.name, self.defaults))
        elif not self.defaults:
            object.__setattr__(self, "defaults", {k: v for k, v in self.options_type().as_dict().items()
                                                  if k not in COMMON_DEFAULTS or v != COMMON_DEFAULTS[k]})

    def options(self, **overrides: Any) -> dict:
        """Defaults merged with ``overrides`` (``None`` means 'use the default')."""
        valid = [f.name for f in fields(self.options_type)]
        unknown = [k for k in overrides if k not in valid and overrides[k] is not None]
        if unknown:
            raise TypeError(
                f"method {self.name!r} has no option(s) {', '.join(sorted(unknown))}; "
                f"its options are: {', '.join(sorted(valid))}"
            )
        return self.options_type(**{k: v for k, v in overrides.items() if v is not None}).as_dict()


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


def options_markdown() -> str:
    """The registered methods' defaults as a Markdown table, generated from their
    :class:`Options` dataclasses (docs/methods.md carries it; a test keeps it current)."""
    rows = ["| method | direction | eps | step size | steps | schedule | optimizer | models | its own options |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in method_names():
        m = get_method(name)
        d = m.options()
        own = ", ".join(f"`{k}={v!r}`" for k, v in d.items() if k not in ENGINE_OPTIONS) or "-"
        rows.append(f"| `{name}` | {'max' if m.maximize else 'min'} | {d['eps']:g} | {d['step_size']:g} | {d['steps']} "
                    f"| {d['schedule']} | {d['optimizer']} | {', '.join(m.needs)} | {own} |")
    return "\n".join(rows) + "\n"
