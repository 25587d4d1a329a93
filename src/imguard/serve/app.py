"""``imguard serve``: a local web page that protects photos.

One FastAPI app, one self-contained page (``static/``: HTML, one script, one style sheet,
nothing loaded from outside), and one background worker thread that runs the protections one
job at a time, so the page stays responsive and shows the queue. Every request first passes
:class:`imguard.serve.security.Guard` (Host, Origin, token, body size and read time, security
headers). Uploads are checked (size in bytes, the image header, a pixel limit) and kept as
uploaded (compressed) in the server's 0700 temporary folder until their job runs: only then
are they decoded, and the uploaded file is deleted when the job ends. Results stay in that
folder until the job is deleted, expires, or the server stops (then the whole folder is
removed). At most ``Limits.max_queued`` jobs wait; more are refused with 429.

    from imguard.serve import create_app
    app = create_app(protector=imguard.Protector(device="cpu"))     # any Protector: injectable

The HTTP API (what the page uses; JSON unless said):

- ``GET /api/info``: strengths, limits.
- ``GET /api/jobs/{id}/images/{i}/original``: a small copy of the uploaded photo (for the page
  after a reload).
- ``POST /api/jobs`` (multipart: ``files`` one or more, ``strength``, optional ``steps``,
  ``seed``): queues a job, answers ``{"id", "position"}``; 400/413/415 with ``{"detail"}``
  saying what was wrong with which file; 429 when the queue is full.
- ``GET /api/jobs``: the queue; ``GET /api/jobs/{id}``: status, per-step progress, results.
- ``GET /api/jobs/{id}/images/{i}/protected`` (PNG download) and ``.../diff`` (|delta| x 20
  around grey); ``GET /api/jobs/{id}/zip``: every protected PNG of the job.
- ``DELETE /api/jobs/{id}``: forget the job and delete its files.
"""

from __future__ import annotations

import ctypes
import gc
import io
import logging
import queue
import re
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        f"imguard serve needs FastAPI and uvicorn ({e}); install them with: pip install 'imguard[serve]'"
    ) from e

from ..io import safe_filename
from ..presets import DEFAULT_STRENGTH, STRENGTHS as PRESETS  # the optimisation presets and fast
from .security import Guard, allowed_hosts, is_loopback

__all__ = ["DIFF_GAIN", "Job", "Limits", "Worker", "create_app", "difference_image"]

log = logging.getLogger("imguard.serve")

STATIC = Path(__file__).resolve().parent / "static"
#: Long side of the copy of each original kept for the page (after a reload).
PREVIEW_SIZE = 768
#: The amplification of the difference image: grey + |delta| x DIFF_GAIN (signed, per channel).
DIFF_GAIN = 20


@dataclass(frozen=True)
class Limits:
    """What an upload may be."""

    max_bytes: int = 25 * 1024 * 1024  #: per file
    max_pixels: int = 40_000_000  #: width x height per file
    max_files: int = 20  #: per job
    max_steps: int = 1000
    keep_seconds: float = 3600.0  #: finished jobs (and their files) are deleted after this
    max_queued: int = 20  #: jobs waiting to run; more are refused (429)
    read_timeout: float = 120.0  #: seconds the whole request body may take to arrive
    max_body: int | None = None  #: bytes per request; None: max_files x max_bytes + 1 MiB

    @property
    def body_limit(self) -> int:
        return self.max_body if self.max_body is not None else self.max_files * self.max_bytes + 2**20


class QueueFull(Exception):
    pass


@dataclass
class Job:
    id: str
    names: list[str]
    strength: str
    steps: int | None
    seed: int | None
    folder: Path
    uploads: list[Path] = field(default_factory=list)  #: the uploaded files, decoded only when the job runs
    status: str = "queued"  #: queued, running, done, failed
    error: str | None = None
    image: int = 0  #: index of the image being protected
    step: int = 0
    steps_total: int = 0
    objective: float | None = None
    results: list[dict] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None

    def eta_seconds(self) -> float | None:
        """Seconds left, from the time per step so far (None until a step is done)."""
        if self.status != "running" or self.started is None or not self.steps_total or self.step == 0:
            return None
        done = (self.image + self.step / self.steps_total) / max(len(self.names), 1)
        elapsed = time.time() - self.started
        return max(elapsed / done - elapsed, 0.0) if done > 0 else None

    def as_dict(self, position: int | None = None) -> dict:
        return {
            "id": self.id, "status": self.status, "error": self.error, "names": self.names,
            "strength": self.strength, "steps": self.steps, "position": position,
            "progress": {"image": self.image, "images": len(self.names), "step": self.step, "steps": self.steps_total,
                         "objective": self.objective, "eta_seconds": self.eta_seconds()},
            "results": self.results,
        }


