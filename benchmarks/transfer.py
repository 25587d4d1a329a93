"""Leave-one-out transfer: does protection hold for recognizers and autoencoders it never saw?

    python benchmarks/transfer.py --faces ../shared/assets/faces/wild --out bench/transfer \
        --configs facelock-sface-taef2,low,medium,high --size 256 --seed 0

For every configuration (a strength preset, or a plain method against named models), each
face is protected once; then each protected face goes through every *condition* (a round
trip through TAESD (SD 1.x latent space) or TAEF2 (FLUX.2 space), each after nothing,
JPEG 75/90, resize 0.5 or blur) and every *judge* (sface, facenet, mobilefacenet, faceres,
dlib) compares it with the clean face. A judge the configuration attacked is labelled
"attacked"; the headline numbers use only judges it did not attack. "identity lost" = the
judge's cosine similarity to the clean face is below its threshold, or no face is found.

Configurations:
  low / medium / high                  the strength presets (imguard.presets)
  METHOD-FACES-VAES                    e.g. facelock-sface-taef2: that method at its own
                                       defaults against those models ('+' joins an ensemble:
                                       facelock-sface+facenet-taesd)
  NAME@key=value@key=value             any of the above with options overridden, e.g.
                                       medium@momentum=0@diversity=0 (technique ablations;
                                       '+' joins EOT transforms: @eot=jpeg+identity)
  PRESET@vae=A@face_model=B+C          the preset against other models (leave-one-out:
                                       high@vae=taesd is judged through TAEF2 unattacked)

Writes report.json (every number) and report.md; prints the Markdown table
(`python benchmarks/transfer.py merge A/report.json B/report.json` prints one table of runs
on the same faces). Each protected
face is kept under OUT/protected/CONFIG@size=..@seed=../ (PNG, lossless: outputs are on the 8-bit grid, with
its seconds in a .json beside it): a run that was stopped, or rerun with a larger --limit,
protects only the faces it has not protected yet and judges them all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import imguard  # noqa: E402
from imguard.io import read_image, to_tensor  # noqa: E402
from imguard.metrics import psnr, ssim  # noqa: E402
from imguard.visibility import flat_region_change  # noqa: E402
from imguard.models import FaceDetector, FaceEmbedder, load_autoencoder, load_face_recognizer  # noqa: E402
from imguard.presets import PRESETS  # noqa: E402
from imguard.request import resolve  # noqa: E402
from imguard.transforms import get_purification  # noqa: E402

JUDGES = ("sface", "facenet", "mobilefacenet", "faceres", "dlib")
AUTOENCODERS = ("taesd", "taef2")
PURIFICATIONS = ("none", "jpeg75", "jpeg90", "resize0.5", "blur")


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_config(text: str) -> dict:
    """A configuration name -> {label, strength, method, face_model, vae, options}."""
    base, *overrides = text.split("@")
    opts = dict(kv.split("=", 1) for kv in overrides)
    opts = {k: (v.replace("+", ",") if k in ("eot", "vae", "face_model") else _value(v)) for k, v in opts.items()}
    if base in PRESETS:
        req = resolve(strength=base)
        cfg = {"label": text, "strength": base, "method": req.method, "face_model": req.recognizer, "vae": req.autoencoder}
    else:
        method, faces, vaes = base.split("-", 2)
        cfg = {"label": text, "strength": None, "method": method, "face_model": faces.replace("+", ","),
               "vae": vaes.replace("+", ",")}
    for k in ("face_model", "vae"):  # models named in an override replace the preset's (leave-one-out)
        if k in opts:
            cfg[k] = opts.pop(k)
    return {**cfg, "options": opts}


def load_faces(folders: list[Path], size: int, limit: int | None) -> tuple[list[str], torch.Tensor]:
    paths = []
    for f in folders:
        paths += [f] if f.is_file() else sorted(f.glob("**/*.png")) + sorted(f.glob("**/*.jpg"))
    if limit:
        paths = paths[:limit]
    if not paths:
        raise SystemExit(f"no faces under {folders}")
    xs = [torch.nn.functional.interpolate(to_tensor(read_image(p))[0], size=(size, size), mode="bilinear", antialias=True) for p in paths]
    return [p.stem for p in paths], ((torch.cat(xs) * 255).round() / 255)


def kept_dir(out: Path, config: str, size: int, seed: int, steps: int | None) -> Path:
    """Where a configuration's protected faces are kept: one folder per configuration, size,
    seed and steps override, so a rerun reuses only faces protected exactly the same way."""
    name = f"{config}@size={size}@seed={seed}" + (f"@steps={steps}" if steps else "")
    return out / "protected" / re.sub(r"[^A-Za-z0-9._=+-]", "_", name)


def write_rows(out: str | Path, rows: list[dict]) -> Path:
    """A probe's rows as JSON at ``out`` (folders made), with the command that measured them and torch's version."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(["python"] + sys.argv), "torch": torch.__version__, "rows": rows}, indent=1))
    return out


def attacked_names(spec: str) -> set[str]:
    return {s.strip().split(":")[0] for s in spec.split(",")}


