"""resolve(): presets, method defaults and explicit arguments meet in one place; the API, the
CLI and the web page ask it the same question and get the same answer."""

import pytest

from imguard import Protector
from imguard.cli import _settings, build_parser
from imguard.presets import PRESETS, get_preset
from imguard.request import resolve
from imguard.serve.app import job_request


def _cli(*flags):
    args = build_parser().parse_args(["protect", "in.png", "-o", "out", *flags])
    settings, kwargs = _settings(args)
    return settings["request"], kwargs


@pytest.mark.parametrize("strength", [*PRESETS, "max"])
@pytest.mark.parametrize("steps", [None, 7])
def test_api_cli_and_web_page_agree(strength, steps):
    api = Protector(strength=strength, device="cpu").request(steps=steps)
    cli, kwargs = _cli("--strength", strength, *(["--steps", str(steps)] if steps else []))
    web = job_request(strength, steps)
    assert api.as_dict() == cli == web.as_dict()
    assert api == web
    assert api.strength == strength and api.engine.steps == (steps or get_preset(strength).options["steps"])
    # what the CLI hands the protector resolves to the same request again
    assert Protector(device="cpu").request(**{k: v for k, v in kwargs.items() if k != "seed"}) == api


def test_a_preset_applies_only_to_its_own_method():
    plain = resolve(method="photoguard")
    assert resolve(method="photoguard", strength="high") == plain
    assert plain.strength is None and plain.autoencoder is None and plain.budget.eps == 8
    high = resolve(strength="high")
    assert high.method == "facelock" and high.strength == "high" and high.engine.diversity == 0.03 and high.budget.kind == "jnd"
    # the identity-first objective (docs/benchmarks.md, "An identity-first high"), in high and the default medium
    for preset in (high, resolve(strength="medium")):
        assert preset.options["fr_start"] == 0.0 and preset.options["lambda_fe"] == 0.0 and preset.engine.ti_kernel == 0
    assert high.recognizer == PRESETS["high"].face_model
    # high: the editor's latent space and the photo itself; TAEF2 left unattacked to judge transfer
    assert high.autoencoder == "taesd" and high.options["lambda_direct"] == 1.0 and high.engine.steps == 120
    medium = resolve(strength="medium")
    assert medium.autoencoder == "taesd" and medium.options["lambda_direct"] == 1.0 and medium.engine.steps == 100
    # fast names the models its shipped file was trained against, whatever high attacks
    from imguard.fast.train import TrainConfig
    from imguard.presets import FAST
    assert (FAST.face_model, FAST.vae) == (TrainConfig.face_model, TrainConfig.vae)
    # a named method with no strength: its own (paper) defaults, not the default strength's
    assert resolve(method="facelock").strength is None and resolve(method="facelock").budget.eps == 4
    assert resolve().strength == "medium"
    cli, _ = _cli("--method", "photoguard", "--strength", "high")
    assert cli == plain.as_dict()


def test_max_is_high_to_the_edge_of_the_gate_and_not_an_invisible_preset():
    high, mx = resolve(strength="high"), resolve(strength="max")
    assert "max" not in PRESETS  # the invisible presets are low, medium and high
    assert (mx.method, mx.recognizer, mx.autoencoder, mx.engine) == (high.method, high.recognizer, high.autoencoder, high.engine)
    assert mx.options == high.options
    assert (mx.budget.kind, mx.budget.jnd_scale, mx.budget.psnr_floor, mx.budget.gate) == ("jnd", 2.0, 36.0, "fill")
    assert (high.budget.jnd_scale, high.budget.gate) == (1.3, True)
    cli, _ = _cli("--strength", "max")
    assert cli == mx.as_dict()
    # what its results look like beyond the gate's numbers is said where the visibility is shown
    from imguard.bulk import visibility_caveat

    assert get_preset("max").caveat and not any(p.caveat for p in PRESETS.values())
    assert visibility_caveat("max") == f"; --strength max: {get_preset('max').caveat}"
    assert visibility_caveat("high") == visibility_caveat(None) == visibility_caveat("fast") == ""


def test_explicit_arguments_override_the_preset():
    r = resolve(strength="high", eps=3, steps=5, momentum=0.5, vae="taesd", lambda_decoy=0.0)
    assert (r.budget.eps, r.engine.steps, r.engine.momentum, r.autoencoder) == (3, 5, 0.5, "taesd")
    assert r.options["lambda_decoy"] == 0.0 and r.recognizer == PRESETS["high"].face_model


def test_bad_requests_say_what_is_valid():
    with pytest.raises(TypeError, match="its options are: .*lambda_fr"):
        resolve(method="facelock", lambda_typo=1)
    with pytest.raises(ValueError, match="unknown strength"):
        resolve(strength="extreme")
    with pytest.raises(ValueError, match="unknown EOT"):
        resolve(eot="nope")
    with pytest.raises(ValueError, match="momentum"):
        resolve(momentum=2.0)
