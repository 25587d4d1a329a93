"""The one optimisation loop.

Every protection method is an objective (a per-sample loss and a direction) handed to
:func:`run`. The engine knows nothing of methods or models: it optimises a differentiable
function of ``x_adv`` under a :class:`~imguard.budget.Budget`.

Two update rules share the loop:

``sign``       projected gradient steps (PGD): steepest ascent under the budget's norm
               (the sign of the gradient for linf), step size in /255 units.
``adam_tanh``  Adam on a variable ``w`` with ``x_adv = (tanh(w)+1)/2`` (Carlini-Wagner);
               the learning rate is set so that ``step_size`` is the largest per-pixel move
               of one step in /255 units.

Both project onto the budget (and the spatial mask, and [0,1]) after every step.

Transfer techniques, each an option of :class:`EngineConfig`, usable by every method (they make
a perturbation found on surrogate models hold on models it never saw):

``momentum``     MI-FGSM: the step follows ``g_t = mu * g_{t-1} + g / mean|g|`` (sign update)
``ti_kernel``    translation-invariant gradients: the gradient is smoothed by a Gaussian
                 kernel of this size (sigma = size/4) before the step
``diversity``    input diversity: each step the loss sees the image shrunk by a random factor
                 in [1 - diversity, 1] and padded back to its size at a random offset
``lowres``       low-frequency perturbations: delta is optimised on a grid ``lowres`` times
                 coarser and upsampled (bilinear), so it survives JPEG and resizing
``eot``          expectation over random transformations (see :mod:`imguard.transforms`,
                 including a differentiable JPEG), ``grad_repeats`` draws per step
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .budget import Budget

LossFn = Callable[[torch.Tensor, int], torch.Tensor]
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
StopFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor], None]

SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("sign", "adam_tanh")


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
        uses_sign_only = float(self.momentum) > 0 or int(self.ti_kernel) > 0 or int(self.lowres) > 1
        if self.optimizer != "sign" and uses_sign_only:
            raise ValueError("momentum, ti_kernel and lowres work with optimizer='sign'")


def step_size_at(cfg: EngineConfig, i: int) -> float:
    """Step size (in /255) of step ``i`` (0-based) under the schedule."""
    a = cfg.step_size
    if cfg.schedule == "constant":
        return a
    if cfg.schedule == "linear":  # from a down to a*final_step_fraction
        return a - (a - a * cfg.final_step_fraction) * i / cfg.steps
    return a * 0.5 * (1 + math.cos(math.pi * i / cfg.steps))


def _autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _atanh_of(x01: torch.Tensor) -> torch.Tensor:
    return torch.atanh((x01 * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))


def gaussian_kernel(size: int, sigma: float | None = None) -> torch.Tensor:
    """A normalised 2-D Gaussian kernel [size,size] (sigma = size/4 by default)."""
    sigma = sigma or size / 4.0
    ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


def smooth_gradient(grad: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise convolution of a [B,C,H,W] gradient with a [k,k] kernel (reflected borders)."""
    C = grad.shape[1]
    k = kernel.to(device=grad.device, dtype=grad.dtype).expand(C, 1, *kernel.shape)
    pad = kernel.shape[-1] // 2
    g = torch.nn.functional.pad(grad, (pad, pad, pad, pad), mode="reflect")
    return torch.nn.functional.conv2d(g, k, groups=C)


