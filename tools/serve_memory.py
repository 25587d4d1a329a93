"""Measure the memory (RSS) of `imguard serve` with many large uploads queued.

    python tools/serve_memory.py [--jobs 20] [--side 6000] [--steps 1]

Starts the app (uvicorn, in this process) with the tests' tiny models, holds the worker as if
the models were still loading, uploads ``--jobs`` jobs of one ``--side`` x ``--side`` PNG each
over HTTP, then lets them run and deletes them. Prints the resident memory (RSS) at each stage.
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--side", type=int, default=6000)
    ap.add_argument("--steps", type=int, default=1)
    args = ap.parse_args()

    import httpx
    import numpy as np
    import uvicorn
    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import TinyRecognizer, build_tiny_vae  # the tests' tiny models

    from imguard import Protector
    from imguard.models import Models
    from imguard.serve import Limits, create_app

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        build_tiny_vae().save_pretrained(d)
        protector = Protector("facelock", device="cpu", working_size=64,
                              models=Models(vae=d, face_model=TinyRecognizer(), features="ae", detector=None))
    release = threading.Event()

    def factory():
        release.wait()
        return protector

    app = create_app(protector_factory=factory, limits=Limits(max_queued=args.jobs))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    side = args.side
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    arr = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side))], -1)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    del arr, ramp, buf

    stages = []
    peak = [0.0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    with httpx.Client(base_url=url, timeout=120) as c:
        stages.append(("idle (models loaded, server up)", rss_mb()))
        ids = []
        t0 = time.time()
        for _ in range(args.jobs):
            r = c.post("/api/jobs", files=[("files", ("big.png", data, "image/png"))], data={"strength": "low", "steps": str(args.steps)})
            r.raise_for_status()
            ids.append(r.json()["id"])
        stages.append((f"{args.jobs} jobs queued ({side}x{side} PNG, {len(data) / 1e3:.0f} kB each; uploaded in {time.time() - t0:.1f} s)", rss_mb()))
        peak[0] = 0.0
        release.set()
        t0 = time.time()
        while any(c.get(f"/api/jobs/{i}").json()["status"] in ("queued", "running") for i in ids):
            time.sleep(0.5)
        statuses = {c.get(f"/api/jobs/{i}").json()["status"] for i in ids}
        stages.append((f"peak while the jobs ran ({time.time() - t0:.0f} s, status {', '.join(sorted(statuses))})", peak[0]))
        stages.append(("all jobs done", rss_mb()))
        for i in ids:
            c.delete(f"/api/jobs/{i}").raise_for_status()
        time.sleep(1.0)
        stages.append(("jobs deleted", rss_mb()))
    stop.set()
    server.should_exit = True
    thread.join(20)
    idle = stages[0][1]
    for what, mb in stages:
        print(f"{what:<75} RSS {mb:7.0f} MB  ({mb - idle:+.0f} MB vs idle)")


if __name__ == "__main__":
    main()
