"""Which parts of `high`'s objective and techniques buy identity loss under the gate? (issue:
invisible protection)

    python benchmarks/objective.py --faces sample1/0051_01 sample2/0065_01 --steps 60 --threads 2 \
        --config 'old={"fr_start":0.35,"lambda_fe":1,"ti_kernel":5,"lambda_decoy":0.5,"diversity":0.1}' \
        --config 'new={}' --out bench/objective.json

Each ``--config NAME=JSON`` is the ``--strength`` preset (default ``high``) with those options
overridden (``{}`` is the preset as it stands; ``"vae": "taesd"`` attacks TAESD alone, so that TAEF2 judges as an
autoencoder the protection never saw). Every face is resized to ``--size`` (square, antialiased,
rounded to the 8-bit grid), protected once with ``--seed``, and judged by dlib's full pipeline
(never attacked) as the distance to the clean face (0.6 = another person) after:

* ``taesd``: a TAESD round trip (SD 1.x's latent space, what InstructPix2Pix sees);
* ``jpeg75>taesd``: JPEG-75, then TAESD;
* ``x0.9>taesd`` and ``x1.25>taesd``: resized (to a multiple of 8) before TAESD, which moves
  the photo off the 8-pixel grid the perturbation was optimised on;
* ``taef2``: a TAEF2 round trip (attacked by ``high``, unless ``vae`` leaves it out);
* ``raw``: the protected photo itself.

with ``similarity``, the attacked recognizers' weighted cosine after the round trip (what the
optimiser pushed down), and the visibility (PSNR, SSIM, flat-region change, the gate, and
``texture``: :func:`imguard.visibility.added_texture`, what the gate misses on smooth skin).

``--flat-to STD`` (an ablation of the perceptual budget, every configuration of the run): the
projection's local-mean removal, which keeps the change fine-grained where the photo is flat,
fades out at a 7x7 luminance std of STD/255 instead of 6/255 (it is full up to 3/255 either
way), so that lightly textured skin gets no low-frequency shading either.

``--members`` also records, for every condition, each offline recognizer's own cosine to the
clean face (sface, facenet, mobilefacenet, faceres on imguard's alignment of the clean face, with
their same-person thresholds): whether the attacked ones were fooled at all, and whether the
others moved with them.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import imguard  # noqa: E402
from imguard import budget  # noqa: E402
from imguard.io import save_image, to_uint8_hwc  # noqa: E402
from imguard.models import FaceDetector, FaceEmbedder, find_faces, load_autoencoder, load_face_recognizer  # noqa: E402
from imguard.models.dlib_face import DlibPipeline  # noqa: E402
from imguard.runtime import set_threads  # noqa: E402
from imguard.transforms import jpeg_pil  # noqa: E402
from imguard.visibility import added_texture  # noqa: E402
from transfer import load_faces, write_rows  # noqa: E402

PROTECTOR_OPTIONS = ("vae", "face_model")


def resized8(x: torch.Tensor, factor: float) -> torch.Tensor:
    H, W = x.shape[-2:]
    size = (round(H * factor / 8) * 8, round(W * factor / 8) * 8)
    return F.interpolate(x, size=size, mode="bilinear", antialias=True).clamp(0, 1)


#: the offline recognizers ``--members`` reports on (the ones the presets may attack)
MEMBERS = ("sface", "facenet", "mobilefacenet", "faceres")


@torch.no_grad()
def member_cosines(recognizer, detector, x: torch.Tensor, y: torch.Tensor, conditions: dict) -> dict:
    """{condition: {recognizer: cosine to the clean face}} and {"threshold": {recognizer: its threshold}}."""
    embedder = FaceEmbedder(recognizer, find_faces(x, detector))
    clean = embedder.embed_all(x)
    names = [m.name for m in embedder.members]
    out = {"threshold": {n: round(float(m.threshold), 3) for n, m in zip(names, embedder.members)}}
    for k, fn in conditions.items():
        embs = embedder.embed_all(fn(y))
        out[k] = {n: round(float((e * c).sum()), 3) for n, e, c in zip(names, embs, clean)}
    return out


def flat_weight_to(upper: float):
    """:func:`imguard.budget.flat_weight` with its fade ending at local std ``upper`` (/255)."""
    if not upper > budget.FLAT_STD:
        raise SystemExit(f"--flat-to must be above {budget.FLAT_STD:g} (where the flat weight is full), got {upper:g}")
    return functools.partial(budget.flat_weight, upper=float(upper))


def parse_config(text: str) -> tuple[str, dict]:
    name, sep, spec = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--config takes NAME=JSON (e.g. 'new={{}}'), got {text!r}")
    try:
        opts = json.loads(spec)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--config {name}: not JSON ({e}): {spec!r}") from None
    if not isinstance(opts, dict):
        raise SystemExit(f"--config {name}: the JSON must be an object of options, got {spec!r}")
    return name, opts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", nargs="+", default=["sample1/0051_01", "sample2/0065_01"], help="names under --root (no .png)")
    ap.add_argument("--root", default=str(ROOT.parent / "shared/assets/faces/dev"))
    ap.add_argument("--config", action="append", default=[], help="NAME=JSON: the preset's options overridden (repeatable)")
    ap.add_argument("--strength", default="high", help="the preset whose options --config overrides")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--flat-to", type=float, default=None, help=f"the flat weight fades out at this local std (/255; the budget's: {budget.FLAT_FADE_END:g})")
    ap.add_argument("--keep", default=None, help="a folder to save each protected face in (CONFIG-FACE.png), to look at zoomed")
    ap.add_argument("--members", action="store_true", help="also each offline recognizer's cosine per condition")
    ap.add_argument("--out", default="bench/objective.json")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if args.flat_to is not None:
        budget.flat_weight = flat_weight_to(float(args.flat_to))  # Budget.perceptual looks it up at call time
    configs = [parse_config(c) for c in args.config] or [("high", {})]
    judge = DlibPipeline()
    aes = {a: load_autoencoder(a, "cpu") for a in ("taesd", "taef2")}

    @torch.no_grad()
    def trip(name: str, x: torch.Tensor) -> torch.Tensor:
        return aes[name].decode(aes[name].encode(x)).clamp(0, 1)

    conditions = {
        "taesd": lambda y: trip("taesd", y),
        "jpeg75>taesd": lambda y: trip("taesd", jpeg_pil(y, 75)),
        "x0.9>taesd": lambda y: trip("taesd", resized8(y, 0.9)),
        "x1.25>taesd": lambda y: trip("taesd", resized8(y, 1.25)),
        "taef2": lambda y: trip("taef2", y),
        "raw": lambda y: y,
    }
    members = load_face_recognizer(",".join(MEMBERS)) if args.members else None
    detector = FaceDetector() if args.members else None
    rows = []
    for cname, opts in configs:
        built = {k: opts.pop(k) for k in PROTECTOR_OPTIONS if k in opts}
        p = imguard.Protector(strength=args.strength, working_size=args.size, check=False, **built)
        for face in args.faces:
            _, x = load_faces([Path(args.root) / f"{face}.png"], args.size, None)  # square, on the 8-bit grid
            ref = judge.descriptors(x)[0]
            t0 = time.perf_counter()
            r = p.protect(x, steps=args.steps, seed=args.seed, return_result=True, **opts)
            secs = time.perf_counter() - t0
            y = (r.image[None] if r.image.dim() == 3 else r.image).float()
            y = (y * 255).round() / 255
            if args.keep:
                keep = Path(args.keep)
                keep.mkdir(parents=True, exist_ok=True)
                save_image(Image.fromarray(to_uint8_hwc(y[0])), keep / f"{cname}-{face.replace('/', '_')}.png", overwrite=True)
            dists = {}
            for k, fn in conditions.items():
                found = judge.descriptors(fn(y))
                dists[k] = None if not found or found[0] is None else round(DlibPipeline.distance(ref, found[0]), 3)
            v = r.visibility[0]
            extra = {"members": member_cosines(members, detector, x, y, conditions)} if members is not None else {}
            rows.append({"config": cname, "strength": args.strength, "options": {**built, **opts}, "face": face, "steps": args.steps, "seconds": round(secs, 1),
                         "similarity": round(float(r.similarity[0]), 3), "dlib": dists, "psnr": round(v.psnr, 2),
                         "ssim": round(v.ssim, 4), "flat": round(v.flat, 3),
                         "texture": round(float(added_texture(x, y)[0]), 3), "invisible": v.invisible, "flat_to": args.flat_to, **extra})
            print(json.dumps(rows[-1]), flush=True)
    write_rows(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
