"""What each point of visibility buys: identity lost vs how visible the protection is.

    python benchmarks/visibility.py --faces ../shared/assets/faces/dev --out bench/visibility \
        --configs low,medium,high,high@budget=linf --size 256 --seed 0

For every configuration (the names of benchmarks/transfer.py: a preset, METHOD-FACES-VAES,
NAME@key=value overrides, e.g. ``high@jnd_scale=1.5`` or ``high@budget=linf``) each face is
protected once (kept under OUT/protected/, so a stopped run resumes), then:

* its **visibility** against the clean face (:mod:`imguard.visibility`: PSNR, SSIM, LPIPS
  where its weights are cached, the flat-region change) and whether it passes the gate
  (flat <= 1.0/255, PSNR >= 36 dB, SSIM >= 0.95);
* whether the identity is **lost** for judges the configuration did not attack, under three
  conditions: a TAESD round trip (SD 1.x latent space, what InstructPix2Pix sees), JPEG-75
  then TAESD, and a TAEF2 round trip (an autoencoder not attacked, where the configuration
  left TAEF2 out; marked '*' where it attacked it). Judges: dlib's full pipeline (its own HOG
  detector, 5-point shape predictor, Euclidean 0.6; never attacked by imguard) and each
  offline recognizer the configuration did not attack. A face dlib's detector does not find
  in the clean photo is left out of dlib's count; one it no longer finds after the condition
  counts as lost.

Writes report.json, report.md (the table) and curve.png (identity lost by dlib after TAESD vs
the flat-region change and PSNR, one point per configuration).

    python benchmarks/visibility.py --explain ../shared/assets/faces/dev/sample1/0051_01.png

prints, for each term of FaceLock's objective (``high``'s models), the share of its low-passed
gradient energy that falls outside the face box: where each term would paint.

    python benchmarks/visibility.py --amplify OUT/protected/CONFIG_DIR 256 OUT/amplified FACES...

walks each kept face's optimised change up (x1 ... x3) and tabulates and plots dlib's distance
after TAESD against the visibility: what each point of visibility would buy, past the gate too.

    python benchmarks/visibility.py --confine OUT/protected/CONFIG_DIR 256 FACES...

keeps each kept face's change only inside its face box widened 1.3, 1.6 and 2 times (what
``extent="face"`` allows) and tabulates the same: what the change outside the face buys.

    python benchmarks/visibility.py --saturated 512 1.4 ../shared/assets/faces/wild ../shared/assets/faces/dev

the worst case of the perceptual budget at that size and ``jnd_scale``: every pixel changed by
its whole radius (see :func:`saturated`), per face, against the gate.

    python benchmarks/visibility.py --texture 256 KEPT_DIR ../shared/assets/faces/dev/sample1/0051_01.png ...

per face, :func:`imguard.visibility.added_texture` (what the gate misses: texture added where
the photo is smooth) and the gate's measures, for references (JPEG-90, JPEG-75, uniform noise of
+-2/255 and +-4/255) and for every protected face kept in KEPT_DIR whose name ends with the
face's (``benchmarks/objective.py --keep``'s ``CONFIG-FOLDER_FACE.png``; ``-`` for none).
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import imguard  # noqa: E402
from imguard.io import read_image, save_image, to_tensor, to_uint8_hwc  # noqa: E402
from imguard.models import FaceDetector, FaceEmbedder, load_autoencoder, load_face_recognizer  # noqa: E402
from imguard.models.dlib_face import DlibPipeline  # noqa: E402
from imguard.transforms import get_purification, jpeg_pil  # noqa: E402
from imguard.visibility import GATE, added_texture, measure  # noqa: E402
from transfer import attacked_names, kept_dir, load_faces, parse_config, parser  # noqa: E402

CONDITIONS = ("taesd", "jpeg75->taesd", "taef2")
OFFLINE_JUDGES = ("sface", "facenet", "mobilefacenet", "faceres")


def protect_all(cfg: dict, x: torch.Tensor, stems: list[str], keep: Path, size: int, seed: int, steps, dev) -> tuple[torch.Tensor, list[float]]:
    """Each face protected once (kept as PNG + seconds); a rerun reuses what was kept."""
    keep.mkdir(parents=True, exist_ok=True)
    p = None
    outs, secs = [], []
    for i, stem in enumerate(stems):
        png, meta = keep / f"{stem}.png", keep / f"{stem}.json"
        if png.exists() and meta.exists():
            outs.append(to_tensor(read_image(png))[0])
            secs.append(json.loads(meta.read_text())["seconds"])
            continue
        if p is None:
            p = imguard.Protector(cfg["method"], strength=cfg["strength"], device=dev, vae=cfg["vae"],
                                  face_model=cfg["face_model"], working_size=size, check=False)
        opts = dict(cfg["options"], **({"steps": steps} if steps else {}))
        t0 = time.perf_counter()
        res = p.protect(x[i : i + 1], seed=seed, return_result=True, names=[stem], **opts)
        secs.append(time.perf_counter() - t0)
        outs.append(res.image)
        save_image(Image.fromarray(to_uint8_hwc(res.image[0])), png, overwrite=True)
        meta.write_text(json.dumps({"seconds": round(secs[-1], 2), "options": dict(res.options)}, default=str))
        print(f"[{cfg['label']}] {stem}: {secs[-1]:.0f} s; {res.visibility[0].line()}", flush=True)
    return torch.cat(outs), secs


def explain(face: Path, size: int = 256, region: str = "image") -> dict[str, float]:
    """Share of each FaceLock term's low-passed gradient energy (Gaussian sigma 3) outside the
    face box, on ``face`` at ``size`` px with ``high``'s models (the image's own share of
    background is returned as ``"background area"``)."""
    from kornia.filters import gaussian_blur2d

    from imguard.engine import diverse_input
    from imguard.methods import get_method
    from imguard.methods.facelock import _face_weight
    from imguard.request import resolve

    x = torch.nn.functional.interpolate(to_tensor(read_image(face))[0], size=(size, size), mode="bilinear", antialias=True)
    p = imguard.Protector(strength="high", working_size=size, check=False)
    models = p.load_models()
    req = resolve(strength="high", region=region)
    m = get_method(req.method)
    prep = {**req.options, "names": None, "cache": True}
    torch.manual_seed(0)
    ctx = m.prepare(x, models, prep)
    outside = 1 - _face_weight(ctx.faces, x, scale=1.0)
    ae = ctx.autoencoders[0]

    def rt(xi):
        return ae.decode(ae.encode(xi))

    def share(fn, at=x, diversity=False, draws=6) -> float:
        g = torch.zeros_like(x)
        gen = torch.Generator().manual_seed(0)
        for _ in range(draws if diversity else 1):
            xa = at.clone().requires_grad_(True)
            loss = fn(diverse_input(xa, 0.1, gen) if diversity else xa).sum()
            g += torch.autograd.grad(loss, [xa])[0]
        e = gaussian_blur2d(g, (9, 9), (3.0, 3.0)).pow(2).sum(1, keepdim=True)
        return round(float((e * outside).sum() / e.sum()), 3)

    noisy = (x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 4 / 255).clamp(0, 1)
    out = {
        "identity, after the round trip": share(lambda xi: -ctx.cos_to_clean(rt(xi))),
        "identity, with input diversity": share(lambda xi: -ctx.cos_to_clean(rt(xi)), diversity=True),
        "identity on the photo itself": share(lambda xi: -ctx.cos_to_clean(xi)),
        "decoy identity": share(lambda xi: ctx.embedder.similarity(rt(xi), ctx.emb_decoy)),
        "feature distance": share(lambda xi: ctx.feature_distance(rt(xi))),
        # the latent push is 0 with a 0 gradient at the clean image: measured at a random start
        "latent push (at a random start)": share(
            lambda xi: imguard.models.features.spatial_mean((ae.encode(xi).float() - ctx.z_clean[0].float()) ** 2, ctx.region_weight),
            at=noisy),
        "background area": round(float(outside.mean()), 3),
    }
    return out


def saturated(paths: list[Path], size: int, scale: float, eps: float = 8.0, seed: int = 0) -> list[dict]:
    """The worst a protection under the perceptual budget can look, per face at ``size`` px: a
    change that fills every pixel's radius (random signs, projected and quantized as the engine
    does). PSNR can go no lower than this for any optimiser; SSIM and the flat-region change of
    real runs (whose signs follow gradients) measured better than this on the tuning faces."""
    from imguard.budget import Budget, quantize

    rows = []
    g = torch.Generator().manual_seed(seed)
    for path in paths:
        x = torch.nn.functional.interpolate(to_tensor(read_image(path))[0], size=(size, size), mode="bilinear", antialias=True)
        x = (x * 255).round() / 255
        b = Budget.perceptual(x, eps, scale)
        d = b.project(torch.where(torch.rand(x.shape, generator=g) > 0.5, 1.0, -1.0) * eps / 255)
        v = measure(x, quantize(x, (x + d).clamp(0, 1), b))[0]
        rows.append({"face": Path(path).stem, **v.as_dict()})
    return rows


def texture_rows(paths: list[Path], size: int, kept: Path | None = None, seed: int = 0) -> list[dict]:
    """Per face at ``size`` px (resized as :func:`transfer.load_faces` does): the added texture and
    the gate's measures of the references and of each kept protected face (see the module doc)."""
    def levels(t):
        return (t.clamp(0, 1) * 255).round() / 255

    rows = []
    g = torch.Generator().manual_seed(seed)
    for path in paths:
        stem, x = load_faces([path], size, None)
        stem = stem[0]
        cands = {"jpeg90": jpeg_pil(x, 90), "jpeg75": jpeg_pil(x, 75),
                 "noise2": levels(x + (torch.rand(x.shape, generator=g) * 4 - 2) / 255),
                 "noise4": levels(x + (torch.rand(x.shape, generator=g) * 8 - 4) / 255)}
        for f in sorted(kept.glob(f"*{stem}.png")) if kept else []:
            base = f.stem[: -len(stem)].rstrip("_")  # CONFIG-FOLDER_ or CONFIG-
            name = base[:-1] if base.endswith("-") else base.rsplit("-", 1)[0]
            cands[name or kept.name] = to_tensor(read_image(f))[0]  # STEM.png, as protect_all keeps them
        for name, y in cands.items():
            v = measure(x, y)[0]
            rows.append({"face": stem, "change": name, "texture": round(float(added_texture(x, y)[0]), 3),
                         "psnr": round(v.psnr, 2), "ssim": round(v.ssim, 4), "flat": round(v.flat, 3), "invisible": v.invisible})
    return rows


