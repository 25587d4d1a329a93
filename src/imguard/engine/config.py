"""The engine's data: the objective it optimises, its configuration, its result, the step-size schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

LossFn = Callable[[torch.Tensor, int], torch.Tensor]
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
StopFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor], None]

SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("sign", "adam_tanh")
#: What the perturbation may change: every channel on its own, or the luminance alone (R, G and B by the same amount)
COLORS = ("rgb", "luma")


def check_soft_sign_norm(soft_sign: float, norm: str) -> None:
    """``soft_sign`` shapes a sign step: refused with an l2 budget, whose step already follows
    the gradient's size (rather than ignored)."""
    if float(soft_sign) > 0 and norm != "linf":
        raise ValueError(f"soft_sign shapes a sign step (norm='linf'); an l2 step already follows the gradient's size: "
                         f"leave soft_sign at 0 with norm={norm!r}")


@dataclass
class Objective:
    """A per-sample loss ``loss(x_adv, step) -> [B]`` and the direction to push it."""

    loss: LossFn
    maximize: bool


@dataclass
class EngineResult:
    x_adv: torch.Tensor  #: [B,3,H,W] in [0,1]
    delta: torch.Tensor  #: x_adv - x
    history: torch.Tensor  #: [steps, B] loss at each step (before that step's update)
    initial_loss: torch.Tensor  #: [B] loss at the clean image, all terms on
    final_loss: torch.Tensor  #: [B] loss at x_adv, all terms on
    steps_run: torch.Tensor  #: [B] steps each sample took (< steps when it stopped early)
    restart: torch.Tensor  #: [B] index of the restart that won


@dataclass
class EngineConfig:
    """Everything about the loop except the objective. Sizes in /255 units."""

    steps: int = 100
    step_size: float = 1.0
    schedule: str = "constant"
    optimizer: str = "sign"
    random_start: bool = True
    grad_repeats: int = 1
    eot: Sequence[Transform] = field(default_factory=tuple)
    restarts: int = 1
    final_step_fraction: float = 0.01  #: for ``linear``: the last step is this fraction of the first
    momentum: float = 0.0  #: MI-FGSM decay (0 = off)
    ti_kernel: int = 0  #: Gaussian gradient smoothing kernel size (0 = off; odd, >= 3)
    diversity: float = 0.0  #: input diversity: largest relative shrink per step (0 = off)
    lowres: int = 1  #: optimise delta on a grid this many times coarser (1 = full resolution)
    color: str = "rgb"  #: "luma": one change per pixel, the same in R, G and B (no colour change)
    #: 0: every pixel takes a whole (sign) step; k > 0: a pixel whose gradient is under k times the
    #: mean |gradient| takes that share of a step (the step's direction is clip(g / (k mean|g|), -1, 1))
    soft_sign: float = 0.0

    def validate(self) -> None:
        if int(self.steps) < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps!r}")
        if not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ValueError(f"step_size must be > 0 (in /255 units), got {self.step_size!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if int(self.grad_repeats) < 1 or int(self.restarts) < 1:
            raise ValueError("grad_repeats and restarts must be >= 1")
        if not 0.0 <= float(self.momentum) <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum!r}")
        if int(self.ti_kernel) != 0 and (int(self.ti_kernel) < 3 or int(self.ti_kernel) % 2 == 0):
            raise ValueError(f"ti_kernel must be 0 (off) or an odd size >= 3, got {self.ti_kernel!r}")
        if not 0.0 <= float(self.diversity) < 0.5:
            raise ValueError(f"diversity must be in [0, 0.5), got {self.diversity!r}")
        if int(self.lowres) < 1:
            raise ValueError(f"lowres must be >= 1 (1 = full resolution), got {self.lowres!r}")
        if self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}; valid: {', '.join(COLORS)}")
        if not (float(self.soft_sign) >= 0 and math.isfinite(float(self.soft_sign))):
            raise ValueError(f"soft_sign must be 0 (a whole step for every pixel) or a number > 0, got {self.soft_sign!r}")
        uses_sign_only = (float(self.momentum) > 0 or int(self.ti_kernel) > 0 or int(self.lowres) > 1
                          or self.color != "rgb" or float(self.soft_sign) > 0)
        if self.optimizer != "sign" and uses_sign_only:
            raise ValueError("momentum, ti_kernel, lowres, color='luma' and soft_sign work with optimizer='sign'")
        if int(self.lowres) > 1 and self.color != "rgb":
            raise ValueError("lowres and color='luma' cannot be combined; choose one")


def step_size_at(cfg: EngineConfig, i: int) -> float:
    """Step size (in /255) of step ``i`` (0-based) under the schedule."""
    a = cfg.step_size
    if cfg.schedule == "constant":
        return a
    if cfg.schedule == "linear":  # from a down to a*final_step_fraction
        return a - (a - a * cfg.final_step_fraction) * i / cfg.steps
    return a * 0.5 * (1 + math.cos(math.pi * i / cfg.steps))
