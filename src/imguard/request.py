"""What a protection will do, decided in one place.

:func:`resolve` is where a strength preset, a method's defaults and explicit arguments meet
(explicit > preset > method defaults). The rule "a preset applies only to its own method"
lives here and nowhere else: a named method without a strength, or with a strength whose
preset is another method's, runs with its own defaults. The API, the CLI (and so the bulk
runner) and the web page all call it; the manifest records :meth:`ProtectionRequest.as_dict`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from .budget import Budget
from .engine import EngineConfig
from .engine.config import check_soft_sign_norm
from .methods import ENGINE_OPTIONS, get_method
from .presets import DEFAULT_STRENGTH, get_preset

__all__ = ["DEFAULT_METHOD", "BudgetChoice", "EngineSettings", "ProtectionRequest", "resolve"]

#: the method when neither a method nor a strength preset names one
DEFAULT_METHOD = "facelock"


def _check_where(extent: str, extent_scale: float, norm: str, texture_scale: float) -> None:
    """Validate the options of where the change may go and how wide the map is there."""
    from .budget import EXTENTS, check_texture_scale

    if extent not in EXTENTS:
        raise ValueError(f"unknown extent {extent!r}; valid: {', '.join(EXTENTS)} ('image': the change may go "
                         "anywhere; 'face': only in and around each face)")
    if not (math.isfinite(float(extent_scale)) and 1.0 <= float(extent_scale) <= 4.0):
        raise ValueError(f"extent_scale must be a factor between 1 and 4 (the face box widened that much), got {extent_scale!r}")
    check_texture_scale(texture_scale)
    if extent != "image" and norm != "linf":
        raise ValueError("extent='face' bounds a per-pixel cap: use it with norm='linf'")


@dataclass(frozen=True)
class BudgetChoice:
    """The budget as data: ``eps`` in /255 units, its norm, and its kind (the ``budget=``
    option: ``"jnd"``, the perceptual map under eps, ``jnd_scale`` times the just-noticeable
    difference; or ``"linf"``, eps everywhere), and ``gate`` (True: scale a result down until it
    passes the visibility gate; ``"fill"``: also amplify one well inside it, up to the gate).
    ``psnr_floor`` (None: :data:`~imguard.budget.PSNR_FLOOR`) bounds the perceptual map's
    energy. ``fill_max`` (None: :data:`~imguard.visibility.FILL_MAX`): with ``gate="fill"``, the
    most the change is amplified. ``extent``: where the change may go, ``"image"`` or ``"face"``
    (each face box widened ``extent_scale`` times, feathered: :func:`~imguard.budget.face_extent`,
    applied once the method has found the faces). ``texture_scale``: the perceptual map that many
    times wider where the photo is textured (:func:`~imguard.budget.texture_weight`). See
    :class:`~imguard.budget.Budget`."""

    eps: float
    norm: str = "linf"
    kind: str = "linf"
    jnd_scale: float = 1.0
    gate: bool | str = False
    psnr_floor: float | None = None
    fill_max: float | None = None
    extent: str = "image"
    extent_scale: float = 1.6
    texture_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.gate, bool) or self.gate == "fill"):
            raise ValueError(f"unknown gate {self.gate!r}; valid: False (off), True (scale a result down until it passes "
                             "the visibility gate), 'fill' (and amplify one well inside it, up to the gate)")
        if self.psnr_floor is not None and not (math.isfinite(float(self.psnr_floor)) and 20 <= float(self.psnr_floor) <= 60):
            raise ValueError(f"psnr_floor must be a PSNR in dB between 20 and 60 (e.g. 37), got {self.psnr_floor!r}")
        if self.fill_max is not None and not (math.isfinite(float(self.fill_max)) and 1.0 <= float(self.fill_max) <= 4.0):
            raise ValueError(f"fill_max must be a factor between 1 and 4 (how far gate='fill' may amplify the change, e.g. 1.25), "
                             f"got {self.fill_max!r}")
        _check_where(self.extent, self.extent_scale, self.norm, self.texture_scale)

    def build(self, x=None) -> Budget:
        """The budget; for ``kind="jnd"`` and a native-size image ``x``, with its perceptual map."""
        from .budget import BUDGETS, perceptual_budget

        if self.kind not in BUDGETS:
            raise ValueError(f"unknown budget {self.kind!r}; valid: {', '.join(BUDGETS)} "
                             "('jnd': invisible, the change goes where texture hides it; 'linf': eps everywhere, visible at large eps)")
        if self.kind == "jnd" and self.norm != "linf":
            raise ValueError("budget='jnd' is a per-pixel cap; use it with norm='linf' (or budget='linf' with norm='l2')")
        if self.kind == "jnd" and x is not None:
            return perceptual_budget(x, self.eps, float(self.jnd_scale), psnr_floor=self.psnr_floor,
                                     texture_scale=float(self.texture_scale))
        return Budget(self.eps, self.norm)

    def options(self) -> dict:
        """As method options (``kind`` is the ``budget=`` option)."""
        return {"eps": self.eps, "norm": self.norm, "budget": self.kind, "jnd_scale": self.jnd_scale,
                "psnr_floor": self.psnr_floor, "gate": self.gate, "fill_max": self.fill_max,
                "extent": self.extent, "extent_scale": self.extent_scale, "texture_scale": self.texture_scale}


@dataclass(frozen=True)
class EngineSettings:
    """The engine's options as data (step sizes in /255 units); :meth:`config` builds the
    :class:`~imguard.engine.EngineConfig` the loop runs with."""

    steps: int
    step_size: float
    schedule: str
    optimizer: str
    random_start: bool
    grad_repeats: int
    restarts: int
    eot: Any  #: EOT transform names ("jpeg,identity", a list) or () for none
    momentum: float
    ti_kernel: int
    diversity: float
    lowres: int
    color: str  #: "rgb" or "luma" (a grey change)
    soft_sign: float  #: 0: whole sign steps; k > 0: weak-gradient pixels take a share of a step
    stop_margin: float | None  #: early stop once fooled by this margin (None = off)
    stop_every: int

    def config(self) -> EngineConfig:
        from .transforms import get_eot

        cfg = EngineConfig(
            steps=int(self.steps), step_size=float(self.step_size), schedule=self.schedule,
            optimizer=self.optimizer, random_start=bool(self.random_start),
            grad_repeats=int(self.grad_repeats), restarts=int(self.restarts),
            eot=get_eot(self.eot) if self.eot else (), momentum=float(self.momentum),
            ti_kernel=int(self.ti_kernel), diversity=float(self.diversity), lowres=int(self.lowres),
            color=str(self.color), soft_sign=float(self.soft_sign),
        )
        cfg.validate()
        return cfg


@dataclass(frozen=True)
class ProtectionRequest:
    """One protection, resolved: method, the strength preset applied (None when the method's
    own defaults), budget, engine settings, the method's own options and the models attacked
    (a spec or a module; None: the default). One name per role: ``autoencoder`` and
    ``recognizer`` (the public arguments ``vae=`` and ``face_model=``)."""

    method: str
    strength: str | None
    budget: BudgetChoice
    engine: EngineSettings
    options: dict  #: the method's own options (not the engine's), defaults filled in
    autoencoder: Any = None  #: the autoencoder(s) attacked (``vae=``)
    recognizer: Any = None  #: the recognizer(s) attacked (``face_model=``)

    def merged(self) -> dict:
        """Every option in one flat dict (budget, engine and the method's), by option name."""
        return {**self.budget.options(), **asdict(self.engine), **self.options}

    def as_dict(self) -> dict:
        """What a record (the bulk manifest) keeps: plain values, models by their spec."""
        def spec(v: Any) -> Any:
            return v if isinstance(v, (str, int, float, bool, type(None))) else getattr(v, "name", type(v).__name__)

        return {"method": self.method, "strength": self.strength, "budget": asdict(self.budget),
                "engine": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.engine).items()},
                "options": {k: spec(v) for k, v in self.options.items()},
                "autoencoder": spec(self.autoencoder), "recognizer": spec(self.recognizer)}


