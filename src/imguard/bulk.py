"""Protecting many files: a plan, a manifest to resume from, one file = one unit of work.

The command ``imguard protect`` is a thin layer over this module:

- :func:`plan` turns the inputs (files, folders, ``recursive``) into :class:`Job` s, each
  with its output path (the tree mirrored under the output folder) and what to do with it:
  ``todo``, ``skip`` (done before with the same input and settings, or a file imguard did
  not write) or ``fail`` (e.g. it would overwrite an input).
- :class:`Manifest` is ``imguard-manifest.jsonl`` in the output folder: one JSON line per
  event (``started``, ``done``, ``failed``), appended and fsync'd line by line, so a run cut
  off at any point can be resumed: outputs recorded ``done`` with the same input hash and
  settings (and that still decode) are skipped, everything else is redone. Files the
  manifest lists as outputs are never taken as inputs.
- :func:`run` protects the jobs in batches of same-sized images; a batch that fails falls
  back to one file at a time, and a file that fails is reported and the rest go on.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .io import IMAGE_SUFFIXES, ImageReadError
from .result import batch_then_singly

MANIFEST_NAME = "imguard-manifest.jsonl"

#: hidden test hook: seconds to sleep after each file (lets a test kill a run between files)
_SLEEP_ENV = "IMGUARD_TEST_SLEEP_PER_IMAGE"


class UsageError(Exception):
    """A problem with the command itself (paths, options): nothing was done; exit code 2."""


class FatalError(Exception):
    """A problem that is not any one file's (e.g. a model that does not load): stop the run."""


@dataclass
class Job:
    src: Path
    dst: Path
    rel: str  #: output path relative to the output folder (the manifest's key)
    action: str = "todo"  #: todo, skip, fail
    reason: str = ""
    replace: bool = False  #: the output may replace an existing file (ours, or --overwrite)
    sha256: str | None = None


@dataclass
class Report:
    protected: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)
    #: protected, but the protection check judged the person still recognisable
    recognisable: list[Job] = field(default_factory=list)
    #: the flag that would help those (see :func:`stronger_hint`)
    hint: str = ""

    def summary(self) -> str:
        text = f"imguard: {len(self.protected)} protected"
        if self.recognisable:
            n = len(self.recognisable)
            text += (f" ({n} still recognisable by the check: written, but the protection is weak on "
                     f"{'it' if n == 1 else 'them'}; {self.hint or 'try --strength high'})")
        return text + f", {len(self.skipped)} skipped, {len(self.failed)} failed"


def stronger_hint(settings: dict) -> str:
    """The flag that makes a protection stronger than the one run with ``settings``."""
    strength = settings.get("strength")
    if strength == "low":
        return "run again with --strength medium or --strength high (and --overwrite)"
    if strength == "high":
        from .presets import MAX

        return (f"run again with --strength max (stronger; {MAX.caveat}) "
                "or more --steps (e.g. --steps 400), and --overwrite")
    if strength == "max":
        return "run again with more --steps (e.g. --steps 400) or --budget linf (plainly visible), and --overwrite"
    return "run again with --strength high (and --overwrite)"


def visibility_caveat(strength: str | None) -> str:
    """What the strength's results look like beyond the gate's numbers (its preset's ``caveat``),
    as the tail of the CLI's visibility line; "" for the invisible presets."""
    from .presets import STRENGTHS

    preset = STRENGTHS.get(str(strength)) if strength else None
    return f"; --strength {preset.name}: {preset.caveat}" if preset is not None and preset.caveat else ""


def one_line(text: Any) -> str:
    """One line, in the words of the command line (flags, not Python argument names)."""
    from .hints import cli_text

    return " ".join(cli_text(str(text)).split())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def batches(items: list, key: Callable[[Any], Any], size: int) -> list[list]:
    """Consecutive runs of items with the same key, at most ``size`` long."""
    out: list[list] = []
    for item in items:
        if out and len(out[-1]) < size and key(out[-1][0]) == key(item):
            out[-1].append(item)
        else:
            out.append([item])
    return out