@torch.no_grad()
def conditions(aes: dict, img: torch.Tensor, dev="cpu") -> dict[str, torch.Tensor]:
    """:data:`CONDITIONS` of ``img`` (on the CPU): a TAESD round trip, JPEG-75 then TAESD, a
    TAEF2 round trip (``aes``: {"taesd": ..., "taef2": ...} on ``dev``)."""
    def rt(a, y):
        return aes[a].decode(aes[a].encode(y.to(dev))).clamp(0, 1).cpu()
    return {"taesd": rt("taesd", img), "jpeg75->taesd": rt("taesd", get_purification("jpeg75")(img)), "taef2": rt("taef2", img)}


#: the factors ``--amplify`` walks: the optimised change as it is, and larger
AMPLIFY = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)


def amplified(kept: Path, paths: list[Path], size: int, factors=AMPLIFY) -> list[dict]:
    """What each point of visibility buys, on one optimised direction per face: each kept
    protected face (``kept``/STEM.png, as :func:`protect_all` keeps them) has its change
    amplified by each factor (clipped to [0,1], quantized to 8 bits); per factor, its
    visibility and dlib's full-pipeline distance to the clean face after a TAESD round trip,
    JPEG-75 then TAESD, and a TAEF2 round trip (0.6 = dlib's same-person threshold)."""
    return _reweighted(kept, paths, size, lambda xi: [(f, f) for f in factors])


