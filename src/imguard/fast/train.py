"""Training the fast mode's perturbations (``imguard train-fast``): resumable, deterministic.

Each training face is aligned once into the canonical frame (:mod:`imguard.fast.frame`); its
perceptual radius map, clean embeddings (every attacked recognizer) and clean latents (every
attacked autoencoder) are computed once. Each iteration takes a batch of faces, adds to each the
perturbation of the mixture it is assigned to (scaled by its radius map, projected), draws one
transformation (identity, JPEG, resize, blur: EOT) and minimises the recognizers' cosine
similarity to the clean face after the autoencoders' round trip (one autoencoder per iteration,
in turn) and on the transformed image itself. The tile for the rest of the photo pushes the
autoencoders' latent away from the clean one. Every ``assign_every`` epochs each face is
reassigned to the member of the mixture that hides it best (FastProtect's assignment).

A checkpoint (``OUT.ckpt``: parameters, optimiser state, iteration, assignment, loss history,
seconds spent) is written every ``save_every`` iterations and when the time box ends; a rerun
with the same ``--out`` resumes from it. Batches and transformations are drawn from generators
seeded by (seed, epoch) and (seed, iteration), so a resumed run continues exactly as an
unbroken one would.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..budget import Budget
from ..models import FaceDetector, autoencoders_of, centre_face, load_autoencoder, load_face_recognizer
from ..transforms import get_eot
from .frame import frame_box, frame_matrix, to_frame
from .model import FastWeights, frame_embedder, identity_loss, tile_to

__all__ = ["TrainConfig", "prepare_faces", "train"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class TrainConfig:
    k: int = 4  #: perturbations in the mixture
    size: int = 128  #: frame size in pixels
    margin: float = 1.8  #: the frame spans this many times ArcFace's 112 px crop
    tile: int = 64  #: tile size in pixels (its period at a 512 px working size)
    eps: float = 8.0  #: the cap, /255
    jnd_scale: float = 1.3  #: the perceptual map's scale (that of every preset: imguard.presets.INVISIBLE)
    iterations: int = 300
    batch: int = 8
    lr: float = 0.1
    seed: int = 0
    lambda_direct: float = 0.5  #: weight of the recognizers on the protected image itself
    assign_every: int = 2  #: epochs between reassignments
    save_every: int = 5
    face_model: str = "sface,facenet,mobilefacenet,faceres"
    vae: str = "taesd,taef2"
    eot: str = "identity,jpeg,resize,blur"
    load_size: int = 320  #: images are resized to this long side before alignment


def _image_files(faces: Path) -> list[Path]:
    if not faces.is_dir():
        raise ValueError(f"--faces {faces} is not a folder; give a folder of face photos (e.g. ../shared/assets/faces/train)")
    files = sorted(p for p in faces.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) in {faces}")
    return files


def prepare_faces(files: list[Path], cfg: TrainConfig, detector: Any) -> tuple[torch.Tensor, np.ndarray]:
    """The faces aligned into the frame [N,3,S,S] and their boxes in frame pixels [N,4]. A
    photo without a detected face uses the centre-crop fall-back (its template landmarks)."""
    from ..io import read_image, resize_image, to_tensor, working_shape

    frames, boxes = [], []
    for p in files:
        x, _ = to_tensor(read_image(str(p)))
        x = resize_image(x[:1], working_shape(x.shape[-2], x.shape[-1], cfg.load_size))
        face = detector.detect(x)[0] if detector is not None else None
        face = face or centre_face(x.shape[-2], x.shape[-1])
        m = frame_matrix(face, cfg.size, cfg.margin)
        frames.append(to_frame(x, torch.from_numpy(m)[None], cfg.size))
        boxes.append(frame_box(face, m))
    return torch.cat(frames).clamp(0, 1), np.stack(boxes)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _batches(n: int, batch: int, seed: int, epoch: int) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return [perm[i : i + batch] for i in range(0, n - batch + 1, batch)] or [perm]


def train(
    faces: str | Path,
    out: str | Path,
    cfg: TrainConfig | None = None,
    *,
    device: str = "cpu",
    resume: bool = True,
    minutes: float | None = None,
    progress: bool = True,
    face_model: Any = None,
    vae: Any = None,
    detector: Any = "mtcnn",
    log: Callable[[str], None] = print,
) -> FastWeights:
    """Train (or resume training) the fast mode's perturbations on the face photos in ``faces``;
    writes ``out`` (safetensors) and ``out.ckpt``. ``minutes`` ends the run early (saved) after
    that long; a rerun resumes. ``face_model``/``vae``/``detector`` may be modules (tests)."""
    cfg = cfg or TrainConfig()
    if cfg.k < 1 or cfg.batch < 1 or cfg.iterations < 0 or cfg.size < 16:
        raise ValueError("k, batch must be >= 1, iterations >= 0, size >= 16")
    if not (0 < cfg.jnd_scale <= 4 and math.isfinite(cfg.jnd_scale)):
        raise ValueError(f"jnd_scale must be in (0, 4], got {cfg.jnd_scale!r}")
    torch.manual_seed(cfg.seed)
    dev = torch.device(device)
    out = Path(out)
    ckpt_path = out.with_name(out.name + ".ckpt")
    files = _image_files(Path(faces))
    recognizer = face_model if face_model is not None and not isinstance(face_model, str) else load_face_recognizer(face_model or cfg.face_model, dev)
    aes = autoencoders_of(vae if vae is not None and not isinstance(vae, str) else load_autoencoder(vae or cfg.vae, dev))
    det = FaceDetector(dev) if detector == "mtcnn" else detector
    t_prep = time.perf_counter()
    # the aligned faces and their clean targets, computed once and kept beside the checkpoint
    data_path = out.with_name(out.name + ".data")
    key = {"files": [p.name for p in files], "size": cfg.size, "margin": cfg.margin, "load_size": cfg.load_size,
           "eps": cfg.eps, "jnd_scale": cfg.jnd_scale, "face_model": cfg.face_model, "vae": cfg.vae}
    data = torch.load(data_path, map_location=dev, weights_only=False) if resume and data_path.is_file() else None
    if data is None or data["key"] != key or isinstance(face_model, torch.nn.Module):
        frames, boxes = prepare_faces(files, cfg, det)
        frames = frames.to(dev)
        budget_all = Budget.perceptual(frames, cfg.eps, cfg.jnd_scale)
        with torch.no_grad():
            clean = frame_embedder(recognizer, list(boxes), cfg.size, cfg.margin).embed_all(frames)
            z_clean = [ae.encode(frames).float() for ae in aes]
        data = {"key": key, "frames": frames, "boxes": boxes, "radius": budget_all.radius_map,
                "flat": budget_all.flat_weight, "clean": clean, "z_clean": z_clean}
        if not isinstance(face_model, torch.nn.Module):
            out.parent.mkdir(parents=True, exist_ok=True)
            torch.save(data, data_path)
    frames, boxes, radius, flat = data["frames"], data["boxes"], data["radius"], data["flat"]
    clean, z_clean = data["clean"], data["z_clean"]
    n = frames.shape[0]
    log(f"train-fast: {n} faces from {faces} aligned into a {cfg.size} px frame ({time.perf_counter() - t_prep:.1f}s)")

    g = torch.Generator().manual_seed(cfg.seed)
    params = (torch.randn(cfg.k, 3, cfg.size, cfg.size, generator=g) * 0.5).to(dev).requires_grad_(True)
    tile = (torch.randn(3, cfg.tile, cfg.tile, generator=g) * 0.5).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([params, tile], lr=cfg.lr)
    state = {"iteration": 0, "assign": torch.arange(n) % cfg.k, "history": [], "seconds": 0.0}
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=dev, weights_only=False)
        if ck["config"] != asdict(cfg) | {"iterations": ck["config"]["iterations"]} or ck["files"] != [p.name for p in files]:
            raise ValueError(f"{ckpt_path} was made with other settings or faces; remove it (or pass --no-resume) to start over")
        with torch.no_grad():
            params.copy_(ck["params"])
            tile.copy_(ck["tile"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        log(f"train-fast: resumed from {ckpt_path} at iteration {state['iteration']}")
    eot = get_eot(cfg.eot)
    per_epoch = len(_batches(n, cfg.batch, cfg.seed, 0))

    def save() -> FastWeights:
        w = FastWeights(torch.tanh(params.detach()), torch.tanh(tile.detach()), cfg.margin, meta={
            "k": cfg.k, "size": cfg.size, "eps": cfg.eps, "jnd_scale": cfg.jnd_scale, "iterations": state["iteration"], "faces": n,
            "face_model": cfg.face_model if not isinstance(face_model, torch.nn.Module) else getattr(face_model, "name", "module"),
            "vae": cfg.vae if not isinstance(vae, torch.nn.Module) else "module", "eot": cfg.eot, "seed": cfg.seed,
            "train_seconds": round(state["seconds"], 1),
            "final_loss": state["history"][-1] if state["history"] else None,
        })
        w.save(out)
        tmp = ckpt_path.with_name(ckpt_path.name + ".tmp")
        torch.save({"params": params.detach().cpu(), "tile": tile.detach().cpu(), "opt": opt.state_dict(), "state": state,
                    "config": asdict(cfg), "files": [p.name for p in files]}, tmp)
        tmp.replace(ckpt_path)
        return w

    def face_loss(idx: torch.Tensor, units: torch.Tensor, it: int, gen: torch.Generator | None, ae_index: int,
                  direct: bool = True) -> torch.Tensor:
        budget = Budget(cfg.eps, "linf", radius_map=radius[idx], flat_weight=flat[idx])
        x = frames[idx]
        xa = (x + budget.project(units * radius[idx])).clamp(0, 1)
        if gen is not None and eot:
            xa = eot[int(torch.randint(len(eot), (1,), generator=gen))](xa, gen)
        emb = frame_embedder(recognizer, [boxes[int(i)] for i in idx], cfg.size, cfg.margin)
        ref = [c[idx] for c in clean]
        ae = aes[ae_index % len(aes)]
        loss = identity_loss(emb, ref, ae.decode(ae.encode(xa)))
        if direct and cfg.lambda_direct:
            loss = loss + cfg.lambda_direct * identity_loss(emb, ref, xa)
        return loss

    def reassign() -> None:
        with torch.no_grad():
            scores = torch.zeros(n, cfg.k)
            for s in range(0, n, cfg.batch):
                idx = torch.arange(s, min(n, s + cfg.batch))
                for k in range(cfg.k):
                    u = torch.tanh(params[k]).expand(len(idx), -1, -1, -1)
                    scores[idx, k] = face_loss(idx, u, 0, None, 0, direct=False).float().cpu()
            state["assign"] = scores.argmin(1)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, initial=state["iteration"], desc="train-fast", unit="it")
    t_start = time.perf_counter()
    seconds0 = state["seconds"]
    import signal

    def _stop(signum, frame):  # a kill (SIGTERM, e.g. from `timeout`) saves before it exits
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop) if threading_main() else None
    try:
        while state["iteration"] < cfg.iterations:
            it = state["iteration"]
            epoch, pos = divmod(it, per_epoch)
            if pos == 0 and epoch > 0 and cfg.k > 1 and epoch % cfg.assign_every == 0:
                reassign()
            idx = _batches(n, cfg.batch, cfg.seed, epoch)[pos]
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)
            units = torch.tanh(params[state["assign"][idx].to(dev)])
            loss_f = face_loss(idx, units, it, gen, it).mean()
            # the tile: push the autoencoder's latent of the face crop away from the clean one
            ae_k = it % len(aes)
            td = tile_to(torch.tanh(tile), cfg.size, cfg.size, cfg.tile)[None] * radius[idx]
            loss_t = -F.mse_loss(aes[ae_k].encode((frames[idx] + td).clamp(0, 1)).float(), z_clean[ae_k][idx])
            opt.zero_grad(set_to_none=True)
            (loss_f + loss_t).backward()
            opt.step()
            state["iteration"] = it + 1
            lf, lt = loss_f.item(), loss_t.item()
            state["history"].append(round(lf, 5))
            state["seconds"] = seconds0 + time.perf_counter() - t_start
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{lf:.4f}", tile=f"{lt:.4f}")
            if state["iteration"] % cfg.save_every == 0:
                save()
            if minutes is not None and time.perf_counter() - t_start > minutes * 60:
                log(f"train-fast: time box of {minutes:g} min reached at iteration {state['iteration']}; rerun to resume")
                break
    except KeyboardInterrupt:
        save()
        log(f"train-fast: stopped at iteration {state['iteration']}; saved {ckpt_path}, rerun to resume")
        raise
    finally:
        if bar is not None:
            bar.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    w = save()
    recent = state["history"][-per_epoch:]
    log(f"train-fast: iteration {state['iteration']}/{cfg.iterations}, mean loss of the last epoch "
        f"{(sum(recent) / len(recent)) if recent else math.nan:.4f}, {state['seconds']:.0f}s of training; wrote {out}")
    return w