def difference_image(original: np.ndarray, protected: np.ndarray, gain: int = DIFF_GAIN) -> np.ndarray:
    """The perturbation made visible: mid-grey + (protected - original) x ``gain``, uint8 RGB."""
    d = protected[..., :3].astype(np.int32) - original[..., :3].astype(np.int32)
    return np.clip(128 + gain * d, 0, 255).astype(np.uint8)


class Worker:
    """Runs queued jobs one after the other in a background thread."""

    def __init__(self, protector_factory: Callable[[], Any], root: Path, limits: Limits):
        self._factory = protector_factory
        self._protector = None
        self.root = root
        self.limits = limits
        self.jobs: dict[str, Job] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._order: list[str] = []  #: queued job ids, in order
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="imguard-serve-worker", daemon=True)
        self._stop = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def protector(self):
        if self._protector is None:
            self._protector = self._factory()
        return self._protector

    def queued(self) -> int:
        with self._lock:
            return len(self._order)

    def submit(self, job: Job) -> int:
        with self._lock:
            if len(self._order) >= self.limits.max_queued:
                raise QueueFull(len(self._order))
            self.jobs[job.id] = job
            self._order.append(job.id)
            position = len(self._order)
        self._queue.put(job.id)
        return position

    def position(self, job_id: str) -> int | None:
        with self._lock:
            return self._order.index(job_id) + 1 if job_id in self._order else None

    def delete(self, job_id: str) -> bool:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or job.status == "running":
                return False
            self.jobs.pop(job_id)
            if job_id in self._order:
                self._order.remove(job_id)
        shutil.rmtree(job.folder, ignore_errors=True)
        _release_memory()
        return True

    def _expire(self) -> None:
        now = time.time()
        for job in list(self.jobs.values()):
            if job.finished is not None and now - job.finished > self.limits.keep_seconds:
                self.delete(job.id)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job_id = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._expire()
                continue
            if job_id is None:
                break
            with self._lock:
                job = self.jobs.get(job_id)
                if job is None:
                    continue
                self._order.remove(job_id)
                job.status = "running"
                job.started = time.time()
            try:
                self._protect(job)
                job.status = "done"
            except Exception as e:  # noqa: BLE001 - the page shows what went wrong
                log.exception("job %s failed", job.id)
                job.status = "failed"
                job.error = _client_error(e, job, self.root)
            finally:
                for path in job.uploads:
                    path.unlink(missing_ok=True)
                job.finished = time.time()
                _release_memory()

    def _protect(self, job: Job) -> None:
        from PIL import Image

        from ..io import read_image
        from ..methods import get_method
        from ..result import objective_sign

        protector = self.protector
        job.started = time.time()  # the models are loaded: time from here
        req = job_request(job.strength, job.steps)
        sign = objective_sign(get_method(req.method).maximize)  # objective: higher = stronger
        for i, (name, upload) in enumerate(zip(job.names, job.uploads)):
            job.image, job.step, job.objective = i, 0, None
            img = read_image(upload, max_pixels=self.limits.max_pixels)
            preview = img.convert("RGB")
            preview.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
            preview.save(job.folder / f"{i:03d}-original.png", format="PNG")
            del preview

            def progress(step: int, steps: int, loss, _job=job) -> None:
                _job.step, _job.steps_total = step + 1, steps
                _job.objective = sign * float(loss[0])

            res = protector.protect(img, method=req.method, strength=req.strength, steps=job.steps, seed=job.seed,
                                    callback=progress, return_result=True)
            out = res.image
            stem = Path(safe_filename(name, f"image{i + 1}")).stem
            protected_path = job.folder / f"{i:03d}-protected.png"
            out.save(protected_path, format="PNG")
            orig = np.asarray(img.convert("RGBA" if out.mode == "RGBA" else "RGB"))
            prot = np.asarray(out)
            Image.fromarray(difference_image(orig, prot)).save(job.folder / f"{i:03d}-diff.png", format="PNG")
            del orig, prot, img
            checks = res.check or []
            job.results.append({
                "name": name,
                "download_name": safe_filename(f"{stem}-protected.png"),
                "protected": f"/api/jobs/{job.id}/images/{i}/protected",
                "original": f"/api/jobs/{job.id}/images/{i}/original",
                "diff": f"/api/jobs/{job.id}/images/{i}/diff",
                "width": out.size[0], "height": out.size[1],
                "eps": res.eps, "achieved": res.achieved[0], "norm": res.norm,
                "method": res.method, "strength": res.strength, "steps": res.steps, "seconds": round(res.seconds, 2),
                "objective": [res.initial_objective[0], res.final_objective[0]],
                "summary": res.summary(),
                "check": [{**c.as_dict(), "line": c.line()} for c in checks],
                "visibility": res.visibility[0].as_dict() if res.visibility else None,
            })


