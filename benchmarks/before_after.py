"""The README's before/after picture: the sample portrait, clean, protected the old visible way,
and protected by a preset as it ships, zoomed on a smooth background and on the face.

    python benchmarks/before_after.py --out docs/img/visibility-before-after.png --threads 2

The "before" column is ``medium`` as it shipped until 2026-12-06 (:data:`BEFORE`: ``budget="linf"``,
every pixel may move by eps as the papers do, eps 6, FaceLock's whole-photo feature term and its
schedule, both autoencoders): how imguard looked before the perceptual budget. The "now" column
is ``medium`` as it ships. Each column is labelled with its measured visibility
(:func:`imguard.visibility`). Seeded; the sample ships with imguard, so this runs in a fresh clone.

    python benchmarks/before_after.py --strengths high,max --out docs/img/high-and-max.png --threads 2

draws one column per strength as it ships instead, labelled with the added texture too
(:func:`imguard.visibility.added_texture`): what ``max`` costs to the eye next to ``high``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from PIL import Image, ImageDraw  # noqa: E402

import imguard  # noqa: E402
from imguard.io import to_tensor  # noqa: E402
from imguard.runtime import set_threads  # noqa: E402
from imguard.visibility import added_texture  # noqa: E402

#: (left, top, right, bottom) of the 256 px sample: a smooth background beside the flag, the face
CROPS = ((0, 0, 80, 80), (80, 40, 160, 120))
#: ``medium`` until 2026-12-06: its models and options then, FaceLock's defaults for the rest
BEFORE_MODELS = {"face_model": "sface,mobilefacenet", "vae": "taesd,taef2"}
BEFORE = {"budget": "linf", "gate": False, "eps": 6, "steps": 100, "region": "image", "fr_start": 0.35, "lambda_fe": 1.0,
          "lambda_direct": 0.0, "momentum": 0.9, "diversity": 0.1, "ti_kernel": 5}


def label_of(v, texture: float | None = None) -> str:
    extra = "" if texture is None else f",\nadded texture {texture:.2f}/255"
    return f"PSNR {v.psnr:.1f}, SSIM {v.ssim:.3f}, flat {v.flat:.2f}/255{extra}"


def figure(columns: list[tuple[str, Image.Image]], crops=CROPS, zoom: int = 3, gap: int = 10, head: int = 34) -> Image.Image:
    """One column per (label, image): each crop zoomed ``zoom`` times (nearest), labels on top."""
    cw = max(c[2] - c[0] for c in crops) * zoom
    ch = [(c[3] - c[1]) * zoom for c in crops]
    fig = Image.new("RGB", (len(columns) * (cw + gap) - gap, head + sum(ch) + gap * (len(crops) - 1)), "white")
    draw = ImageDraw.Draw(fig)
    for j, (label, img) in enumerate(columns):
        x0 = j * (cw + gap)
        draw.multiline_text((x0, 2), label, fill="black", spacing=2)
        y0 = head
        for c, h in zip(crops, ch):
            fig.paste(img.crop(c).resize((cw, h), Image.NEAREST), (x0, y0))
            y0 += h + gap
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="bench/visibility-before-after.png")
    ap.add_argument("--strengths", default=None,
                    help="instead of before/now: one column per strength as it ships, e.g. high,max (labels add the added texture)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    clean = Image.open(ROOT / "src/imguard/samples/astronaut.png").convert("RGB")
    columns = [("original (public-domain sample)", clean)]
    if args.strengths:
        runs = tuple((f"{s} as it ships", imguard.Protector(strength=s, check=False), {}) for s in args.strengths.split(","))
    else:
        runs = (("medium until 2026-12-06: budget linf, eps 6", imguard.Protector(strength="medium", check=False, **BEFORE_MODELS), BEFORE),
                ("medium now: perceptual budget", imguard.Protector(strength="medium", check=False), {}))
    for name, p, opts in runs:
        t0 = time.perf_counter()
        r = p.protect(clean, seed=args.seed, return_result=True, **opts)
        v = r.visibility[0]
        tex = float(added_texture(to_tensor(clean)[0], to_tensor(r.image)[0])[0]) if args.strengths else None
        print(f"{name}: {label_of(v, tex)} ({time.perf_counter() - t0:.0f} s)", flush=True)
        columns.append((f"{name}\n{label_of(v, tex)}", r.image))  # a PIL image in, a PIL image out
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure(columns, head=48 if args.strengths else 34).save(out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
