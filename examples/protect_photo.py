"""Protect one photo and report the budget actually used.

    python examples/protect_photo.py IN.png OUT.png                      # default models (hub)
    python examples/protect_photo.py IN.png OUT.png --offline            # SFace + TAEF2, offline
    python examples/protect_photo.py IN.png OUT.png --offline --steps 20 --working-size 256   # a quick try on a CPU

A progress bar shows the steps and the objective (higher = stronger protection).
"""

import argparse
from pathlib import Path

from PIL import Image

import imguard

ap = argparse.ArgumentParser()
ap.add_argument("input")
ap.add_argument("output")
ap.add_argument("--method", default="facelock")
ap.add_argument("--eps", type=float, default=None)
ap.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the method's; fewer = quicker)")
ap.add_argument("--working-size", type=int, default=512, help="long side the optimisation runs at (default 512; 0 = native)")
ap.add_argument("--offline", action="store_true", help="SFace + TAEF2 from ../shared/assets")
args = ap.parse_args()

models = {}
if args.offline:
    root = Path(__file__).resolve().parents[1].parent / "shared" / "assets" / "weights" / "taef2"
    models = {"vae": f"taesd:{root}", "face_model": "sface", "features": "ae"}

if Path(args.output).exists():
    raise SystemExit(f"{args.output} exists; not overwriting it")
result = imguard.protect(Image.open(args.input), args.method, eps=args.eps, steps=args.steps, seed=0, progress=True,
                         working_size=args.working_size or None, return_result=True, **models)
result.image.save(args.output)
print(result.summary())
