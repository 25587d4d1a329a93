"""Speed of the engine against the plain loop it replaces, on this machine, in one run.

    python benchmarks/speed.py --device cpu --size 256 --steps 10
    python benchmarks/speed.py --device cuda --size 512 --steps 100 --batch 1 8 --vae sd-random

For each batch size, FaceLock is run three ways on the same faces, models, budget, steps and
precision:

``reference``          FaceLock's Algorithm 1 written directly, one image at a time, as the
                       authors' code does it: every term computed at every step and switched
                       on by a 0/1 weight, the clean image's embedding and features recomputed
                       at every step (the face alignment is found once, as in the engine).
``engine, speedups off``  imguard's engine with ``Protector(speedups=False)``.
``engine``             imguard's engine as users get it (clean targets cached, unused decoder
                       passes skipped, channels-last weights where autocast runs, batched).

Each is timed over the whole run (model loading and one warm-up excluded; face detection,
the targets and the step loop included) and reported per step and per image. The last line
is ``engine vs reference: N.NNx faster per step`` (per image-step, at the best batch size).

``--vae sd-random`` builds a diffusers ``AutoencoderKL`` with Stable Diffusion's VAE
configuration and random weights: the SD VAE's compute, without needing its weights. Peak
memory is the process's peak RSS on CPU and ``torch.cuda.max_memory_allocated`` on GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import imguard  # noqa: E402
import imguard.presets  # noqa: E402
import imguard.request  # noqa: E402
from imguard.budget import Budget  # noqa: E402
from imguard.engine import _autocast, step_size_at, EngineConfig  # noqa: E402
from imguard.models import FaceEmbedder, find_faces, load_autoencoder  # noqa: E402
from paper_tables import load_faces  # noqa: E402

#: Stable Diffusion 1.x's VAE configuration (diffusers' AutoencoderKL arguments)
SD_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), sample_size=512, scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)


def sd_sized_vae() -> torch.nn.Module:
    """An AutoencoderKL of the SD VAE's size with random weights (timing needs no weights)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(**SD_VAE_CONFIG)


def load_batch(folder: Path, n: int, size: int) -> torch.Tensor:
    """``n`` faces at ``size`` (repeating the folder's faces when it has fewer)."""
    x = load_faces(folder, size)[1][:n]
    while x.shape[0] < n:
        x = torch.cat([x, x])[:n]
    return x


def reference_facelock(x1: torch.Tensor, models, steps: int, eps: float, step_size: float, amp_dtype, seed: int) -> torch.Tensor:
    """FaceLock's Algorithm 1 for one image [1,3,H,W], written directly (see the module doc)."""
    ae, face, features = models.autoencoder, models.face, models.features
    torch.manual_seed(seed)
    faces = find_faces(x1, models.detector)
    embedder = FaceEmbedder(face, faces)
    e = eps / 255.0
    with torch.no_grad():
        z_clean = ae.encode(x1)
    delta = (torch.rand_like(x1) * 2 - 1) * e
    cfg = EngineConfig(steps=steps, step_size=step_size, schedule="linear")
    for i in range(steps):
        xa = (x1 + delta).clamp(0, 1).requires_grad_(True)
        with _autocast(x1.device, amp_dtype):
            z = ae.encode(xa)
            recon = ae.decode(z)
            with torch.no_grad():
                emb_clean = embedder.embed_all(x1)  # recomputed every step, as compute_score(image, X) does
            cos = embedder.similarity(recon, emb_clean)
            feat = features(recon, x1)  # both sides every step
            lat = (z.float() - z_clean.float()).pow(2).mean()
            w_fr = 1.0 if i >= 0.35 * steps else 0.0
            w_fe = 1.0 if i > 0.25 * steps else 0.0
            loss = -w_fr * cos.float().sum() + w_fe * feat.float().sum() + 0.2 * lat
        (g,) = torch.autograd.grad(loss, [xa])
        with torch.no_grad():
            delta = (delta + step_size_at(cfg, i) / 255.0 * g.sign()).clamp(-e, e)
            delta = (x1 + delta).clamp(0, 1) - x1
    return (x1 + delta).detach()


