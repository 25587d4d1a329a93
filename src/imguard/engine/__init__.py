"""The one optimisation loop (``loop.py``), its update rules (``updates.py``) and transfer
techniques (``techniques.py``).

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
``color``        ``"luma"``: one change per pixel added to R, G and B alike (grey: Y moves,
                 Cb and Cr do not), so nothing goes to colour, which JPEG subsamples
``eot``          expectation over random transformations (see :mod:`imguard.transforms`,
                 including a differentiable JPEG), ``grad_repeats`` draws per step
"""

from __future__ import annotations

from .config import (
    COLORS, OPTIMIZERS, SCHEDULES, Callback, EngineConfig, EngineResult, LossFn, Objective, StopFn, Transform, step_size_at,
)
from .loop import _autocast, run
from .techniques import diverse_input, gaussian_kernel, smooth_gradient
from .updates import AdamTanh, MomentumStep, SignStep, Update

__all__ = [
    "COLORS", "OPTIMIZERS", "SCHEDULES", "AdamTanh", "Callback", "EngineConfig", "EngineResult", "LossFn", "MomentumStep",
    "Objective", "SignStep", "StopFn", "Transform", "Update", "diverse_input", "gaussian_kernel", "run",
    "smooth_gradient", "step_size_at",
]
