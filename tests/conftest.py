"""Shared fixtures: tiny models built from the real classes, and the offline assets."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "assets"
FACES = SHARED / "faces" / "dev"
TAEF2 = SHARED / "weights" / "taef2"


def face_paths() -> list[Path]:
    return sorted(FACES.glob("sample*/*.png"))


ASSETS_MISSING = "../shared/assets (offline weights and faces) is not present"


def assets_present() -> bool:
    return (SHARED / "weights" / "taef2_encoder.pth").is_file() and bool(face_paths())


#: The one skip rule for tests that need ../shared/assets; it also marks them ``real``
#: (``pytest -m "not real"`` is the fast suite).
requires_assets = pytest.mark.skipif(not assets_present(), reason=ASSETS_MISSING)


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    """The offline assets folder (``../shared/assets``); skips the test when it is absent."""
    if not assets_present():
        pytest.skip(ASSETS_MISSING)
    return SHARED


@pytest.fixture(scope="session")
def dev_face(shared_assets) -> Path:
    """One real dev portrait (512x512 PNG)."""
    p = shared_assets / "faces" / "dev" / "sample1" / "0051_01.png"
    if not p.is_file():
        pytest.skip(f"{p} is not present")
    return p


@pytest.fixture(scope="session")
def mtcnn():
    """One MTCNN face detector for every real-face test of the session."""
    from imguard.models import FaceDetector

    return FaceDetector("cpu")


def pytest_collection_modifyitems(config, items):
    """Tests that use the real offline assets carry the ``real`` marker."""
    real = pytest.mark.real
    for item in items:
        uses = set(getattr(item, "fixturenames", ())) & {"shared_assets", "dev_face", "mtcnn"}
        skipif = [m for m in item.iter_markers("skipif") if m.kwargs.get("reason") == ASSETS_MISSING]
        if uses or skipif:
            item.add_marker(real)


def build_tiny_vae():
    """A small AutoencoderKL (2 levels, 8/16 channels): the real class, tiny config."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory) -> Path:
    """A tiny AutoencoderKL saved with save_pretrained, to load back through our loader."""
    d = tmp_path_factory.mktemp("tiny_vae")
    build_tiny_vae().save_pretrained(d)
    return d


class TinyRecognizer(torch.nn.Module):
    """A small random CNN following the recognizer interface (fast mechanics tests)."""

    name = "tiny-recognizer"
    input_size = (32, 32)
    threshold = 0.5
    alignment = "bbox"

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(16 * 8 * 8, 32),
        )

    def forward(self, x):
        return torch.nn.functional.normalize(self.net(x), dim=-1)


@pytest.fixture(scope="session")
def tiny_models(tiny_vae_dir):
    """Models with a tiny VAE (through the diffusers loader), a tiny recognizer, AE features."""
    from imguard.models import Models

    return Models(vae=str(tiny_vae_dir), face_model=TinyRecognizer(), features="ae", detector=None)


@pytest.fixture(scope="session")
def tiny_protector(tiny_models):
    from imguard import Protector

    return Protector("facelock", device="cpu", models=tiny_models, working_size=64)


@pytest.fixture
def image64():
    g = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, 64, 64, generator=g)


@pytest.fixture(autouse=True)
def _quiet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        yield


@pytest.fixture
def bar_postfixes(monkeypatch) -> list[dict]:
    """Replaces tqdm's bar with one that records what each ``set_postfix`` showed."""
    import tqdm.auto

    shown: list[dict] = []

    class Bar:
        def __init__(self, *a, **k):
            pass

        def update(self, n=1):
            pass

        def set_postfix(self, **kw):
            shown.append(kw)

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    return shown
