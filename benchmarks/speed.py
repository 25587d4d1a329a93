"""Time protect() on this machine: seconds per step and images per second.

    python benchmarks/speed.py --vae taesd:../shared/assets/weights/taef2 --face-model sface \
        --faces ../shared/assets/faces/dev --size 512 --batch 1 8 --steps 20

Prints one line per (method, batch) and writes a JSON with the machine, the versions and
every timing when --json is given. The first call per batch size is a warm-up and is not
counted.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import imguard
from paper_tables import load_faces  # same folder: benchmarks/


def load_batch(folder: Path, n: int, size: int) -> torch.Tensor:
    """``n`` faces at ``size`` (repeating the folder's faces when it has fewer)."""
    x = load_faces(folder, size)[1][:n]
    while x.shape[0] < n:
        x = torch.cat([x, x])[:n]
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", default="taesd:../shared/assets/weights/taef2")
    ap.add_argument("--face-model", default="sface")
    ap.add_argument("--features", default="ae")
    ap.add_argument("--faces", default="../shared/assets/faces/dev")
    ap.add_argument("--methods", nargs="+", default=["facelock", "photoguard", "encoder"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default=None)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    p = imguard.Protector(device=args.device, vae=args.vae, face_model=args.face_model, features=args.features,
                          precision=args.precision, working_size=args.size)
    dev = p.device
    rows = []
    for b in args.batch:
        x = load_batch(Path(args.faces), b, args.size)
        for method in args.methods:
            p.protect(x, method=method, steps=2, seed=0)  # warm-up (model load, kernels)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = p.protect(x, method=method, steps=args.steps, seed=0, return_result=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            row = {"method": method, "batch": b, "size": args.size, "steps": args.steps, "seconds": dt,
                   "seconds_per_step": dt / args.steps, "images_per_second_at_100_steps": b / (dt / args.steps * 100),
                   "achieved_max": max(res.achieved)}
            rows.append(row)
            print(f"{method:<11} batch {b:>2} {args.size}px: {dt / args.steps * 1000:8.1f} ms/step, "
                  f"{row['images_per_second_at_100_steps']:.3f} images/s at 100 steps, max|delta| {row['achieved_max']:.2f}/255")
    info = {
        "device": str(dev), "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else platform.processor(),
        "precision": str(p.amp_dtype), "torch": torch.__version__, "imguard": imguard.__version__,
        "vae": args.vae, "face_model": args.face_model, "features": args.features, "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))
    print(json.dumps({k: v for k, v in info.items() if k != "rows"}))


if __name__ == "__main__":
    main()