def diverse_input(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Shrink ``x`` by a random factor in [1 - amount, 1] and pad it back at a random offset."""
    H, W = x.shape[-2:]
    f = 1.0 - amount * float(torch.rand(1, generator=gen))
    h, w = max(1, int(round(H * f))), max(1, int(round(W * f)))
    if (h, w) == (H, W):
        return x
    small = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    top = int(torch.randint(0, H - h + 1, (1,), generator=gen))
    left = int(torch.randint(0, W - w + 1, (1,), generator=gen))
    return torch.nn.functional.pad(small, (left, W - w - left, top, H - h - top), mode="replicate")


def run(
    x: torch.Tensor,
    objective: Objective,
    budget: Budget,
    config: EngineConfig | None = None,
    *,
    mask: torch.Tensor | None = None,
    early_stop: StopFn | None = None,
    callback: Callback | None = None,
    seed: int | None = None,
    amp_dtype: torch.dtype | None = None,
    init: torch.Tensor | None = None,
) -> EngineResult:
    """Optimise a perturbation of ``x`` ([B,3,H,W] in [0,1]) for ``objective`` within ``budget``.

    ``mask`` ([B or 1, 1 or 3, H, W], values in [0,1]) limits where pixels may change.
    ``early_stop(x_adv, loss, step) -> bool[B]`` freezes the samples it marks as done.
    ``callback(step, steps, loss)`` is called once per step (progress bars, logging).
    ``init`` ([B,3,H,W], e.g. the fast mode's delta) is the first restart's start instead of a random one.
    """
    cfg = config or EngineConfig()
    cfg.validate()
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"engine expects images shaped [B,3,H,W], got {tuple(x.shape)}")
    x = x.detach().float()
    B = x.shape[0]
    device = x.device
    gen = torch.Generator().manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**63))
    sign = 1.0 if objective.maximize else -1.0
    if mask is not None:
        mask = mask.to(device=device, dtype=x.dtype)
        if mask.dim() == 3:
            mask = mask.unsqueeze(0)

    def constrain(delta: torch.Tensor) -> torch.Tensor:
        if mask is not None:
            delta = delta * mask
        delta = budget.project(delta)
        return (x + delta).clamp(0, 1) - x

    def eval_loss(x_adv: torch.Tensor, step: int) -> torch.Tensor:
        with _autocast(device, amp_dtype):
            out = objective.loss(x_adv, step)
        out = out.float()
        if out.shape != (B,):
            raise ValueError(f"objective must return one loss per sample, shape ({B},), got {tuple(out.shape)}")
        return out

    with torch.no_grad():
        initial_loss = eval_loss(x, cfg.steps)

    best_x = x.clone()
    best_loss = torch.full((B,), -math.inf, device=device)
    # history and counters stay on the device: no host synchronisation inside the step loop
    best_hist = torch.zeros(cfg.steps, B, device=device)
    best_steps = torch.zeros(B, dtype=torch.long, device=device)
    best_restart = torch.zeros(B, dtype=torch.long, device=device)

    lowres = int(cfg.lowres)
    low_size = (max(1, x.shape[-2] // lowres), max(1, x.shape[-1] // lowres))
    kernel = gaussian_kernel(int(cfg.ti_kernel)) if int(cfg.ti_kernel) else None

    def to_delta(p: torch.Tensor) -> torch.Tensor:
        """The full-resolution perturbation of the optimised variable (feasible)."""
        if lowres > 1:
            p = torch.nn.functional.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return constrain(p)

    for r in range(int(cfg.restarts)):
        if init is not None and r == 0:
            p0 = init.detach().to(device=device, dtype=x.dtype)
            p = budget.project(torch.nn.functional.interpolate(p0, size=low_size, mode="area")) if lowres > 1 else constrain(p0)
        elif lowres > 1:
            p = budget.project(budget.random_start(x[..., : low_size[0], : low_size[1]], generator=gen)) if cfg.random_start else x.new_zeros(B, 3, *low_size)
        elif cfg.random_start:
            p = constrain(budget.random_start(x, generator=gen))
        else:
            p = torch.zeros_like(x)
        x_adv = (x + to_delta(p)).detach()
        active = torch.ones(B, dtype=torch.bool, device=device)
        steps_run = torch.zeros(B, dtype=torch.long, device=device)
        hist = torch.zeros(cfg.steps, B, device=device)
        velocity = torch.zeros_like(p)
        if cfg.optimizer == "adam_tanh":
            w = _atanh_of(x_adv).requires_grad_(True)
            opt = torch.optim.Adam([w], lr=2 * cfg.step_size / 255.0)

        for i in range(cfg.steps):
            alpha = step_size_at(cfg, i)
            grad = torch.zeros_like(w if cfg.optimizer == "adam_tanh" else p)
            loss_sum = torch.zeros(B, device=device)
            for _ in range(int(cfg.grad_repeats)):
                if cfg.optimizer == "adam_tanh":
                    target = w
                    xa = (torch.tanh(w) + 1) / 2
                else:
                    target = p.detach().clone().requires_grad_(True)
                    xa = x + to_delta(target) if lowres > 1 else x + target
                xin = xa
                if cfg.eot:
                    k = int(torch.randint(len(cfg.eot), (1,), generator=gen))
                    xin = cfg.eot[k](xin, gen)
                if float(cfg.diversity) > 0:
                    xin = diverse_input(xin, float(cfg.diversity), gen)
                loss = eval_loss(xin, i)
                loss_sum += loss.detach()
                (g,) = torch.autograd.grad(loss.sum(), [target])
                grad += g.detach()
            loss_now = loss_sum / cfg.grad_repeats
            hist[i] = loss_now
            act = active.view(-1, 1, 1, 1).to(x.dtype)
            grad = grad * act
            with torch.no_grad():
                if cfg.optimizer == "sign":
                    if kernel is not None:
                        grad = smooth_gradient(grad, kernel)
                    if float(cfg.momentum) > 0:
                        scale = grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
                        velocity = float(cfg.momentum) * velocity + grad / scale
                        grad = velocity * act
                    step = budget.direction(grad) * (alpha / 255.0) * sign
                    p = budget.project(p + step * act) if lowres > 1 else constrain(p + step * act)
                    x_adv = x + to_delta(p)
                else:
                    opt.param_groups[0]["lr"] = 2 * alpha / 255.0
                    w.grad = -sign * grad  # Adam minimises
                    opt.step()
                    xa_new = (torch.tanh(w) + 1) / 2
                    # frozen samples keep their old value
                    xa_new = torch.where(act.bool(), xa_new, x_adv)
                    x_adv = x + constrain(xa_new - x)
                    w.copy_(_atanh_of(x_adv))
            steps_run += active.long()
            if callback is not None:
                callback(i, cfg.steps, loss_now)
            if early_stop is not None:
                with torch.no_grad():
                    done = early_stop(x_adv, loss_now, i).to(device=device, dtype=torch.bool)
                active = active & ~done
                if not bool(active.any()):
                    hist = hist[: i + 1]
                    break
        with torch.no_grad():
            final = eval_loss(x_adv, cfg.steps)
        better = (sign * final > sign * best_loss) if r > 0 else torch.ones(B, dtype=torch.bool, device=device)
        bv = better.view(-1, 1, 1, 1)
        best_x = torch.where(bv, x_adv, best_x)
        best_loss = torch.where(better, final, best_loss)
        n = min(hist.shape[0], best_hist.shape[0])
        if r == 0:
            best_hist = hist
        else:
            best_hist = torch.where(better, hist[:n], best_hist[:n])
        best_steps = torch.where(better, steps_run, best_steps)
        best_restart = torch.where(better, torch.full_like(best_restart, r), best_restart)

    best_x = best_x.detach()
    return EngineResult(
        x_adv=best_x,
        delta=best_x - x,
        history=best_hist.cpu(),
        initial_loss=initial_loss.detach(),
        final_loss=best_loss.detach(),
        steps_run=best_steps.cpu(),
        restart=best_restart.cpu(),
    )
