"""Does the fast mode's perturbation help a preset as its starting point? (issue: "the pre-trained
start also becomes the initialisation of low/medium/high where it measurably helps")

    python benchmarks/fast_start.py --faces sample1/0051_01 sample2/0065_01 --steps 30 60 \
        --strength high --size 256 --out bench/fast_start.json

For each face (``faces/dev``, resized to ``--size``) and each step count, the preset runs twice with
the same seed: from its usual random start, and from the fast mode's delta (the engine's ``init=``,
the hook ``refine`` uses; the benchmark passes it by wrapping ``engine.run``). Reported: the
attacked recognizers' similarity before/after (``result.similarity``, lower = stronger), and what
dlib's full pipeline (never attacked) says after a TAESD round trip (distance to the clean face;
0.6 = another person), with PSNR and SSIM. A row for the fast mode alone comes first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import imguard  # noqa: E402
from imguard import pipeline  # noqa: E402
from imguard.fast.protect import fast_for  # noqa: E402
from imguard.io import read_image, resize_image, to_tensor, working_shape  # noqa: E402
from imguard.models import load_autoencoder  # noqa: E402
from imguard.models.dlib_face import DlibPipeline  # noqa: E402
from imguard.runtime import set_threads  # noqa: E402
from transfer import write_rows  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", nargs="+", default=["sample1/0051_01", "sample2/0065_01"], help="names under --root (no .png)")
    ap.add_argument("--root", default=str(ROOT.parent / "shared/assets/faces/dev"))
    ap.add_argument("--steps", type=int, nargs="+", default=[30, 60])
    ap.add_argument("--strength", default="high", choices=["low", "medium", "high"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="bench/fast_start.json")
    args = ap.parse_args(argv)
    set_threads(args.threads)

    preset = imguard.Protector(strength=args.strength, check=False)
    fast = imguard.Protector(strength="fast", check=False)
    judge, taesd = DlibPipeline(), load_autoencoder("taesd", "cpu")
    start: dict = {}
    plain_run = pipeline.engine.run

    def run(*a, **k):  # the preset's engine, started from the fast delta when one is set
        if start.get("delta") is not None:
            k["init"] = start["delta"]
        return plain_run(*a, **k)

    pipeline.engine.run = run

    def dlib_after_taesd(ref, img):
        with torch.no_grad():
            trip = taesd.decode(taesd.encode(img)).clamp(0, 1)
        return round(DlibPipeline.distance(ref, judge.descriptors(trip)[0]), 4)

    rows = []
    for name in args.faces:
        x = to_tensor(read_image(str(Path(args.root) / f"{name}.png")))[0]
        x = resize_image(x, working_shape(*x.shape[-2:], args.size))
        ref = judge.descriptors(x)[0]
        fr = fast_for(fast).protect(x)
        delta = fr.image.float() / 255 - x  # the working size is the image's: no resize
        rows.append({"face": name, "start": "fast mode alone", "steps": 0, "dlib_taesd": dlib_after_taesd(ref, fr.image.float() / 255)})
        print(json.dumps(rows[-1]), flush=True)
        for steps in args.steps:
            for how in ("random", "fast"):
                start["delta"] = delta if how == "fast" else None
                t0 = time.perf_counter()
                r = preset.protect(x, steps=steps, seed=args.seed, return_result=True)
                secs = time.perf_counter() - t0
                y = r.image[None] if r.image.dim() == 3 else r.image
                rows.append({"face": name, "strength": args.strength, "start": how, "steps": steps, "steps_run": r.steps_run,
                             "seconds": round(secs, 1),
                             "similarity_before_after": [round(float(r.initial_similarity[0]), 4), round(float(r.similarity[0]), 4)],
                             "dlib_taesd": dlib_after_taesd(ref, y), "psnr": round(r.visibility[0].psnr, 2),
                             "ssim": round(r.visibility[0].ssim, 4), "invisible": r.visibility[0].invisible})
                print(json.dumps(rows[-1]), flush=True)
    start["delta"] = None
    write_rows(args.out, rows)
    print("\n| face | steps | start | similarity after (attacked) | dlib distance after TAESD | PSNR / SSIM |\n|---|---|---|---|---|---|")
    for r in rows:
        if r["steps"]:
            print(f"| {r['face']} | {r['steps']} | {r['start']} | {r['similarity_before_after'][1]:.3f} | {r['dlib_taesd']:.3f} "
                  f"| {r['psnr']:.1f} / {r['ssim']:.3f} |")
        else:
            print(f"| {r['face']} | 0 | fast mode alone | | {r['dlib_taesd']:.3f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
