"""Protect one photo and report the budget actually used.

    python examples/protect_photo.py IN.png OUT.png                      # default models (hub)
    python examples/protect_photo.py IN.png OUT.png --offline            # SFace + TAEF2, offline
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
ap.add_argument("--steps", type=int, default=None)
ap.add_argument("--offline", action="store_true", help="SFace + TAEF2 from ../shared/assets")
args = ap.parse_args()

models = {}
if args.offline:
    root = Path(__file__).resolve().parents[1].parent / "shared" / "assets" / "weights" / "taef2"
    models = {"vae": f"taesd:{root}", "face_model": "sface", "features": "ae"}

if Path(args.output).exists():
    raise SystemExit(f"{args.output} exists; not overwriting it")
result = imguard.protect(Image.open(args.input), args.method, eps=args.eps, steps=args.steps, seed=0, progress=True,
                         return_result=True, **models)
result.image.save(args.output)
print(result.summary())
