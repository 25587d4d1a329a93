"""Strength presets: named sets of budget, steps, surrogate models and transfer techniques.

``strength="low" | "medium" | "high"`` (API) and ``--strength`` (CLI) pick one; explicit
``eps``, ``steps``, models and method options still override it. The presets are FaceLock
with imguard's transfer techniques (see :mod:`imguard.engine`) against ensembles of the
offline surrogate models. Their measured cost and effect are in docs/benchmarks.md (the
command that measured them: ``python benchmarks/transfer.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_STRENGTH", "FAST", "PRESETS", "STRENGTHS", "Preset", "get_preset", "preset_names", "strength_names"]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    method: str
    face_model: str  #: the recognizers attacked (an ensemble spec)
    vae: str  #: the autoencoders attacked
    options: dict = field(default_factory=dict)  #: method and engine options (eps, steps, techniques)

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "method": self.method,
                "face_model": self.face_model, "vae": self.vae, **self.options}


PRESETS: dict[str, Preset] = {
    "low": Preset(
        "low", "quick: one recognizer, SD 1.x-space autoencoder, momentum, stops early once fooled",
        method="facelock", face_model="sface", vae="taesd",
        options={"eps": 4, "steps": 60, "momentum": 0.9, "stop_margin": 0.1},
    ),
    "medium": Preset(
        "medium", "balanced: two recognizers, two latent spaces, momentum and input diversity",
        method="facelock", face_model="sface,mobilefacenet", vae="taesd,taef2",
        options={"eps": 6, "steps": 100, "momentum": 0.9, "diversity": 0.1, "ti_kernel": 5},
    ),
    "high": Preset(
        "high", "strongest: four recognizers, two latent spaces, every transfer technique, JPEG-robust",
        method="facelock", face_model="sface,facenet,mobilefacenet,faceres", vae="taesd,taef2",
        options={"eps": 8, "steps": 200, "momentum": 0.9, "diversity": 0.1, "ti_kernel": 5, "lowres": 2,
                 "eot": "jpeg,identity", "lambda_decoy": 0.5, "step_size": 1.0, "schedule": "linear"},
    ),
}

DEFAULT_STRENGTH = "medium"

#: ``strength="fast"``: no optimisation, the pre-trained perturbations of :mod:`imguard.fast`
#: (trained against the models of ``high``); ``refine=N`` adds N engine steps from there.
FAST = Preset(
    "fast", "about a second: pre-trained perturbations warped onto each face (refine=N adds N optimisation steps)",
    method="facelock", face_model=PRESETS["high"].face_model, vae=PRESETS["high"].vae,
    options={"eps": 8, "budget": "jnd"},
)
#: every strength a user may name: the optimisation presets and ``fast``
STRENGTHS: dict[str, Preset] = {**PRESETS, "fast": FAST}


def preset_names() -> list[str]:
    return list(PRESETS)


def strength_names() -> list[str]:
    return list(STRENGTHS)


def get_preset(name: str | Preset) -> Preset:
    if isinstance(name, Preset):
        return name
    try:
        return STRENGTHS[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown strength {name!r}; valid: {', '.join(STRENGTHS)}") from None
