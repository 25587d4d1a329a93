"""Device and precision, decided in one place.

CUDA when available (else Apple MPS, else CPU). On CUDA the model forward passes run under
autocast (bf16 where supported, else fp16) while delta and the projection stay in fp32; on
CPU everything is fp32.
"""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} was asked for but CUDA is not available here; use device='cpu'")
    return dev


def amp_dtype_for(device: torch.device, precision: str | None = "auto") -> torch.dtype | None:
    """The autocast dtype for model forwards, or None for full fp32.

    ``precision``: ``"auto"`` (bf16 on CUDA if supported, else fp16; fp32 elsewhere),
    ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    """
    if precision in (None, "fp32", "float32"):
        return None
    if device.type != "cuda":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}; valid: auto, fp32, bf16, fp16")
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
