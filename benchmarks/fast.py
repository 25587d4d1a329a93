"""The fast mode, measured: latency, effect and visibility.

    python benchmarks/fast.py --faces ../shared/assets/faces/wild --photos ../shared/assets/photos \
        --limit 6 --configs fast,fast+refine10 --out bench/fast

Latency: seconds per image of ``Protector.protect`` with the models already loaded (one
warm-up call first), face detection included, on faces resized to ``--size`` (512) and on the
whole photos at their own size. Effect: dlib's ResNet (never attacked) compares the protected
image, after a TAESD round trip (SD 1.x latent space) and after JPEG-75 then TAESD, with the
clean image; "hidden" = similarity below dlib's threshold or no face found. Visibility: PSNR,
SSIM and the flat-region change of :mod:`imguard.visibility`, and the invisibility gate.
Other strengths (low, medium, high) may be named in ``--configs`` too (slow on a CPU).
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
from imguard.models import FaceDetector, FaceEmbedder, load_autoencoder, load_face_recognizer  # noqa: E402
from imguard.runtime import set_threads  # noqa: E402
from imguard.transforms import jpeg_pil  # noqa: E402
from imguard.visibility import measure  # noqa: E402


def parse(text: str) -> tuple[str, dict]:
    """'fast' -> ('fast', {}); 'fast+refine10' -> ('fast', {'refine': 10}); 'high' -> ('high', {})."""
    name, _, extra = text.partition("+")
    opts = {"refine": int(extra[len("refine"):])} if extra.startswith("refine") else {}
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

    judge = load_face_recognizer("dlib", dev)
    detector = FaceDetector(dev)
    taesd = load_autoencoder("taesd", dev)

    @torch.no_grad()
    def embed(img):
        f = detector.detect(img)[0]
        return None if f is None else FaceEmbedder(judge, [f]).embed_all(img)[0][0]

    def trip(img):
        img = img[..., : img.shape[-2] // 8 * 8, : img.shape[-1] // 8 * 8]  # the autoencoder takes multiples of 8
        with torch.no_grad():
            return taesd.decode(taesd.encode(img)).clamp(0, 1)

    rows = []
    for text in args.configs.split(","):
        name, opts = parse(text)
        p = imguard.Protector(strength=name, device=dev, check=False)
        p.protect(items[0][2], seed=args.seed, **opts)  # loads every model; not timed
        for kind, stem, x in items:
            t0 = time.perf_counter()
            out = p.protect(x, seed=args.seed, **opts)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            x, out = x.to(dev), out.to(dev)
            ref = embed(x)
            row = {"config": text, "kind": kind, "image": stem, "size": list(x.shape[-2:]), "seconds": round(secs, 3)}
            for cname, img in (("taesd", trip(out)), ("jpeg75->taesd", trip(jpeg_pil(out, 75)))):
                e = embed(img)
                sim = None if (ref is None or e is None) else float((e * ref).sum())
                row[cname] = None if ref is None else {"similarity": sim, "hidden": sim is None or sim < float(judge.threshold)}
            v = measure(x, out)[0]
            row.update(psnr=round(v.psnr, 2), ssim=round(v.ssim, 4), flat=round(v.flat, 3), invisible=v.invisible)
            rows.append(row)
            print(json.dumps(row), flush=True)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"date": dt.datetime.now().isoformat(timespec="seconds"), "command": " ".join(["python"] + sys.argv),
            "threads": threads, "torch": torch.__version__, "platform": platform.platform(), "dlib_threshold": float(judge.threshold)}
    (out_dir / "report.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    lines = ["| config | images | s/image (median) | hidden after TAESD | hidden after JPEG-75 -> TAESD | PSNR (min) | SSIM (min) | flat (max) | invisible |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["config"], r["kind"]), []).append(r)
    for (cfg, kind), rs in groups.items():
        secs = sorted(r["seconds"] for r in rs)
        judged = [r for r in rs if r["taesd"] is not None]
        h1 = sum(r["taesd"]["hidden"] for r in judged)
        h2 = sum(r["jpeg75->taesd"]["hidden"] for r in judged)
        lines.append(f"| {cfg} | {len(rs)} {kind}{'s' if len(rs) > 1 else ''} | {secs[len(secs) // 2]:.2f} | {h1}/{len(judged)} | {h2}/{len(judged)} "
                     f"| {min(r['psnr'] for r in rs):.1f} | {min(r['ssim'] for r in rs):.3f} | {max(r['flat'] for r in rs):.2f} "
                     f"| {sum(r['invisible'] for r in rs)}/{len(rs)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