class Manifest:
    """``imguard-manifest.jsonl`` in the output folder: the last record per output wins."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.path = out_dir / MANIFEST_NAME
        self.records: dict[str, dict] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut off by a crash: that output is redone
                if isinstance(rec, dict) and isinstance(rec.get("output"), str):
                    self.records[rec["output"]] = rec

    def output_paths(self) -> set[Path]:
        """Every file this manifest has recorded as an output (resolved)."""
        return {(self.out_dir / rel).resolve() for rel in self.records}

    def append(self, record: dict) -> None:
        self.extend([record])

    def extend(self, records: list[dict]) -> None:
        """Append records as lines, with one fsync for all of them."""
        if not records:
            return
        text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = self.path.exists() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(("\n" if needs_newline else "") + text)
            fh.flush()
            os.fsync(fh.fileno())
        for r in records:
            self.records[r["output"]] = r


class RecordList:
    """Collects the records a :class:`Runner` would append to a :class:`Manifest` (a worker of
    :mod:`imguard.distributed` hands them to the one process that writes the manifest)."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def append(self, record: dict) -> None:
        self.items.append(record)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def check_output_dir(output: str) -> Path:
    """The output folder, created and checked writable; :class:`UsageError` before any work."""
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"the output {out} is an existing file, not a folder; give a folder with -o (it is created if missing)")
    if not out.exists():  # created with the first output; nothing is written before any work succeeds
        parent = out.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise UsageError(f"cannot write into the output folder {out}: {parent} is a file, so the folder cannot be created; give another folder with -o")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write into the output folder {out}: {parent} is not writable, so the folder cannot be created; choose a folder you can write to")
        return out
    try:
        with tempfile.NamedTemporaryFile(dir=out, prefix=".imguard-write-test-"):
            pass
    except OSError as e:
        raise UsageError(f"cannot write into the output folder {out} ({e.strerror or e}); choose a folder you can write to") from e
    return out


