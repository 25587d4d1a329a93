"""``imguard serve``: a local web page that protects photos.

One FastAPI app, one self-contained HTML page (``static/index.html``, nothing loaded from
outside), and one background worker thread that runs the protections one job at a time, so
the page stays responsive and shows the queue. Uploads are checked (size in bytes, a
decodable image, a pixel limit), written only inside the server's temporary folder, and the
uploaded file is deleted as soon as it is decoded; results stay in that folder until the job
is deleted, expires, or the server stops (then the whole folder is removed).

    from imguard.serve import create_app
    app = create_app(protector=imguard.Protector(device="cpu"))     # any Protector: injectable

The HTTP API (what the page uses; JSON unless said):

- ``GET /api/info``: strengths, limits.
- ``POST /api/jobs`` (multipart: ``files`` one or more, ``strength``, optional ``steps``,
  ``seed``): queues a job, answers ``{"id", "position"}``; 400/413/415 with ``{"detail"}``
  saying what was wrong with which file.
- ``GET /api/jobs``: the queue; ``GET /api/jobs/{id}``: status, per-step progress, results.
- ``GET /api/jobs/{id}/images/{i}/protected`` (PNG download) and ``.../diff`` (|delta| x 20
  around grey); ``GET /api/jobs/{id}/zip``: every protected PNG of the job.
- ``DELETE /api/jobs/{id}``: forget the job and delete its files.
"""

from __future__ import annotations

import io
import queue
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
    from fastapi import FastAPI, File, Form, HTTPException, UploadFile
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        f"imguard serve needs FastAPI and uvicorn ({e}); install them with: pip install 'imguard[serve]'"
    ) from e

from ..presets import DEFAULT_STRENGTH, STRENGTHS as PRESETS  # the optimisation presets and fast

__all__ = ["DIFF_GAIN", "Job", "Limits", "Worker", "create_app", "difference_image"]

STATIC = Path(__file__).resolve().parent / "static"
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