#: the face boxes' widenings ``--confine`` keeps each change inside (0: the change as it is)
CONFINE = (0.0, 1.3, 1.6, 2.0)


def confined(kept: Path, paths: list[Path], size: int, scales=CONFINE) -> list[dict]:
    """What the change outside the face buys: each kept protected face (``kept``/STEM.png) has its
    change kept only inside the face box (imguard's detector) widened by each scale, feathered
    (:func:`imguard.budget.face_extent`, what ``extent="face"`` uses; 0 = the whole change),
    quantized to 8 bits; per scale, its visibility, added texture, and dlib's full-pipeline
    distance to the clean face after a TAESD round trip, JPEG-75 then TAESD, and TAEF2."""
    from imguard.budget import face_extent

    det = FaceDetector("cpu")

    def weights(xi):
        face = det.detect(xi)[0]
        return [(s, 1.0 if s == 0 else face_extent([face], tuple(xi.shape[-2:]), s)) for s in scales]
    return _reweighted(kept, paths, size, weights)


def _reweighted(kept: Path, paths: list[Path], size: int, weights) -> list[dict]:
    """The rows of :func:`amplified` and :func:`confined`: each kept protected face's change
    times each weight ``weights(clean face)`` gives as (label, weight: a number or a map), clipped
    and quantized to 8 bits, measured and judged by dlib under :func:`conditions`."""
    from imguard.models import load_autoencoder

    dl = DlibPipeline()
    aes = {a: load_autoencoder(a, "cpu") for a in ("taesd", "taef2")}
    stems, x = load_faces(paths, size, None)
    rows = []
    for i, stem in enumerate(stems):
        png = kept / f"{stem}.png"
        if not png.exists():
            continue
        xi, xp = x[i : i + 1], to_tensor(read_image(png))[0]
        ref = dl.descriptors(xi)[0]
        if ref is None:
            continue  # dlib finds no face in the clean photo: nothing to judge
        for label, w in weights(xi):
            xa = ((xi + w * (xp - xi)).clamp(0, 1) * 255).round() / 255
            dist = {c: DlibPipeline.distance(ref, dl.descriptors(img)[0]) for c, img in conditions(aes, xa).items()}
            rows.append({"face": stem, "factor": label, **measure(xi, xa)[0].as_dict(),
                         "texture": float(added_texture(xi, xa)[0]), "dlib_distance": dist})
    return rows


