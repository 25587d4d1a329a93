"""The one optimisation loop: restarts of a descent, the best result per sample kept."""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch

from ..budget import Budget
from .config import Callback, EngineConfig, EngineResult, Objective, StopFn, step_size_at
from .techniques import DeltaParam, parameterisation, what_the_loss_sees
from .updates import Update, make_update

__all__ = ["run"]


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
    problem = _Problem(x.detach().float(), objective, budget, mask, amp_dtype)
    gen = torch.Generator().manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**63))
    with torch.no_grad():
        initial_loss = problem.loss(problem.x, cfg.steps)
    best = _Best(problem)
    for r in range(int(cfg.restarts)):
        param = parameterisation(problem.x, budget, problem.constrain, int(cfg.lowres), cfg.color)
        update = make_update(cfg, budget, problem.sign, param)
        x_adv, hist, steps_run = _descend(problem, param, update, cfg, gen, early_stop, callback, init if r == 0 else None)
        with torch.no_grad():
            best.keep(r, x_adv, problem.loss(x_adv, cfg.steps), hist, steps_run)
    return best.result(initial_loss)


def _descend(problem: "_Problem", param: DeltaParam, update: Update, cfg: EngineConfig, gen: torch.Generator,
             early_stop: StopFn | None, callback: Callback | None, init: torch.Tensor | None = None):
    """One descent from a (random, or given) start: (x_adv, loss history [steps run, B], steps per sample)."""
    x, B = problem.x, problem.x.shape[0]
    p = param.start(bool(cfg.random_start), gen) if init is None else param.start_from(init)
    x_adv = (x + param.delta(p)).detach()
    update.start(p, x_adv)
    active = torch.ones(B, dtype=torch.bool, device=x.device)
    steps_run = torch.zeros(B, dtype=torch.long, device=x.device)
    hist = torch.zeros(cfg.steps, B, device=x.device)
    for i in range(cfg.steps):
        loss_now, grad = _gradient(problem, update, cfg, gen, i)
        hist[i] = loss_now
        act = active.view(-1, 1, 1, 1).to(x.dtype)
        with torch.no_grad():
            x_adv = update.step(grad * act, step_size_at(cfg, i), act)
        steps_run += active.long()
        if callback is not None:
            callback(i, cfg.steps, loss_now)
        if early_stop is not None:
            with torch.no_grad():
                active = active & ~early_stop(x_adv, loss_now, i).to(device=x.device, dtype=torch.bool)
            if not bool(active.any()):
                return x_adv, hist[: i + 1], steps_run
    return x_adv, hist, steps_run


def _gradient(problem: "_Problem", update: Update, cfg: EngineConfig, gen: torch.Generator, i: int):
    """(mean loss [B], summed gradient) over ``grad_repeats`` draws of what the loss sees."""
    grad = None
    loss_sum = torch.zeros(problem.x.shape[0], device=problem.x.device)
    for _ in range(int(cfg.grad_repeats)):
        v = update.variable()
        if grad is None:
            grad = torch.zeros_like(v)
        loss = problem.loss(what_the_loss_sees(update.image(v), cfg.eot, float(cfg.diversity), gen), i)
        loss_sum += loss.detach()
        (g,) = torch.autograd.grad(loss.sum(), [v])
        grad += g.detach()
    return loss_sum / cfg.grad_repeats, grad


class _Problem:
    """The clean batch, the objective's loss (under autocast) and the feasible set."""

    def __init__(self, x: torch.Tensor, objective: Objective, budget: Budget, mask: torch.Tensor | None,
                 amp_dtype: Optional[torch.dtype]):
        self.x, self.objective, self.budget, self.amp_dtype = x, objective, budget, amp_dtype
        self.sign = 1.0 if objective.maximize else -1.0
        if mask is not None:
            mask = mask.to(device=x.device, dtype=x.dtype)
            if mask.dim() == 3:
                mask = mask.unsqueeze(0)
        self.mask = mask

    def constrain(self, delta: torch.Tensor) -> torch.Tensor:
        """Onto the mask, the budget and [0,1]."""
        if self.mask is not None:
            delta = delta * self.mask
        delta = self.budget.project(delta)
        return (self.x + delta).clamp(0, 1) - self.x

    def loss(self, x_adv: torch.Tensor, step: int) -> torch.Tensor:
        with _autocast(self.x.device, self.amp_dtype):
            out = self.objective.loss(x_adv, step)
        out = out.float()
        B = self.x.shape[0]
        if out.shape != (B,):
            raise ValueError(f"objective must return one loss per sample, shape ({B},), got {tuple(out.shape)}")
        return out


class _Best:
    """Per sample, the restart with the best final objective."""

    def __init__(self, problem: _Problem):
        x, B, dev = problem.x, problem.x.shape[0], problem.x.device
        self.problem = problem
        self.x_adv = x.clone()
        self.loss = torch.full((B,), -math.inf, device=dev)
        self.hist = torch.zeros(0, B, device=dev)
        self.steps = torch.zeros(B, dtype=torch.long, device=dev)
        self.restart = torch.zeros(B, dtype=torch.long, device=dev)

    def keep(self, r: int, x_adv: torch.Tensor, final: torch.Tensor, hist: torch.Tensor, steps_run: torch.Tensor) -> None:
        s = self.problem.sign
        better = (s * final > s * self.loss) if r > 0 else torch.ones_like(final, dtype=torch.bool)
        self.x_adv = torch.where(better.view(-1, 1, 1, 1), x_adv, self.x_adv)
        self.loss = torch.where(better, final, self.loss)
        n = min(hist.shape[0], self.hist.shape[0])
        self.hist = hist if r == 0 else torch.where(better, hist[:n], self.hist[:n])
        self.steps = torch.where(better, steps_run, self.steps)
        self.restart = torch.where(better, torch.full_like(self.restart, r), self.restart)

    def result(self, initial_loss: torch.Tensor) -> EngineResult:
        best_x = self.x_adv.detach()
        return EngineResult(x_adv=best_x, delta=best_x - self.problem.x, history=self.hist.cpu(),
                            initial_loss=initial_loss.detach(), final_loss=self.loss.detach(),
                            steps_run=self.steps.cpu(), restart=self.restart.cpu())


def _autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)
