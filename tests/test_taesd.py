"""Tests for the TAESD-family tiny autoencoders (imguard.models.taesd)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from imguard.models.taesd import TinyAutoencoder, load_taesd, save_taesd

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
TAEF2 = ASSETS / "weights" / "taef2"
FACE = ASSETS / "faces" / "dev" / "sample1" / "0051_01.png"

# (latent channels, pool branch): TAESD/TAESDXL, TAEF1, TAEF2
VARIANTS = [(4, False), (16, False), (32, True)]


def _random_model(latent_channels: int, pool: bool, seed: int = 0) -> TinyAutoencoder:
    """A randomly initialised model whose weights are exactly representable in float16."""
    torch.manual_seed(seed)
    model = TinyAutoencoder(latent_channels=latent_channels, pool=pool)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # make GroupNorm affines and biases non-trivial too
                p.normal_(0.0, 0.1)
            p.copy_(p.half().float())
    return model.eval()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


# ----------------------------------------------------------------- random variants


@pytest.mark.parametrize("latent_channels,pool", VARIANTS)
def test_round_trip_random_variants(tmp_path, latent_channels, pool):
    model = _random_model(latent_channels, pool)
    save_taesd(model, tmp_path / "tiny")

    enc_sd = torch.load(tmp_path / "tiny_encoder.pth", weights_only=True)
    dec_sd = torch.load(tmp_path / "tiny_decoder.pth", weights_only=True)
    assert all(v.dtype == torch.float16 for v in [*enc_sd.values(), *dec_sd.values()])
    assert enc_sd["14.weight"].shape[0] == latent_channels
    # the pool branch lives only in the three deepest blocks of each half
    enc_pool = {k.split(".")[0] for k in enc_sd if ".pool." in k}
    dec_pool = {k.split(".")[0] for k in dec_sd if ".pool." in k}
    assert enc_pool == ({"11", "12", "13"} if pool else set())
    assert dec_pool == ({"3", "4", "5"} if pool else set())

    torch.manual_seed(1)
    x = torch.rand(2, 3, 16, 24)
    z = torch.randn(2, latent_channels, 2, 3)
    with torch.no_grad():
        want = (model.encode(x), model.decode(z), model.features(x))

    # every accepted spelling of the location loads the same pair
    for spec in (
        tmp_path / "tiny",
        str(tmp_path / "tiny"),
        tmp_path,
        tmp_path / "tiny_encoder.pth",
        tmp_path / "tiny_decoder.pth",
    ):
        loaded = load_taesd(spec)
        assert loaded.latent_channels == latent_channels
        assert loaded.pool is pool
        assert loaded.name == f"taesd:{tmp_path / 'tiny'}"
        assert not loaded.training
        assert all(not p.requires_grad and p.dtype == torch.float32 for p in loaded.parameters())
        with torch.no_grad():
            got = (loaded.encode(x), loaded.decode(z), loaded.features(x))
        assert torch.equal(got[0], want[0])
        assert torch.equal(got[1], want[1])
        assert all(torch.equal(g, w) for g, w in zip(got[2], want[2]))


def test_save_keeps_dtype_when_asked(tmp_path):
    model = TinyAutoencoder(latent_channels=4)
    save_taesd(model, tmp_path / "full", dtype=None)
    loaded = load_taesd(tmp_path / "full")
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), model.eval().encode(x))


@pytest.mark.parametrize("latent_channels,pool", VARIANTS)
def test_shapes_range_and_gradients(latent_channels, pool):
    model = _random_model(latent_channels, pool).requires_grad_(False)
    x = torch.rand(1, 3, 32, 40, requires_grad=True)

    z = model.encode(x)
    assert z.shape == (1, latent_channels, 4, 5)
    feats = model.features(x)
    assert [tuple(f.shape) for f in feats] == [
        (1, 64, 32, 40), (1, 64, 16, 20), (1, 64, 8, 10), (1, 64, 4, 5)
    ]
    y = model.decode(z)
    assert y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1

    # encode, features and decode are all differentiable w.r.t. their input
    (g_enc,) = torch.autograd.grad(z.square().sum(), x, retain_graph=True)
    (g_feat,) = torch.autograd.grad(sum(f.square().mean() for f in feats), x)
    zz = torch.randn(1, latent_channels, 4, 5, requires_grad=True)
    (g_dec,) = torch.autograd.grad(model.decode(zz).sum(), zz)
    for g in (g_enc, g_feat, g_dec):
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_input_checks_and_autocast():
    model = TinyAutoencoder(latent_channels=4).eval()
    with pytest.raises(ValueError, match="multiples of 8"):
        model.encode(torch.rand(1, 3, 12, 16))
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        model.encode(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match=r"\[B,4,h,w\]"):
        model.decode(torch.rand(1, 16, 2, 2))
    # half-precision input is cast to the model's dtype; autocast works too
    with torch.no_grad():
        assert model.encode(torch.rand(1, 3, 16, 16, dtype=torch.float16)).dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model.decode(model.encode(torch.rand(1, 3, 16, 16)))
    assert y.shape == (1, 3, 16, 16) and torch.isfinite(y).all()


# ------------------------------------------------------------------------ errors


def test_missing_files_name_the_path(tmp_path):
    prefix = tmp_path / "nothing_here" / "taef2"
    with pytest.raises(FileNotFoundError) as info:
        load_taesd(prefix)
    msg = str(info.value)
    assert str(prefix) + "_encoder.pth" in msg and str(prefix) + "_decoder.pth" in msg
    assert "prefix" in msg  # says what is expected

    # only one half present: the message names the missing one only
    save_taesd(TinyAutoencoder(4), tmp_path / "half")
    (tmp_path / "half_decoder.pth").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_taesd(tmp_path / "half_encoder.pth")
    assert str(tmp_path / "half_decoder.pth") in str(info.value)
    assert "half_encoder.pth" not in str(info.value).split("(")[0]

    # a folder without a pair
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*_encoder.pth/\\*_decoder.pth pair"):
        load_taesd(empty)


def test_bad_weights_raise_value_error(tmp_path):
    # two pairs in one folder are ambiguous
    save_taesd(TinyAutoencoder(4), tmp_path / "a")
    save_taesd(TinyAutoencoder(4), tmp_path / "b")
    with pytest.raises(ValueError, match="several"):
        load_taesd(tmp_path)

    # encoder and decoder of different variants
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    save_taesd(TinyAutoencoder(4), mixed / "m")
    save_taesd(TinyAutoencoder(16), tmp_path / "other")
    (tmp_path / "other_decoder.pth").replace(mixed / "m_decoder.pth")
    with pytest.raises(ValueError, match="4-channel latents"):
        load_taesd(mixed / "m")

    # not a state dict at all
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "j_encoder.pth").write_bytes(b"not a checkpoint")
    (junk / "j_decoder.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="j_encoder.pth"):
        load_taesd(junk / "j")


# ------------------------------------------------------------------ real TAEF2

needs_real = pytest.mark.skipif(
    not (Path(f"{TAEF2}_encoder.pth").is_file() and FACE.is_file()),
    reason="real TAEF2 weights / faces not found under ../shared/assets",
)


@pytest.fixture(scope="module")
def taef2():
    return load_taesd(TAEF2)


@pytest.fixture(scope="module")
def face256():
    from PIL import Image

    img = Image.open(FACE).convert("RGB").resize((256, 256), Image.BICUBIC)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255


@pytest.mark.real
@needs_real
def test_taef2_strict_load(taef2):
    assert taef2.latent_channels == 32 and taef2.pool
    for part, suffix in ((taef2.encoder, "_encoder.pth"), (taef2.decoder, "_decoder.pth")):
        sd = torch.load(f"{TAEF2}{suffix}", map_location="cpu", weights_only=True)
        assert set(sd) == set(part.state_dict())


@pytest.mark.real
@needs_real
def test_taef2_reconstructs_a_real_face(taef2, face256):
    with torch.no_grad():
        z = taef2.encode(face256)
        y = taef2.decode(z)
    assert z.shape == (1, 32, 32, 32)
    assert y.shape == face256.shape and y.min() >= 0 and y.max() <= 1
    # measured 33.5 dB with this code (bicubic resize of 0051_01.png to 256x256)
    assert _psnr(y, face256) > 32.0


@pytest.mark.real
@needs_real
def test_taef2_encoder_gradient_and_features(taef2, face256):
    x = face256.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(taef2.encode(x).square().sum(), x)
    assert torch.isfinite(g).all() and g.abs().max() > 0

    with torch.no_grad():
        feats = taef2.features(face256)
    assert [tuple(f.shape) for f in feats] == [
        (1, 64, 256, 256), (1, 64, 128, 128), (1, 64, 64, 64), (1, 64, 32, 32)
    ]
    assert all(torch.isfinite(f).all() for f in feats)