_BUDGET_OPTIONS = tuple(BudgetChoice(1.0).options())
_ENGINE_FIELDS = tuple(f.name for f in fields(EngineSettings))
assert set(_BUDGET_OPTIONS) | set(_ENGINE_FIELDS) == set(ENGINE_OPTIONS)


def resolve(
    method: str | None = None,
    strength: str | None = None,
    eps: float | None = None,
    steps: int | None = None,
    vae: Any = None,
    face_model: Any = None,
    **options: Any,
) -> ProtectionRequest:
    """The request for these arguments (None = not given). With neither ``method`` nor
    ``strength``, the default strength. Raises ValueError/TypeError for anything that cannot
    work (unknown method, strength or option; a budget or engine setting out of range)."""
    if strength is None and method is None:
        strength = DEFAULT_STRENGTH
    preset = get_preset(strength) if strength is not None else None
    m = get_method(method if method is not None else (preset.method if preset else DEFAULT_METHOD))
    if preset is not None and preset.method != m.name:
        preset = None  # another method than the preset's: its own defaults
    given = {k: v for k, v in {**options, "eps": eps, "steps": steps}.items() if v is not None}
    opts = m.options(**{**(preset.options if preset else {}), **given})
    gate = opts["gate"] if isinstance(opts["gate"], str) else bool(opts["gate"])
    budget = BudgetChoice(opts["eps"], opts["norm"], opts["budget"], float(opts["jnd_scale"]), gate, opts["psnr_floor"],
                         None if opts["fill_max"] is None else float(opts["fill_max"]), str(opts["extent"]),
                         float(opts["extent_scale"]), float(opts["texture_scale"]))
    if budget.extent == "face" and "face" not in m.needs:
        raise ValueError(f"extent='face' keeps the change around the faces a face method finds; {m.name!r} finds none "
                         "(use a face method, e.g. facelock, or give a mask=)")
    budget.build()  # validates eps and norm
    engine = EngineSettings(**{k: opts[k] for k in _ENGINE_FIELDS})
    engine.config()  # validates the engine settings
    check_soft_sign_norm(engine.soft_sign, budget.norm)
    return ProtectionRequest(
        method=m.name,
        strength=preset.name if preset else None,
        budget=budget,
        engine=engine,
        options={k: v for k, v in opts.items() if k not in ENGINE_OPTIONS},
        autoencoder=vae if vae is not None else (preset.vae if preset else None),
        recognizer=face_model if face_model is not None else (preset.face_model if preset else None),
    )