def amplified_table(rows: list[dict]) -> str:
    lines = ["| factor | faces | PSNR | SSIM | flat /255 | added texture /255 | pass the gate | dlib distance, TAESD (mean; lost) "
             "| JPEG-75 -> TAESD (mean; lost) | TAEF2 (mean; lost) |", "|" + " --- |" * 10]
    for f in sorted({r["factor"] for r in rows}):
        rs = [r for r in rows if r["factor"] == f]
        n = len(rs)

        def cell(c):
            d = [r["dlib_distance"][c] for r in rs]
            lost = sum(v >= DlibPipeline.threshold for v in d)
            finite = [v for v in d if v != float("inf")]
            return f"{sum(finite) / max(len(finite), 1):.3f}; {lost}/{n}"
        lines.append(f"| x{f:g} | {n} | {sum(r['psnr'] for r in rs) / n:.1f} | {sum(r['ssim'] for r in rs) / n:.3f} "
                     f"| {sum(r['flat'] for r in rs) / n:.2f} | {sum(r.get('texture', float('nan')) for r in rs) / n:.2f} "
                     f"| {sum(r['invisible'] for r in rs)}/{n} | "
                     + " | ".join(cell(c) for c in CONDITIONS) + " |")
    return "\n".join(lines) + "\n"