def _is_image_file(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def expand_inputs(items: list[str], recursive: bool, exclude: set[Path]) -> list[tuple[Path, Path]]:
    """(input file, its path relative to the folder given (or its name)), outputs of earlier
    runs (``exclude``, resolved) left out. :class:`UsageError` for a missing input."""
    found: list[tuple[Path, Path]] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files = p.rglob("*") if recursive else p.iterdir()
            images = sorted(q for q in files if _is_image_file(q) and q.resolve() not in exclude)
            found.extend((q, q.relative_to(p)) for q in images)
        elif p.is_file():
            if p.resolve() not in exclude:
                found.append((p, Path(p.name)))
        else:
            raise UsageError(f"input not found: {p}")
    if not found:
        raise UsageError(f"no images to protect in {', '.join(items)} (looked for {', '.join(IMAGE_SUFFIXES)}"
                         f"{'' if recursive else '; use -r to look in subfolders'})")
    return found


def plan(inputs: list[tuple[Path, Path]], out_dir: Path, fmt: str, settings: dict, manifest: Manifest,
         overwrite: bool) -> list[Job]:
    """What to do with each input (see the module's doc)."""
    in_resolved = {src.resolve() for src, _ in inputs}
    seen: dict[str, Path] = {}
    jobs = []
    for src, rel_in in inputs:
        rel = rel_in.with_name(f"{rel_in.stem}.{fmt}").as_posix()
        job = Job(src=src, dst=out_dir / rel, rel=rel)
        jobs.append(job)
        if rel in seen:
            job.action, job.reason = "fail", (f"{seen[rel]} is written to the same output {job.dst}; "
                                              "rename one of them or protect them into different folders")
            continue
        seen[rel] = src
        if job.dst.resolve() in in_resolved:
            job.action, job.reason = "fail", (f"its output {job.dst} would overwrite an input; "
                                              "choose another output folder (-o)")
            continue
        _decide(job, settings, manifest, overwrite)
    return jobs


def _decide(job: Job, settings: dict, manifest: Manifest, overwrite: bool) -> None:
    from .io import decodes

    if not job.dst.exists():
        return
    rec = manifest.records.get(job.rel)
    if overwrite:
        job.replace = True
        return
    if rec is None:
        job.action, job.reason = "skip", (f"{job.dst} exists and was not written by an imguard run into this folder; "
                                          "pass --overwrite to replace it, or choose another output folder")
        return
    job.replace = True  # ours: redo it unless it is done, current and intact
    if rec.get("status") != "done" or rec.get("settings") != settings:
        return
    job.sha256 = file_sha256(job.src)
    if rec.get("input_sha256") == job.sha256 and decodes(job.dst):
        job.action, job.reason = "skip", "already protected with these settings"


@dataclass
class RunOptions:
    batch_size: int = 1
    fail_fast: bool = False
    quiet: bool = False
    max_pixels: int | None = None
    keep_metadata: bool = False
    protect_kwargs: dict = field(default_factory=dict)


def hint_for(e: BaseException) -> str:
    """What to do about a file's failure."""
    from .models import NoFaceError

    if isinstance(e, ImageReadError):
        if "not a readable image" in str(e):
            return "; check that it is an image file (PNG, JPEG, WebP, TIFF, BMP), or leave it out"
        return ""  # its message says it
    if isinstance(e, NoFaceError):
        return "; use a photo with a visible face, or drop --require-face"
    if isinstance(e, MemoryError):
        return "; the image is too large for the memory here: shrink it or lower --batch-size"
    if isinstance(e, OSError):
        return "; check the disk space and the permissions of the output folder"
    return "; if this keeps happening with this file, report it with the file attached"


class Runner:
    """Protects planned jobs; writes the manifest; fills a :class:`Report`."""

    def __init__(self, protector: Any, manifest: Manifest, settings: dict, opts: RunOptions,
                 write: Callable[[str], None] | None = None, err: Callable[[str], None] | None = None):
        self.protector = protector
        self.manifest = manifest
        self.settings = settings
        self.opts = opts
        self.report = Report()
        self.write = write or (lambda s: print(s, flush=True))
        self.err = err or (lambda s: print(s, file=sys.stderr, flush=True))
        self.sleep = float(os.environ.get(_SLEEP_ENV, "0") or 0)

    # -- bookkeeping
    def record(self, job: Job, status: str, **extra: Any) -> dict:
        """A manifest record of ``job`` (not yet written)."""
        return {
            "input": str(job.src), "input_sha256": job.sha256, "output": job.rel, "status": status,
            "settings": self.settings, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra,
        }

    def _record(self, job: Job, status: str, **extra: Any) -> None:
        self.manifest.append(self.record(job, status, **extra))

    def fail(self, job: Job, e: BaseException | str, record: bool = True) -> None:
        if isinstance(e, BaseException):
            reason = one_line(f"{e}" if isinstance(e, ImageReadError) else f"{type(e).__name__}: {e}") + hint_for(e)
        else:
            reason = one_line(e)
        job.action, job.reason = "fail", reason
        self.report.failed.append(job)
        self.err(f"imguard: failed: {job.src}: {reason}")
        if record:
            try:
                self._record(job, "failed", error=reason)
            except OSError:
                pass

    def skip(self, job: Job) -> None:
        self.report.skipped.append(job)
        if not self.opts.quiet:
            self.write(f"skipped {job.src}: {job.reason}")

    @property
    def stop(self) -> bool:
        return self.opts.fail_fast and bool(self.report.failed)

    # -- work
    def run(self, jobs: list[Job]) -> Report:
        for batch in self.units(jobs):
            if self.stop:
                break
            self.run_unit(batch)
        return self.report

    def units(self, jobs: list[Job]) -> list[list[Job]]:
        """The batches to protect: skipped and planned failures reported, every file's size read
        from its header (no decoding; unreadable files fail here), consecutive files of the same
        size grouped, at most ``batch_size`` to a batch. Protecting the same batches with the same
        settings gives the same results wherever they run."""
        todo = []
        for job in jobs:
            if self.stop:
                break
            if job.action == "skip":
                self.skip(job)
            elif job.action == "fail":
                self.fail(job, job.reason, record=False)  # planning: not this output's record
            else:
                todo.append(job)
        sized = []
        for job in todo:
            if self.stop:
                break
            try:
                sized.append((job, _header_size(job.src, self.opts.max_pixels)))
            except ImageReadError as e:
                self.fail(job, e)
        return [[job for job, _ in b] for b in batches(sized, lambda it: it[1], max(1, self.opts.batch_size))]

    def _load(self, job: Job, as_tensor: bool):
        """(image, float tensor or None, its ImageInfo or None): the tensor only for a batch of
        several (a single file goes to the protector as its image: one float copy, not two)."""
        from .io import read_image, to_tensor

        if job.sha256 is None:
            job.sha256 = file_sha256(job.src)
        img = read_image(job.src, max_pixels=self.opts.max_pixels)
        if not as_tensor:
            return img, None, None
        x, info = to_tensor(img, name=str(job.src), max_pixels=self.opts.max_pixels)
        return img, x, info

    def run_unit(self, batch: list[Job]) -> None:
        """Protect one batch of :meth:`units` (one file at a time if the batch fails)."""
        import torch

        loaded = []
        for job in batch:
            try:
                loaded.append((job, *self._load(job, as_tensor=len(batch) > 1)))
            except (ImageReadError, OSError, MemoryError) as e:
                self.fail(job, e)
                if self.stop:
                    return
        if not loaded:
            return
        for job, *_ in loaded:
            self._record(job, "started")

        def finished(item, r) -> bool:
            self._finish(item, *r)
            return self.stop

        def failed(item, e: BaseException) -> bool:
            self.fail(item[0], e)
            return self.stop

        def together(items) -> list:
            res = self._protect(torch.cat([x for _, _, x, _ in items]), [j for j, *_ in items])
            return [(res, k, len(items)) for k in range(len(items))]

        def alone(item):  # the image itself, so the result comes back 8-bit (no full-size float copy)
            return self._protect(item[1], [item[0]]), 0, 1

        batch_then_singly(loaded, together, alone, finished, failed, reraise=(FatalError,))

    def _protect(self, x, jobs: list[Job]):
        from .models import ModelLoadError

        try:
            return self.protector.protect(x, return_result=True, names=[str(j.src) for j in jobs],
                                          progress=not self.opts.quiet, **self.opts.protect_kwargs)
        except ModelLoadError as e:
            raise FatalError(str(e)) from e

    def _finish(self, item, res, k: int, n: int) -> None:
        from .io import exif_without_location, from_tensor, save_image, srgb_profile_bytes

        from PIL import Image

        job, img, _, info = item
        try:
            out = res.image if isinstance(res.image, Image.Image) else from_tensor(res.image[k : k + 1], info)
            exif = None
            if self.opts.keep_metadata:
                exif = exif_without_location(img)
                if img.info.get("icc_profile") or img.info.get("imguard_srgb"):
                    out.info["icc_profile"] = srgb_profile_bytes()
            save_image(out, job.dst, overwrite=job.replace, exif=exif)
        except Exception as e:  # noqa: BLE001 - a file that cannot be written is that file's failure
            self.fail(job, e)
            return
        check = res.check[k].line() if getattr(res, "check", None) and k < len(res.check) and res.check[k] else None
        achieved = float(res.achieved[k])
        seen = res.visibility[k] if getattr(res, "visibility", None) and k < len(res.visibility) else None
        self._record(job, "done", achieved=achieved, eps=float(res.eps), check=check,
                     visibility=seen.as_dict() if seen is not None else None)
        self.report.protected.append(job)
        verdict = res.check[k] if check else None
        if verdict is not None and getattr(verdict, "identity_lost", True) is False and getattr(verdict, "similarity", None) is not None:
            self.report.recognisable.append(job)
            self.report.hint = stronger_hint(self.settings)
        if not self.opts.quiet:
            self.write(f"{job.src} -> {job.dst}  (max |delta| {achieved:.2f}/255 of eps {res.eps:g}; "
                       f"{res.method}, {res.steps} step{'' if res.steps == 1 else 's'}, {res.seconds / n:.1f}s/image)")
            if seen is not None:
                self.write(f"  {seen.line()}{visibility_caveat(self.settings.get('strength'))}")
            if check:
                self.write(f"  {check}")
        if self.sleep:
            time.sleep(self.sleep)


def _header_size(path: Path, max_pixels: int | None) -> tuple[int, int]:
    """The size a file declares (without decoding it), checked against ``max_pixels``."""
    import warnings

    from PIL import Image

    from .io import check_pixels, read_image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                size = im.size
                orient = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
    except Exception:  # noqa: BLE001 - the full reader decides (and gives the clear message)
        return read_image(path, max_pixels=max_pixels).size
    check_pixels(size, max_pixels, path)
    return (size[1], size[0]) if orient in (5, 6, 7, 8) else size
