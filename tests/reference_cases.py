"""Fixed-seed protections whose output bytes are recorded (``reference_outputs.json``):
restructuring the code must leave them bit-identical. CPU, fp32, one thread, tiny models.

The last bits of float arithmetic differ between CPUs (oneDNN and MKL pick their kernels by
vendor and instruction set), so the record holds one set per CPU (:func:`platform_key`), and a
CPU with no set skips the test, saying so.

``python tests/reference_cases.py`` (from the repository root, ``PYTHONPATH=src``) rewrites
this CPU's set: only do that when a change of results is intended and said so. The other CPUs'
sets keep the cases whose output did not change here and lose the others (they cannot be known
until recorded on that CPU; the test compares the cases a set has). With no earlier set for this
CPU nothing can be compared, and the other sets are dropped. ``--add`` keeps the other CPUs'
sets whole: for adding a CPU when nothing changed (the other sets still pass on their CPUs).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RECORD = HERE / "reference_outputs.json"
STEPS = 3


def platform_key() -> str:
    """The CPU's vendor and ATen's instruction set, with torch's version: what the record is kept by."""
    import platform

    vendor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            vendor = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("vendor_id")), vendor)
    except OSError:
        pass
    version = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    return f"{vendor}/{torch.backends.cpu.get_cpu_capability()}/torch-{version}"


def cases() -> list[tuple[str, dict]]:
    """(name, protect() keyword arguments): every strength and every registered method."""
    import imguard

    out = [(f"strength={s}", {"strength": s}) for s in ("low", "medium", "high")]
    out += [(f"method={m}", {"method": m}) for m in imguard.methods()]
    out.append(("method=facelock,strength=high", {"method": "facelock", "strength": "high"}))
    out.append(("method=photoguard,strength=high", {"method": "photoguard", "strength": "high"}))
    return out


def image(batch: int = 1) -> np.ndarray:
    g = np.random.default_rng(7)
    return g.integers(0, 256, size=(batch, 64, 64, 3), dtype=np.uint8)


def protector(tiny_models):
    from imguard import Protector

    return Protector("facelock", device="cpu", models=tiny_models, working_size=64, precision="fp32", check=False)


def digest(p, kwargs: dict, batch: int = 1) -> str:
    img = image(batch)
    x = img[0] if batch == 1 else torch.from_numpy(img).permute(0, 3, 1, 2).float().div(255)
    res = p.protect(x, steps=STEPS, seed=11, return_result=True, **kwargs)
    out = res.image if isinstance(res.image, np.ndarray) else res.image.numpy()
    h = hashlib.sha256(np.ascontiguousarray(out).tobytes())
    h.update(np.asarray(res.final_loss, dtype=np.float64).tobytes())
    return h.hexdigest()


def compute(tiny_models) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p = protector(tiny_models)
        rec = {name: digest(p, kw) for name, kw in cases()}
        rec["strength=high,batch=2"] = digest(p, {"strength": "high"}, batch=2)
        return rec
    finally:
        torch.set_num_threads(threads)


def updated(records: dict, key: str, rec: dict, keep_others: bool = False) -> dict:
    """The record with CPU ``key``'s set replaced by ``rec``. ``keep_others``: the other sets as
    they are; else each keeps only the cases whose output is unchanged on this CPU (none when this
    CPU had no set to compare with)."""
    old = records.get(key, {})
    out = {}
    for k, v in records.items():
        if k == key:
            continue
        kept = v if keep_others else {c: h for c, h in v.items() if c in old and old[c] == rec.get(c)}
        if kept:
            out[k] = kept
    out[key] = dict(rec)
    return out


if __name__ == "__main__":
    import sys
    import tempfile

    sys.path.insert(0, str(HERE))
    from conftest import TinyRecognizer, build_tiny_vae

    from imguard.models import Models

    with tempfile.TemporaryDirectory() as d:
        build_tiny_vae().save_pretrained(d)
        models = Models(vae=d, face_model=TinyRecognizer(), features="ae", detector=None)
        rec = compute(models)
    records = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    records = updated(records, platform_key(), rec, keep_others="--add" in sys.argv[1:])
    RECORD.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    print(json.dumps({platform_key(): rec}, indent=1, sort_keys=True))
