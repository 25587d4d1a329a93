"""Does a mid-layer feature term help `high` transfer? (issue: invisible protection, "a different
objective")

    python benchmarks/feature_term.py --faces sample1/0051_01 sample2/0065_01 --steps 60 \
        --weight 1 --layer mixed_6a --size 256 --out bench/feature_term.json

Feature-level attacks (distorting a recognizer's intermediate activations, not only its
embedding) are reported to transfer better between models. This runs ``high`` with one more term
in FaceLock's objective: ``--weight`` times the cosine similarity between FaceNet's activations
at ``--layer`` (a child of facenet-pytorch's Inception-ResNet-v1: ``repeat_1``, ``mixed_6a``,
``repeat_2``, ...) for the protected image and for the clean one, over every FaceNet call the
objective makes (the round trips and the image itself), pushed down. FaceNet is one of the
recognizers ``high`` attacks; the judge is dlib's full pipeline after a TAESD round trip, never
attacked. The term is added by wrapping the ``facelock`` method's prepare and objective (this
script only); ``--weight 0`` is ``high`` itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import imguard  # noqa: E402
from imguard.io import read_image, resize_image, to_tensor, working_shape  # noqa: E402
from imguard.methods import get_method  # noqa: E402
from imguard.models import load_autoencoder  # noqa: E402
from imguard.models.dlib_face import DlibPipeline  # noqa: E402
from imguard.runtime import set_threads  # noqa: E402
from transfer import write_rows  # noqa: E402


def with_feature_term(weight: float, layer: str) -> None:
    """Wrap the registered facelock method: its prepare records FaceNet's clean activations at
    ``layer``; its objective subtracts ``weight`` x their mean cosine to the protected ones."""
    m = get_method("facelock")
    prepare, objective = m.prepare, m.objective
    seen: list = []
    state: dict = {}

    def facenet(ctx):
        for member in ctx.embedder.members:
            if getattr(member, "name", "") == "facenet":
                return member
        raise SystemExit("this benchmark needs FaceNet among the attacked recognizers (strength high has it)")

    def prep(x, models, opts):
        ctx = prepare(x, models, opts)
        net = facenet(ctx).net
        if state.get("net") is not net:
            net_layer = getattr(net, layer, None)
            if net_layer is None:
                raise SystemExit(f"FaceNet has no layer {layer!r}; its children: {', '.join(n for n, _ in net.named_children())}")
            net_layer.register_forward_hook(lambda mod, inp, out: seen.append(out))
            state["net"] = net
        seen.clear()
        with torch.no_grad():
            ctx.embedder.embed_all(x)
        state["clean"] = seen[-1].detach().flatten(1)
        seen.clear()
        return ctx

    def obj(x_adv, ctx, step, steps):
        seen.clear()
        loss = objective(x_adv, ctx, step, steps)
        if seen and weight:
            ref = state["clean"]
            sims = [F.cosine_similarity(f.flatten(1), ref.expand(f.shape[0], -1), dim=1) for f in seen]
            loss = loss - weight * torch.stack(sims).mean(0)  # facelock maximises: lower feature similarity is better
        seen.clear()
        return loss

    object.__setattr__(m, "prepare", prep)
    object.__setattr__(m, "objective", obj)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", nargs="+", default=["sample1/0051_01", "sample2/0065_01"], help="names under --root (no .png)")
    ap.add_argument("--root", default=str(ROOT.parent / "shared/assets/faces/dev"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--layer", default="mixed_6a")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="bench/feature_term.json")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    with_feature_term(args.weight, args.layer)
    p = imguard.Protector(strength="high", check=False)
    judge, taesd = DlibPipeline(), load_autoencoder("taesd", "cpu")
    rows = []
    for name in args.faces:
        x = to_tensor(read_image(str(Path(args.root) / f"{name}.png")))[0]
        x = resize_image(x, working_shape(*x.shape[-2:], args.size))
        ref = judge.descriptors(x)[0]
        t0 = time.perf_counter()
        r = p.protect(x, steps=args.steps, seed=args.seed, return_result=True)
        secs = time.perf_counter() - t0
        y = r.image[None] if r.image.dim() == 3 else r.image
        with torch.no_grad():
            trip = taesd.decode(taesd.encode(y)).clamp(0, 1)
        rows.append({"face": name, "steps": args.steps, "weight": args.weight, "layer": args.layer, "seconds": round(secs, 1),
                     "similarity_after": round(float(r.similarity[0]), 4),
                     "dlib_taesd": round(DlibPipeline.distance(ref, judge.descriptors(trip)[0]), 4),
                     "psnr": round(r.visibility[0].psnr, 2), "ssim": round(r.visibility[0].ssim, 4), "invisible": r.visibility[0].invisible})
        print(json.dumps(rows[-1]), flush=True)
    write_rows(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
