"""The engine's transfer techniques: each changes the optimisation the way it claims."""

from __future__ import annotations

import pytest
import torch

from imguard import engine
from imguard.budget import Budget


def _tv(d: torch.Tensor) -> float:
    """Mean absolute difference between horizontal and vertical neighbours."""
    return float((d[..., 1:, :] - d[..., :-1, :]).abs().mean() + (d[..., :, 1:] - d[..., :, :-1]).abs().mean())


def _high_frequency_share(d: torch.Tensor, cutoff: float = 0.125) -> float:
    f = torch.fft.fftfreq(d.shape[-1])
    high = (f.abs()[:, None] > cutoff) | (f.abs()[None, :] > cutoff)
    e = torch.fft.fft2(d - d.mean(dim=(-2, -1), keepdim=True)).abs().pow(2)
    return float(e[..., high].sum() / e.sum())


def _noise_objective(seed: int = 0, shape=(1, 3, 32, 32)) -> engine.Objective:
    r = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return engine.Objective(loss=lambda xa, i: (xa * r).flatten(1).sum(1), maximize=True)


def _run(objective, **cfg):
    x = torch.full((1, 3, 32, 32), 0.5)
    c = engine.EngineConfig(steps=cfg.pop("steps", 10), step_size=cfg.pop("step_size", 2.0), random_start=False, **cfg)
    return engine.run(x, objective, Budget(8.0), c, seed=0)


def test_momentum_keeps_direction_when_the_gradient_turns():
    # the gradient points up for three steps, then down for two: plain PGD walks back,
    # MI-FGSM's velocity (0.9-decayed sum of L1-normalised gradients) still points up
    a = torch.ones(1, 3, 32, 32)

    def loss(xa, i):
        return ((1.0 if i < 3 else -1.0) * (xa * a)).flatten(1).sum(1)

    obj = engine.Objective(loss=loss, maximize=True)
    plain = _run(obj, steps=5)
    mi = _run(obj, steps=5, momentum=0.9)
    assert torch.allclose(plain.delta * 255, torch.full_like(plain.delta, 2.0), atol=1e-3)  # +2+2+2-2-2
    assert torch.allclose(mi.delta * 255, torch.full_like(mi.delta, 8.0), atol=1e-3)  # up every step, capped at eps


def test_translation_invariance_smooths_the_perturbation():
    plain = _run(_noise_objective())
    ti = _run(_noise_objective(), ti_kernel=7)
    assert _tv(ti.delta) < 0.5 * _tv(plain.delta)
    assert ti.delta.abs().max() * 255 <= 8.0 + 1e-4


def test_lowres_perturbation_lives_on_a_coarse_grid_and_keeps_the_budget():
    res = _run(_noise_objective(), lowres=4)
    d = res.delta
    plain = _run(_noise_objective()).delta
    assert _tv(d) < 0.5 * _tv(plain)
    # spectral energy beyond the coarse grid's Nyquist frequency (1/8 cycle per pixel)
    assert _high_frequency_share(d) < 0.2 < 0.5 < _high_frequency_share(plain)
    assert d.abs().max() * 255 <= 8.0 + 1e-4
    assert res.final_loss.item() > res.initial_loss.item()  # still optimises


def test_input_diversity_shows_the_loss_shifted_images_reproducibly():
    seen = []

    def loss(xa, i):
        seen.append(xa.detach().clone())
        return xa.flatten(1).mean(1)

    obj = engine.Objective(loss=loss, maximize=True)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cfg = engine.EngineConfig(steps=4, step_size=1.0, random_start=False, diversity=0.3)
    engine.run(x, obj, Budget(4.0), cfg, seed=5)
    first = [t for t in seen[1:5]]  # seen[0] is the clean initial loss
    assert all(t.shape == x.shape for t in first)
    assert any((t - x).abs().max() > 0.05 for t in first)  # resized/padded, not just perturbed
    seen.clear()
    engine.run(x, obj, Budget(4.0), cfg, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first, seen[1:5]))