@dataclass
class Job:
    id: str
    names: list[str]
    strength: str
    steps: int | None
    seed: int | None
    folder: Path
    inputs: list[Any] = field(default_factory=list)  #: decoded PIL images, dropped when done
    status: str = "queued"  #: queued, running, done, failed
    error: str | None = None
    image: int = 0  #: index of the image being protected
    step: int = 0
    steps_total: int = 0
    objective: float | None = None
    results: list[dict] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    finished: float | None = None

    def as_dict(self, position: int | None = None) -> dict:
        return {
            "id": self.id, "status": self.status, "error": self.error, "names": self.names,
            "strength": self.strength, "steps": self.steps, "position": position,
            "progress": {"image": self.image, "images": len(self.names), "step": self.step, "steps": self.steps_total,
                         "objective": self.objective},
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

    def submit(self, job: Job) -> int:
        with self._lock:
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
        job.inputs.clear()
        shutil.rmtree(job.folder, ignore_errors=True)
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
            try:
                self._protect(job)
                job.status = "done"
            except Exception as e:  # noqa: BLE001 - the page shows what went wrong
                job.status = "failed"
                job.error = f"{type(e).__name__}: {e}" if not str(e).startswith("imguard") else str(e)
            finally:
                job.inputs.clear()
                job.finished = time.time()

    def _protect(self, job: Job) -> None:
        from PIL import Image

        from ..methods import get_method

        protector = self.protector
        sign = 1.0 if get_method(PRESETS[job.strength].method).maximize else -1.0  # objective: higher = stronger
        for i, (name, img) in enumerate(zip(job.names, job.inputs)):
            job.image, job.step, job.objective = i, 0, None

            def progress(step: int, steps: int, loss, _job=job) -> None:
                _job.step, _job.steps_total = step + 1, steps
                _job.objective = sign * float(loss[0])

            res = protector.protect(img, strength=job.strength, steps=job.steps, seed=job.seed,
                                    callback=progress, return_result=True)
            out = res.image
            stem = Path(name).stem or f"image{i + 1}"
            protected_path = job.folder / f"{i:03d}-protected.png"
            out.save(protected_path, format="PNG")
            orig = np.asarray(img.convert("RGBA" if out.mode == "RGBA" else "RGB"))
            prot = np.asarray(out)
            Image.fromarray(difference_image(orig, prot)).save(job.folder / f"{i:03d}-diff.png", format="PNG")
            checks = res.check or []
            job.results.append({
                "name": name,
                "download_name": f"{stem}-protected.png",
                "protected": f"/api/jobs/{job.id}/images/{i}/protected",
                "diff": f"/api/jobs/{job.id}/images/{i}/diff",
                "width": out.size[0], "height": out.size[1],
                "eps": res.eps, "achieved": res.achieved[0], "norm": res.norm,
                "method": res.method, "strength": res.strength, "steps": res.steps, "seconds": round(res.seconds, 2),
                "objective": [res.initial_objective[0], res.final_objective[0]],
                "summary": res.summary(),
                "check": [{**c.as_dict(), "line": c.line()} for c in checks],
            })


def _read_upload(upload, folder: Path, index: int, limits: Limits):
    """Write one upload into ``folder`` (bounded), decode it, delete the file: a PIL image."""
    from PIL import Image

    from ..io import ImageReadError, read_image

    name = Path(upload.filename or f"upload{index + 1}").name
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
        try:
            with Image.open(path) as probe:
                w, h = probe.size
        except Exception:  # noqa: BLE001 - any failure to identify means: not an image
            raise HTTPException(415, f"{name} is not an image imguard can read; upload a PNG, JPEG, WebP, BMP or TIFF photo") from None
        if w * h > limits.max_pixels:
            raise HTTPException(413, f"{name} is {w}x{h} = {w * h / 1e6:.1f} Mpixels; the limit is "
                                     f"{limits.max_pixels / 1e6:.0f} Mpixels: make the photo smaller (or start the server with a larger --max-mpixels)")
        try:
            img = read_image(path)
        except ImageReadError:
            raise HTTPException(415, f"{name} could not be decoded (a damaged or unsupported image); upload a PNG, JPEG, WebP, BMP or TIFF photo") from None
        return name, img
    finally:
        path.unlink(missing_ok=True)


def create_app(
    protector: Any = None,
    *,
    protector_factory: Callable[[], Any] | None = None,
    limits: Limits | None = None,
    tmp_dir: str | Path | None = None,
):
    """The FastAPI app. Give a ready ``protector`` (tests: tiny models) or a ``protector_factory``
    called once in the worker (the CLI: models load in the background, the page opens at once);
    with neither, ``imguard.Protector()`` (the presets' offline models)."""
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

    app = FastAPI(title="imguard", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/api/info")
    def info():
        return {
            "strengths": [{"name": p.name, "description": p.description, "eps": p.options.get("eps"),
                           "steps": p.options.get("steps")} for p in PRESETS.values()],
            "default_strength": DEFAULT_STRENGTH,
            "limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels, "max_files": limits.max_files,
                       "max_steps": limits.max_steps},
            "diff_gain": DIFF_GAIN,
        }

    @app.post("/api/jobs")
    def submit(files: list[UploadFile] = File(...), strength: str = Form(DEFAULT_STRENGTH),
               steps: str = Form(""), seed: str = Form("")):
        w = worker()
        if strength not in PRESETS:
            raise HTTPException(400, f"unknown strength {strength!r}; choose one of: {', '.join(PRESETS)}")
        n_steps = _int_field("steps", steps, 1, limits.max_steps)
        n_seed = _int_field("seed", seed, 0, 2**31 - 1)
        if not files:
            raise HTTPException(400, "no photo was uploaded; choose one or more image files")
        if len(files) > limits.max_files:
            raise HTTPException(413, f"{len(files)} photos in one go; the limit is {limits.max_files}: upload them in smaller groups")
        job_id = uuid.uuid4().hex[:12]
        folder = w.root / job_id
        folder.mkdir()
        try:
            decoded = [_read_upload(f, folder, i, limits) for i, f in enumerate(files)]
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        job = Job(job_id, [n for n, _ in decoded], strength, n_steps, n_seed, folder, inputs=[im for _, im in decoded])
        position = w.submit(job)
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
        if kind not in ("protected", "diff"):
            raise HTTPException(404, "image kind must be 'protected' or 'diff'")
        if not 0 <= index < len(job.results):
            raise HTTPException(404, f"job {job_id} has no finished image {index}")
        path = job.folder / f"{index:03d}-{kind}.png"
        name = job.results[index]["download_name"] if kind == "protected" else f"{Path(job.results[index]['name']).stem}-difference.png"
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
                arc = r["download_name"]
                if arc in used:
                    arc = f"{Path(arc).stem}-{i + 1}.png"
                used.add(arc)
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
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
