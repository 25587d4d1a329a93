"""Each method's options are a dataclass: defaults in one place, unknown options a clear
error, plug-ins with a defaults dict still work, and the docs table is generated from them."""

import re
from pathlib import Path

import pytest
import torch

from imguard.methods import Method, Options, get_method, method_names, options_markdown, register, unregister
from imguard.methods.encoder_attacks import AutoencoderContext, PhotoGuardOptions
from imguard.methods.facelock import FaceLockOptions

ROOT = Path(__file__).resolve().parents[1]


def test_every_method_declares_an_options_dataclass():
    for name in method_names():
        m = get_method(name)
        assert issubclass(m.options_type, Options), name
        assert m.options() == m.options_type().as_dict()
    assert get_method("facelock").options()["fr_start"] == FaceLockOptions.fr_start == 0.35
    assert get_method("photoguard").options(eps=6)["eps"] == 6 and PhotoGuardOptions().eps == 8


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(TypeError, match=r"no option\(s\) lambda_typo; its options are: .*lambda_fr"):
        get_method("facelock").options(lambda_typo=1.0)
    with pytest.raises(TypeError, match="no option"):
        get_method("photoguard").options(lambda_fr=1.0)  # facelock's option, not photoguard's


def test_a_plugin_with_a_defaults_dict_gets_an_options_dataclass():
    m = register(Method("tmp_opts", "test", True, lambda x, mo, o: None, lambda *a: None,
                        defaults={"eps": 3, "step_size": 1, "steps": 2, "weight": 2.0, "target": torch.zeros(1)}, needs=()))
    try:
        assert issubclass(m.options_type, Options)
        opts = m.options(weight=5.0)
        assert opts["weight"] == 5.0 and opts["eps"] == 3 and opts["norm"] == "linf"
        with pytest.raises(TypeError, match="its options are: .*weight"):
            m.options(wieght=1.0)
    finally:
        unregister("tmp_opts")


def test_encoder_attacks_have_a_typed_context(tiny_models, image64):
    ctx = get_method("encoder").prepare(image64, tiny_models, get_method("encoder").options())
    assert isinstance(ctx, AutoencoderContext) and len(ctx.z_clean) == len(ctx.autoencoders) == 1


def test_docs_table_is_generated_from_the_dataclasses():
    text = (ROOT / "docs" / "methods.md").read_text()
    block = re.search(r"<!-- options:begin -->\n(.*?)<!-- options:end -->", text, re.S)
    assert block is not None, "docs/methods.md lost its generated options table"
    assert block.group(1) == options_markdown(), "regenerate with imguard.methods.options_markdown()"