def test_luma_perturbation_is_grey_inside_the_budget_and_the_pixel_range():
    # a colour-blind objective's best change is a tint; color="luma" may only move R, G and B together
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x[..., :4, :] = 1.0  # saturated rows: a grey change must stop where the first channel would leave [0,1]
    w = torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1)
    obj = engine.Objective(loss=lambda xa, i: (xa * w).flatten(1).sum(1), maximize=True)
    budget = Budget.perceptual(x, 6.0)
    cfg = dict(steps=6, step_size=1.0, momentum=0.9)
    rgb = engine.run(x, obj, budget, engine.EngineConfig(**cfg), seed=0)
    luma = engine.run(x, obj, budget, engine.EngineConfig(**cfg, color="luma"), seed=0)
    d = luma.delta
    assert (d - d[:, :1]).abs().max() < 1e-6  # the same change in every channel
    assert (rgb.delta - rgb.delta[:, :1]).abs().max() > 1 / 255  # the plain run tints
    assert budget.holds(d)
    assert ((x + d) >= 0).all() and ((x + d) <= 1).all()
    assert d[..., :4, :].max() <= 1e-6  # at 1.0 it can only darken
    assert luma.final_loss.item() > luma.initial_loss.item()  # the objective still climbs (sum of w > 0)


@pytest.mark.parametrize("bad", [dict(momentum=1.5), dict(ti_kernel=4), dict(diversity=0.7), dict(lowres=0),
                                 dict(optimizer="adam_tanh", lowres=2), dict(color="yuv"),
                                 dict(optimizer="adam_tanh", color="luma"), dict(lowres=2, color="luma"),
                                 dict(soft_sign=-1.0), dict(soft_sign=float("nan")), dict(optimizer="adam_tanh", soft_sign=1.0)])
def test_invalid_technique_settings_are_refused(bad):
    with pytest.raises(ValueError):
        engine.EngineConfig(**bad).validate()


def test_soft_sign_gives_weak_gradients_a_share_of_the_step():
    # the gradient of sum(x * r) is r everywhere: with soft_sign k each pixel moves
    # alpha * clip(r / (k mean|r|), -1, 1), where a sign step moves every pixel by alpha
    obj = _noise_objective()
    r = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    sign = _run(obj, steps=1)
    soft = _run(obj, steps=1, soft_sign=2.0)
    expect = (r / (2.0 * r.abs().mean())).clamp(-1, 1) * 2.0
    assert torch.allclose(sign.delta * 255, r.sign() * 2.0, atol=1e-4)
    assert torch.allclose(soft.delta * 255, expect, atol=1e-4)
    strong = r.abs() >= 2.0 * r.abs().mean()
    assert 0 < int(strong.sum()) < r.numel()  # both kinds of pixel are in the test
    assert torch.allclose((soft.delta * 255)[strong].abs(), torch.full_like(r[strong], 2.0), atol=1e-4)
    # after many steps it still stays in the budget, and fewer pixels sit at its edge than with signs
    many_sign, many_soft = _run(obj, steps=20, momentum=0.9), _run(obj, steps=20, momentum=0.9, soft_sign=2.0)
    at_edge = [float(((d.delta * 255).abs() > 8.0 - 1e-3).float().mean()) for d in (many_sign, many_soft)]
    assert (many_soft.delta * 255).abs().max() <= 8.0 + 1e-4
    assert at_edge[1] < at_edge[0]
    assert many_soft.final_loss.item() > many_soft.initial_loss.item()


@pytest.mark.parametrize("method", ["facelock", "encoder", "cw_l2"])
def test_soft_sign_is_an_option_of_every_method_and_reaches_the_engine(method):
    from imguard.request import resolve

    if method == "cw_l2":  # Adam on tanh has no sign step to soften: refused with the reason
        with pytest.raises(ValueError, match="soft_sign"):
            resolve(method=method, soft_sign=1.0)
        return
    assert resolve(method=method, soft_sign=1.5).engine.config().soft_sign == 1.5
    assert resolve(method=method).engine.config().soft_sign == 0.0


def test_soft_sign_with_an_l2_budget_is_refused_not_ignored():
    from imguard.request import resolve

    with pytest.raises(ValueError, match="soft_sign.*l2"):
        resolve(method="encoder", norm="l2", budget="linf", eps=8, soft_sign=1.0)
    assert resolve(method="encoder", norm="l2", budget="linf", eps=8).engine.config().soft_sign == 0.0
    c = engine.EngineConfig(steps=1, step_size=2.0, random_start=False, soft_sign=1.0)
    with pytest.raises(ValueError, match="soft_sign.*l2"):  # the engine itself, called without resolve()
        engine.run(torch.full((1, 3, 32, 32), 0.5), _noise_objective(), Budget(8.0, "l2"), c, seed=0)