def job_request(strength: str, steps: int | None):
    """The request of a job of the page: a strength and optional steps (:func:`imguard.request.resolve`)."""
    from ..request import resolve

    return resolve(strength=strength, steps=steps)


_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def _read_upload(upload, folder: Path, index: int, limits: Limits) -> tuple[str, Path]:
    """Write one upload into ``folder`` (bounded) and check its header: (name, path).

    The file stays as uploaded (compressed) until its job runs; it is decoded only then.
    """
    from PIL import Image

    name = safe_filename(upload.filename or "", f"upload{index + 1}")
    path = folder / f"upload-{index:03d}"
    size = 0
    try:
        with open(path, "wb") as f:
            while chunk := upload.file.read(1 << 20):
                size += len(chunk)
                if size > limits.max_bytes:
                    raise HTTPException(413, f"{name} is larger than {limits.max_bytes / 2**20:.0f} MB, the limit per photo; "
                                             "make it smaller (or start the server with a larger --max-mb)")
                f.write(chunk)
        if size == 0:
            raise HTTPException(400, f"{name} is empty; choose a photo file")
        too_many = (f"has too many pixels: the limit is {limits.max_pixels / 1e6:.0f} Mpixels "
                    f"({limits.max_pixels} pixels); make the photo smaller (or start the server with a larger --max-pixels)")
        try:
            with Image.open(path) as probe:
                w, h = probe.size
                frames = getattr(probe, "n_frames", 1) or 1
        except Image.DecompressionBombError as e:  # Pillow refuses to even open it: far too many pixels
            m = _BOMB_PIXELS.search(str(e))
            declared = f" (it declares {int(m.group(1)) / 1e6:.0f} Mpixels)" if m else ""
            raise HTTPException(413, f"{name} {too_many}{declared}") from None
        except Exception:  # noqa: BLE001 - any failure to identify means: not an image
            raise HTTPException(415, f"{name} is not an image imguard can read; upload a PNG, JPEG, WebP, BMP or TIFF photo") from None
        if w * h > limits.max_pixels:
            raise HTTPException(413, f"{name} is {w}x{h} = {w * h / 1e6:.1f} Mpixels and {too_many}")
        if w <= 0 or h <= 0:
            raise HTTPException(415, f"{name} is empty ({w}x{h} pixels); upload a photo")
        if frames > 1:
            raise HTTPException(415, f"{name} has {frames} frames (an animation or a multi-page file); upload a single photo")
        return name, path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _client_error(e: Exception, job: Job, root: Path) -> str:
    """What the page may show of a failure: imguard's own message with the server's paths
    replaced by the photo's name; anything else by its kind only (details in the log)."""
    from ..io import ImageReadError

    text = str(e)
    if isinstance(e, ImageReadError) or text.startswith("imguard"):
        for name, upload in zip(job.names, job.uploads):
            text = text.replace(str(upload), name)
        text = text.replace(str(root), "<temp>")
        return re.sub(r"(?:[A-Za-z]:)?[/\\](?:[^\s/\\'\"]+[/\\])+([^\s/\\'\"]+)", r"\1", text)
    return f"the protection failed ({type(e).__name__}); the server's log has the details"


