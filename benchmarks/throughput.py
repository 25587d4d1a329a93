"""Throughput of protecting a folder: images/s without Ray and with 1, 2, ... Ray workers, per batch size.

    python benchmarks/throughput.py --strength medium --steps 5 --size 256 --count 32 --workers 0 1 2 --batch-sizes 1 8 32
    python benchmarks/throughput.py --device cuda --strength medium --size 512 --count 256 --workers 0 1 --batch-sizes 1 8 32

The faces (``../shared/assets/faces/wild`` or ``--faces DIR``, cycled up to ``--count`` files)
are resized to ``--size`` and saved as PNGs; each configuration protects that folder into a
fresh output folder the way ``imguard protect`` (``--workers 0``) and ``imguard protect --ray``
(``--workers N``: N actors, each holding one Protector, the CPUs split between them) do:
reading, protecting, writing the PNGs and the manifest. ``--strength`` is any preset name and
``--steps`` overrides its step count.

Reported per configuration: wall seconds for the whole run, images/s over the whole run
(``total``; with Ray this includes starting the actors and loading their models), the seconds
until the first file was finished (``first``), images/s after it (``steady``: the files after
the first finished ones over the time after them), and the peak RSS of each process that
protected (the one process without Ray; each Ray actor, from its ``VmHWM``). Without Ray, the
models are loaded before the clock starts (``load`` says how long that took).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from imguard.bulk import Manifest, RunOptions, Runner, expand_inputs, plan  # noqa: E402


def make_folder(faces: Path, count: int, size: int, dst: Path) -> Path:
    from PIL import Image

    paths = sorted(p for p in faces.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise SystemExit(f"no faces in {faces}; give a folder of face photos with --faces")
    dst.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        with Image.open(paths[i % len(paths)]) as im:
            im.convert("RGB").resize((size, size), Image.LANCZOS).save(dst / f"face{i:04d}.png")
    return dst


def build(strength: str, device: str | None):
    from imguard import Protector

    return Protector(strength=strength, device=device)


def settings_for(args) -> tuple[dict, dict]:
    kwargs = {"steps": args.steps, "seed": 0} if args.steps else {"seed": 0}
    settings = {"strength": args.strength, "device": args.device, **kwargs}
    return settings, kwargs


class ActorMemory:
    """Peak RSS (VmHWM) of the Ray actor processes protecting images, polled from /proc."""

    def __init__(self) -> None:
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if b"ProtectWorker" not in cmd:
                        continue
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak[int(pid)] = max(self.peak.get(int(pid), 0), int(line.split()[1]) * 1024)
                except OSError:
                    continue
            self._stop.wait(0.5)


def run_one(args, src: Path, out: Path, workers: int, batch: int) -> dict:
    settings, kwargs = settings_for(args)
    manifest = Manifest(out)
    jobs = plan(expand_inputs([str(src)], False, set()), out, "png", settings, manifest, overwrite=False)
    opts = RunOptions(batch_size=batch, quiet=True, protect_kwargs=kwargs)
    stamps: list[float] = []
    row = {"workers": workers, "batch": batch, "images": len(jobs)}
    if workers == 0:
        t = time.perf_counter()
        prot = build(args.strength, args.device)
        prot.load_models()
        row["load_s"] = time.perf_counter() - t
        runner = Runner(prot, manifest, settings, opts, write=lambda s: None)
        orig = runner._finish

        def finish(*a, **k):
            orig(*a, **k)
            stamps.append(time.perf_counter())

        runner._finish = finish
        t0 = time.perf_counter()
        report = runner.run(jobs)
        row["peak_rss_mb"] = [round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)]
    else:
        from imguard import distributed

        n, gpus, cpus = distributed.resources(workers, args.device)
        runner = Runner(None, manifest, settings, opts, write=lambda s: None)
        units = runner.units(jobs)
        factory = functools.partial(build, args.strength, args.device)
        t0 = time.perf_counter()
        with ActorMemory() as mem:
            for rec in distributed.protect_units(units, factory, settings, opts, workers=n, num_gpus=gpus, num_cpus=cpus):
                manifest.append(rec)
                stamps.append(time.perf_counter())
                (runner.report.protected if rec["status"] == "done" else runner.report.failed).append(rec)
        report = runner.report
        row["peak_rss_mb"] = sorted(round(v / 2**20) for v in mem.peak.values())
        row["cpus_per_worker"], row["gpus_per_worker"] = cpus, gpus
    wall = time.perf_counter() - t0
    if report.failed:
        raise SystemExit(f"{len(report.failed)} files failed in workers={workers} batch={batch}: {report.failed[:1]}")
    first = stamps[0] - t0
    k = sum(1 for s in stamps if s <= stamps[0] + 1e-9)  # files finished with the first batch
    steady = (len(stamps) - k) / (stamps[-1] - stamps[0]) if len(stamps) > k and stamps[-1] > stamps[0] else None
    row.update(wall_s=round(wall, 1), total_img_s=round(len(stamps) / wall, 3), first_s=round(first, 1),
               steady_img_s=round(steady, 3) if steady else None)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strength", default="medium", help="a preset name (low, medium, high, or one added later)")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's steps (small for a quick CPU run)")
    ap.add_argument("--size", type=int, default=256, help="side of the square test images (default 256)")
    ap.add_argument("--count", type=int, default=32, help="images per run (default 32)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="0 = without Ray; N = N Ray workers")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "assets" / "faces" / "wild")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="imguard-throughput-"))
    rows = []
    try:
        src = make_folder(args.faces, args.count, args.size, tmp / "in")
        if any(w > 0 for w in args.workers):
            from imguard import distributed

            import torch

            distributed.connect(None, num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(),
                                object_store_memory=200 * 2**20,
                                runtime_env={"env_vars": {"PYTHONPATH": str(ROOT / "src"), "RAY_DISABLE_IMPORT_WARNING": "1"}})
        print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; strength {args.strength}, "
              f"steps {args.steps or 'preset'}, {args.count} images of {args.size}x{args.size}", flush=True)
        print("| workers | batch | wall s | images/s total | first file s | images/s after it | peak RSS per process (MB) |")
        print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
        for w in args.workers:
            for b in args.batch_sizes:
                out = tmp / f"out-w{w}-b{b}"
                r = run_one(args, src, out, w, b)
                rows.append(r)
                shutil.rmtree(out, ignore_errors=True)
                label = "no Ray" if w == 0 else f"Ray x{w}"
                extra = f" (models loaded in {r['load_s']:.1f}s before)" if "load_s" in r else ""
                print(f"| {label} | {b} | {r['wall_s']} | {r['total_img_s']} | {r['first_s']} | {r['steady_img_s']} | "
                      f"{', '.join(map(str, r['peak_rss_mb']))}{extra} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
