"""What a protection returns: :class:`ProtectionResult`, :class:`ItemError`, and the
objective's one sign (higher = stronger protection, for every method)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

__all__ = ["ItemError", "ProtectionResult", "batch_then_singly", "objective_sign", "objective_text"]


def objective_sign(maximize: bool) -> float:
    """The sign that turns a method's own loss into the objective (higher = stronger)."""
    return 1.0 if maximize else -1.0


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
    #: per image, face methods only: the attacked recognizers' mean cosine similarity to the original
    #: after the attacked autoencoders' round trips, at the clean image and at the result (the number
    #: the progress bar shows; it falls as the protection works; below a recognizer's threshold,
    #: that recognizer no longer matches the person)
    initial_similarity: list | None = None
    similarity: list | None = None

    # One number, one sign, everywhere (progress bar, summary, web page, docs): the *objective*
    # is what the method maximises, so higher always means a stronger protection.
    @property
    def sign(self) -> float:
        return objective_sign(self.maximize)

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
            + (f"similarity {self.initial_similarity[0]:.2f} -> {self.similarity[0]:.2f} (attacked recognizers; lower = stronger), "
               if self.similarity else "")
            + f"objective {objective_text(self.initial_objective[0])} -> {objective_text(self.final_objective[0])} "
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



class ItemError(Exception):
    """One image of :meth:`Protector.protect_many` failed: which one and why."""

    def __init__(self, index: int, name: str, error: BaseException):
        self.index, self.name, self.error = index, name, error
        self.reason = str(error) or type(error).__name__
        super().__init__(f"image {index} ({name}) failed: {type(error).__name__}: {self.reason}")


def batch_then_singly(items: Sequence, batch: Callable[[list], list], single: Callable[[Any], Any],
                      done: Callable[[Any, Any], bool | None], failed: Callable[[Any, BaseException], bool | None],
                      reraise: tuple = ()) -> None:
    """Several items as one batch (``batch(items)``: one result per item); a single item, or a
    batch that failed, one by one (``single(item)``), so one bad item does not take its batch
    mates down. ``done(item, result)`` and ``failed(item, error)`` report each item; either
    returning True stops. Errors of the ``reraise`` types are not caught."""
    items = list(items)
    if len(items) > 1:
        try:
            results = batch(items)
        except reraise:
            raise
        except Exception:  # noqa: BLE001 - retried one by one
            results = None
        if results is not None:
            for item, r in zip(items, results):
                if done(item, r):
                    return
            return
    for item in items:
        try:
            r = single(item)
        except reraise:
            raise
        except Exception as e:  # noqa: BLE001 - reported for this item
            if failed(item, e):
                return
            continue
        if done(item, r):
            return