def peak_memory_mb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(fn, dev: torch.device) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", default="taef2", help="autoencoder spec, or sd-random (SD VAE size, random weights)")
    ap.add_argument("--face-model", default="sface")
    ap.add_argument("--features", default="ae")
    ap.add_argument("--faces", default=str(ROOT.parent / "shared/assets/faces/dev"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=8.0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="model forward precision, for the engine and the reference alike (auto: see imguard.runtime)")
    ap.add_argument("--no-reference", action="store_true", help="time the engine only")
    ap.add_argument("--presets", action="store_true", help="also time the strength presets (cost per step and per image)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    vae = sd_sized_vae() if args.vae == "sd-random" else args.vae
    common = dict(device=args.device, vae=vae, face_model=args.face_model, features=args.features,
                  precision=args.precision, working_size=args.size, check=False)
    fast = imguard.Protector("facelock", **common)
    plain = imguard.Protector("facelock", speedups=False, **common)
    dev = fast.device
    step_size = float(imguard.methods()["facelock"]["defaults"]["step_size"])
    print(f"device {dev} ({torch.cuda.get_device_name(0) if dev.type == 'cuda' else platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, precision {fast.amp_dtype or 'fp32'}, "
          f"vae {args.vae}, face {args.face_model}, features {args.features}, {args.size} px, {args.steps} steps, eps {args.eps:g}")
    rows = []

    def report(label: str, b: int, seconds: float, n_images: int) -> dict:
        per_img_step = seconds / (args.steps * n_images)
        row = {"run": label, "batch": b, "seconds": seconds, "s_per_step": seconds / args.steps,
               "s_per_image_step": per_img_step, "s_per_image_100_steps": per_img_step * 100,
               "images_per_s_100_steps": 1 / (per_img_step * 100), "peak_memory_mb": peak_memory_mb(dev)}
        rows.append(row)
        print(f"{label:<22} batch {b:>2}: {row['s_per_step'] * 1000:9.1f} ms/step  {per_img_step * 1000:9.1f} ms/image-step  "
              f"{row['s_per_image_100_steps']:8.2f} s/image at 100 steps  {row['images_per_s_100_steps']:7.3f} images/s  "
              f"peak {row['peak_memory_mb']:.0f} MB")
        return row

    fast.protect(load_batch(Path(args.faces), 1, args.size), steps=2, eps=args.eps, seed=0)  # load models, warm up
    plain.protect(load_batch(Path(args.faces), 1, args.size), steps=2, eps=args.eps, seed=0)
    best_engine, ref_row = None, None
    for b in args.batch:
        x = load_batch(Path(args.faces), b, args.size).to(dev)
        if not args.no_reference and ref_row is None:
            models = plain.models
            secs = timed(lambda: [reference_facelock(x[i : i + 1], models, args.steps, args.eps, step_size, plain.amp_dtype, 0)
                                  for i in range(b)], dev)
            ref_row = report("reference", 1, secs, b)
        secs = timed(lambda: plain.protect(x, steps=args.steps, eps=args.eps, seed=0), dev)
        report("engine, speedups off", b, secs, b)
        secs = timed(lambda: fast.protect(x, steps=args.steps, eps=args.eps, seed=0), dev)
        row = report("engine", b, secs, b)
        if best_engine is None or row["s_per_image_step"] < best_engine["s_per_image_step"]:
            best_engine = row

    if args.presets:
        x = load_batch(Path(args.faces), 1, args.size).to(dev)
        for name in imguard.presets.preset_names():
            p = imguard.Protector(strength=name, device=args.device, precision=args.precision, working_size=args.size, check=False)
            p.protect(x, steps=2, seed=0)
            steps = int(imguard.request.resolve(strength=name).engine.steps)
            secs = timed(lambda: p.protect(x, steps=args.steps, seed=0), dev)
            per_step = secs / args.steps
            rows.append({"run": f"preset {name}", "batch": 1, "s_per_step": per_step, "steps": steps,
                         "s_per_image": per_step * steps, "peak_memory_mb": peak_memory_mb(dev)})
            print(f"preset {name:<15} batch  1: {per_step * 1000:9.1f} ms/step, {steps} steps: {per_step * steps:8.1f} s/image")

    info = {"device": str(dev), "machine": torch.cuda.get_device_name(0) if dev.type == "cuda" else platform.processor(),
            "threads": torch.get_num_threads(), "precision": str(fast.amp_dtype or "fp32"), "torch": torch.__version__,
            "imguard": imguard.__version__, "vae": args.vae, "face_model": args.face_model, "features": args.features,
            "size": args.size, "steps": args.steps, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))
    if ref_row is not None:
        ratio = ref_row["s_per_image_step"] / best_engine["s_per_image_step"]
        print(f"engine vs reference: {ratio:.2f}x faster per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
