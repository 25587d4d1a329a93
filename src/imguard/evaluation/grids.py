"""Per-image PNG grids: original, protected, delta, and the edits of both."""

from __future__ import annotations

from pathlib import Path

import torch

from ..io import resize_image
from ..io import ImageInfo, from_tensor, save_image

from .conditions import Condition

GRID_TILE = 256
GRID_LABELS = ("original", "protected", "delta", "edit of original", "edit of protected")


def _grid_tiles(x0, xp, e0, ep, cond: Condition, rec: dict) -> list[tuple[str, torch.Tensor]]:
    delta = xp - x0
    peak = float(delta.abs().max())
    gain = 0.5 / peak if peak > 0 else 1.0
    what = cond.proxy.label + (f": {cond.prompt.text}" if cond.prompt else "") + ("" if cond.purification.name == "none" else f" after {cond.purification.name}")

    def fr(key: str) -> str:
        v = rec.get(f"fr_sim_{key}")
        return "" if rec.get(f"face_found_{key}") is None else (" FR no face" if v is None else f" FR {v:.2f}")

    return [
        ("original", x0),
        ("protected", xp),
        (f"delta x{gain:.0f} (max {peak * 255:.1f}/255)", (0.5 + delta * gain).clamp(0, 1)),
        (f"edit of original{fr('clean_edit')} ({what})", e0),
        (f"edit of protected{fr('protected_edit')}", ep),
    ]


def save_grid(tiles: list[tuple[str, torch.Tensor]], path: Path, overwrite: bool = True, tile: int = GRID_TILE) -> Path:
    """A row of labelled tiles (each [1,3,H,W] in [0,1]) as one PNG, written with PIL."""
    from PIL import Image, ImageDraw

    ims = []
    for _, t in tiles:
        h, w = t.shape[-2:]
        s = tile / max(h, w)
        ims.append(from_tensor(resize_image(t.float(), (max(1, round(h * s)), max(1, round(w * s)))), ImageInfo(kind="pil")))
    band = 28
    W = sum(im.width for im in ims) + 4 * (len(ims) - 1)
    H = max(im.height for im in ims) + band
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for (label, _), im in zip(tiles, ims):
        canvas.paste(im, (x, band))
        draw.text((x + 3, 3), _shorten(label, im.width), fill=(0, 0, 0))
        x += im.width + 4
    return save_image(canvas, path, overwrite=overwrite)


def _shorten(text: str, width: int) -> str:
    n = max(8, width // 6)
    return text if len(text) <= n else text[: n - 1] + "…"


