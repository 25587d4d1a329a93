"""The pre-trained protection (``strength="fast"``): a mixture of K perturbations learned ahead
of time in an aligned-face frame, warped onto each detected face, plus a tile for the rest of
the photo, scaled by the perceptual budget map (see docs/design.md, "Fast mode").

``model``   the weights (safetensors, shipped in ``weights/``) and the surrogate loss
``frame``   the canonical face frame and the warps into and out of it
``infer``   :class:`FastProtect`: detect, assign, warp, scale, project, quantize; ``refine``
``train``   :func:`train` behind ``imguard train-fast``
"""

from __future__ import annotations

from .model import SHIPPED, FastWeights, load_weights

__all__ = ["SHIPPED", "FastWeights", "load_weights"]
