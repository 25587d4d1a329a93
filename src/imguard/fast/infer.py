"""Fast-mode inference: detect the faces once, pick for each the member of the mixture that hides
it best (one batched pass of the recognizers over the K candidates, in the face frame), warp it
onto the face with the inverse of its alignment, fill the rest of the photo with the tile, scale
by the perceptual radius map (<= eps), project, quantize, and hold the result to the visibility
gate. ``refine`` continues from that start with a few steps of the engine (FaceLock against the
same surrogates)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..budget import Budget, finalize
from ..models import Face, FaceDetector, autoencoders_of
from ..visibility import within_gate
from .frame import frame_box, frame_matrix, frame_region, from_frame, to_frame
from .model import FastWeights, frame_embedder, identity_loss, load_weights, tile_to, unit_delta

__all__ = ["FastOutput", "FastProtect", "DETECT_SIZE", "REFINE_SIZE", "TILE_REFERENCE"]

#: faces are detected on the photo shrunk to this long side (coordinates mapped back)
DETECT_SIZE = 640
#: ``refine`` runs the engine at this long side by default (the presets' working size; a
#: :class:`imguard.Protector` passes its own): an image no larger is refined at its own size, a
#: larger one shrunk to it, and a photo well over it (:data:`imguard.photo.BIG_PHOTO_FACTOR`)
#: faces first, each face region at this size. The change has to be made at the size the
#: editor's autoencoder sees: made at 256 px and enlarged to a 288-512 px face it hid none of 16
#: such faces from dlib (docs/benchmarks.md, "Fast mode").
REFINE_SIZE = 512
#: ``refine``'s FaceLock objective: ``medium``'s and ``high``'s (the identity term from the first step
#: through the editor's latent space and on the photo itself, no feature term, no decoy)
REFINE_OPTIONS = {"lambda_fe": 0.0, "fr_start": 0.0, "lambda_direct": 1.0, "lambda_decoy": 0.0}
#: ``refine`` attacks the first of the fast mode's autoencoders only (TAESD, the editor's SD 1.x
#: latent space; the others judge), as the presets do: every step goes where the effect is
REFINE_AUTOENCODERS = 1
#: ``refine``'s engine loop: sign steps of 1/255 with momentum, kornia's JPEG on half the steps
REFINE_ENGINE = {"step_size": 1.0, "schedule": "constant", "momentum": 0.9, "eot": "jpeg,identity"}
#: the tile's period is its size at this long side, in proportion above it
TILE_REFERENCE = 512
#: the face perturbation fades into the tile over this share of the frame at its border
FEATHER = 0.12


@dataclass
class FastOutput:
    """One protected image of the fast mode."""

    image: torch.Tensor  #: uint8 [1,3,H,W]
    achieved: float  #: max |delta| in /255 on the 8-bit result
    budget: Budget
    faces: list = field(default_factory=list)  #: per face: box, the member chosen, its surrogate score per member
    seconds: float = 0.0
    refine_steps: int = 0
    loss_history: torch.Tensor | None = None
    initial_loss: float = math.nan
    final_loss: float = math.nan
    timings: dict = field(default_factory=dict)  #: seconds per step (detect, assign, warp, map, finalize, gate)
    visibility: Any = None  #: the result's :class:`~imguard.visibility.Visibility` as the gate measured it (None: no gate)


class _Clock:
    """Times each step of one protection (synchronising CUDA, so the figures are the step's)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def __call__(self, name: str, fn: Any, *args: Any) -> Any:
        t = time.perf_counter()
        out = fn(*args)
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t, 4)
        return out

    def total(self) -> float:
        return time.perf_counter() - self.t0


def keep_eye_colour(budget: Budget, faces: list[Face], shape: tuple[int, int]) -> Budget:
    """``budget`` keeping the colour of the eyes of every face found in the one image
    (:func:`~imguard.budget.eye_weight`, the disks of all faces in one map), as the presets'
    perceptual budget does (:func:`imguard.pipeline.keep_eye_colour`); a plain ``linf`` budget
    or an image without faces: ``budget`` as it is."""
    from ..budget import eye_weight

    if budget.radius_map is None or not faces:
        return budget
    w = eye_weight(faces, tuple(int(v) for v in shape), merged=True)
    return budget if w is None else budget.keeping_colour(w.to(budget.radius_map.device))