def plot_amplified(rows: list[dict], path: Path) -> None:
    """dlib's distance after TAESD (one grey line per face, the mean in navy) against PSNR, with
    the gate (PSNR 36 dB) and dlib's threshold (0.6) drawn dashed."""
    W, H, pad = 640, 380, 56
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    lo, hi = 26.0, 42.0
    dlo, dhi = 0.0, 1.0

    def px(v):
        return pad + (hi - min(max(v, lo), hi)) / (hi - lo) * (W - 20 - pad)  # less visible on the left

    def py(v):
        return H - pad - (min(max(v, dlo), dhi) - dlo) / (dhi - dlo) * (H - pad - 20)

    d.rectangle([pad, 20, W - 20, H - pad], outline="black")
    for y in range(20, H - pad, 8):
        d.line([px(GATE["psnr"]), y, px(GATE["psnr"]), y + 4], fill="gray")
    for xx in range(pad, W - 20, 8):
        d.line([xx, py(DlibPipeline.threshold), xx + 4, py(DlibPipeline.threshold)], fill="firebrick")
    d.text((px(GATE["psnr"]) + 3, 22), "gate: PSNR 36", fill="gray")
    d.text((pad + 4, py(DlibPipeline.threshold) - 14), "dlib threshold 0.6: above = identity lost", fill="firebrick")
    for v in (28, 30, 32, 34, 36, 38, 40, 42):
        d.text((px(v) - 8, H - pad + 6), str(v), fill="black")
    for v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        d.text((8, py(v) - 6), f"{v:.1f}", fill="black")
    d.text((pad, H - pad + 24), "PSNR (dB) of the protected face, less visible to the left", fill="black")
    d.text((8, 2), "dlib distance to the clean face after a TAESD round trip, as the change is amplified", fill="black")
    faces = sorted({r["face"] for r in rows})
    for face in faces:
        rs = sorted((r for r in rows if r["face"] == face), key=lambda r: r["factor"])
        pts = [(px(r["psnr"]), py(min(r["dlib_distance"]["taesd"], dhi))) for r in rs]
        d.line(pts, fill="lightgray", width=1)
    factors = sorted({r["factor"] for r in rows})
    mean = []
    for f in factors:
        rs = [r for r in rows if r["factor"] == f]
        mean.append((px(sum(r["psnr"] for r in rs) / len(rs)),
                     py(sum(min(r["dlib_distance"]["taesd"], dhi) for r in rs) / len(rs))))
    d.line(mean, fill="navy", width=3)
    for (cx, cy), f in zip(mean, factors):
        d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill="navy")
        d.text((cx - 10, cy + 6), f"x{f:g}", fill="navy")
    img.save(path)


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["--amplify"]:  # --amplify KEPT_DIR SIZE OUT FACES...
        kept, size, out = Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
        rows = amplified(kept, [Path(a) for a in sys.argv[5:]], size)
        out.mkdir(parents=True, exist_ok=True)
        table = f"Kept faces: `{kept}` at {size} px; command: `{' '.join(sys.argv)}`\n\n" + amplified_table(rows)
        (out / "amplified.json").write_text(json.dumps(rows, indent=1))
        (out / "amplified.md").write_text(table)
        plot_amplified(rows, out / "amplified.png")
        print(table)
        return 0
    if argv is None and sys.argv[1:2] == ["--confine"]:  # --confine KEPT_DIR SIZE FACES...
        kept, size = Path(sys.argv[2]), int(sys.argv[3])
        rows = confined(kept, [Path(a) for a in sys.argv[4:]], size)
        print(f"Kept faces: `{kept}` at {size} px; command: `{' '.join(sys.argv)}`; 'factor' = the face box's "
              "widening the change is kept inside (x0 = all of it)\n")
        print(amplified_table(rows))
        return 0
    if argv is None and sys.argv[1:2] == ["--saturated"]:  # --saturated SIZE SCALE FILES_OR_FOLDERS...
        size, scale = int(sys.argv[2]), float(sys.argv[3])
        paths = [p for a in sys.argv[4:] for p in ([Path(a)] if Path(a).is_file() else sorted(Path(a).glob("**/*.png")))]
        rows = saturated(paths, size, scale)
        for r in rows:
            print(f"{r['face']}: PSNR {r['psnr']:.1f} SSIM {r['ssim']:.3f} flat {r['flat']:.2f}/255 {'ok' if r['invisible'] else 'VISIBLE'}")
        n = len(rows)
        print(f"saturated change at {size} px, jnd_scale {scale}: {sum(r['invisible'] for r in rows)}/{n} pass the gate; "
              f"worst PSNR {min(r['psnr'] for r in rows):.1f}, worst SSIM {min(r['ssim'] for r in rows):.3f}, "
              f"worst flat {max(r['flat'] for r in rows):.2f}/255; mean PSNR {sum(r['psnr'] for r in rows) / n:.1f}, "
              f"SSIM {sum(r['ssim'] for r in rows) / n:.3f}, flat {sum(r['flat'] for r in rows) / n:.2f}")
        return 0
    if argv is None and sys.argv[1:2] == ["--texture"]:  # --texture SIZE KEPT_DIR|- FILES...
        kept = None if sys.argv[3] == "-" else Path(sys.argv[3])
        print("| face | change | added texture | PSNR | SSIM | flat | gate |\n| --- | --- | --- | --- | --- | --- | --- |")
        for r in texture_rows([Path(a) for a in sys.argv[4:]], int(sys.argv[2]), kept):
            print(f"| {r['face']} | {r['change']} | {r['texture']:.2f} | {r['psnr']:.1f} | {r['ssim']:.3f} | {r['flat']:.2f} | "
                  f"{'pass' if r['invisible'] else 'fail'} |")
        return 0
    if argv is None and sys.argv[1:2] == ["--explain"]:
        for region in ("image", "face"):
            print(f"region={region!r}: share of the low-passed gradient energy outside the face box")
            for k, v in explain(Path(sys.argv[2]), region=region).items():
                print(f"  {k:34s} {v:.2f}")
        return 0
    ap = parser(__doc__, "low,medium,high,high@budget=linf")
    ap.add_argument("--judges", default=",".join(OFFLINE_JUDGES), help="offline recognizers that judge (when not attacked); dlib's full pipeline always judges")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device) if args.device else imguard.runtime.resolve_device(None)

    stems, x = load_faces(args.faces, args.size, args.limit)
    detector = FaceDetector(dev)
    dlib_full = DlibPipeline()
    judges = {}
    for j in args.judges.split(","):
        try:
            judges[j] = load_face_recognizer(j, dev)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            print(f"judge {j} unavailable: {e}", file=sys.stderr)
    aes = {a: load_autoencoder(a, dev) for a in ("taesd", "taef2")}

    @torch.no_grad()
    def embeddings(img: torch.Tensor) -> dict:
        out = {"dlib-full": dlib_full.descriptors(img)}
        dets = detector.detect(img.to(dev))
        for j, rec in judges.items():
            out[j] = [None if d is None else FaceEmbedder(rec, [d]).embed_all(img[i : i + 1].to(dev))[0][0].float().cpu()
                      for i, d in enumerate(dets)]
        return out

    refs = embeddings(x)

    def lost(j: str, ref, e) -> bool | None:
        if ref is None:
            return None  # no face in the clean photo for this judge: left out
        if e is None:
            return True
        if j == "dlib-full":
            return DlibPipeline.distance(ref, e) >= DlibPipeline.threshold
        return float((ref * e).sum()) < float(judges[j].threshold)

    report = {"meta": {"date": dt.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
                       "device": str(dev), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                       "platform": platform.platform(), "faces": stems, "size": args.size, "seed": args.seed,
                       "gate": GATE}, "configs": []}
    for text in args.configs.split(","):
        cfg = parse_config(text)
        attacked = attacked_names(cfg["face_model"])
        xp, secs = protect_all(cfg, x, stems, kept_dir(args.out, text, args.size, args.seed, args.steps), args.size, args.seed, args.steps, dev)
        seen = measure(x, xp)
        unseen = ["dlib-full"] + [j for j in judges if j not in attacked]
        cells, dists = {}, {}
        for cname, img in conditions(aes, xp, dev).items():
            embs = embeddings(img)
            cells[cname] = {j: [lost(j, refs[j][i], embs[j][i]) for i in range(len(stems))] for j in unseen}
            # dlib's Euclidean distance to the clean photo: the margin behind each verdict (inf: no face found)
            dists[cname] = [None if refs["dlib-full"][i] is None else round(DlibPipeline.distance(refs["dlib-full"][i], embs["dlib-full"][i]), 4)
                            for i in range(len(stems))]
        entry = {"label": text, "config": cfg, "attacked_face_models": sorted(attacked), "attacked_vaes": cfg["vae"].split(","),
                 "seconds_per_image": round(sum(secs) / len(secs), 1),
                 "visibility": [v.as_dict() for v in seen], "lost": cells, "dlib_distance": dists}
        report["configs"].append(entry)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=1))
    md = to_markdown(report)
    (args.out / "report.md").write_text(md)
    plot(report, args.out / "curve.png")
    print(md)
    return 0


