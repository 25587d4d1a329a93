"""Protecting many images on a Ray cluster (``pip install "imguard[ray]"``).

The same work as ``imguard protect`` (:mod:`imguard.bulk`), spread over Ray Data actors:

- the driver plans as :mod:`imguard.bulk` does (:func:`~imguard.bulk.plan`, then
  :meth:`~imguard.bulk.Runner.units`: skips, planned failures, the size of every file from its
  header, batches of same-sized files), writes a ``started`` record per file to the manifest,
  and hands the batches to Ray as rows;
- :class:`ProtectWorker` is a Ray Data actor class: each actor builds ONE
  :class:`~imguard.Protector` when it starts (on the GPU or CPUs Ray gives it) and protects the
  batches it receives with :meth:`~imguard.bulk.Runner.run_unit`, the code ``imguard protect``
  runs: a batch that fails is retried one file at a time, a file that fails becomes a
  ``failed`` record, never the end of the run;
- the driver appends every ``done``/``failed`` record to ``imguard-manifest.jsonl`` (only the
  driver writes it) as the results stream back, so a run cut off anywhere resumes like
  ``imguard protect``: done outputs with the same input hash and settings are skipped.

Ray decides where and when a batch runs, never what is in it: the batches are formed on the
driver exactly as without Ray, so the outputs are the same bytes as ``imguard protect`` with the
same ``--batch-size`` and ``--seed`` (and as :meth:`Protector.protect_many` when all images share
one size). A seed applies to one ``protect`` call: in a batch of several images the random start,
the transformations and facelock's batch decoys are drawn for the batch, so an image's result
depends on its batch mates; with ``batch_size=1`` it depends on the image, the settings and the
seed only.

Inputs and outputs are files that every worker can reach (a local cluster, or a shared or
mounted filesystem on a real one); relative paths are taken from the driver's folder.

A platform whose uploads are already a Ray Dataset (bytes, paths or URIs in a column) calls
:func:`protect_dataset` instead: a Dataset in, a Dataset out with the protected PNG bytes and a
status, the input's sha256, the settings, the budget reached and the visibility per row (a row
that fails is a ``failed`` row), protected by :class:`ProtectDatasetWorker` actors, one
Protector each. It keeps no manifest: the returned Dataset is the record, written wherever the
platform writes its data.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

from .bulk import FatalError, Job, Manifest, RecordList, Report, RunOptions, Runner, batches

RAY_MISSING = 'Ray is not installed: pip install "imguard[ray]" (or pip install "ray[data]") to protect on a Ray cluster'


def require_ray():
    """The ``ray`` module with Ray Data, or ImportError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(RAY_MISSING) from e
    return ray


def _job_to_dict(job: Job) -> dict:
    d = asdict(job)
    d["src"], d["dst"] = str(job.src), str(job.dst)
    return d


def _job_from_dict(d: dict) -> Job:
    return Job(**{**d, "src": Path(d["src"]), "dst": Path(d["dst"])})


class ProtectWorker:
    """A Ray Data actor (``ds.map_batches(ProtectWorker, fn_constructor_kwargs=..., concurrency=N)``):
    one Protector per actor, built by ``protector_factory()`` (a picklable callable) when the
    actor starts; every row's ``unit`` (a JSON list of jobs) is protected as one batch; the
    output rows are the manifest records, one ``record`` (JSON) per file."""

    def __init__(self, protector_factory: Callable[[], Any], settings: dict, opts: RunOptions,
                 cwd: str | None = None, threads: int | None = None):
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # relative inputs and outputs as the driver sees them
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        self.protector = protector_factory()
        if hasattr(self.protector, "load_models"):  # a model that does not load fails the run here
            self.protector.load_models()
        self.settings = settings
        self.opts = RunOptions(**{**asdict(opts), "fail_fast": False, "quiet": True})

    def __call__(self, batch: dict) -> dict:
        sink = RecordList()
        runner = Runner(self.protector, sink, self.settings, self.opts, write=lambda s: None, err=lambda s: None)
        for unit in batch["unit"]:
            runner.run_unit([_job_from_dict(d) for d in json.loads(unit)])
        records = [r for r in sink.items if r["status"] != "started"]  # the driver wrote those
        return {"record": [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records]}


