"""Peak memory (RSS) of `imguard protect` on big photos.

Each size runs in its own process: a synthetic photo (smooth gradients plus noise, saved as
JPEG q90) is protected by the real command with a tiny autoencoder (the real AutoencoderKL
class, a tiny config), one step and a working size of 64, so what is measured is the
native-size work: reading, the float image, mapping the delta back, quantizing, writing the
PNG. The optimisation runs at the working size (512 by default) and costs the same for every
photo size; it is left small here so that it does not hide the native-size cost.

    python benchmarks/memory.py                       # 2000x1500 ... 12000x9000
    python benchmarks/memory.py --sizes 4000x3000 --src /tmp/imguard-before/src   # another checkout

Prints one Markdown row per size: megapixels, peak RSS, RSS before the run, and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tiny_vae(d: Path) -> Path:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=32).save_pretrained(d)
    return d


def _photo(path: Path, w: int, h: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    img = np.empty((h, w, 3), np.uint8)
    xs = np.linspace(0, 255, w, dtype=np.float32)
    for r0 in range(0, h, 512):  # in bands: the generator must not dominate the measurement
        r1 = min(h, r0 + 512)
        ys = np.linspace(r0 / h * 255, r1 / h * 255, r1 - r0, dtype=np.float32)[:, None]
        base = (xs[None, :] * 0.6 + ys * 0.4)
        for c in range(3):
            img[r0:r1, :, c] = np.clip(base * (0.5 + 0.25 * c) + rng.normal(0, 6, base.shape), 0, 255)
    Image.fromarray(img).save(path, quality=90)


def _peak_kb() -> int:
    """This process's peak RSS (VmHWM: per address space, so not inherited across exec, unlike
    getrusage's ru_maxrss on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def make(args) -> None:
    """In its own process: the tiny autoencoder and the photo (so the measuring process is fresh)."""
    if not Path(args.vae).exists():
        _tiny_vae(Path(args.vae))
    w, h = (int(v) for v in args.size.split("x"))
    _photo(Path(args.image), w, h)


def child(args) -> None:
    """One measurement (in a fresh process): protect the photo, report peak RSS."""
    before = _peak_kb()
    from imguard.cli import main  # noqa: E402  (imported after the baseline on purpose)

    import torch  # noqa: F401

    after_import = _peak_kb()
    argv = ["protect", args.image, "-o", args.out, "--method", "encoder", "--steps", "1", "--seed", "0",
            "--vae", args.vae, "--device", "cpu", "-q", "--working-size", "64"]
    if not args.legacy:
        argv += ["--max-pixels", "200000000"]
    t0 = time.perf_counter()
    rc = main(argv)
    secs = time.perf_counter() - t0
    peak = _peak_kb()
    print(json.dumps({"rc": rc, "peak_kb": peak, "import_kb": after_import, "start_kb": before, "seconds": secs}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000x1500,4000x3000,8000x6000,12000x9000")
    ap.add_argument("--src", default=str(ROOT / "src"), help="the imguard sources to measure (PYTHONPATH)")
    ap.add_argument("--legacy", action="store_true", help="the measured checkout has no --max-pixels")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_make", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--image"), ap.add_argument("--out"), ap.add_argument("--vae"), ap.add_argument("--size")
    args = ap.parse_args()
    if args._child:
        return child(args)
    if args._make:
        return make(args)
    torch_threads = os.environ.get("OMP_NUM_THREADS", "")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vae = tmp / "vae"
        print(f"sources: {args.src}" + (f"  OMP_NUM_THREADS={torch_threads}" if torch_threads else ""))
        print("| photo | megapixels | peak RSS | RSS after imports | native-size work (peak - imports) | seconds |")
        print("| --- | --- | --- | --- | --- | --- |")
        for spec in args.sizes.split(","):
            w, h = (int(v) for v in spec.lower().split("x"))
            img = tmp / f"photo_{w}x{h}.jpg"
            subprocess.run([sys.executable, __file__, "--_make", "--image", str(img), "--vae", str(vae), "--size", f"{w}x{h}"],
                           check=True)
            cmd = [sys.executable, __file__, "--_child", "--image", str(img), "--out", str(tmp / f"out_{w}"), "--vae", str(vae)]
            if args.legacy:
                cmd.append("--legacy")
            env = {**os.environ, "PYTHONPATH": args.src}
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
            if res.returncode != 0 or not line.startswith("{"):
                print(f"| {w}x{h} | {w * h / 1e6:.0f} | failed (rc {res.returncode}): {res.stderr.strip().splitlines()[-1:]} | | | |")
                continue
            r = json.loads(line)
            gib = 1024 * 1024
            print(f"| {w}x{h} | {w * h / 1e6:.0f} | {r['peak_kb'] / gib:.2f} GiB | {r['import_kb'] / gib:.2f} GiB | "
                  f"{(r['peak_kb'] - r['import_kb']) / gib:.2f} GiB | {r['seconds']:.0f} |" + ("" if r["rc"] == 0 else f" rc {r['rc']}"))
            img.unlink()


if __name__ == "__main__":
    main()