def _release_memory() -> None:
    """Give the memory of finished work back to the system (glibc keeps freed blocks otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def create_app(
    protector: Any = None,
    *,
    protector_factory: Callable[[], Any] | None = None,
    limits: Limits | None = None,
    tmp_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    allow_hosts: tuple[str, ...] | list[str] = (),
    token: str | None = None,
    api_docs: bool = False,
):
    """The FastAPI app. Give a ready ``protector`` (tests: tiny models) or a ``protector_factory``
    called once in the worker (the CLI: models load in the background, the page opens at once);
    with neither, ``imguard.Protector()`` (the presets' offline models).

    ``host`` is the address the server listens on: it and the loopback names are the Host
    names answered (``allow_hosts`` adds more). ``token`` is the per-server secret every API
    request must carry (required when ``host`` is not loopback; see :mod:`.security`).
    ``api_docs`` serves ``/openapi.json`` and ``/docs``.
    """
    if token is None and not is_loopback(host):
        raise ValueError(f"serving on {host} (beyond this computer) needs a token: pass token=secrets.token_urlsafe()")
    if protector is not None and protector_factory is not None:
        raise TypeError("give protector or protector_factory, not both")
    if protector is not None:
        factory = lambda: protector  # noqa: E731
    elif protector_factory is not None:
        factory = protector_factory
    else:
        def factory():
            from ..api import Protector

            return Protector()
    limits = limits or Limits()
    state: dict[str, Any] = {}

    def worker() -> Worker:
        if "worker" not in state:
            raise HTTPException(503, "the server is starting or stopping; try again in a moment")
        return state["worker"]

    @asynccontextmanager
    async def lifespan(app):
        root = Path(tempfile.mkdtemp(prefix="imguard-serve-", dir=tmp_dir))
        w = Worker(factory, root, limits)
        w.start()
        state["worker"] = w
        app.state.tmp_root = root
        try:
            yield
        finally:
            state.pop("worker", None)
            w.stop()
            shutil.rmtree(root, ignore_errors=True)

    app = FastAPI(title="imguard", lifespan=lifespan, redoc_url=None, docs_url="/docs" if api_docs else None,
                  openapi_url="/openapi.json" if api_docs else None)
    app.add_middleware(Guard, hosts=allowed_hosts(host, allow_hosts), token=token, max_body=limits.body_limit,
                       read_timeout=limits.read_timeout, api_docs=api_docs)

    @app.get("/", response_class=HTMLResponse)
    def index():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/static/{name}")
    def static(name: str):
        kinds = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in kinds:
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(STATIC / name, media_type=kinds[name])

    @app.get("/api/info")
    def info():
        return {
            "strengths": [{"name": p.name, "description": p.description, "eps": p.options.get("eps"),
                           "steps": p.options.get("steps"), "caveat": p.caveat} for p in PRESETS.values()],
            "default_strength": DEFAULT_STRENGTH,
            "limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels, "max_files": limits.max_files,
                       "max_steps": limits.max_steps, "max_queued": limits.max_queued, "max_body": limits.body_limit},
            "diff_gain": DIFF_GAIN,
        }

    def queue_full(waiting: int) -> HTTPException:
        return HTTPException(429, f"the queue is full: {waiting} jobs are waiting (the limit is {limits.max_queued}); "
                                  "your photos would be number " f"{waiting + 1} in line. Try again when one has finished.",
                             headers={"Retry-After": "30"})

    @app.post("/api/jobs")
    async def submit(request: Request):
        from starlette.datastructures import UploadFile
        from starlette.exceptions import HTTPException as StarletteHTTPException
        from starlette.formparsers import MultiPartException

        w = worker()
        if w.queued() >= limits.max_queued:  # before reading the body
            raise queue_full(w.queued())
        try:
            form = await request.form(max_files=limits.max_files, max_fields=8)
        except (MultiPartException, StarletteHTTPException) as e:  # Starlette turns the first into the second
            text = str(getattr(e, "detail", None) or e)
            if "Too many files" in text:
                raise HTTPException(413, f"too many photos in one go; the limit is {limits.max_files}: upload them in "
                                         "smaller groups") from None
            raise HTTPException(400, f"the upload could not be read as a form: {text}") from None
        try:
            files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
            strength = str(form.get("strength") or DEFAULT_STRENGTH)
            n_steps = _int_field("steps", str(form.get("steps") or ""), 1, limits.max_steps)
            n_seed = _int_field("seed", str(form.get("seed") or ""), 0, 2**31 - 1)
            try:  # what the worker will run, decided now: a strength it cannot run is refused before any upload is read
                strength = job_request(strength, n_steps).strength
            except ValueError:
                raise HTTPException(400, f"unknown strength {strength!r}; choose one of: {', '.join(PRESETS)}") from None
            if not files:
                raise HTTPException(400, "no photo was uploaded; choose one or more image files")
            if len(files) > limits.max_files:
                raise HTTPException(413, f"{len(files)} photos in one go; the limit is {limits.max_files}: upload them in smaller groups")
            job_id = uuid.uuid4().hex[:12]
            folder = w.root / job_id
            folder.mkdir()

            def read_all():
                return [_read_upload(f, folder, i, limits) for i, f in enumerate(files)]

            try:
                stored = await run_in_threadpool(read_all)
                job = Job(job_id, [n for n, _ in stored], strength, n_steps, n_seed, folder, uploads=[p for _, p in stored])
                position = w.submit(job)
            except QueueFull as e:
                shutil.rmtree(folder, ignore_errors=True)
                raise queue_full(e.args[0]) from None
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        finally:
            await form.close()
        return JSONResponse({"id": job_id, "position": position}, status_code=202)

    @app.get("/api/jobs")
    def jobs():
        w = worker()
        return {"jobs": [j.as_dict(w.position(j.id)) for j in sorted(w.jobs.values(), key=lambda j: j.created)]}

    def get_job(job_id: str) -> Job:
        job = worker().jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (finished jobs are deleted after {limits.keep_seconds / 60:.0f} minutes)")
        return job

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str):
        job = get_job(job_id)
        return job.as_dict(worker().position(job_id))

    @app.get("/api/jobs/{job_id}/images/{index}/{kind}")
    def job_image(job_id: str, index: int, kind: str):
        job = get_job(job_id)
        if kind not in ("protected", "diff", "original"):
            raise HTTPException(404, "image kind must be 'protected', 'diff' or 'original'")
        if not 0 <= index < len(job.results):
            raise HTTPException(404, f"job {job_id} has no finished image {index}")
        path = job.folder / f"{index:03d}-{kind}.png"
        stem = Path(job.results[index]["name"]).stem
        name = safe_filename(job.results[index]["download_name"] if kind == "protected" else f"{stem}-{kind}.png")
        return FileResponse(path, media_type="image/png", filename=name)

    @app.get("/api/jobs/{job_id}/zip")
    def job_zip(job_id: str):
        job = get_job(job_id)
        if not job.results:
            raise HTTPException(404, f"job {job_id} has no finished images yet")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            used: set[str] = set()
            for i, r in enumerate(job.results):
                arc = safe_filename(r["download_name"], f"image{i + 1}-protected.png")
                if arc.lower() in used:
                    arc = f"{Path(arc).stem}-{i + 1}.png"
                used.add(arc.lower())
                z.write(job.folder / f"{i:03d}-protected.png", arc)
        buf.seek(0)
        return StreamingResponse(buf, media_type="application/zip",
                                 headers={"Content-Disposition": f'attachment; filename="imguard-{job_id}.zip"'})

    @app.delete("/api/jobs/{job_id}")
    def job_delete(job_id: str):
        get_job(job_id)
        if not worker().delete(job_id):
            raise HTTPException(409, f"job {job_id} is running; delete it when it has finished")
        return {"deleted": job_id}

    return app


def _int_field(name: str, value: str, lo: int, hi: int) -> int | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number, got {value!r}") from None
    if not lo <= n <= hi:
        raise HTTPException(400, f"{name} must be between {lo} and {hi}, got {n}")
    return n


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    """Run ``app`` with uvicorn until interrupted (failed jobs' details go to this log)."""
    import uvicorn

    logging.basicConfig(format="imguard serve: %(levelname)s: %(message)s")
    log.setLevel(logging.INFO)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5)
