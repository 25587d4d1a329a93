"""Every method: budget holds (before and after quantisation), its objective moves the
declared way, and the same seed gives the same result. Tiny models, CPU."""

import pytest
import torch

import imguard
from imguard.budget import Budget
from imguard.methods import get_method, method_names

ALL = method_names()
# options that make the tiny random models show a clear signal in a few steps
TEST_OPTIONS = {"cw_l2": {"c": 1000.0}}


def test_all_issue_methods_are_registered():
    for name in ["photoguard", "encoder", "vae", "cw_l2", "facelock", "cvl", "cvl_d", "cvl_dp"]:
        assert name in ALL


@pytest.mark.parametrize("name", ALL)
def test_method_budget_direction_and_determinism(name, tiny_protector, image64):
    opts = TEST_OPTIONS.get(name, {})
    res = tiny_protector.protect(image64, method=name, eps=6, steps=12, seed=0, return_result=True, **opts)
    m = get_method(name)
    # budget on the returned (quantised) image
    out = res.image
    assert out.shape == image64.shape and out.dtype == image64.dtype
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-4)
    assert Budget(6).holds(out - image64, tol=1e-4)
    assert max(res.achieved) <= 6 + 1e-4 and max(res.achieved) > 1
    # direction: the full objective at the result vs at the clean image
    if m.maximize:
        assert res.final_loss[0] > res.initial_loss[0], (res.initial_loss, res.final_loss)
    else:
        assert res.final_loss[0] < res.initial_loss[0], (res.initial_loss, res.final_loss)
    again = tiny_protector.protect(image64, method=name, eps=6, steps=12, seed=0, **opts)
    assert torch.equal(again, out)


def test_methods_listing_has_descriptions_and_units():
    info = imguard.methods()
    assert set(info) == set(ALL)
    for name, m in info.items():
        assert m["description"] and m["defaults"]["eps"] > 0 and m["defaults"]["step_size"] > 0
    # FaceLock's budget from [-1,1] units: 0.03 -> 3.825/255, realised as 4 levels in 8 bits;
    # step 0.01 -> 1.275/255. PhotoGuard 0.06 -> 7.65/255 -> 8 levels.
    assert info["facelock"]["defaults"]["eps"] == round(0.03 * 255 / 2)
    assert info["facelock"]["defaults"]["step_size"] == pytest.approx(0.01 * 255 / 2)
    assert info["photoguard"]["defaults"]["eps"] == round(0.06 * 255 / 2)
    assert info["photoguard"]["defaults"]["step_size"] == pytest.approx(0.02 * 255 / 2)


def test_facelock_schedule_switches_terms_on():
    """FR after 35% of the steps, features after 25%, latent term always (authors' code)."""
    m = get_method("facelock")
    calls = []

    class Probe(torch.nn.Module):
        def __init__(self, tag):
            super().__init__()
            self.tag = tag

        def forward(self, *a):
            calls.append(self.tag)
            return torch.zeros(1)

    class AE:
        def encode(self, x):
            return x

        def decode(self, z):
            return z

    class Emb:
        def similarity(self, x, reference):
            calls.append("fr")
            return torch.ones(1)

    from imguard.methods.facelock import FaceContext

    ctx = FaceContext(
        x=torch.zeros(1, 3, 4, 4), faces=[], embedder=Emb(), emb_clean=[torch.ones(1, 2) / 2 ** 0.5],
        autoencoders=[AE()], z_clean=[torch.zeros(1, 3, 4, 4)], features=Probe("fe"),
        opts={"lambda_fr": 1.0, "lambda_fe": 1.0, "lambda_l": 0.2, "fr_start": 0.35, "fe_start": 0.25, "lambda_decoy": 0.0},
    )
    x = torch.zeros(1, 3, 4, 4)
    for step, expect in [(0, []), (25, []), (26, ["fe"]), (35, ["fr", "fe"])]:
        calls.clear()
        m.objective(x, ctx, step, 100)
        assert sorted(calls) == sorted(expect), step


def test_unknown_method_lists_valid_ones(image64, tiny_protector):
    with pytest.raises(ValueError, match="valid methods: photoguard, encoder"):
        tiny_protector.protect(image64, method="glaze")


def test_unknown_option_lists_the_methods_options(image64, tiny_protector):
    with pytest.raises(TypeError, match="lambda_fe"):
        tiny_protector.protect(image64, method="facelock", lambda_fee=2)


def test_custom_method_plugs_in(tiny_protector, image64, monkeypatch):
    from imguard.methods import Method, base, register

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # registered for this test only

    def prepare(x, models, opts):
        return {"x": x}

    def objective(xa, ctx, step, steps):
        return (xa - ctx["x"]).flatten(1).mean(1)

    name = "brighten_test"
    if name not in method_names():
        register(Method(name, "test: brighten", True, prepare, objective, defaults={"eps": 4, "step_size": 1, "steps": 3}, needs=()))
    out = tiny_protector.protect(image64, method=name, seed=0)
    assert (out - image64).mean() > 0