def connect(address: str | None = None, **init_kwargs: Any) -> bool:
    """Start or join a Ray cluster unless this process already did; True when this call
    started the connection (the caller then shuts it down). ``address``: None or "local" for
    a new local cluster, "auto" for the running one, or ``ray://HOST:PORT``."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False, **init_kwargs}
    if address and address != "local":
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise FatalError(f"cannot connect to the Ray cluster at {address}: {e}; start one with `ray start --head`, "
                         "or drop the address to run on a local cluster") from e
    return True


def resources(workers: int | None, device: str | None) -> tuple[int, float, float]:
    """(actors, GPUs per actor, CPUs per actor) for the connected cluster: one actor per GPU
    when the cluster has GPUs (and ``device`` is not cpu), else ``workers`` (default 1) actors
    sharing the CPUs."""
    ray = require_ray()
    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), float(total.get("CPU", 1))
    if gpus and (device is None or str(device).startswith("cuda")):
        n = workers or gpus
        return n, 1.0 if n <= gpus else gpus / n, 1.0
    n = workers or 1
    return n, 0.0, max(1.0, cpus // n)


def protect_units(units: list[list[Job]], protector_factory: Callable[[], Any], settings: dict, opts: RunOptions,
                  *, workers: int = 1, num_gpus: float = 0.0, num_cpus: float = 1.0) -> Iterator[dict]:
    """Protect planned batches (:meth:`~imguard.bulk.Runner.units`) on the connected Ray
    cluster with ``workers`` :class:`ProtectWorker` actors; yields each file's record (``done``
    or ``failed``) as it comes back. Outputs are written by the workers."""
    ray = require_ray()
    if not units:
        return
    ds = ray.data.from_items([{"unit": json.dumps([_job_to_dict(j) for j in u])} for u in units],
                             override_num_blocks=min(len(units), max(1, workers) * 4))
    ds = ds.map_batches(
        ProtectWorker, batch_size=1, concurrency=max(1, workers), num_gpus=num_gpus or None, num_cpus=num_cpus,
        fn_constructor_kwargs={"protector_factory": protector_factory, "settings": settings, "opts": opts,
                               "cwd": os.getcwd(), "threads": None if num_gpus else max(1, int(num_cpus))},
    )
    for row in ds.iter_rows():
        yield json.loads(row["record"])


def run(jobs: list[Job], protector_factory: Callable[[], Any], manifest: Manifest, settings: dict, opts: RunOptions,
        *, address: str | None = None, workers: int | None = None, device: str | None = None,
        write: Callable[[str], None] | None = None, err: Callable[[str], None] | None = None,
        init_kwargs: dict | None = None) -> Report:
    """``imguard protect --ray``: plan on this process, protect on the cluster, record here."""
    require_ray()
    if opts.fail_fast:
        from .bulk import UsageError

        raise UsageError("--fail-fast does not work with --ray (the workers run at the same time); drop one of them")
    runner = Runner(None, manifest, settings, opts, write, err)
    units = runner.units(jobs)
    if not units:
        return runner.report
    by_rel = {j.rel: j for u in units for j in u}
    manifest.extend([runner.record(j, "started") for u in units for j in u])
    started = connect(address, **(init_kwargs or {}))
    try:
        n, gpus, cpus = resources(workers, device)
        if not opts.quiet:
            runner.write(f"imguard: {len(by_rel)} files in {len(units)} batches on Ray: {n} worker(s), "
                         f"{gpus:g} GPU and {cpus:g} CPU each")
        try:
            for rec in protect_units(units, protector_factory, settings, opts, workers=n, num_gpus=gpus, num_cpus=cpus):
                job = by_rel[rec["output"]]
                job.sha256 = rec.get("input_sha256")
                manifest.append(rec)
                if rec["status"] == "done":
                    runner.report.protected.append(job)
                    if not opts.quiet:
                        runner.write(f"{job.src} -> {job.dst}  (max |delta| {rec['achieved']:.2f}/255 of eps {rec['eps']:g})")
                        if rec.get("check"):
                            runner.write(f"  {rec['check']}")
                else:
                    job.action, job.reason = "fail", rec.get("error", "")
                    runner.report.failed.append(job)
                    runner.err(f"imguard: failed: {job.src}: {job.reason}")
        except FatalError:
            raise
        except Exception as e:  # noqa: BLE001 - a worker that cannot start (models) or a lost cluster
            raise FatalError(f"the Ray run stopped: {_root_cause(e)}; run the same command again to go on "
                             "(finished files are kept)") from e
    finally:
        if started:
            require_ray().shutdown()
    return runner.report


def _root_cause(e: BaseException) -> str:
    """The original error's line out of a Ray exception (whose text carries the worker's
    traceback), else the innermost error's first line."""
    import re

    chain, seen = [], set()
    while isinstance(e, BaseException) and id(e) not in seen and len(chain) < 10:
        seen.add(id(e))
        chain.append(e)
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    lines = [ln.strip() for x in chain for ln in str(x).splitlines()]
    found = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception): \S", ln)]
    if found:
        name, _, message = found[-1].partition(": ")
        return f"{name.rsplit('.', 1)[-1]}: {message}"  # without the module path
    inner = chain[-1]
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0] if text else ''}"


