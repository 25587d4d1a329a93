"""Speed-ups that are meant to change no result change none (beyond float noise)."""

from __future__ import annotations

import pytest
import torch

from conftest import TinyRecognizer


class CountingAE(torch.nn.Module):
    """Wraps an autoencoder and counts its passes."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.name = "counting"
        self.calls = {"encode": 0, "decode": 0, "features": 0}

    def encode(self, x):
        self.calls["encode"] += 1
        return self.inner.encode(x)

    def decode(self, z):
        self.calls["decode"] += 1
        return self.inner.decode(z)

    def features(self, x):
        self.calls["features"] += 1
        return self.inner.features(x)


def _protector(tiny_vae_dir, speedups: bool, precision: str = "fp32"):
    from imguard import Protector

    return Protector("facelock", device="cpu", vae=str(tiny_vae_dir), face_model=TinyRecognizer(), features="ae",
                     detector=None, working_size=64, precision=precision, speedups=speedups, check=False)


def test_fixed_seed_protection_is_the_same_with_speedups_on_and_off(tiny_vae_dir, image64):
    on = _protector(tiny_vae_dir, True).protect(image64, steps=12, seed=5, return_result=True)
    off = _protector(tiny_vae_dir, False).protect(image64, steps=12, seed=5, return_result=True)
    assert torch.allclose(on.loss_history, off.loss_history, atol=1e-5, rtol=1e-5)
    assert on.final_loss == pytest.approx(off.final_loss, abs=1e-5)
    assert torch.equal(on.image, off.image)


def test_channels_last_under_bf16_matches_the_contiguous_layout(tiny_vae_dir, image64):
    on = _protector(tiny_vae_dir, True, "bf16")
    off = _protector(tiny_vae_dir, False, "bf16")
    a = on.protect(image64, steps=6, seed=2, return_result=True)
    b = off.protect(image64, steps=6, seed=2, return_result=True)
    conv = next(m for m in on.models.autoencoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    # bf16 forwards: the two layouts run different kernels; the objective agrees to bf16 precision
    assert torch.allclose(a.loss_history, b.loss_history, atol=0.05, rtol=0.05)


def test_clean_targets_are_computed_once_and_unused_decodes_skipped(tiny_vae_dir, image64):
    from imguard import Protector
    from imguard.models import load_autoencoder

    ae = CountingAE(load_autoencoder(str(tiny_vae_dir)))
    p = Protector("facelock", device="cpu", vae=ae, face_model=TinyRecognizer(), features="ae", detector=None,
                  working_size=64, precision="fp32", check=False)
    steps = 20
    p.protect(image64, steps=steps, seed=0)
    fe_steps = sum(1 for i in range(steps) if i > 0.25 * steps)
    decode_steps = sum(1 for i in range(steps) if i >= 0.35 * steps or i > 0.25 * steps)
    # features: once for the clean image, once per step with the feature term, and the
    # initial and final losses (all terms on)
    assert ae.calls["features"] == 1 + fe_steps + 2
    # decodes: only steps whose terms use the reconstruction, plus the initial and final losses
    assert ae.calls["decode"] == decode_steps + 2
    assert decode_steps < steps


def test_feature_distances_split_into_targets(tiny_vae_dir):
    from imguard.models import load_autoencoder
    from imguard.models.features import AEFeatureDistance, load_lpips

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    ae_dist = AEFeatureDistance(load_autoencoder(str(tiny_vae_dir)))
    assert torch.allclose(ae_dist.from_targets(a, ae_dist.targets(b)), ae_dist(a, b))
    assert (ae_dist(a, b) > 0).all() and torch.allclose(ae_dist(b, b), torch.zeros(2), atol=1e-6)
    lp = load_lpips("alex", pretrained_backbone=False)
    with torch.no_grad():
        assert torch.allclose(lp.from_targets(a, lp.targets(b)), lp(a, b), atol=1e-6)


def test_cpu_precision_choice(monkeypatch):
    from imguard import runtime

    cpu = torch.device("cpu")
    assert runtime.amp_dtype_for(cpu, "fp32") is None
    assert runtime.amp_dtype_for(cpu, "bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="needs a GPU"):
        runtime.amp_dtype_for(cpu, "fp16")
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    assert runtime.amp_dtype_for(cpu, "auto") is None
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    assert runtime.amp_dtype_for(cpu, "auto") is torch.bfloat16
    assert runtime.memory_format_for(cpu, torch.bfloat16) is torch.channels_last
    assert runtime.memory_format_for(cpu, None) is torch.contiguous_format


def test_stop_margin_stops_a_sample_once_its_models_are_fooled(tiny_vae_dir, image64):
    p = _protector(tiny_vae_dir, True)
    # margin -2: "fooled" at once (cosine < threshold + 2); the first check after the identity
    # term switches on (step 7 of 20) at a multiple of stop_every (5) is after step 10
    r = p.protect(image64, steps=20, seed=0, stop_margin=-2.0, return_result=True)
    assert r.steps_run == [10]
    # margin 3: never fooled (cosine >= -1 > threshold - 3): all steps
    r = p.protect(image64, steps=20, seed=0, stop_margin=3.0, stop_every=2, return_result=True)
    assert r.steps_run == [20]
    with pytest.raises(ValueError, match="stop_margin needs"):
        p.protect(image64, method="photoguard", steps=2, stop_margin=0.1)
