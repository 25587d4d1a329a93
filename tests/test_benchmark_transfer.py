"""benchmarks/: transfer.py (configuration names, merged reports, honest labels), objective.py, before_after.py and eye_colour.py helpers (no models run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def transfer():
    return load_benchmark("transfer")


@pytest.fixture(scope="module")
def objective():
    return load_benchmark("objective")


def test_leave_one_out_configs_replace_the_presets_models(transfer):
    c = transfer.parse_config("high@vae=taesd+identity@momentum=0")
    assert c["strength"] == "high" and c["vae"] == "taesd,identity" and c["options"] == {"momentum": 0}
    assert c["face_model"] == "sface,facenet,mobilefacenet,faceres"
    c = transfer.parse_config("facelock-sface+facenet-taef2@eot=jpeg+identity")
    assert (c["method"], c["face_model"], c["vae"]) == ("facelock", "sface,facenet", "taef2")
    assert c["options"] == {"eot": "jpeg,identity"}


def test_kept_faces_are_reused_only_for_the_same_settings(transfer, tmp_path):
    a = transfer.kept_dir(tmp_path, "high@vae=taesd", 256, 0, None)
    assert a.parent == tmp_path / "protected" and "256" in a.name
    others = {transfer.kept_dir(tmp_path, "high@vae=taesd", 128, 0, None),
              transfer.kept_dir(tmp_path, "high@vae=taesd", 256, 1, None),
              transfer.kept_dir(tmp_path, "high@vae=taesd", 256, 0, 10),
              transfer.kept_dir(tmp_path, "high", 256, 0, None)}
    assert a not in others and len(others) == 4


def _report(faces, label, attacked_vaes, lost_taef2):
    rows = [{"condition": cond, "judge": j, "judge_attacked": j == "sface", "similarity": [0.5] * len(faces),
             "lost": lost} for cond, lost in (("none->taesd", [True] * len(faces)), ("none->taef2", lost_taef2))
            for j in ("sface", "dlib")]
    clean = [dict(r, lost=[False] * len(faces)) for r in rows]
    cfg = {"config": {"label": label}, "attacked_face_models": ["sface"], "attacked_vaes": attacked_vaes,
           "psnr": 35.0, "ssim": 0.9, "seconds_per_image": 10.0, "rows": rows}
    return {"meta": {"faces": faces, "size": 256, "seed": 0, "device": "cpu", "command": f"run {label}",
                     "thresholds": {"sface": 0.3, "dlib": 0.9}}, "clean": clean, "configs": [cfg]}


def test_merged_tables_count_only_unseen_judges_and_star_attacked_autoencoders(transfer, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report(["f1", "f2"], "both", ["taesd", "taef2"], [True, True])))
    b.write_text(json.dumps(_report(["f1", "f2"], "taesd-only", ["taesd"], [True, False])))
    md = transfer.to_markdown(transfer.merge([a, b]))
    both = next(line for line in md.splitlines() if line.startswith("| both |"))
    only = next(line for line in md.splitlines() if line.startswith("| taesd-only |"))
    assert "| dlib |" in both  # the attacked sface is not a judge of the headline
    assert "100%*" in both and " 50% " in only  # taef2 unattacked by taesd-only: no star, 1 of 2 faces
    c = tmp_path / "c.json"
    c.write_text(json.dumps(_report(["f1", "f3"], "other", ["taesd"], [True, True])))
    with pytest.raises(SystemExit, match="other faces"):
        transfer.merge([a, c])


def test_probe_rows_are_written_with_their_command(transfer, tmp_path):
    out = transfer.write_rows(tmp_path / "deep" / "rows.json", [{"face": "a", "dlib": 0.61}])
    data = json.loads(out.read_text())
    assert data["rows"] == [{"face": "a", "dlib": 0.61}]
    assert data["command"].startswith("python ") and data["torch"]


def test_objective_members_reports_each_recognizers_cosine_per_condition(objective):
    """benchmarks/objective.py --members: the clean face itself is at cosine 1 for every
    recognizer; a condition that changes the face lowers it; thresholds come with them."""
    import torch

    from conftest import TinyRecognizer

    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    conditions = {"raw": lambda y: y, "flipped": lambda y: y.flip(-1)}
    out = objective.member_cosines(TinyRecognizer(), None, x, x, conditions)
    assert out["threshold"] == {"tiny-recognizer": 0.5}
    assert out["raw"]["tiny-recognizer"] == pytest.approx(1.0, abs=1e-3)
    assert out["flipped"]["tiny-recognizer"] < 0.99


def test_before_after_figure_places_each_crop_zoomed_under_its_label():
    from PIL import Image

    mod = load_benchmark("before_after")
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    fig = mod.figure([("a", red), ("b\nsecond line", blue)], crops=((0, 0, 10, 10), (20, 20, 40, 30)), zoom=2, gap=4, head=20)
    assert fig.size == (2 * 40 + 4, 20 + 20 + 4 + 20)
    assert fig.getpixel((5, 25)) == (255, 0, 0) and fig.getpixel((44 + 5, 25)) == (0, 0, 255)
    assert fig.getpixel((5, 20 + 20 + 4 + 5)) == (255, 0, 0)  # the second crop, under the first
    assert fig.getpixel((41, 30)) == (255, 255, 255)  # the gap between the columns


def test_objective_flat_to_extends_the_flat_weight_fade(objective):
    """objective.py --flat-to: the same full weight on a flat area, and a weight left on light
    texture (local std about 10/255) where the budget's own fade has (almost everywhere) reached 0."""
    import torch

    from imguard import budget

    flat = torch.full((1, 3, 32, 32), 0.5)
    g = torch.Generator().manual_seed(0)
    textured = (0.5 + torch.randn(1, 1, 32, 32, generator=g).expand(1, 3, 32, 32) * 10 / 255).clamp(0, 1)
    wider = objective.flat_weight_to(16.0)
    assert torch.allclose(wider(flat), budget.flat_weight(flat)) and float(wider(flat).min()) == 1.0
    assert float(budget.flat_weight(textured)[..., 8:-8, 8:-8].mean()) < 0.02
    assert float(wider(textured)[..., 8:-8, 8:-8].mean()) > 0.3
    with pytest.raises(SystemExit, match="above"):
        objective.flat_weight_to(2.0)