# ---------------------------------------------------------------------------------------
# A Ray Dataset of uploads: protect_dataset
# ---------------------------------------------------------------------------------------
#: The columns :func:`protect_dataset` adds (what they hold: its doc).
OUTPUT_COLUMNS = ("protected", "status", "error", "input_sha256", "seed", "settings", "achieved", "eps",
                  "visibility", "check")

#: What a column may hold: ``bytes`` (encoded image files), ``path`` (local paths), ``uri``
#: (``file://``, a plain path, or any scheme pyarrow.fs or fsspec reads); ``auto`` picks
#: ``bytes`` for a binary column and ``uri`` for a string column.
KINDS = ("auto", "bytes", "path", "uri")

#: the package fsspec needs for a scheme (for the error message when it is missing)
_FSSPEC_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
                    "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp", "hf": "huggingface_hub",
                    "sftp": "paramiko", "ssh": "paramiko"}


def _output_types() -> dict:
    import pyarrow as pa

    return {"protected": pa.large_binary(), "status": pa.string(), "error": pa.string(), "input_sha256": pa.string(),
            "seed": pa.int64(), "settings": pa.string(), "achieved": pa.float64(), "eps": pa.float64(),
            "visibility": pa.string(), "check": pa.string()}


def _is_windows_path(text: str) -> bool:
    return len(text) > 2 and text[0].isalpha() and text[1] == ":" and text[2] in "\\/"


def _local_bytes(path: str) -> bytes:
    from .io import ImageReadError

    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"image file not found: {p}")
    if p.is_dir():
        raise ImageReadError(f"{p} is a folder, not an image file")
    return p.read_bytes()


def read_uri_bytes(uri: str, filesystem: Any = None, _cache: dict | None = None) -> bytes:
    """The bytes of the file at ``uri``: a plain path, ``file://``, or another scheme read with
    ``filesystem`` when given (a ``pyarrow.fs.FileSystem`` or an fsspec filesystem, as Ray
    Data's ``read_*(filesystem=...)``), else with ``pyarrow.fs`` (s3, gs, hdfs, abfs, ...) and,
    for schemes it does not know, fsspec when installed. Raises
    :class:`~imguard.io.ImageReadError` that names the URI; for a scheme nothing here reads, it
    names the scheme and what to install."""
    import urllib.parse
    import urllib.request

    from .io import ImageReadError

    text = str(uri)
    parsed = urllib.parse.urlparse(text)
    scheme = parsed.scheme.lower() if "://" in text and not _is_windows_path(text) else ""
    if parsed.scheme.lower() == "file":  # file:/abs/path too
        scheme = "file"
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ImageReadError(f"cannot read {text}: a file:// URI of another host ({parsed.netloc}); "
                                 "mount it and give its local path")
        local = urllib.request.url2pathname(parsed.path)
    else:
        local = text if not scheme else None
    try:
        if filesystem is not None:
            path = local if local is not None else text.split("://", 1)[1]
            opener = getattr(filesystem, "open_input_stream", None)
            with (opener(path) if opener else filesystem.open(path, "rb")) as fh:
                return fh.read()
        if local is not None:
            return _local_bytes(local)
        return _remote_bytes(text, scheme, {} if _cache is None else _cache)
    except ImageReadError:
        raise
    except (OSError, ValueError) as e:  # not found, no permission, a lost connection: this row's failure
        raise ImageReadError(f"cannot read {text}: {type(e).__name__}: {e}") from e


