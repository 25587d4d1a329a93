"""The fast mode, measured: latency, effect and visibility.

    python benchmarks/fast.py --faces ../shared/assets/faces/wild --photos ../shared/assets/photos \
        --limit 6 --configs fast,fast+refine10 --out bench/fast

Latency: seconds per image of ``Protector.protect`` with the models already loaded (one
warm-up call first), face detection included, on faces resized to ``--size`` (512) and on the
whole photos at their own size. Effect: dlib's full pipeline (its HOG detector, 5-point shape
predictor and ResNet, never attacked) compares the protected image, after a TAESD round trip
(SD 1.x latent space) and after JPEG-75 then TAESD, with the clean image; "hidden" = Euclidean
distance >= 0.6 or no face found (a face dlib does not find in the clean image is not judged). Visibility: PSNR,
SSIM and the flat-region change of :mod:`imguard.visibility`, and the invisibility gate.
Other strengths (low, medium, high) may be named in ``--configs`` too (slow on a CPU), and
``none``: the clean image, whose row says what the round trips alone cost dlib. ``NAME@key=value``
overrides an option (numbers), e.g. ``fast@texture_scale=2@psnr_floor=36+refine10``.
``--megapixels 12`` also times the first photo enlarged (bicubic) to that many megapixels (the
issue's "12-megapixel photo with one face"; its visibility is measured, its effect is the
photo's); ``--repeat N`` times each photo N times in the fast mode (without refine) and reports
the median run (a shared or virtual CPU varies by 20-30 % from run to run). ``--weights FILE`` measures a file from ``imguard train-fast`` instead of the shipped
one; ``--score image`` scores the assignment without the autoencoder. For the fast mode each row
keeps the seconds of each step (detect, assign, warp, map, finalize, gate).
Writes OUT/report.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import imguard  # noqa: E402
from imguard.io import read_image, resize_image, to_tensor, working_shape  # noqa: E402
from imguard.models import load_autoencoder  # noqa: E402
from imguard.models.dlib_face import DlibPipeline  # noqa: E402
from imguard.runtime import set_threads  # noqa: E402
from imguard.transforms import jpeg_pil  # noqa: E402
from imguard.visibility import measure  # noqa: E402


def parse(text: str) -> tuple[str, dict]:
    """'fast' -> ('fast', {}); 'fast+refine10' -> ('fast', {'refine': 10}); 'high' -> ('high', {});
    'fast@texture_scale=2@psnr_floor=36+refine10' -> ('fast', {'texture_scale': 2.0, 'psnr_floor': 36.0, 'refine': 10})."""
    head, _, extra = text.partition("+")
    name, *pairs = head.split("@")
    opts: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--configs: {pair!r} in {text!r} is not KEY=VALUE")
        opts[key] = float(value)
    if extra.startswith("refine"):
        opts["refine"] = int(extra[len("refine"):])
    return name, opts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", default=str(ROOT.parent / "shared/assets/faces/wild"))
    ap.add_argument("--photos", default=str(ROOT.parent / "shared/assets/photos"))
    ap.add_argument("--limit", type=int, default=6, help="faces from --faces (sorted by name)")
    ap.add_argument("--size", type=int, default=512, help="faces are resized to this long side")
    ap.add_argument("--configs", default="fast,fast+refine10")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--out", default="bench/fast")
    ap.add_argument("--megapixels", type=float, default=12.0, help="also time the first photo enlarged to this many megapixels (0: no)")
    ap.add_argument("--weights", default=None, help="fast-mode weights file (default: the shipped one)")
    ap.add_argument("--score", default="image", choices=["image", "roundtrip"], help="how the fast mode's assignment scores")
    ap.add_argument("--repeat", type=int, default=1, help="time each photo this many times and keep the median run (its steps too); "
                    "the fast mode without refine only, the optimising runs once")
    ap.add_argument("--repeat-faces", action="store_true", help="--repeat applies to the faces as well")
    args = ap.parse_args(argv)
    threads = set_threads(args.threads)
    dev = torch.device(args.device)

    items = []
    for p in sorted(Path(args.faces).glob("*.png"))[: args.limit]:
        x = to_tensor(read_image(str(p)))[0]
        items.append(("face", p.stem, resize_image(x, working_shape(*x.shape[-2:], args.size))))
    if args.photos:
        for p in sorted(Path(args.photos).glob("*.jpg")):
            items.append(("photo", p.stem, to_tensor(read_image(str(p)))[0]))
        if args.megapixels > 0 and items and items[-1][0] == "photo":
            first = next(it for it in items if it[0] == "photo")
            h, w = first[2].shape[-2:]
            k = (args.megapixels * 1e6 / (h * w)) ** 0.5
            big = torch.nn.functional.interpolate(first[2], size=(round(h * k), round(w * k)), mode="bicubic").clamp(0, 1)
            items.append((f"photo-{args.megapixels:g}MP", first[1], big))

    judge = DlibPipeline()  # dlib's own detector, 5-point shape predictor, ResNet and Euclidean 0.6
    taesd = load_autoencoder("taesd", dev)

    def trip(img):
        img = img[..., : img.shape[-2] // 8 * 8, : img.shape[-1] // 8 * 8]  # the autoencoder takes multiples of 8
        with torch.no_grad():
            return taesd.decode(taesd.encode(img)).clamp(0, 1)

    rows = []
    for text in args.configs.split(","):
        name, opts = parse(text)
        if name == "none":  # the reference: the clean image itself (what the round trip alone costs dlib)
            p = type("Clean", (), {"protect": staticmethod(lambda x, **kw: (x * 255).round() / 255)})()
        else:
            p = imguard.Protector(strength=name, device=dev, check=False)
        if name == "fast":
            from imguard.fast.protect import fast_for

            fast_for(p, args.weights).score = args.score
            opts = {**opts, "fast_weights": args.weights}
        p.protect(items[0][2], seed=args.seed, **opts)  # loads every model; not timed
        for kind, stem, x in items:
            if kind.endswith("MP") and name != "fast":
                continue  # the enlarged photo times the fast mode only
            times, steps = [], []
            repeat = args.repeat if name == "fast" and not opts.get("refine") else 1  # the optimising runs once
            for _ in range(repeat if kind != "face" or args.repeat_faces else 1):
                t0 = time.perf_counter()
                out = p.protect(x, seed=args.seed, **opts)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
                if name == "fast":
                    steps.append(dict(fast_for(p, args.weights).last_timings))
            order = sorted(range(len(times)), key=times.__getitem__)
            mid = order[(len(times) - 1) // 2]  # the median run (the lower one of an even count)
            x, out = x.to(dev), out.to(dev)
            row = {"config": text, "kind": kind, "image": stem, "size": list(x.shape[-2:]), "seconds": round(times[mid], 3)}
            if len(times) > 1:
                row["seconds_each"] = [round(t, 3) for t in times]
            if name == "fast":
                row["steps"] = steps[mid]
            v = measure(x, out)[0]
            row.update(psnr=round(v.psnr, 2), ssim=round(v.ssim, 4), flat=round(v.flat, 3), invisible=v.invisible)
            if kind.endswith("MP"):  # timed and measured; its effect is the photo's
                row["taesd"] = row["jpeg75->taesd"] = None
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            ref = judge.descriptors(x.cpu())[0]  # None: dlib finds no face in the clean image, not judged
            for cname, img in (("taesd", trip(out)), ("jpeg75->taesd", trip(jpeg_pil(out, 75)))):
                d = DlibPipeline.distance(ref, judge.descriptors(img.cpu())[0])
                row[cname] = None if ref is None else {"distance": round(d, 4) if d != float("inf") else None,
                                                       "hidden": d >= DlibPipeline.threshold}
            rows.append(row)
            print(json.dumps(row), flush=True)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"date": dt.datetime.now().isoformat(timespec="seconds"), "command": " ".join(["python"] + sys.argv),
            "threads": threads, "torch": torch.__version__, "platform": platform.platform(), "judge": "dlib's full pipeline (HOG detector, 5-point shape predictor, ResNet, Euclidean)",
            "dlib_threshold": DlibPipeline.threshold, "weights": args.weights or "shipped", "score": args.score}
    (out_dir / "report.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    lines = ["| config | images | s/image (median) | hidden after TAESD | hidden after JPEG-75 -> TAESD | dlib distance after TAESD (mean) "
             "| PSNR (min) | SSIM (min) | flat (max) | invisible |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["config"], r["kind"]), []).append(r)
    for (cfg, kind), rs in groups.items():
        secs = sorted(r["seconds"] for r in rs)
        judged = [r for r in rs if r["taesd"] is not None]
        h1 = sum(r["taesd"]["hidden"] for r in judged)
        h2 = sum(r["jpeg75->taesd"]["hidden"] for r in judged)
        dist = [r["taesd"]["distance"] for r in judged if r["taesd"]["distance"] is not None]
        mean = f"{sum(dist) / len(dist):.2f}" if dist else "-"
        effect = (f"{h1}/{len(judged)} | {h2}/{len(judged)} | {mean}") if judged else "(timing only) | | "
        lines.append(f"| {cfg} | {len(rs)} {kind}{'s' if len(rs) > 1 else ''} | {secs[len(secs) // 2]:.2f} | {effect} "
                     f"| {min(r['psnr'] for r in rs):.1f} | {min(r['ssim'] for r in rs):.3f} | {max(r['flat'] for r in rs):.2f} "
                     f"| {sum(r['invisible'] for r in rs)}/{len(rs)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
