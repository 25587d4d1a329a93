"""Does the protection change the colour of the eyes? The mean colour of each iris, before and after.

    python benchmarks/eye_colour.py --faces ../shared/assets/faces/dev/sample1/0051_01.png ... \
        --protected OUT/protected/high_size=512_seed=0 --size 512

For each face (the clean photo resized to ``--size`` square as ``benchmarks/visibility.py`` does,
and ``PROTECTED/STEM.png``): MTCNN's eye landmarks on the clean face; around each, a disk of radius
0.12 times the distance between the eyes (the iris and a little of the eye white); the change of
the disk's mean colour in CIE Lab, Delta E 1976 (about 2.3 is a just-noticeable difference of
colour side by side), and its chroma part (a* and b* only). JPEG-90 of the clean face is measured
the same way, for scale. The gate's measures (PSNR, SSIM, flat-region change) do not see this:
the iris is textured, small, and changes in colour more than in luminance.

Prints a Markdown table and writes ``--out`` (JSON) when given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from imguard.io import read_image, to_tensor  # noqa: E402
from imguard.models.detection import FaceDetector  # noqa: E402
from imguard.runtime import set_threads  # noqa: E402
from imguard.transforms import jpeg_pil  # noqa: E402

#: the disk's radius, as a share of the distance between MTCNN's two eye landmarks
IRIS_RADIUS = 0.12


def lab(x01: torch.Tensor) -> torch.Tensor:
    """[1,3,H,W] sRGB in [0,1] -> [H,W,3] CIE Lab (8-bit quantised first, as a saved image is)."""
    from kornia.color import rgb_to_lab

    q = (x01.clamp(0, 1) * 255).round() / 255
    return rgb_to_lab(q)[0].permute(1, 2, 0)


def eye_shift(clean: torch.Tensor, other: torch.Tensor, landmarks: np.ndarray) -> list[tuple[float, float]]:
    """Per eye: (Delta E 1976 of the disk's mean Lab colour, its chroma part)."""
    H, W = clean.shape[-2:]
    d = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    r = IRIS_RADIUS * d
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    a, b = lab(clean), lab(other)
    out = []
    for ex, ey in landmarks[:2]:
        m = (xx - float(ex)) ** 2 + (yy - float(ey)) ** 2 <= r * r
        dm = a[m].mean(0) - b[m].mean(0)
        out.append((float(dm.norm()), float(dm[1:].norm())))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", nargs="+", required=True, help="the clean face photos")
    ap.add_argument("--protected", required=True, help="folder with STEM.png for each face (benchmarks/visibility.py's OUT/protected/CONFIG)")
    ap.add_argument("--size", type=int, required=True, help="the size the faces were protected at")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    det = FaceDetector("cpu")
    rows = []
    for face in args.faces:
        stem = Path(face).stem
        png = Path(args.protected) / f"{stem}.png"
        if not png.exists():
            raise SystemExit(f"no protected image for {face}: {png} does not exist")
        x = torch.nn.functional.interpolate(to_tensor(read_image(face))[0], size=(args.size, args.size), mode="bilinear", antialias=True)
        xp = to_tensor(read_image(str(png)))[0]
        if tuple(xp.shape[-2:]) != tuple(x.shape[-2:]):
            raise SystemExit(f"{png} is {tuple(xp.shape[-2:])}, not --size {args.size}")
        f = det.detect(x)[0]
        if f is None:
            print(f"{stem}: no face found in the clean image; skipped", file=sys.stderr)
            continue
        lm = np.asarray(f.landmarks, np.float32)
        prot, jpg = eye_shift(x, xp, lm), eye_shift(x, jpeg_pil(x, 90), lm)
        rows.append({"face": stem, "protected": prot, "jpeg90": jpg})
    print("| face | Delta E, eye 1 / eye 2 (chroma part) | JPEG-90 of the clean face, for scale |")
    print("| --- | --- | --- |")
    for r in rows:
        cell = lambda v: " / ".join(f"{e:.2f} ({c:.2f})" for e, c in v)  # noqa: E731
        print(f"| {r['face']} | {cell(r['protected'])} | {cell(r['jpeg90'])} |")
    if rows:
        allp = [e for r in rows for e, _ in r["protected"]]
        allj = [e for r in rows for e, _ in r["jpeg90"]]
        print(f"\nmean Delta E {np.mean(allp):.2f} (max {np.max(allp):.2f}) over {len(allp)} eyes; JPEG-90 {np.mean(allj):.2f} (max {np.max(allj):.2f})")
    if args.out:
        Path(args.out).write_text(json.dumps({"size": args.size, "protected": args.protected, "iris_radius": IRIS_RADIUS, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
