"""Device and precision, decided in one place.

CUDA when available, else CPU. The model forward passes run under autocast (bf16 where
supported, else fp16) while delta, the projection and the loss stay in fp32. On CUDA that is
always so; on a CPU only where bf16 is fast in hardware (Intel AMX: measured 4x faster than
fp32 per facelock step, see docs/benchmarks.md), elsewhere the CPU runs in fp32. Where autocast
is on, convolution weights are kept channels-last (the layout the fast kernels want; in fp32 on
a CPU it was slower, so it is off there). ``precision="fp32"`` turns both off.
"""

from __future__ import annotations

import functools

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
    if precision not in ("auto", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r}; valid: auto, fp32, bf16, fp16")
    if device.type == "cpu":
        if precision == "fp16":
            raise ValueError("precision='fp16' needs a GPU; on a CPU use 'bf16' or 'fp32'")
        return torch.bfloat16 if (precision == "bf16" or cpu_has_fast_bf16()) else None
    if device.type != "cuda":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions and matmuls in hardware (Intel AMX tiles)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    try:
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        supported = False
    return supported and "amx_bf16" in flags


def memory_format_for(device: torch.device, amp_dtype: torch.dtype | None) -> torch.memory_format:
    """The layout for model weights: channels-last where autocast runs, else contiguous."""
    return torch.channels_last if amp_dtype is not None else torch.contiguous_format


def default_threads() -> int:
    """The cores this process may use (its CPU affinity), not every core of the machine."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None = None) -> int:
    """torch's intra-op thread count: ``threads``, or the cores this process may use. Returns it."""
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")
    torch.set_num_threads(n)
    return n