def share(values: list) -> tuple[int, int]:
    v = [b for b in values if b is not None]
    return sum(v), len(v)


def pct(entry: dict, cond: str, judges: list[str]) -> str:
    lost = n = 0
    for j in judges:
        a, b = share(entry["lost"][cond].get(j, []))
        lost, n = lost + a, n + b
    return f"{100 * lost / n:.0f}% ({lost}/{n})" if n else "-"


def mean_of(entry: dict, key: str) -> float:
    vals = [v[key] for v in entry["visibility"] if v[key] is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def median_distance(entry: dict, cond: str) -> str:
    """The median of dlib's distances to the clean faces under ``cond`` ('-' for reports from before it was kept)."""
    vals = sorted(v for v in entry.get("dlib_distance", {}).get(cond, []) if v is not None)
    if not vals:
        return "-"
    m = vals[len(vals) // 2] if len(vals) % 2 else (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2
    return "no face" if m == float("inf") else f"{m:.2f}"


def to_markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [f"Faces: {len(meta['faces'])} at {meta['size']} px; seed {meta['seed']}; device {meta['device']} "
             f"({meta['cpu_threads']} threads); command: `{meta['command']}`", "",
             "Identity lost, judged only by recognizers the configuration did not attack: dlib's full pipeline "
             "(HOG detector, 5-point shape predictor, Euclidean 0.6; never attacked) alone, and all unattacked judges "
             "pooled (face x judge pairs). '*' = through an autoencoder the configuration attacked. Visibility: "
             "means over the faces; 'gate' = faces passing flat <= 1.0/255, PSNR >= 36 dB, SSIM >= 0.95.", "",
             "| config | attacked (recognizers / autoencoders) | dlib: TAESD | dlib: JPEG-75 -> TAESD | dlib: TAEF2 "
             "| all unseen: TAESD | all unseen: JPEG-75 -> TAESD | all unseen: TAEF2 | dlib distance after TAESD (median; 0.6 = lost) "
             "| PSNR | SSIM | flat /255 | LPIPS | gate | s/image |",
             "|" + " --- |" * 15]
    for e in report["configs"]:
        star = {c: ("*" if c.split("->")[-1] in e["attacked_vaes"] else "") for c in CONDITIONS}
        unseen = list(e["lost"]["taesd"])
        lp = mean_of(e, "lpips")
        gate = sum(v["invisible"] for v in e["visibility"])
        cells = [e["label"], f"{'+'.join(e['attacked_face_models'])} / {'+'.join(e['attacked_vaes'])}"]
        cells += [pct(e, c, ["dlib-full"]) + star[c] for c in CONDITIONS]
        cells += [pct(e, c, unseen) + star[c] for c in CONDITIONS]
        cells += [median_distance(e, "taesd")]
        cells += [f"{mean_of(e, 'psnr'):.1f}", f"{mean_of(e, 'ssim'):.3f}", f"{mean_of(e, 'flat'):.2f}",
                  "-" if lp != lp else f"{lp:.3f}", f"{gate}/{len(e['visibility'])}", f"{e['seconds_per_image']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Two panels: identity lost (dlib's full pipeline, after TAESD) vs the flat-region change,
    and vs PSNR; one labelled point per configuration; the gate drawn as a dashed line."""
    W, H, pad = 520, 360, 56
    img = Image.new("RGB", (2 * W, H), "white")
    d = ImageDraw.Draw(img)
    pts = []
    for e in report["configs"]:
        a, n = share(e["lost"]["taesd"]["dlib-full"])
        pts.append((e["label"], mean_of(e, "flat"), mean_of(e, "psnr"), 100.0 * a / n if n else 0.0))
    panels = [("flat-region change (/255), lower = less visible", 1, 0.0, 1.3 * max([4.0] + [p[1] for p in pts]), GATE["flat"]),
              ("PSNR (dB), higher = less visible", 2, min([30.0] + [p[2] for p in pts]) - 1, max([46.0] + [p[2] for p in pts]) + 1, GATE["psnr"])]
    for k, (title, idx, lo, hi, gate) in enumerate(panels):
        ox = k * W
        d.rectangle([ox + pad, 20, ox + W - 20, H - pad], outline="black")
        d.text((ox + pad, H - pad + 22), title, fill="black")
        d.text((ox + 4, 20), "100%", fill="black")
        d.text((ox + 4, H - pad - 10), "0%", fill="black")
        d.text((ox + 4, (H - pad + 20) // 2), "lost", fill="black")

        def px(v, lo=lo, hi=hi, ox=ox):
            return ox + pad + (v - lo) / max(hi - lo, 1e-9) * (W - 20 - pad - ox + ox)

        def py(v):
            return H - pad - v / 100.0 * (H - pad - 20)

        gx = px(gate)
        for y in range(20, H - pad, 8):
            d.line([gx, y, gx, y + 4], fill="gray")
        d.text((gx + 3, 22), "gate", fill="gray")
        d.text((ox + pad, H - pad + 6), f"{lo:g}", fill="black")
        d.text((ox + W - 40, H - pad + 6), f"{hi:.3g}", fill="black")
        for n, (label, flat, ps, lost) in enumerate(pts):
            v = flat if idx == 1 else ps
            cx, cy = px(v), py(lost)
            d.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill="navy")
            d.text((cx + 6, cy - 14 - 12 * n), label, fill="navy")  # stacked: points often share a place
            d.line([cx, cy, cx + 5, cy - 8 - 12 * n], fill="lightgray")
    d.text((8, 2), "identity lost for dlib's full pipeline (never attacked) after a TAESD round trip", fill="black")
    img.save(path)


if __name__ == "__main__":
    sys.exit(main())
