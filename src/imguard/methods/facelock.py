"""FaceLock ("Edit Away and My Face Will not Stay") and its ablations.

FaceLock maximises, through the autoencoder's round trip D(E(x')):

    -cos(FR(D(E(x'))), FR(x)) * [step >= fr_start*steps]
    + lambda_fe * F(D(E(x')), x) * [step > fe_start*steps]
    + lambda_l * ||E(x') - E(x)||^2
    + lambda_decoy * cos(FR(D(E(x'))), FR(decoy))          (imguard's addition, off by default)
    - lambda_direct * cos(FR(x'), FR(x))                     (imguard's addition, off by default)

with FR a face recognizer on aligned faces (alignment found once on the clean image), F a
perceptual feature distance (LPIPS, or the autoencoder's own multi-layer features) and the
latent term a per-element mean squared error. The switches at 35% and 25% of the steps are
those of the authors' code.

Ensembles: FR may be several recognizers (their cosines averaged with normalised weights, see
:class:`~imguard.models.FaceEmbedder`); the autoencoder may be several too: with
``ae_mode="cycle"`` (default) each step uses one member in turn (the cost of one), with
``"mean"`` every member every step.

The direct term attacks the recognizers on the protected photo itself (no round trip), so that
an autoencoder the protection never saw, which passes much of the photo through, still carries
an identity change.

The decoy term pulls the identity toward another one as well as away from the source:
``decoy="batch"`` uses the next face of the batch (a batch of one falls back to ``random``),
``"random"`` a random unit direction orthogonal to the source embedding, or an image (a face
to look like: PIL, array, tensor or path).

Ablations (the paper's Table 2):
``cvl``     -cos(FR(x'), FR(x)): the recognizer on the protected image itself
``cvl_d``   -cos(FR(D(E(x'))), FR(x)): the recognizer through the autoencoder
``cvl_dp``  ``cvl_d`` + lambda_p * pixel MSE between D(E(x')) and x inside the face box
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..models import FaceEmbedder, autoencoders_of, find_faces
from ..models.features import spatial_mean
from .base import Method, per_sample_mse, register, resize_like
from .encoder_attacks import FaceLockBudget

AE_MODES = ("cycle", "mean")


@dataclass(frozen=True, kw_only=True)
class CvlOptions(FaceLockBudget):
    require_face: bool = False  #: a photo without a detected face is an error (else the whole image is the face)


@dataclass(frozen=True, kw_only=True)
class CvlDOptions(CvlOptions):
    ae_mode: str = "cycle"  #: autoencoder ensembles: one member per step in turn ("cycle") or all ("mean")


@dataclass(frozen=True, kw_only=True)
class CvlDpOptions(CvlDOptions):
    lambda_p: float = 1.0  #: weight of the pixel distortion inside the face box


@dataclass(frozen=True, kw_only=True)
class FaceLockOptions(CvlDOptions):
    lambda_fr: float = 1.0  #: weight of the identity term
    lambda_fe: float = 1.0  #: weight of the perceptual feature term
    lambda_l: float = 0.2  #: weight of the latent term
    fr_start: float = 0.35  #: the identity term is on from this share of the steps
    fe_start: float = 0.25  #: the feature term is on after this share of the steps
    lambda_decoy: float = 0.0  #: weight of the pull toward a decoy identity
    decoy: Any = "batch"  #: "batch", "random" or a face image
    lambda_direct: float = 0.0  #: weight of the identity term on the protected image itself
    #: "image": the feature distance and the latent push over the whole photo (the paper's);
    #: "face": inside the widened face box only (the presets': over the whole photo their
    #: gradients lie almost all in the background, where they paint swirls; docs/evaluation.md)
    region: str = "image"


@dataclass
class FaceContext:
    """What the face methods compute once on the clean batch."""

    x: torch.Tensor
    faces: list
    embedder: FaceEmbedder
    emb_clean: list  #: one [B,D_i] per recognizer member
    autoencoders: list = field(default_factory=list)
    z_clean: list = field(default_factory=list)  #: one latent per autoencoder
    features: Any = None
    feat_clean: Any = None  #: the features of the clean image, when the feature distance can split them off
    emb_decoy: list | None = None
    box: torch.Tensor | None = None
    #: [B,1,H,W] spatial weight of the feature and latent terms (region="face"), None: the whole image
    region_weight: torch.Tensor | None = None
    opts: dict = field(default_factory=dict)

    def cos_to_clean(self, img: torch.Tensor) -> torch.Tensor:
        return self.embedder.similarity(img, self.emb_clean)

    def feature_distance(self, recon: torch.Tensor) -> torch.Tensor:
        """F(recon, x): from the clean side's features computed once, where they could be."""
        w = self.region_weight
        if self.feat_clean is not None:
            return (self.features.from_targets(recon, self.feat_clean) if w is None
                    else self.features.from_targets(recon, self.feat_clean, w)).float()
        return (self.features(recon, self.x) if w is None else self.features(recon, self.x, w)).float()

    def round_trips(self, x_adv: torch.Tensor, step: int, decode: bool = True):
        """(member index, latent, reconstruction) for the autoencoders this step uses; the
        reconstruction is None when ``decode`` is False (no term of this step needs it)."""
        n = len(self.autoencoders)
        idx = range(n) if self.opts.get("ae_mode", CvlDOptions.ae_mode) == "mean" or n == 1 else [step % n]
        for k in idx:
            autoencoder = self.autoencoders[k]
            z = autoencoder.encode(x_adv)
            yield k, z, (autoencoder.decode(z) if decode else None)


