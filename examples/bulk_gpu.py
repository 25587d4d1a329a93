"""A platform protecting uploads in bulk: one Protector, models loaded once, batches on GPU.

    python examples/bulk_gpu.py uploads/ protected/ --vae taesd:/models/taef2 --face-model sface
"""

import argparse
from pathlib import Path

import imguard
from imguard.io import read_image, save_image

ap = argparse.ArgumentParser()
ap.add_argument("src")
ap.add_argument("dst")
ap.add_argument("--vae", default=None)
ap.add_argument("--face-model", default="facenet")
ap.add_argument("--batch-size", type=int, default=8)
args = ap.parse_args()

paths = sorted(p for p in Path(args.src).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
protector = imguard.Protector("facelock", vae=args.vae, face_model=args.face_model)  # cuda when available
images = [read_image(p) for p in paths]
for path, out in zip(paths, protector.protect_many(images, batch_size=args.batch_size, seed=0)):
    save_image(out, Path(args.dst) / f"{path.stem}.png")
print(f"protected {len(paths)} images on {protector.device}")