def _feather(size: int, device: torch.device) -> torch.Tensor:
    """[1,S,S]: 1 inside the frame, falling to 0 at its border."""
    ramp = torch.linspace(0, 1, size, device=device)
    edge = torch.minimum(ramp, ramp.flip(0)) / FEATHER
    e = edge.clamp(max=1.0)
    return torch.minimum(e[:, None], e[None, :])[None]


class FastProtect:
    """The fast mode with its models loaded once.

    ``face_model``: the recognizers the assignment scores candidates with (a loaded module or
    ensemble; default: those the weights were trained against); ``vae``: the autoencoder(s),
    the first one's round trip scores them; ``detector``: MTCNN or an object with ``detect_all``;
    ``score``: how the assignment scores a candidate: ``"roundtrip"`` (the recognizers after the
    autoencoder's round trip, as training did) or ``"image"`` (the recognizers on the protected
    crop itself: no autoencoder pass, about half the fast mode's time on a CPU).
    """

    SCORES = ("image", "roundtrip")

    def __init__(self, weights: Any = None, device: torch.device | str = "cpu", face_model: Any = None,
                 vae: Any = None, detector: Any = "mtcnn", score: str = "image"):
        from ..models import load_autoencoder, load_face_recognizer

        self.device = torch.device(device)
        self.weights = weights.to(self.device) if isinstance(weights, FastWeights) else load_weights(weights, self.device)
        meta = self.weights.meta
        self.face_model = face_model if face_model is not None else load_face_recognizer(
            meta.get("face_model", "sface,facenet,mobilefacenet,faceres"), self.device)
        self.autoencoder = autoencoders_of(vae if vae is not None else load_autoencoder(meta.get("vae", "taesd,taef2"), self.device))[0]
        self.detector = FaceDetector(self.device, keep_all=True) if detector == "mtcnn" else detector
        if score not in self.SCORES:
            raise ValueError(f"unknown score {score!r}; choose one of: {', '.join(self.SCORES)}")
        self.score = score
        self.last_timings: dict[str, float] = {}

    # -- the steps -----------------------------------------------------------------------------
    def detect(self, x: torch.Tensor) -> list[Face]:
        """Every face of one image [1,3,H,W] (native pixels), largest first."""
        from ..io import resize_image, working_shape

        if self.detector is None:
            return []
        H, W = x.shape[-2:]
        size = working_shape(H, W, DETECT_SIZE)
        small = resize_image(x, size) if tuple(size) != (H, W) else x
        s = np.array([W / size[1], H / size[0]], np.float32)
        found = self.detector.detect_all(small) if hasattr(self.detector, "detect_all") else [[f] if f else [] for f in self.detector.detect(small)]
        faces = []
        for f in found[0]:
            lm = None if f.landmarks is None else np.asarray(f.landmarks, np.float32) * s
            faces.append(Face(box=np.asarray(f.box, np.float32) * np.tile(s, 2), landmarks=lm, score=f.score, found=f.found))
        return [f for f in faces if f.landmarks is not None]

    def assign(self, x: torch.Tensor, faces: list[Face]) -> tuple[list[np.ndarray], list[int], torch.Tensor]:
        """For each face: its frame matrix, the member of the mixture that hides it best and the
        surrogate score of every member ([F,K]: mean cosine to the clean face after the round
        trip; lower is better), from one batched pass over the F*K candidates."""
        w = self.weights
        S, K = w.size, w.k
        mats = [frame_matrix(f, S, w.margin) for f in faces]
        if not faces:
            return [], [], torch.zeros(0, K)
        frames = to_frame(x.expand(len(faces), -1, -1, -1), torch.from_numpy(np.stack(mats)), S).clamp(0, 1)
        boxes = [frame_box(f, m) for f, m in zip(faces, mats)]
        if K == 1:
            return mats, [0] * len(faces), torch.zeros(len(faces), 1)
        with torch.no_grad():
            clean = frame_embedder(self.face_model, boxes, S, w.margin).embed_all(frames)
            cand = frames.repeat_interleave(K, 0)
            units = w.faces.repeat(len(faces), 1, 1, 1)
            d, _ = unit_delta(cand, units, float(w.meta.get("eps", 8.0)), w.jnd_scale)
            xa = (cand + d).clamp(0, 1)
            recon = self.autoencoder.decode(self.autoencoder.encode(xa)) if self.score == "roundtrip" else xa
            emb = frame_embedder(self.face_model, [b for b in boxes for _ in range(K)], S, w.margin)
            scores = identity_loss(emb, [c.repeat_interleave(K, 0) for c in clean], recon).view(len(faces), K).cpu()
        return mats, [int(k) for k in scores.argmin(1)], scores

    def units(self, x: torch.Tensor, mats: list[np.ndarray], ks: list[int]) -> torch.Tensor:
        """The perturbation in radius units ([1,3,H,W] in [-1,1]): each face's member warped
        onto it (feathered into the tile), the tile elsewhere."""
        H, W = x.shape[-2:]
        w = self.weights
        period = max(8, int(round(w.tile.shape[-1] * max(1.0, max(H, W) / TILE_REFERENCE))))
        out = tile_to(w.tile, H, W, period)[None]  # a fresh tensor (tile_to repeats): written in place
        feather = _feather(w.size, self.device)
        for m, k in zip(mats, ks):
            region = frame_region(m, w.size, H, W)
            if region is None:
                continue
            x0, y0, x1, y1 = region
            warped = from_frame(torch.cat([w.faces[k], feather]), m, region)
            face_u, cover = warped[:3], warped[3:].clamp(0, 1)
            out[0, :, y0:y1, x0:x1] = cover * face_u + (1 - cover) * out[0, :, y0:y1, x0:x1]
        return out  # in [-1,1]: the members and the tile are (load_weights clamps them), and so are their blends

    # -- the whole -------------------------------------------------------------------------------
    def protect(self, x: torch.Tensor, eps: float = 8.0, budget: Budget | None = None, gate: bool = True,
                texture_scale: float = 1.0, psnr_floor: float | None = None) -> FastOutput:
        """Protect one image [1,3,H,W] in [0,1] (native size). ``gate``: the result is measured
        and, should it fail the visibility gate, scaled down until it passes (as every preset's).
        ``texture_scale`` and ``psnr_floor``: the perceptual map's (:func:`~imguard.budget.perceptual_budget`;
        ignored where ``budget`` is given)."""
        from ..budget import perceptual_budget

        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ValueError(f"the fast mode protects one image [1,3,H,W] at a time, got {tuple(x.shape)}")
        clock = _Clock(self.device)
        x = x.to(self.device).float()
        faces = clock("detect", self.detect, x)
        mats, ks, scores = clock("assign", self.assign, x, faces)
        u = clock("warp", self.units, x, mats, ks)
        budget = budget or clock("map", lambda: perceptual_budget(x, eps, self.weights.jnd_scale, psnr_floor=psnr_floor,
                                                                  texture_scale=texture_scale))
        budget = clock("map", keep_eye_colour, budget, faces, x.shape[-2:])
        delta = u.mul_(budget.radius_map.to(u.device))  # u is fresh from units(): scaled in place
        out, achieved = clock("finalize", finalize, x, delta, budget)
        seen: list = []
        if gate:
            out, achieved = clock("gate", lambda: within_gate(x, delta, budget, None, out, achieved, seen=seen))
        info = [{"box": [float(v) for v in f.box], "member": k, "scores": [round(float(s), 4) for s in row]}
                for f, k, row in zip(faces, ks, scores)]
        self.last_timings = clock.seconds  # the last protection's steps, for benchmarks/fast.py
        return FastOutput(image=out, achieved=float(achieved.max()), budget=budget, faces=info,
                          seconds=clock.total(), timings=clock.seconds, visibility=seen[0] if seen else None)

    def refine(self, x: torch.Tensor, start: FastOutput, steps: int, models: Any, seed: int = 0,
               amp_dtype: torch.dtype | None = None, callback: Any = None, size: int | None = REFINE_SIZE) -> FastOutput:
        """``steps`` engine steps of FaceLock (:data:`REFINE_OPTIONS`: the identity term through the
        editor's round trip and on the photo, JPEG EOT, momentum) from the fast result, at the
        long side ``size`` (None: the native size); ``models``: a :class:`~imguard.models.Models`
        with the surrogates (the fast mode's; only the first :data:`REFINE_AUTOENCODERS`
        autoencoders are attacked). A photo larger than ``size`` is refined faces first
        (:meth:`refine_regions`): each face region at ``size``, blended into the fast start with a
        feathered edge; the rest keeps the fast start (within one 8-bit level: the whole change is
        projected and rounded again). ``callback(i, n, loss)`` counts the steps
        of every region (``n`` = steps x regions)."""
        from .. import engine
        from ..io import resize_image, working_shape
        from ..methods import ENGINE_OPTIONS, get_method
        from ..photo import feather_mask
        from ..transforms import get_eot

        if int(steps) < 1:
            raise ValueError(f"refine must be a whole number of steps >= 1, got {steps!r}")
        steps = int(steps)
        t0 = time.perf_counter()
        x = x.to(self.device).float()
        H, W = x.shape[-2:]
        delta = start.image.to(self.device).float().div(255) - x
        regions = self.refine_regions(x, start, size)
        m = get_method("facelock")
        opts = m.options(**REFINE_OPTIONS, eps=start.budget.eps)
        prep = {k: v for k, v in opts.items() if k not in ENGINE_OPTIONS}
        budget = start.budget.to(self.device)
        loop = dict(REFINE_ENGINE)
        cfg = engine.EngineConfig(steps=steps, random_start=False, eot=get_eot(loop.pop("eot")), **loop)
        first = None
        for j, r in enumerate(regions):
            y0, y1, x0, x1 = (0, H, 0, W) if r is None else (r.y0, r.y1, r.x0, r.x1)
            xc, dc = x[..., y0:y1, x0:x1], delta[..., y0:y1, x0:x1]
            wsize = tuple(working_shape(y1 - y0, x1 - x0, size))  # None: native, on the 8-pixel grid
            xw, dw = resize_image(xc, wsize), resize_image(dc, wsize)
            torch.manual_seed(seed)
            ctx = m.prepare(xw, models, prep)
            ctx.autoencoders, ctx.z_clean = ctx.autoencoders[:REFINE_AUTOENCODERS], ctx.z_clean[:REFINE_AUTOENCODERS]
            objective = engine.Objective(loss=lambda xa, i, _ctx=ctx: m.objective(xa, _ctx, i, steps), maximize=m.maximize)
            cb = None if callback is None else (lambda i, n, loss, _j=j: callback(_j * steps + i, steps * len(regions), loss))
            res = engine.run(xw, objective, budget.region(y0, y1, x0, x1).resized(wsize), cfg, init=dw,
                             seed=seed, amp_dtype=amp_dtype, callback=cb)
            first = res if first is None else first
            # the refined change, at the native size, where it moved from the fast start
            change = res.delta - dw
            if tuple(wsize) != (y1 - y0, x1 - x0):
                change = F.interpolate(change, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
            if r is not None:
                change = change * feather_mask(H, W, r).to(change.device)[..., y0:y1, x0:x1]
            delta[..., y0:y1, x0:x1] += change
        out, achieved = finalize(x, delta, start.budget)
        seen: list = []
        out, achieved = within_gate(x, delta, start.budget, None, out, achieved, seen=seen)
        return FastOutput(image=out, achieved=float(achieved.max()), budget=start.budget, faces=start.faces,
                          visibility=seen[0],
                          seconds=start.seconds + time.perf_counter() - t0, refine_steps=int(steps),
                          timings={**start.timings, "refine": round(time.perf_counter() - t0, 4)},
                          loss_history=first.history, initial_loss=float(first.initial_loss[0]), final_loss=float(first.final_loss[0]))

    @staticmethod
    def refine_regions(x: torch.Tensor, start: FastOutput, size: int | None) -> list:
        """Where ``refine`` optimises: ``[None]`` (the whole image) unless the image is a photo
        well over ``size`` (:data:`imguard.photo.BIG_PHOTO_FACTOR`) with faces that are not most of
        it; then the region around each face (:func:`imguard.photo.regions_around`, largest first)."""
        from ..photo import is_big, is_portrait, regions_around

        shape = tuple(x.shape[-2:])
        if not start.faces or not is_big(shape, size):
            return [None]
        boxes = sorted((f["box"] for f in start.faces), key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
        regions = regions_around(boxes, shape)
        return [None] if not regions or is_portrait(regions, shape) else regions
