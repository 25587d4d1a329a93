"""The per-pixel work of a protection on a big photo, timed: the perceptual map
(``budget.perceptual_budget``), finalizing (``budget.finalize``: project, quantize) and
measuring the visibility gate (``visibility.measure``), on a random image of ``--megapixels``
(4:3), for each band height of ``--rows``.

    python benchmarks/per_pixel.py --megapixels 12 --rows 256 1024 --threads 2

Each figure is the best of ``--repeat`` runs after one warm-up, in seconds. These steps are what
the fast mode costs on a 12-megapixel photo beyond its face (docs/design.md, "Fast mode").
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from imguard import budget as B  # noqa: E402
from imguard.runtime import set_threads  # noqa: E402

vis = importlib.import_module("imguard.visibility")


def best(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(min(times), 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--megapixels", type=float, default=12.0)
    ap.add_argument("--rows", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    threads = set_threads(args.threads)
    h = int(round((args.megapixels * 1e6 * 3 / 4) ** 0.5))
    w = int(round(h * 4 / 3))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, h, w, generator=g)
    b = B.perceptual_budget(x, 8.0, 1.3)
    d = (torch.rand(x.shape, generator=g) * 2 - 1) * b.radius_map
    out, _ = B.finalize(x, d, b)
    y = out.float() / 255
    print(f"{h}x{w} ({h * w / 1e6:.1f} MP), {threads} threads")
    for rows in args.rows:
        vis.MEASURE_BAND_ROWS = rows
        row = {"rows": rows,
               "map": best(lambda: B.perceptual_budget(x, 8.0, 1.3, band_rows=rows), args.repeat),
               "finalize": best(lambda: B.finalize(x, d, b, band_rows=rows), args.repeat),
               "measure": best(lambda: vis.measure(x, y), args.repeat)}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
