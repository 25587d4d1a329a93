"""The budget (units, norms, quantisation) and the engine's shared features."""

import math

import pytest
import torch

from imguard.budget import Budget, quantize
from imguard.engine import EngineConfig, Objective, run, step_size_at


@pytest.mark.parametrize("eps", [0, -1, float("nan"), 1000, "abc"])
def test_bad_eps_is_rejected_with_units(eps):
    with pytest.raises(ValueError, match="/255"):
        Budget(eps)


def test_unknown_norm_lists_valid():
    with pytest.raises(ValueError, match="linf, l2"):
        Budget(4, "l1")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_and_projection_stay_in_budget(norm):
    b = Budget(6, norm)
    x = torch.rand(3, 3, 20, 30)
    d = b.random_start(x, torch.Generator().manual_seed(0))
    assert b.holds(d)
    big = torch.randn_like(x)
    assert b.holds(b.project(big))
    assert (b.measure(b.project(big)) > 5.9).all()  # projection lands on the boundary


def test_l2_is_rms_in_255_units():
    b = Budget(2, "l2")
    d = torch.full((1, 3, 10, 10), 2 / 255)
    assert b.measure(d).item() == pytest.approx(2.0, rel=1e-5)


@pytest.mark.parametrize("eps", [3.825, 4, 8])
def test_quantize_keeps_linf_budget_for_float_and_grid_inputs(eps):
    b = Budget(eps)
    g = torch.Generator().manual_seed(1)
    for x in (torch.rand(2, 3, 16, 16, generator=g), torch.randint(0, 256, (2, 3, 16, 16), generator=g).float() / 255):
        x_adv = (x + b.project(torch.randn(x.shape, generator=g))).clamp(0, 1)
        q = quantize(x, x_adv, b)
        assert torch.allclose(q * 255, (q * 255).round(), atol=1e-4)  # on the 8-bit grid
        assert (b.measure(q - x) <= eps + 1e-4).all()


def test_quantize_keeps_l2_budget():
    b = Budget(2, "l2")
    x = torch.rand(2, 3, 16, 16)
    x_adv = (x + b.project(torch.randn_like(x))).clamp(0, 1)
    q = quantize(x, x_adv, b)
    assert (b.measure(q - x) <= 2 + 1e-4).all()


def _quadratic(target):
    return Objective(loss=lambda xa, i: -(xa - target).pow(2).flatten(1).sum(1), maximize=True)


def test_engine_moves_objective_and_respects_budget():
    x = torch.rand(2, 3, 8, 8)
    target = torch.ones_like(x)
    res = run(x, _quadratic(target), Budget(8), EngineConfig(steps=20, step_size=1, random_start=False), seed=0)
    assert (res.final_loss > res.initial_loss).all()
    assert Budget(8).holds(res.delta)
    assert res.history.shape == (20, 2)
    assert ((res.x_adv >= 0) & (res.x_adv <= 1)).all()


def test_minimize_direction():
    x = torch.rand(1, 3, 8, 8) * 0.5
    obj = Objective(loss=lambda xa, i: xa.flatten(1).sum(1), maximize=False)
    res = run(x, obj, Budget(4), EngineConfig(steps=5, step_size=1), seed=0)
    assert res.final_loss.item() < res.initial_loss.item()


def test_engine_is_deterministic_for_a_seed():
    x = torch.rand(1, 3, 8, 8)
    obj = _quadratic(torch.zeros_like(x))
    cfg = EngineConfig(steps=5, step_size=1)
    a = run(x, obj, Budget(4), cfg, seed=7).x_adv
    b = run(x, obj, Budget(4), cfg, seed=7).x_adv
    c = run(x, obj, Budget(4), cfg, seed=8).x_adv
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_mask_limits_changes():
    x = torch.rand(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    res = run(x, _quadratic(torch.ones_like(x)), Budget(8), EngineConfig(steps=5, step_size=2), mask=mask, seed=0)
    assert res.delta[..., 4:, :].abs().max() == 0
    assert res.delta[..., :4, :].abs().max() > 0


def test_early_stop_freezes_done_samples():
    x = torch.rand(2, 3, 8, 8)
    calls = []

    def stop(x_adv, loss, step):
        calls.append(step)
        return torch.tensor([True, step >= 4])

    res = run(x, _quadratic(torch.ones_like(x)), Budget(8), EngineConfig(steps=20, step_size=1), early_stop=stop, seed=0)
    assert res.steps_run.tolist() == [1, 5]
    assert len(calls) == 5


def test_callback_eot_repeats_restarts_and_adam():
    x = torch.rand(2, 3, 8, 8)
    seen = []
    flips = [lambda t, g: t, lambda t, g: t.flip(-1)]
    cfg = EngineConfig(steps=4, step_size=1, grad_repeats=2, eot=flips, restarts=2)
    res = run(x, _quadratic(torch.ones_like(x)), Budget(4), cfg, callback=lambda i, n, l: seen.append((i, n)), seed=0)
    assert seen[:4] == [(0, 4), (1, 4), (2, 4), (3, 4)] and len(seen) == 8
    assert set(res.restart.tolist()) <= {0, 1}
    adam = run(x, _quadratic(torch.ones_like(x)), Budget(4), EngineConfig(steps=10, step_size=1, optimizer="adam_tanh"), seed=0)
    assert (adam.final_loss > adam.initial_loss).all()
    assert Budget(4).holds(adam.delta)


def test_linear_schedule_matches_facelock():
    cfg = EngineConfig(steps=100, step_size=1.275, schedule="linear")
    assert step_size_at(cfg, 0) == pytest.approx(1.275)
    # FaceLock: step - (step - step/100) / iters * i
    assert step_size_at(cfg, 50) == pytest.approx(1.275 - (1.275 - 0.01275) / 100 * 50)
    cos = EngineConfig(steps=10, step_size=2, schedule="cosine")
    assert step_size_at(cos, 0) == 2 and step_size_at(cos, 5) == pytest.approx(1.0)


def test_objective_must_be_per_sample():
    x = torch.rand(2, 3, 8, 8)
    bad = Objective(loss=lambda xa, i: xa.sum(), maximize=True)
    with pytest.raises(ValueError, match="one loss per sample"):
        run(x, bad, Budget(4), EngineConfig(steps=1))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="schedule"):
        EngineConfig(schedule="weird").validate()
    with pytest.raises(ValueError, match="optimizer"):
        EngineConfig(optimizer="sgd").validate()
    with pytest.raises(ValueError, match="steps"):
        EngineConfig(steps=0).validate()
    assert math.isfinite(step_size_at(EngineConfig(), 3))
