"""Metrics (psnr, ssim, lpips, identity, CLIP-I) and transforms (purifications, EOT)."""

from __future__ import annotations

import pytest
import torch

from imguard import metrics as M
from imguard import transforms as T
from conftest import TinyRecognizer


def smooth_images(b=2, h=48, w=64, seed=0):
    """Low-frequency random images (JPEG and blur behave as on photos)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(b, 3, h // 8, w // 8, generator=g)
    return torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


# ---------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------
def test_psnr_identical_is_inf_and_known_value():
    x = smooth_images()
    assert torch.isinf(M.psnr(x, x)).all()
    y = (x * 0.5 + 0.1).clamp(0, 1)
    z = y + 0.1  # uniform offset 0.1: mse 0.01 -> 20 dB
    assert torch.allclose(M.psnr(y, z), torch.full((2,), 20.0), atol=1e-3)
    assert M.psnr(x, x).shape == (2,)


def test_ssim_identical_is_one_and_drops_with_noise():
    x = smooth_images()
    assert torch.allclose(M.ssim(x, x), torch.ones(2), atol=1e-5)
    g = torch.Generator().manual_seed(1)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    s = M.ssim(x, noisy)
    assert s.shape == (2,) and (s < 0.95).all() and (s > 0).all()


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        M.psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))


def test_linf_and_cosine():
    x = smooth_images()
    y = (x + 4 / 255).clamp(0, 1)
    assert float(M.linf_in_255(y, x).max()) == pytest.approx(4.0, abs=1e-3)
    e = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    assert torch.allclose(M.cosine(e, e), torch.ones(3), atol=1e-6)
    assert torch.allclose(M.cosine(e, -e), -torch.ones(3), atol=1e-6)


def test_lpips_loads_or_says_why():
    metric, reason = M.load_lpips_metric("alex")
    if metric is None:  # offline: torchvision cannot download the backbone
        assert "LPIPS" in reason and reason
    else:
        x = smooth_images()
        assert torch.allclose(metric(x, x), torch.zeros(2), atol=1e-6)
    assert M.load_lpips_metric(None) == (None, "LPIPS switched off by the caller")


def test_lpips_mechanics_with_untrained_backbone():
    from imguard.models.features import load_lpips

    metric, reason = M.load_lpips_metric(load_lpips("alex", pretrained_backbone=False))
    assert reason is None and "untrained" in metric.name
    x = smooth_images()
    y = smooth_images(seed=5)
    d = metric(x, y)
    assert d.shape == (2,) and torch.allclose(metric(x, x), torch.zeros(2), atol=1e-6) and (d > 0).all()


def test_identity_metric_centre_crop_and_no_face():
    rec = TinyRecognizer().eval()
    x = smooth_images(b=2, h=64, w=64)
    ident = M.IdentityMetric(rec, detector=None)
    ref, found = ident.embed(x)
    assert found.all() and ref.shape == (2, 32)
    sim, found = ident.similarity(ref, x)
    assert torch.allclose(sim, torch.ones(2), atol=1e-5) and not ident.identity_lost(sim).any()

    class NoFace:
        def detect(self, x01):
            return [None] * x01.shape[0]

    blind = M.IdentityMetric(rec, detector=NoFace())
    sim, found = blind.similarity(ref, x)
    assert not found.any() and torch.isnan(sim).all() and blind.identity_lost(sim).all()
    assert blind.detector_name == "NoFace" and ident.detector_name.startswith("none")


def test_try_load_reports_reason():
    def boom():
        from imguard.models import ModelLoadError

        raise ModelLoadError("weights not here\nsecond line")

    assert M.try_load("thing", boom) == (None, "thing unavailable: weights not here")


def test_clip_from_a_local_folder(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=CLIPTextConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=16).to_dict(),
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, image_size=32, patch_size=8).to_dict(),
        projection_dim=8,
    )
    CLIPModel(cfg).save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    metric, reason = M.load_clip_metric(str(tmp_path))
    assert reason is None, reason
    x = smooth_images(b=2, h=40, w=40)
    s = metric(x, x)
    assert s.shape == (2,) and torch.allclose(s, torch.ones(2), atol=1e-4)
    missing, reason = M.load_clip_metric(str(tmp_path / "nope"))
    assert missing is None and "CLIP" in reason and "local folder" in reason


# ---------------------------------------------------------------------------------------
# purifications
# ---------------------------------------------------------------------------------------
EXPECTED = ["none", "jpeg60", "jpeg75", "jpeg90", "blur", "rot+10", "rot-10", "resize0.5", "jitter"]


def test_registry_names():
    assert T.purification_names() == EXPECTED
    assert [p.name for p in T.parse_purifications("all")] == EXPECTED
    assert [p.name for p in T.parse_purifications("blur, jpeg75")] == ["none", "blur", "jpeg75"]
    assert [p.name for p in T.parse_purifications(None)] == ["none"]
    with pytest.raises(ValueError, match="valid: none, jpeg60"):
        T.get_purification("jpeg50")


@pytest.mark.parametrize("name", EXPECTED)
def test_purification_shape_range_determinism(name):
    x = smooth_images(h=50, w=70)  # odd sizes on purpose
    p = T.get_purification(name)
    y1, y2 = p(x), p(x)
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert float(y1.min()) >= 0 and float(y1.max()) <= 1
    assert torch.equal(y1, y2)
    if name == "none":
        assert torch.equal(y1, x)
    else:
        assert float((y1 - x).abs().mean()) > 1e-4


def test_jpeg_quality_orders_error():
    x = smooth_images(h=64, w=64)
    err = {q: float((T.PURIFICATIONS[f"jpeg{q}"](x) - x).abs().mean()) for q in (60, 75, 90)}
    assert err[90] < err[75] < err[60]
    # the real codec lands on the 8-bit grid
    y = T.PURIFICATIONS["jpeg75"](x)
    assert torch.allclose(y * 255, (y * 255).round(), atol=1e-4)


def test_rotation_directions_differ_and_undo():
    x = smooth_images(h=64, w=64)
    plus, minus = T.PURIFICATIONS["rot+10"](x), T.PURIFICATIONS["rot-10"](x)
    assert not torch.allclose(plus, minus)
    back = T.rotate(plus, -10.0)
    centre = (slice(None), slice(None), slice(20, 44), slice(20, 44))
    assert float((back - x)[centre].abs().mean()) < 0.02


def test_differentiable_purifications_pass_gradients():
    for name in ("blur", "rot+10", "resize0.5", "jitter"):
        p = T.get_purification(name)
        assert p.differentiable
        x = smooth_images().requires_grad_(True)
        p(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, name
    assert not T.get_purification("jpeg75").differentiable


# ---------------------------------------------------------------------------------------
# EOT transforms
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", T.eot_names())
def test_eot_differentiable_and_seeded(name):
    (t,) = T.get_eot([name])
    x = smooth_images(h=40, w=56).requires_grad_(True)
    y = t(x, torch.Generator().manual_seed(7))
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    again = t(x.detach(), torch.Generator().manual_seed(7))
    assert torch.allclose(y.detach(), again, atol=1e-6)
    if name != "identity":
        outs = [t(x.detach(), torch.Generator().manual_seed(s)) for s in range(4)]
        assert any(not torch.allclose(outs[0], o, atol=1e-6) for o in outs[1:])


def test_jpeg_codec_eot_is_the_real_codec_forward_and_the_identity_backward():
    x = smooth_images(b=2, h=40, w=56).requires_grad_(True)
    y = T.jpeg_straight_through(x, [60, 90])
    assert torch.allclose(y.detach()[:1], T.jpeg_pil(x.detach()[:1], 60), atol=1e-6)
    assert torch.allclose(y.detach()[1:], T.jpeg_pil(x.detach()[1:], 90), atol=1e-6)
    assert not torch.allclose(y.detach(), x.detach(), atol=1e-3)  # the codec did change it
    (y * 3.0).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 3.0))


def test_get_eot_parsing():
    assert len(T.get_eot("jpeg, blur")) == 2
    assert T.get_eot(["rot"])[0] is T.get_eot(["rotate"])[0]
    assert T.get_eot(None) == []
    custom = lambda x, g: x  # noqa: E731
    assert T.get_eot([custom]) == [custom]
    with pytest.raises(ValueError, match="valid: jpeg, jpeg-codec, blur"):
        T.get_eot(["sharpen"])


def test_eot_in_the_engine_is_reproducible():
    from imguard import engine
    from imguard.budget import Budget

    x = smooth_images(b=1, h=32, w=32)
    target = torch.rand_like(x)
    obj = engine.Objective(loss=lambda xa, i: (xa - target).pow(2).flatten(1).mean(1), maximize=False)
    cfg = engine.EngineConfig(steps=3, step_size=1.0, eot=T.get_eot(["jpeg", "blur", "rotate", "jitter"]))
    r1 = engine.run(x, obj, Budget(8), cfg, seed=11)
    r2 = engine.run(x, obj, Budget(8), cfg, seed=11)
    assert torch.equal(r1.delta, r2.delta)
    assert float(r1.delta.abs().max()) <= 8 / 255 + 1e-6
