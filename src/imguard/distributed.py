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
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

from .bulk import FatalError, Job, Manifest, RecordList, Report, RunOptions, Runner

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
