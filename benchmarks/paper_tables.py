"""Reproduce the shape of FaceLock's Tables 1, 3 and 4 with offline models.

    python benchmarks/paper_tables.py --out bench/ \
        --faces ../shared/assets/faces/dev --vae taesd:../shared/assets/weights/taef2 \
        --face-model sface --judges sface,dlib --size 256 --steps 100 --eps 8

What it does:
1. Protects every face (resized to --size, square) with `encoder`, `photoguard`, `vae`,
   `cw_l2`, `facelock` and `facelock` with EOT (jpeg, blur, resize), all at the same budget
   (--eps) and steps, attacking --vae and --face-model.
2. Protects with `facelock` (and `photoguard`) at budgets 2, 4, 8, 16 /255.
3. Evaluates with imguard.evaluation, each table once per judge recognizer: the attacked one
   (--face-model) and, where available, one the protection never saw (dlib's ResNet).
   The edit proxy is the round trip D(E(x)) of the attacked autoencoder (the only one
   available offline), after each purification for Table 3.
4. Writes tables.md (and every raw number in the evaluation reports under --out).

The real editor (InstructPix2Pix) is not run: its weights cannot be downloaded here.
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

import imguard
from imguard.evaluation import evaluate
from imguard.io import ImageInfo, from_tensor, read_image, save_image, to_tensor

TABLE1_METHODS = ["encoder", "photoguard", "vae", "cw_l2", "facelock", "facelock+eot"]
EOT = ["jpeg", "blur", "resize"]


def load_faces(folder: Path, size: int) -> tuple[list[str], torch.Tensor]:
    paths = sorted(folder.glob("**/*.png")) + sorted(folder.glob("**/*.jpg"))
    if not paths:
        raise SystemExit(f"no faces under {folder}")
    stems = [f"{p.parent.name}_{p.stem}" for p in paths]
    xs = [torch.nn.functional.interpolate(to_tensor(read_image(p))[0], size=(size, size), mode="bilinear", antialias=True) for p in paths]
    x = torch.cat(xs)
    return stems, (x * 255).round() / 255  # on the 8-bit grid, like a saved photo


def save_set(folder: Path, stems: list[str], x: torch.Tensor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s, xi in zip(stems, x):
        save_image(from_tensor(xi[None], ImageInfo(kind="pil")), folder / f"{s}.png", overwrite=True)
    return folder


def protect_set(p: imguard.Protector, x: torch.Tensor, label: str, eps: float, steps: int, seed: int) -> tuple[torch.Tensor, float]:
    method, _, variant = label.partition("+")
    opts = {"eot": EOT, "grad_repeats": 2} if variant == "eot" else {}
    if p.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = p.protect(x, method=method, eps=eps, steps=steps, seed=seed, return_result=True, **opts)
    if p.device.type == "cuda":
        torch.cuda.synchronize()
    return res.image, (time.perf_counter() - t0) / x.shape[0]


def mean_of(report, method: str, purification: str, key: str):
    for row in report.summary:
        if row["method"] == method and row["purification"] == purification and row["proxy_kind"] == "autoencoder":
            return row["metrics"][key]["mean"]
    return None


def imperceptibility(report, method: str, key: str):
    for row in report.imperceptibility:
        if row["method"] == method:
            return row["metrics"][key]["mean"]
    return None


def fmt(v, pct=False, digits=3):
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.0f}%"
    return f"{v:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--faces", default="../shared/assets/faces/dev")
    ap.add_argument("--vae", default="taesd:../shared/assets/weights/taef2")
    ap.add_argument("--face-model", default="sface", help="the recognizer the protections attack")
    ap.add_argument("--judges", default="sface,dlib", help="recognizers that judge identity (comma list); unavailable ones are skipped")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--eps", type=float, default=8)
    ap.add_argument("--budgets", default="2,4,8,16")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    stems, x = load_faces(Path(args.faces), args.size)
    orig_dir = save_set(out / "originals", stems, x)
    p = imguard.Protector(device=args.device, vae=args.vae, face_model=args.face_model, features="ae", working_size=args.size)
    print(f"{len(stems)} faces at {args.size}px on {p.device}", flush=True)

    seconds: dict[str, float] = {}
    t1_dirs = {}
    for label in TABLE1_METHODS:
        xp, s = protect_set(p, x, label, args.eps, args.steps, args.seed)
        seconds[label] = s
        t1_dirs[label] = save_set(out / "protected" / f"eps{args.eps:g}" / label, stems, xp)
        print(f"protected {label}: {s:.2f} s/image", flush=True)
    budgets = [float(b) for b in args.budgets.split(",")]
    t4_dirs = {}
    for method in ("facelock", "photoguard"):
        for eps in budgets:
            key = f"{method}@{eps:g}"
            if eps == args.eps:
                t4_dirs[key] = t1_dirs[method]
                continue
            xp, _ = protect_set(p, x, method, eps, args.steps, args.seed)
            t4_dirs[key] = save_set(out / "protected" / f"eps{eps:g}" / method, stems, xp)
            print(f"protected {key}", flush=True)

    attacked = {"face_model": args.face_model, "vae": args.vae}
    aes = {"TAEF2 (attacked)": args.vae}
    judges = []
    for j in [s.strip() for s in args.judges.split(",") if s.strip()]:
        try:
            imguard.models.load_face_recognizer(j)
            judges.append(j)
        except Exception as e:  # noqa: BLE001 - a judge that cannot load is reported, not fatal
            print(f"judge {j} skipped: {e}", flush=True)
    reports = {}
    for j in judges:
        common = dict(face_model=j, autoencoders=aes, attacked=attacked, device=args.device, seed=args.seed, size=None,
                      lpips="alex", clip=None, grids=False, overwrite=True)
        reports[("t1", j)] = evaluate(orig_dir, t1_dirs, purifications=None, out_dir=out / "eval" / f"t1_{j.split(':')[0]}", **common)
        reports[("t4", j)] = evaluate(orig_dir, t4_dirs, purifications=None, out_dir=out / "eval" / f"t4_{j.split(':')[0]}", **common)
        t3 = {k: t1_dirs[k] for k in ("encoder", "photoguard", "facelock", "facelock+eot")}
        reports[("t3", j)] = evaluate(orig_dir, t3, purifications="all", out_dir=out / "eval" / f"t3_{j.split(':')[0]}", **common)
        print(f"evaluated with {j}", flush=True)

    md = render(args, stems, seconds, reports, judges, budgets, p, time.perf_counter() - t_start)
    (out / "tables.md").write_text(md)
    print(md)
    return 0


def render(args, stems, seconds, reports, judges, budgets, p, total_s) -> str:
    def tag(j):
        return f"{j.split(':')[0]} ({'attacked' if j == args.face_model else 'not attacked'})"

    gpu = torch.cuda.get_device_name(0) if p.device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    lines = [
        f"Measured {dt.date.today().isoformat()} on {gpu}, torch {torch.__version__}, imguard {imguard.__version__}.",
        f"Command: `python {' '.join(sys.argv)}` ({total_s / 60:.1f} min in all).",
        f"{len(stems)} faces ({args.faces}), {args.size}x{args.size}; every protection attacks {args.face_model} + {args.vae} "
        f"(features: ae), {args.steps} steps, seed {args.seed}. Identity = cosine similarity between the clean original and "
        "the edited image, faces re-detected with MTCNN; 'success' = below the judge's threshold or no face found. "
        "Edit proxy: the TAEF2 round trip D(E(x)) (the attacked autoencoder; no other autoencoder is available offline). "
        "'none' = no protection.",
        "",
        f"## Table 1: methods at eps {args.eps:g}/255 (no purification)",
        "",
    ]
    head = "| method | max abs delta (/255) | PSNR | SSIM | " + " | ".join(f"FR sim, {tag(j)} | success, {j.split(':')[0]}" for j in judges) + " | s/image |"
    lines += [head, "|" + " --- |" * (head.count("|") - 1)]
    any_rep = reports[("t1", judges[0])] if judges else None
    for m in ["none"] + TABLE1_METHODS:
        row = [m]
        if any_rep is not None:
            row += [fmt(imperceptibility(any_rep, m, "linf_255"), digits=2), fmt(imperceptibility(any_rep, m, "psnr"), digits=2), fmt(imperceptibility(any_rep, m, "ssim"))]
        for j in judges:
            r = reports[("t1", j)]
            key = "fr_sim_clean_edit" if m == "none" else "fr_sim_protected_edit"
            ok = "identity_lost_clean_edit" if m == "none" else "identity_lost_protected_edit"
            row += [fmt(mean_of(r, m if m != "none" else TABLE1_METHODS[0], "none", key)), fmt(mean_of(r, m if m != "none" else TABLE1_METHODS[0], "none", ok), pct=True)]
        row.append("-" if m == "none" else f"{seconds[m]:.2f}")
        lines.append("| " + " | ".join(row) + " |")

    for j in judges:
        r = reports[("t3", j)]
        methods = ["encoder", "photoguard", "facelock", "facelock+eot"]
        purifs = list(dict.fromkeys(row["purification"] for row in r.summary))
        lines += ["", f"## Table 3: purifications, then the TAEF2 round trip; judge {tag(j)}; FR sim (success)", ""]
        head = "| purification | no protection | " + " | ".join(methods) + " |"
        lines += [head, "|" + " --- |" * (head.count("|") - 1)]
        for pu in purifs:
            row = [pu, f"{fmt(mean_of(r, methods[0], pu, 'fr_sim_clean_edit'))} ({fmt(mean_of(r, methods[0], pu, 'identity_lost_clean_edit'), pct=True)})"]
            for m in methods:
                row.append(f"{fmt(mean_of(r, m, pu, 'fr_sim_protected_edit'))} ({fmt(mean_of(r, m, pu, 'identity_lost_protected_edit'), pct=True)})")
            lines.append("| " + " | ".join(row) + " |")

    lines += ["", "## Table 4: budgets (no purification); FR sim (success) per judge", ""]
    head = "| method | eps (/255) | PSNR | " + " | ".join(tag(j) for j in judges) + " |"
    lines += [head, "|" + " --- |" * (head.count("|") - 1)]
    for method in ("facelock", "photoguard"):
        for eps in budgets:
            key = f"{method}@{eps:g}"
            row = [method, f"{eps:g}"]
            r0 = reports[("t4", judges[0])] if judges else None
            row.append(fmt(imperceptibility(r0, key, "psnr"), digits=2) if r0 else "-")
            for j in judges:
                r = reports[("t4", j)]
                row.append(f"{fmt(mean_of(r, key, 'none', 'fr_sim_protected_edit'))} ({fmt(mean_of(r, key, 'none', 'identity_lost_protected_edit'), pct=True)})")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
