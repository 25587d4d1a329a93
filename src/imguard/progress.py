"""What a protection shows while it runs: the progress bar (``progress=True``), and for face
methods the number it shows, the attacked recognizers' similarity to the original."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from .result import objective_text

__all__ = ["progress_bar", "showing_similarity", "similarity_to_original"]


def similarity_to_original(ctx: Any, x: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor | None:
    """[B]: the attacked recognizers' mean similarity to the original after the attacked
    autoencoders' round trips (mean over them); None for methods without a recognizer."""
    embedder, ref = getattr(ctx, "embedder", None), getattr(ctx, "emb_clean", None)
    if embedder is None or ref is None:
        return None
    aes = list(getattr(ctx, "autoencoders", None) or [])
    with torch.no_grad(), torch.autocast(x.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        trips = [ae.decode(ae.encode(x)).float().clamp(0, 1) for ae in aes] or [x]
        return torch.stack([embedder.similarity(t, ref).float() for t in trips]).mean(0).cpu()


def showing_similarity(stop, ctx: Any, bar: Any, steps: int, amp_dtype: torch.dtype | None):
    """Wraps the early stop (which sees x') to put the similarity on the progress bar about
    ten times per run and at the last step (an extra forward pass each time, no gradient)."""
    every = max(1, steps // 10)

    def wrapped(x_adv, loss, i):
        if (i + 1) % every == 0 or i + 1 == steps:
            sim = similarity_to_original(ctx, x_adv, amp_dtype)
            if sim is not None:
                bar.set_postfix(similarity=f"{float(sim[0]):.2f}")
        return stop(x_adv, loss, i) if stop is not None else torch.zeros(x_adv.shape[0], dtype=torch.bool)

    return wrapped


@contextmanager
def progress_bar(steps: int, name: str, callback: Callable | None, stop: Callable | None, *, sign: float,
                 similarity: torch.Tensor | None = None, ctx: Any = None,
                 amp_dtype: torch.dtype | None = None) -> Iterator[tuple[Callable, Callable | None]]:
    """``(callback, early_stop)`` for the engine that also move a tqdm bar of ``steps`` steps
    (closed on leaving). Face methods (``similarity``, before the first step, and their ``ctx``)
    show the similarity falling; other methods their objective (``sign`` times the loss)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc=f"imguard {name}", unit="step", leave=False)
    if similarity is not None:
        bar.set_postfix(similarity=f"{float(similarity[0]):.2f}")
        stop = showing_similarity(stop, ctx, bar, steps, amp_dtype)

    def cb(i, n, loss):
        bar.update(1)
        if similarity is None:  # other methods: their objective (higher = stronger)
            bar.set_postfix(objective=objective_text(sign * float(loss[0])))
        if callback is not None:
            callback(i, n, loss)

    try:
        yield cb, stop
    finally:
        bar.close()