def _check_differentiable(recognizer) -> None:
    if getattr(recognizer, "differentiable", True) is False:
        raise ValueError(
            f"face model {getattr(recognizer, 'name', '?')!r} is evaluation-only (no gradients); "
            "protect against differentiable recognizers (sface, facenet, mobilefacenet, faceres) and judge with this one"
        )


def _synthetic_decoys(ctx: FaceContext, decoy: str) -> list:
    """Decoy embeddings per member: the next face of the batch, or random orthogonal directions."""
    B = ctx.x.shape[0]
    if decoy == "batch" and B > 1:
        return [e.roll(1, dims=0) for e in ctx.emb_clean]
    out = []
    for e in ctx.emb_clean:
        r = torch.randn(e.shape, device=e.device)  # drawn under the engine's seeded torch RNG
        r = r - (r * e).sum(1, keepdim=True) * e  # orthogonal to the source identity
        out.append(F.normalize(r, dim=1))
    return out


def _image_decoys(ctx: FaceContext, models, decoy: Any) -> list:
    """Decoy embeddings per member from a face image (PIL, array, tensor or path)."""
    from ..io import read_image, to_tensor

    img, _ = to_tensor(read_image(decoy) if isinstance(decoy, str) else decoy)
    img = resize_like(img[:1], ctx.x[:1])
    dfaces = find_faces(img, models.detector, names=["the decoy image"])
    with torch.no_grad():
        emb = FaceEmbedder(models.recognizer, dfaces).embed_all(img)
    return [e.expand(ctx.x.shape[0], -1) for e in emb]


def _face_context(x, models, opts) -> FaceContext:
    _check_differentiable(models.recognizer)
    faces = find_faces(x, models.detector, require_face=bool(opts.get("require_face", CvlOptions.require_face)), names=opts.get("names"))
    embedder = FaceEmbedder(models.recognizer, faces)
    with torch.no_grad():
        emb = embedder.embed_all(x)
    return FaceContext(x=x, faces=faces, embedder=embedder, emb_clean=emb, opts=opts)


def _with_autoencoders(ctx: FaceContext, models) -> FaceContext:
    mode = ctx.opts.get("ae_mode", CvlDOptions.ae_mode)
    if mode not in AE_MODES:
        raise ValueError(f"unknown ae_mode {mode!r}; valid: {', '.join(AE_MODES)}")
    ctx.autoencoders = autoencoders_of(models.autoencoder)
    with torch.no_grad():
        ctx.z_clean = [a.encode(ctx.x) for a in ctx.autoencoders]
    return ctx


#: region="face": the feature and latent terms count inside the face box widened by this factor
FACE_REGION_SCALE = 1.3
REGIONS = ("image", "face")


def _face_weight(faces, x: torch.Tensor, scale: float = FACE_REGION_SCALE) -> torch.Tensor:
    """[B,1,H,W]: 1 inside each face box widened ``scale`` times about its centre, 0 outside."""
    B, _, H, W = x.shape
    w = torch.zeros(B, 1, H, W, device=x.device)
    for i, f in enumerate(faces):
        x0, y0, x1, y1 = [float(v) for v in f.box]
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * scale / 2, (y1 - y0) * scale / 2
        r0, r1 = max(int(round(cy - hh)), 0), min(int(round(cy + hh)), H)
        c0, c1 = max(int(round(cx - hw)), 0), min(int(round(cx + hw)), W)
        w[i, :, r0:r1, c0:c1] = 1.0
    return w


def _facelock_prepare(x, models, opts):
    ctx = _with_autoencoders(_face_context(x, models, opts), models)
    region = opts.get("region", "image")
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; valid: {', '.join(REGIONS)}")
    if region == "face":
        ctx.region_weight = _face_weight(ctx.faces, x)
    if float(opts["lambda_fe"]) != 0:
        ctx.features = models.features
        if opts.get("cache", True) and hasattr(ctx.features, "targets"):
            with torch.no_grad():
                ctx.feat_clean = ctx.features.targets(x)
    if float(opts.get("lambda_decoy", FaceLockOptions.lambda_decoy)) != 0:
        decoy = opts.get("decoy", FaceLockOptions.decoy)
        synthetic = isinstance(decoy, str) and decoy in ("batch", "random")
        ctx.emb_decoy = _synthetic_decoys(ctx, decoy) if synthetic else _image_decoys(ctx, models, decoy)
    return ctx


