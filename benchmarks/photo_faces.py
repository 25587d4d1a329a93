"""Whole photos: is the face cropped out of a protected photo as protected as a face crop
protected on its own?

    python benchmarks/photo_faces.py --photos ../shared/assets/photos --out OUT --strength medium

For each photo: (a) the whole photo protected as the CLI does it (faces first: every face
region protected at its own working size and blended back; ``--rest keep`` leaves the rest of
the photo as it is, which changes nothing inside the face region but saves the whole-photo
pass), then the face region cropped out of the result; (b) the same face region cropped from
the clean photo and protected on its own; (c) the whole photo protected at the working size
(512, ``faces_first=False``: what imguard did before), then cropped. Both crops, and the clean crop, go through a TAESD
round trip (the SD 1.x latent space) and are judged against the clean crop by every recognizer
the preset did not attack (dlib always). Prints a Markdown table; writes report.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import imguard  # noqa: E402
from imguard.io import read_image, resize_image, to_tensor  # noqa: E402
from imguard.metrics import IdentityMetric  # noqa: E402
from imguard.models import FaceDetector, load_autoencoder, load_face_recognizer  # noqa: E402
from imguard.photo import face_regions  # noqa: E402
from imguard.request import resolve  # noqa: E402

JUDGES = ("sface", "facenet", "mobilefacenet", "faceres", "dlib")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared/assets/photos")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--strength", default="medium")
    ap.add_argument("--rest", default="keep", choices=["keep", "protect"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args(argv)

    attacked = set(resolve(strength=args.strength).recognizer.split(","))
    judges = {j: load_face_recognizer(j) for j in JUDGES if j not in attacked}
    det = FaceDetector("cpu")
    ae = load_autoencoder("taesd")
    p = imguard.Protector(strength=args.strength, check=False)
    rows = []
    for path in sorted(args.photos.glob("*.jpg")):
        x, _ = to_tensor(read_image(path))
        regions = face_regions(x, p.models.detector)
        if not regions:
            print(f"{path.name}: no face found", flush=True)
            continue
        r = regions[0]
        kw = dict(seed=args.seed, steps=args.steps)
        photo = p.protect(x, rest=args.rest, faces_first=True, **kw)
        crop_clean = x[..., r.y0 : r.y1, r.x0 : r.x1]
        crop_alone = p.protect(crop_clean, faces_first=False, **kw)
        crop_photo = photo[..., r.y0 : r.y1, r.x0 : r.x1]
        whole = p.protect(x, faces_first=False, **kw)  # the whole photo at the working size (before faces first)
        crop_whole = whole[..., r.y0 : r.y1, r.x0 : r.x1]
        size = imguard.io.working_shape(*crop_clean.shape[-2:], 512)
        row = {"photo": path.name, "photo_size": list(x.shape[-2:]), "face_region": [r.x0, r.y0, r.x1, r.y1]}
        with torch.no_grad():
            trips = {k: ae.decode(ae.encode(resize_image(v, size))).clamp(0, 1)
                     for k, v in (("clean", crop_clean), ("photo", crop_photo), ("alone", crop_alone), ("whole", crop_whole))}
        ref_img = resize_image(crop_clean, size)
        for j, rec in judges.items():
            m = IdentityMetric(rec, det)
            ref, _ = m.embed(ref_img)
            for k, t in trips.items():
                sim = float(m.similarity(ref, t)[0][0])
                row[f"{j}:{k}"] = None if sim != sim else round(sim, 4)
            row[f"{j}:threshold"] = float(m.threshold)
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps({"command": " ".join(sys.argv), "strength": args.strength,
                                                      "rest": args.rest, "rows": rows}, indent=1))
    lines = ["| photo | judge (not attacked) | threshold | clean crop | faces first: crop of the protected photo | "
             "crop protected alone | whole photo at the working size, then cropped |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        for j in judges:
            f = lambda v: "no face" if v is None else f"{v:.3f}"  # noqa: E731
            lines.append(f"| {row['photo']} | {j} | {row[j + ':threshold']:.3f} | {f(row[j + ':clean'])} | "
                         f"{f(row[j + ':photo'])} | {f(row[j + ':alone'])} | {f(row[j + ':whole'])} |")
    md = "\n".join(lines) + "\n"
    (args.out / "report.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