def _remote_bytes(uri: str, scheme: str, cache: dict) -> bytes:
    """``uri`` (a scheme other than file) with pyarrow.fs, else fsspec; filesystems are kept in
    ``cache`` per scheme and host, so a worker connects once."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    from .io import ImageReadError

    rest = uri.split("://", 1)[1]
    key = (scheme, rest.split("/", 1)[0])
    if key not in cache:
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:  # a scheme pyarrow does not read (here)
            cache[key] = ("fsspec", str(e).splitlines()[0] if str(e) else type(e).__name__, None)
        else:  # how its paths follow from the URIs (s3://bucket/key -> bucket/key), when they plainly do
            cache[key] = ("pyarrow", fs, len(rest) - len(path) if rest.endswith(path) else None)
    how, fs, cut = cache[key]
    if how == "pyarrow":
        plain = cut is not None and not any(c in rest for c in "%?#")
        with fs.open_input_stream(rest[cut:] if plain else pafs.FileSystem.from_uri(uri)[1]) as fh:
            return fh.read()
    pkg = _FSSPEC_PACKAGES.get(scheme)
    try:
        import fsspec
    except ImportError:
        raise ImageReadError(f"cannot read {uri}: pyarrow.fs does not read '{scheme}' URIs ({fs}) and fsspec is not "
                             f"installed: pip install fsspec{' ' + pkg if pkg else ''} (or pass filesystem=, or give "
                             "the images as a bytes column)") from None
    try:
        with fsspec.open(uri, "rb") as fh:
            return fh.read()
    except ImportError as e:  # fsspec knows the scheme; its package is missing
        raise ImageReadError(f"cannot read {uri}: fsspec reads '{scheme}' URIs with a package that is not installed "
                             f"({e}); pip install {pkg or 'it'}") from e
    except ValueError as e:
        if "protocol not known" in str(e).lower():
            raise ImageReadError(f"cannot read {uri}: nothing here reads '{scheme}' URIs (pyarrow.fs: {fs}; fsspec: {e}); "
                                 "give the images as a bytes column, or pass filesystem=") from e
        raise


def _row_error(e: BaseException) -> str:
    """One line: an unreadable image's own message, else the error's type and message."""
    from .io import ImageReadError

    text = str(e) if isinstance(e, ImageReadError) else f"{type(e).__name__}: {e}"
    return " ".join(text.split())


def _build_protector(protector: Any):
    """``protector`` of :func:`protect_dataset` -> a Protector (in the worker)."""
    from .api import Protector

    if protector is None:
        return Protector()
    if isinstance(protector, dict):
        return Protector(**protector)
    return protector()


def _column_kind(arrow_type: Any, column: str, kind: str) -> str:
    """``kind`` for a column of ``arrow_type`` (``auto`` resolved); TypeError for a column that
    cannot hold what ``kind`` says, or that holds no files (decoded arrays)."""
    import pyarrow as pa

    is_bytes = pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) or pa.types.is_fixed_size_binary(arrow_type)
    is_text = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    if pa.types.is_null(arrow_type):  # every value null: each row fails on its own
        return "bytes" if kind == "auto" else kind
    if not (is_bytes or is_text):
        raise TypeError(
            f"column {column!r} holds {arrow_type}, not image files: protect_dataset reads encoded image files (a "
            "bytes column: ray.data.read_binary_files(..., include_paths=True) gives 'bytes' and 'path') or their "
            "paths or URIs (a string column); decoded arrays (ray.data.read_images) have lost the EXIF orientation "
            "and colour profile imguard applies")
    if kind == "auto":
        return "bytes" if is_bytes else "uri"
    if kind == "bytes" and not is_bytes:
        raise TypeError(f"column {column!r} holds strings ({arrow_type}), not bytes: pass kind='uri' (or 'path') "
                        "to read the files they name")
    if kind in ("path", "uri") and not is_text:
        raise TypeError(f"column {column!r} holds bytes ({arrow_type}), not paths: pass kind='bytes' (or 'auto')")
    return kind


class ProtectDatasetWorker:
    """The Ray Data actor of :func:`protect_dataset`: ONE Protector per actor, built (and its
    models loaded) when the actor starts; each Ray batch (a ``pyarrow.Table``) comes back with
    the columns of :data:`OUTPUT_COLUMNS` added (see :func:`protect_dataset`)."""

    def __init__(self, protector: Any, column: str, kind: str = "auto", batch_size: int = 1, seed: int | None = None,
                 protect_kwargs: dict | None = None, filesystem: Any = None, drop_input: bool = False,
                 cwd: str | None = None, threads: int | None = None):
        from . import __version__
        from .io import DEFAULT_MAX_PIXELS

        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # relative paths as the driver sees them
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        self.column, self.kind, self.batch_size, self.seed = column, kind, max(1, int(batch_size)), seed
        self.kwargs = dict(protect_kwargs or {})
        self.filesystem, self.drop_input = filesystem, drop_input
        self._filesystems: dict = {}
        self.protector = _build_protector(protector)
        self.max_pixels = getattr(self.protector, "max_pixels", DEFAULT_MAX_PIXELS)
        kw = self.kwargs
        settings: dict = {"imguard": __version__, "method": kw.get("method"), "strength": kw.get("strength"),
                          "eps": kw.get("eps"), "steps": kw.get("steps"), "seed": seed, "batch_size": self.batch_size,
                          "working_size": getattr(self.protector, "working_size", None), "format": "png",
                          **{k: v for k, v in kw.items() if k not in ("method", "strength", "eps", "steps")}}
        if hasattr(self.protector, "request"):  # options that cannot work fail here, before any image
            options = {k: v for k, v in kw.items() if k not in ("method", "strength", "eps", "steps", "refine")}
            req = self.protector.request(kw.get("method"), kw.get("strength"), kw.get("eps"), kw.get("steps"), **options)
            settings.update(method=req.method, strength=req.strength, request=req.as_dict())
        if hasattr(self.protector, "load_models"):  # a model that does not load fails the run here
            self.protector.load_models(kw.get("method"), kw.get("strength"))
        self.settings = json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str)

    def _read(self, value: Any, kind: str) -> tuple[bytes, str]:
        """(the file's bytes, its label in errors) of one row's value."""
        from .io import ImageReadError

        if value is None:
            raise ImageReadError("no image in this row (the value is null)")
        if kind == "bytes":
            return bytes(value), "<bytes>"
        if kind == "path" and self.filesystem is None:
            return _local_bytes(value), value
        return read_uri_bytes(value, self.filesystem, self._filesystems), value

    def __call__(self, batch):
        import hashlib

        import pyarrow as pa

        from .io import read_image_bytes

        if self.column not in batch.column_names:
            raise KeyError(f"the dataset has no column {self.column!r}; its columns: {', '.join(batch.column_names)}")
        kind = _column_kind(batch.schema.field(self.column).type, self.column, self.kind)
        values = batch.column(self.column).to_pylist()
        n = len(values)
        out: dict[str, list] = {name: [None] * n for name in OUTPUT_COLUMNS}
        out["status"], out["seed"], out["settings"] = ["failed"] * n, [self.seed] * n, [self.settings] * n
        loaded = []
        for i, value in enumerate(values):
            try:
                data, label = self._read(value, kind)
                out["input_sha256"][i] = hashlib.sha256(data).hexdigest()
                loaded.append((i, label, read_image_bytes(data, label, max_pixels=self.max_pixels)))
            except Exception as e:  # noqa: BLE001 - an unreadable row is that row's failure
                out["error"][i] = _row_error(e)
        for group in batches(loaded, key=lambda item: item[2].size, size=self.batch_size):
            self._protect(group, out)
        table = batch.drop_columns([self.column]) if self.drop_input else batch
        for name, typ in _output_types().items():
            table = table.append_column(pa.field(name, typ), pa.array(out[name], type=typ))
        return table

    def _protect(self, group: list, out: dict[str, list]) -> None:
        """Protect same-sized images together (one at a time if the batch fails), as
        :meth:`~imguard.bulk.Runner.run_unit` does; fill their rows of ``out``."""
        import torch

        from .io import encode_image, from_tensor, to_tensor
        from .models import ModelLoadError
        from .result import batch_then_singly

        def protect(x, labels):
            return self.protector.protect(x, return_result=True, names=labels, seed=self.seed, progress=False,
                                          **self.kwargs)

        def together(items):
            xs = [to_tensor(img, name=label, max_pixels=self.max_pixels) for _, label, img in items]
            res = protect(torch.cat([x for x, _ in xs]), [label for _, label, _ in items])
            return [(res, k, info) for k, (_, info) in enumerate(xs)]

        def alone(item):  # the image itself: the result comes back as an image, as Protector.protect(img) gives it
            return protect(item[2], [item[1]]), 0, None

        def done(item, r) -> None:
            res, k, info = r
            i = item[0]
            try:
                img = res.image if info is None else from_tensor(res.image[k : k + 1], info)
                out["protected"][i] = encode_image(img, "PNG")
            except Exception as e:  # noqa: BLE001 - an image that cannot be encoded is that row's failure
                out["error"][i] = _row_error(e)
                return
            seen = res.visibility[k] if getattr(res, "visibility", None) and k < len(res.visibility) else None
            check = res.check[k] if getattr(res, "check", None) and k < len(res.check) else None
            out["status"][i], out["seed"][i] = "done", int(res.seed)
            out["achieved"][i], out["eps"][i] = float(res.achieved[k]), float(res.eps)
            out["visibility"][i] = json.dumps(seen.as_dict(), sort_keys=True) if seen is not None else None
            out["check"][i] = check.line() if check else None

        def failed(item, e: BaseException) -> None:
            out["error"][item[0]] = _row_error(e)

        batch_then_singly(group, together, alone, done, failed, reraise=(ModelLoadError,))


def protect_dataset(ds: Any, column: str = "bytes", *, kind: str = "auto", protector: Any = None,
                    seed: int | None = None, batch_size: int = 1, protect_kwargs: dict | None = None,
                    concurrency: int | tuple = 1, num_gpus: float = 0, num_cpus: float = 1,
                    filesystem: Any = None, drop_input: bool = False, **ray_remote_args: Any):
    """Protect the images of a Ray Dataset; returns a Dataset (lazy, like every Ray Data
    transformation) with the same rows, in order, and these columns added:

    - ``protected`` (binary): the protected image as PNG bytes (lossless, no metadata; tagged
      sRGB when the input was colour-managed), null when the row failed;
    - ``status`` (string): ``done`` or ``failed``; ``error`` (string): why it failed, else null;
    - ``input_sha256`` (string): the sha256 of the input file's bytes (null when it could not be read);
    - ``seed`` (int): the seed the row was protected with (give ``seed`` to reproduce it);
    - ``settings`` (string, JSON): imguard's version, method, strength, options, ``batch_size``
      and the resolved request, as the manifest of ``imguard protect`` records them;
    - ``achieved``, ``eps`` (float): the budget reached (max |delta|, /255) and the budget;
    - ``visibility`` (string, JSON): PSNR, SSIM, flat-region change and the gate's verdict;
    - ``check`` (string): the protection check's line, when the protector checks faces.

    A row that cannot be read, decoded or protected is a ``failed`` row, never the end of the
    run; a worker whose models do not load stops it (that error is raised when the dataset is
    consumed).

    ``column`` holds, per row, the image file's bytes (``kind="bytes"``; a binary column, e.g.
    from ``ray.data.read_binary_files``), a local path (``kind="path"``) or a URI
    (``kind="uri"``: ``file://``, a plain path, or another scheme, read with ``filesystem``
    when given (a ``pyarrow.fs`` or fsspec filesystem), else with ``pyarrow.fs`` (s3, gs, hdfs,
    abfs) or fsspec when installed; see :func:`read_uri_bytes`). ``kind="auto"``: bytes for a
    binary column, URIs for a string column. Paths are read by the workers: they must reach
    them (relative ones are taken from the driver's folder). ``drop_input=True`` leaves the
    input column out of the result (the other columns are kept).

    ``protector`` says how each worker builds its ONE :class:`~imguard.Protector`: a dict of
    its arguments (``{"strength": "high"}``), a picklable callable returning one
    (``functools.partial(Protector, ...)``), or None for ``Protector()``; not a Protector itself.
    ``seed``, ``protect_kwargs`` (method, strength, eps, steps, method options) are passed to
    every :meth:`~imguard.Protector.protect` call. ``batch_size`` consecutive rows are one Ray
    batch; its images of the same size are protected together. With ``batch_size=1`` (the
    default) a row's result depends on its image, the settings and the seed only: it is
    bit-identical to ``Protector.protect(image, seed=seed, **protect_kwargs)`` (on the same
    hardware and torch thread count); with larger batches, on its batch mates too.

    ``concurrency`` (actors, or Ray's (min, max) autoscaling pair), ``num_gpus`` and
    ``num_cpus`` (per actor) and ``ray_remote_args`` (e.g. ``memory``, ``accelerator_type``)
    go to ``Dataset.map_batches``. A GPU pool: ``concurrency=N, num_gpus=1``. A CPU actor runs
    torch on ``num_cpus`` threads.

    >>> ds = ray.data.read_binary_files("s3://uploads/today/", include_paths=True)
    >>> out = protect_dataset(ds, "bytes", protector={"strength": "medium"}, seed=0,
    ...                       concurrency=4, num_gpus=1, drop_input=True)
    >>> out.write_parquet("s3://uploads/protected/today/")   # path, protected, status, error, ...
    """
    require_ray()
    from .api import Protector

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be a whole number or None, got {seed!r}")
    if isinstance(protector, Protector):
        raise TypeError("pass how to build the Protector (a dict of its arguments, or a function returning one), not a "
                        "Protector: each Ray worker builds its own and loads its models once")
    if not (protector is None or isinstance(protector, dict) or callable(protector)):
        raise TypeError(f"protector must be a dict of Protector arguments, a function returning a Protector, or None; "
                        f"got {type(protector).__name__}")
    kwargs = dict(protect_kwargs or {})
    reserved = {"seed", "return_result", "names", "progress", "callback", "early_stop", "mask"} & set(kwargs)
    if reserved:
        raise ValueError(f"protect_kwargs cannot set {', '.join(sorted(reserved))}"
                         f"{' (give seed= to protect_dataset)' if 'seed' in reserved else ''}")
    schema = ds.schema(fetch_if_missing=False)
    if schema is not None:
        names = list(schema.names)
        if column not in names:
            raise KeyError(f"the dataset has no column {column!r}; its columns: {', '.join(names)} (pass column=)")
        clash = [c for c in OUTPUT_COLUMNS if c in names and not (drop_input and c == column)]
        if clash:
            raise ValueError(f"the dataset already has column(s) {', '.join(clash)}, which protect_dataset adds; "
                             "rename them first (ds.rename_columns)")
        try:
            import pyarrow as pa

            typ = schema.types[names.index(column)]
            if isinstance(typ, pa.DataType):
                _column_kind(typ, column, kind)
        except (ImportError, AttributeError, IndexError):
            pass
    _warn_if_actors_take_every_cpu(concurrency, num_cpus, num_gpus)
    threads = None if num_gpus else max(1, int(num_cpus or 1))
    return ds.map_batches(
        ProtectDatasetWorker, batch_size=batch_size, batch_format="pyarrow", zero_copy_batch=True,
        concurrency=concurrency, num_gpus=num_gpus or None, num_cpus=num_cpus, udf_modifying_row_count=False,
        fn_constructor_kwargs={"protector": protector, "column": column, "kind": kind, "batch_size": batch_size,
                               "seed": seed, "protect_kwargs": kwargs, "filesystem": filesystem,
                               "drop_input": drop_input, "cwd": os.getcwd(), "threads": threads},
        **ray_remote_args,
    )


def _warn_if_actors_take_every_cpu(concurrency: Any, num_cpus: float, num_gpus: float) -> None:
    """Actors that hold every CPU of the cluster leave none to the tasks before them (reading
    the files): Ray Data then waits for ever, silently. Say so up front."""
    import warnings

    ray = require_ray()
    if num_gpus or not ray.is_initialized():
        return
    n = concurrency if isinstance(concurrency, int) else (concurrency[-1] if concurrency else 1)
    cpus = float(ray.cluster_resources().get("CPU", 0))
    if cpus and n * float(num_cpus or 1) >= cpus:
        warnings.warn(f"imguard: {n} actor(s) with {num_cpus:g} CPU(s) each take all {cpus:g} CPUs of the Ray cluster: "
                      "if tasks read or transform the dataset before them (ray.data.read_binary_files does), they "
                      "cannot run and the run waits for ever; give fewer actors or a smaller num_cpus (e.g. 0.5)",
                      stacklevel=3)