def _facelock_objective(x_adv, ctx: FaceContext, step, steps):
    o = ctx.opts
    total = 0.0
    n = 0
    direct = 0.0
    fr_on = step >= float(o["fr_start"]) * steps
    if float(o.get("lambda_direct", FaceLockOptions.lambda_direct)) and fr_on:
        direct = -float(o["lambda_direct"]) * ctx.cos_to_clean(x_adv)
    fr_on = fr_on and bool(float(o["lambda_fr"]))
    fe_on = step > float(o["fe_start"]) * steps and ctx.features is not None
    # before the FR and feature terms switch on, the decoder's output is not used: skip it
    decode = fr_on or fe_on or not o.get("cache", True)
    for k, z, recon in ctx.round_trips(x_adv, step, decode=decode):
        loss = float(o["lambda_l"]) * (per_sample_mse(z, ctx.z_clean[k]) if ctx.region_weight is None
                                        else spatial_mean((z.float() - ctx.z_clean[k].float()) ** 2, ctx.region_weight))
        if fr_on:
            loss = loss - float(o["lambda_fr"]) * ctx.cos_to_clean(recon)
            if ctx.emb_decoy is not None:
                loss = loss + float(o["lambda_decoy"]) * ctx.embedder.similarity(recon, ctx.emb_decoy)
        if fe_on:
            loss = loss + float(o["lambda_fe"]) * ctx.feature_distance(recon)
        total = total + loss
        n += 1
    return total / n + direct


def _facelock_fooled(x_adv, ctx: FaceContext, margin: float) -> torch.Tensor:
    """Every attacked recognizer, after every attacked autoencoder's round trip, puts the face
    at least ``margin`` below its same-person threshold."""
    fooled = torch.ones(x_adv.shape[0], dtype=torch.bool, device=x_adv.device)
    for autoencoder in ctx.autoencoders:
        embs = ctx.embedder.embed_all(autoencoder.decode(autoencoder.encode(x_adv)))
        for member, e, ref in zip(ctx.embedder.members, embs, ctx.emb_clean):
            fooled &= (e * ref.to(e.device)).sum(dim=1) < float(member.threshold) - margin
    return fooled


register(Method(
    name="facelock",
    description="FaceLock: destroy identity and perceptual features of D(E(x')) (+ latent push)",
    maximize=True,
    prepare=_facelock_prepare,
    objective=_facelock_objective,
    options_type=FaceLockOptions,
    needs=("autoencoder", "face", "features"),
    fooled=_facelock_fooled,
))


# -- ablations ----------------------------------------------------------------------------
def _cvl_objective(x_adv, ctx: FaceContext, step, steps):
    return -ctx.cos_to_clean(x_adv)


register(Method(
    name="cvl",
    description="ablation: face-recognition loss on x' itself (no autoencoder)",
    maximize=True,
    prepare=_face_context,
    objective=_cvl_objective,
    options_type=CvlOptions,
    needs=("face",),
))


def _face_box_mask(faces, x: torch.Tensor) -> torch.Tensor:
    B, _, H, W = x.shape
    mask = torch.zeros(B, 1, H, W, device=x.device)
    for i, f in enumerate(faces):
        x0, y0, x1, y1 = [int(round(float(v))) for v in f.box]
        mask[i, :, max(y0, 0):max(min(y1, H), 0), max(x0, 0):max(min(x1, W), 0)] = 1.0
    return mask


def _cvl_d_prepare(x, models, opts):
    ctx = _with_autoencoders(_face_context(x, models, opts), models)
    ctx.box = _face_box_mask(ctx.faces, x)
    return ctx


def _cvl_d_objective(x_adv, ctx: FaceContext, step, steps):
    lambda_p = float(ctx.opts.get("lambda_p", 0.0))
    total, n = 0.0, 0
    for _, _, recon in ctx.round_trips(x_adv, step):
        loss = -ctx.cos_to_clean(recon)
        if lambda_p:
            box = ctx.box
            area = box.flatten(1).sum(1).clamp_min(1.0) * 3
            loss = loss + lambda_p * ((recon.float() - ctx.x) * box).pow(2).flatten(1).sum(1) / area
        total, n = total + loss, n + 1
    return total / n


register(Method(
    name="cvl_d",
    description="ablation: face-recognition loss through the autoencoder, FR(D(E(x')))",
    maximize=True,
    prepare=_cvl_d_prepare,
    objective=_cvl_d_objective,
    options_type=CvlDOptions,
    needs=("autoencoder", "face"),
))

register(Method(
    name="cvl_dp",
    description="ablation: cvl_d plus a pixel distortion of D(E(x')) inside the face box",
    maximize=True,
    prepare=_cvl_d_prepare,
    objective=_cvl_d_objective,
    options_type=CvlDpOptions,
    needs=("autoencoder", "face"),
))
