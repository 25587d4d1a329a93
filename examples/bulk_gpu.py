"""A platform protecting uploads in bulk: one Protector, models loaded once, batches on GPU.

    python examples/bulk_gpu.py uploads/ protected/ --vae taesd:/models/taef2 --face-model sface
    python examples/bulk_gpu.py uploads/ protected/ --vae taesd --face-model sface --steps 20 --working-size 256

A progress bar over the images, and one over the steps of each batch.
"""

import argparse
from pathlib import Path

from tqdm.auto import tqdm

import imguard
from imguard.io import read_image, save_image

ap = argparse.ArgumentParser()
ap.add_argument("src")
ap.add_argument("dst")
ap.add_argument("--vae", default=None)
ap.add_argument("--face-model", default="facenet")
ap.add_argument("--batch-size", type=int, default=8)
ap.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the method's; fewer = quicker)")
ap.add_argument("--working-size", type=int, default=512, help="long side the optimisation runs at (default 512; 0 = native)")
args = ap.parse_args()

paths = sorted(p for p in Path(args.src).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
protector = imguard.Protector("facelock", vae=args.vae, face_model=args.face_model,  # cuda when available
                              working_size=args.working_size or None)
bar = tqdm(total=len(paths), desc="protecting", unit="image")
for s in range(0, len(paths), args.batch_size):
    chunk = paths[s : s + args.batch_size]
    outs = protector.protect_many([read_image(p) for p in chunk], batch_size=args.batch_size, seed=0, steps=args.steps,
                                  progress=True)
    for path, out in zip(chunk, outs):
        save_image(out, Path(args.dst) / f"{path.stem}.png")
    bar.update(len(chunk))
bar.close()
print(f"protected {len(paths)} images on {protector.device}")