def parser(doc: str, configs: str) -> argparse.ArgumentParser:
    """The arguments every face benchmark takes (this one and benchmarks/visibility.py)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", nargs="+", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--configs", default=configs)
    ap.add_argument("--size", type=int, default=256, help="faces are resized to SIZE x SIZE (the working size)")
    ap.add_argument("--steps", type=int, default=None, help="override every configuration's steps")
    ap.add_argument("--limit", type=int, default=None, help="only the first N faces")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return ap


def main(argv=None) -> int:
    ap = parser(__doc__, "facelock-sface-taef2,low,medium,high")
    ap.add_argument("--judges", default=",".join(JUDGES))
    ap.add_argument("--model-path", action="append", default=[], metavar="NAME=PATH",
                    help="local weights for a recognizer (e.g. facenet=/path/facenet_keras_2024.h5); else the model cache")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device) if args.device else imguard.runtime.resolve_device(None)
    paths = dict(kv.split("=", 1) for kv in args.model_path)

    def spec(name: str) -> str:
        return f"{name}:{paths[name]}" if name in paths else name

    def specs(text: str) -> str:
        return ",".join(spec(s.strip()) for s in text.split(","))

    stems, x = load_faces(args.faces, args.size, args.limit)
    detector = FaceDetector(dev)
    judges = {}
    for j in args.judges.split(","):
        try:
            judges[j] = load_face_recognizer(spec(j), dev)
        except Exception as e:  # noqa: BLE001 - a judge that cannot load is reported, not fatal
            print(f"judge {j} unavailable: {e}", file=sys.stderr)
    aes = {a: load_autoencoder(a, dev) for a in AUTOENCODERS}

    @torch.no_grad()
    def embed_all(img: torch.Tensor) -> dict[str, torch.Tensor]:
        """Faces detected once per image, then every judge: {judge: [B,D] with NaN rows where no face}."""
        dets = detector.detect(img.to(dev))
        idx = [i for i, d in enumerate(dets) if d is not None]
        out = {}
        for j, rec in judges.items():
            e = torch.full((img.shape[0], 1), float("nan"))
            if idx:
                emb = FaceEmbedder(rec, [dets[i] for i in idx]).embed_all(img[idx].to(dev))[0].float().cpu()
                e = torch.full((img.shape[0], emb.shape[1]), float("nan"))
                e[idx] = emb
            out[j] = e
        return out

    refs = embed_all(x)

    def conditions(img: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"protected": img}
        for a, ae in aes.items():
            for pname in PURIFICATIONS if a == "taesd" else ("none", "jpeg75"):
                y = get_purification(pname)(img) if pname != "none" else img
                with torch.no_grad():
                    out[f"{pname}->{a}"] = ae.decode(ae.encode(y.to(dev))).clamp(0, 1).cpu()
        return out

    def judge_all(cond_imgs: dict, attacked: set[str]) -> list[dict]:
        rows = []
        for cname, img in cond_imgs.items():
            embs = embed_all(img)
            for j, rec in judges.items():
                e, r = embs[j], refs[j]
                sim = (e * r).sum(1) if e.shape[1] == r.shape[1] else torch.full((img.shape[0],), float("nan"))
                lost = torch.isnan(sim) | (sim < float(rec.threshold))
                valid = ~torch.isnan(r[:, 0])  # faces with no face found in the clean original are left out
                rows.append({"condition": cname, "judge": j, "judge_attacked": j in attacked,
                             "similarity": [None if s != s else round(float(s), 4) for s in sim.tolist()],
                             "lost": [bool(v) if ok else None for v, ok in zip(lost.tolist(), valid.tolist())]})
        return rows

    report = {"meta": {"date": dt.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
                       "device": str(dev), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                       "platform": platform.platform(), "faces": stems, "size": args.size, "seed": args.seed,
                       "thresholds": {j: float(m.threshold) for j, m in judges.items()}},
              "clean": judge_all(conditions(x), set()), "configs": []}
    for text in args.configs.split(","):
        cfg = parse_config(text)
        attacked = attacked_names(cfg["face_model"])
        p = imguard.Protector(cfg["method"], strength=cfg["strength"], device=dev, vae=cfg["vae"],
                              face_model=specs(cfg["face_model"]), working_size=args.size, check=False)
        opts = dict(cfg["options"])
        if args.steps:
            opts["steps"] = args.steps
        keep = kept_dir(args.out, text, args.size, args.seed, args.steps)
        keep.mkdir(parents=True, exist_ok=True)
        outs, secs, effective = [], [], None
        for i in range(x.shape[0]):
            png, meta = keep / f"{stems[i]}.png", keep / f"{stems[i]}.json"
            if png.exists() and meta.exists():  # protected by an earlier run of the same configuration
                outs.append(to_tensor(read_image(png))[0])
                m = json.loads(meta.read_text())
                secs.append(m["seconds"])
                effective = effective or m.get("options")
                continue
            t0 = time.perf_counter()
            res = p.protect(x[i : i + 1], seed=args.seed, return_result=True, names=[stems[i]], **opts)
            secs.append(time.perf_counter() - t0)
            effective = dict(res.options)
            outs.append(res.image)
            imguard.io.save_image(Image.fromarray(imguard.io.to_uint8_hwc(res.image[0])), png, overwrite=True)
            meta.write_text(json.dumps({"seconds": round(secs[-1], 2), "steps_run": res.steps_run,
                                        "options": effective}, default=str))
            print(f"[{text}] {stems[i]}: {secs[-1]:.0f} s, {res.summary().splitlines()[0]}", flush=True)
        xp = torch.cat(outs)
        entry = {"config": cfg, "attacked_face_models": sorted(attacked), "attacked_vaes": cfg["vae"].split(","),
                 "effective_options": effective, "seconds_per_image": round(sum(secs) / len(secs), 2),
                 "psnr": round(float(psnr(x, xp).mean()), 2), "ssim": round(float(ssim(x, xp).mean()), 4),
                 "flat_255": round(float(flat_region_change(x, xp)[0].mean()), 3),
                 "linf_255": round(float((xp - x).abs().max() * 255), 2), "rows": judge_all(conditions(xp), attacked)}
        report["configs"].append(entry)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=1))
    md = to_markdown(report)
    (args.out / "report.md").write_text(md)
    print(md)
    return 0


def _pct(rows: list[dict], condition: str, judges: list[str]) -> str:
    lost, n = 0, 0
    for r in rows:
        if r["condition"] == condition and r["judge"] in judges:
            vals = [v for v in r["lost"] if v is not None]
            lost += sum(vals)
            n += len(vals)
    return f"{100 * lost / n:.0f}%" if n else "-"


def to_markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [f"Faces: {len(meta['faces'])} at {meta['size']} px; seed {meta['seed']}; device {meta['device']}; "
             f"command: `{meta['command']}`", ""]
    conds = ["protected", "none->taesd", "jpeg75->taesd", "jpeg90->taesd", "resize0.5->taesd", "blur->taesd", "none->taef2", "jpeg75->taef2"]
    lines.append("Identity lost (% of face x judge pairs), judged only by recognizers the configuration did NOT attack; "
                 "'protected' = the protected photo itself, no autoencoder; '*' = through an autoencoder the "
                 "configuration attacked:")
    lines.append("")
    lines.append("| config | attacked (recognizers / autoencoders) | unseen judges | " + " | ".join(conds) + " | PSNR | SSIM | flat /255 | s/image |")
    lines.append("|" + " --- |" * (len(conds) + 7))
    all_judges = list(meta["thresholds"])
    clean_row = ["clean (no protection)", "-", ", ".join(all_judges)] + [_pct(report["clean"], c, all_judges) for c in conds] + ["-", "-", "-", "-"]
    lines.append("| " + " | ".join(clean_row) + " |")
    for e in report["configs"]:
        unseen = [j for j in all_judges if j not in e["attacked_face_models"]]
        cells = [e["config"]["label"], f"{'+'.join(e['attacked_face_models'])} / {'+'.join(e['attacked_vaes'])}", ", ".join(unseen)]
        # '*': that condition's autoencoder was attacked by the configuration (not an unseen one)
        cells += [_pct(e["rows"], c, unseen) + ("*" if c.split("->")[-1] in e["attacked_vaes"] else "") for c in conds]
        flat = e.get("flat_255")  # reports before 2026-12-06 have none
        cells += [f"{e['psnr']:.1f}", f"{e['ssim']:.3f}", "-" if flat is None else f"{flat:.2f}", f"{e['seconds_per_image']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per judge (none->taesd / jpeg75->taesd / none->taef2), '*' = attacked by that configuration:", ""]
    lines.append("| config | " + " | ".join(all_judges) + " |")
    lines.append("|" + " --- |" * (len(all_judges) + 1))
    for e in report["configs"]:
        cells = [e["config"]["label"]]
        for j in all_judges:
            star = "*" if j in e["attacked_face_models"] else ""
            cells.append(f"{_pct(e['rows'], 'none->taesd', [j])} / {_pct(e['rows'], 'jpeg75->taesd', [j])} / {_pct(e['rows'], 'none->taef2', [j])}{star}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_from(path: Path) -> str:
    """The Markdown tables of a saved report.json (also of a run that stopped early)."""
    return to_markdown(json.loads(Path(path).read_text()))


def merge(paths: list[Path]) -> dict:
    """One report from several runs on the same faces (configurations side by side)."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    first = reports[0]
    for p, r in zip(paths[1:], reports[1:]):
        if r["meta"]["faces"] != first["meta"]["faces"] or r["meta"]["size"] != first["meta"]["size"]:
            raise SystemExit(f"{p} was measured on other faces or another size than {paths[0]}; not merged")
    meta = dict(first["meta"], command=" + ".join(f"`{r['meta']['command']}`" for r in reports).strip("`"))
    return {"meta": meta, "clean": first["clean"], "configs": [c for r in reports for c in r["configs"]]}


if __name__ == "__main__":
    if sys.argv[1:2] == ["merge"]:  # python benchmarks/transfer.py merge A/report.json B/report.json > table.md
        print(to_markdown(merge([Path(a) for a in sys.argv[2:]])), end="")
        sys.exit(0)
    sys.exit(main())
