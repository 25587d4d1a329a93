"""FaceLock ("Edit Away and My Face Will not Stay") and its ablations.

FaceLock maximises, through the autoencoder's round trip D(E(x')):

    -cos(FR(D(E(x'))), FR(x)) * [step >= fr_start*steps]
    + lambda_fe * F(D(E(x')), x) * [step > fe_start*steps]
    + lambda_l * ||E(x') - E(x)||^2

with FR a face recognizer on aligned faces (alignment found once on the clean image), F a
perceptual feature distance (LPIPS, or the autoencoder's own multi-layer features) and the
latent term a per-element mean squared error. The switches at 35% and 25% of the steps are
those of the authors' code.

Ablations (the paper's Table 2):
``cvl``     -cos(FR(x'), FR(x)): the recognizer on the protected image itself
``cvl_d``   -cos(FR(D(E(x'))), FR(x)): the recognizer through the autoencoder
``cvl_dp``  ``cvl_d`` + lambda_p * pixel MSE between D(E(x')) and x inside the face box
"""

from __future__ import annotations

import torch

from ..models import FaceEmbedder, autoencoders_of, find_faces
from .base import Method, per_sample_mse, register
from .encoder_attacks import FACELOCK_BUDGET


def _face_box_mask(faces, x: torch.Tensor) -> torch.Tensor:
    B, _, H, W = x.shape
    mask = torch.zeros(B, 1, H, W, device=x.device)
    for i, f in enumerate(faces):
        x0, y0, x1, y1 = [int(round(float(v))) for v in f.box]
        mask[i, :, max(y0, 0):max(min(y1, H), 0), max(x0, 0):max(min(x1, W), 0)] = 1.0
    return mask


def _face_context(x, models, opts) -> dict:
    if getattr(models.face, "differentiable", True) is False:
        raise ValueError(
            f"face model {getattr(models.face, 'name', '?')!r} is evaluation-only (no gradients); "
            "protect against a differentiable recognizer (facenet, sface) and judge with this one"
        )
    faces = find_faces(x, models.detector, require_face=bool(opts.get("require_face", False)), names=opts.get("names"))
    embedder = FaceEmbedder(models.face, faces)
    with torch.no_grad():
        emb = embedder.embed_all(x)
    return {"x": x, "faces": faces, "embedder": embedder, "emb_clean": emb}


def _cos_to_clean(img, ctx):
    return ctx["embedder"].similarity(img, ctx["emb_clean"])


def _facelock_prepare(x, models, opts):
    ctx = _face_context(x, models, opts)
    ae = models.autoencoder
    with torch.no_grad():
        ctx["z_clean"] = ae.encode(x)
    ctx.update(
        ae=ae,
        features=models.features if float(opts["lambda_fe"]) != 0 else None,
        lambda_fr=float(opts["lambda_fr"]),
        lambda_fe=float(opts["lambda_fe"]),
        lambda_l=float(opts["lambda_l"]),
        fr_start=float(opts["fr_start"]),
        fe_start=float(opts["fe_start"]),
    )
    return ctx


def _facelock_objective(x_adv, ctx, step, steps):
    ae = ctx["ae"]
    z = ae.encode(x_adv)
    recon = ae.decode(z)
    loss = ctx["lambda_l"] * per_sample_mse(z, ctx["z_clean"])
    if step >= ctx["fr_start"] * steps and ctx["lambda_fr"]:
        loss = loss - ctx["lambda_fr"] * _cos_to_clean(recon, ctx)
    if step > ctx["fe_start"] * steps and ctx["features"] is not None:
        loss = loss + ctx["lambda_fe"] * ctx["features"](recon, ctx["x"]).float()
    return loss


register(Method(
    name="facelock",
    description="FaceLock: destroy identity and perceptual features of D(E(x')) (+ latent push)",
    maximize=True,
    prepare=_facelock_prepare,
    objective=_facelock_objective,
    defaults={
        **FACELOCK_BUDGET,
        "lambda_fr": 1.0, "lambda_fe": 1.0, "lambda_l": 0.2,
        "fr_start": 0.35, "fe_start": 0.25, "require_face": False,
    },
    needs=("autoencoder", "face", "features"),
))


# -- ablations ----------------------------------------------------------------------------
def _cvl_objective(x_adv, ctx, step, steps):
    return -_cos_to_clean(x_adv, ctx)


register(Method(
    name="cvl",
    description="ablation: face-recognition loss on x' itself (no autoencoder)",
    maximize=True,
    prepare=_face_context,
    objective=_cvl_objective,
    defaults={**FACELOCK_BUDGET, "require_face": False},
    needs=("face",),
))


def _cvl_d_prepare(x, models, opts):
    ctx = _face_context(x, models, opts)
    ctx["ae"] = models.autoencoder
    ctx["box"] = _face_box_mask(ctx["faces"], x)
    ctx["lambda_p"] = float(opts.get("lambda_p", 0.0))
    return ctx


def _cvl_d_objective(x_adv, ctx, step, steps):
    recon = ctx["ae"].decode(ctx["ae"].encode(x_adv))
    loss = -_cos_to_clean(recon, ctx)
    if ctx["lambda_p"]:
        box = ctx["box"]
        area = box.flatten(1).sum(1).clamp_min(1.0) * 3
        loss = loss + ctx["lambda_p"] * ((recon.float() - ctx["x"]) * box).pow(2).flatten(1).sum(1) / area
    return loss


register(Method(
    name="cvl_d",
    description="ablation: face-recognition loss through the autoencoder, FR(D(E(x')))",
    maximize=True,
    prepare=_cvl_d_prepare,
    objective=_cvl_d_objective,
    defaults={**FACELOCK_BUDGET, "require_face": False},
    needs=("autoencoder", "face"),
))

register(Method(
    name="cvl_dp",
    description="ablation: cvl_d plus a pixel distortion of D(E(x')) inside the face box",
    maximize=True,
    prepare=_cvl_d_prepare,
    objective=_cvl_d_objective,
    defaults={**FACELOCK_BUDGET, "require_face": False, "lambda_p": 1.0},
    needs=("autoencoder", "face"),
))