def test_eye_colour_sees_a_shifted_iris_and_nothing_else():
    """benchmarks/eye_colour.py: a tint over one iris disk is a Delta E of several units there and
    none at the other eye; a change outside the disks, or one that averages out inside them (a
    fine +-/- checkerboard of colour), is (nearly) nothing."""
    import numpy as np
    import torch

    eyes = load_benchmark("eye_colour")
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(1, 3, 128, 128, generator=g)
    lm = np.array([[44.0, 50.0], [84.0, 50.0], [64, 70], [50, 90], [78, 90]], np.float32)
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    disk = (((xx - 44) ** 2 + (yy - 50) ** 2) <= (0.12 * 40) ** 2).float()
    tint = x.clone()
    tint[:, 0] += 0.06 * disk  # redder inside the first iris
    (e1, c1), (e2, c2) = eyes.eye_shift(x, tint, lm)
    assert e1 > 3.0 and c1 > 2.5 and e2 == 0.0
    outside = x.clone()
    outside[..., 100:, :] += 0.05
    assert max(e for e, _ in eyes.eye_shift(x, outside, lm)) == 0.0
    checker = ((xx + yy) % 2 * 2 - 1)  # +1/-1: no mean over a disk
    fine = x + 0.03 * torch.stack([checker, -checker, checker])[None]
    assert max(e for e, _ in eyes.eye_shift(x, fine, lm)) < 1.0
