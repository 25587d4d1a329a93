"""Tests for dlib's ResNet face recognizer (``imguard.models.dlib_face``), evaluation only.

Identity behaviour and chip agreement are checked on the two dev identities in
``../shared/assets/faces/dev`` (skipped when absent), with the library's own alignment:
MTCNN landmarks, a similarity transform onto ``DLIB_TEMPLATE_150``, ``warp_faces``.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

dlib = pytest.importorskip("dlib")
face_recognition_models = pytest.importorskip("face_recognition_models")

from imguard.models.dlib_face import (  # noqa: E402
    DLIB_TEMPLATE_150,
    DLIB_THRESHOLD,
    DlibRecognizer,
    default_dlib_model_path,
    load_dlib_recognizer,
)

IDENTITIES = ("sample1", "sample2")


@pytest.fixture(scope="module")
def recognizer() -> DlibRecognizer:
    return load_dlib_recognizer()


def _load_rgb01(path: Path) -> torch.Tensor:
    from PIL import Image

    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def dev_faces(shared_assets):
    """(identity labels, images [N,3,H,W]) of the dev portraits."""
    FACES_DIR = shared_assets / "faces" / "dev"
    files = [(ident, p) for ident in IDENTITIES for p in sorted((FACES_DIR / ident).glob("*.png"))]
    if any(sum(1 for i, _ in files if i == ident) < 2 for ident in IDENTITIES):
        pytest.skip(f"need at least two portraits per identity under {FACES_DIR}")
    labels = [ident for ident, _ in files]
    images = torch.stack([_load_rgb01(p) for _, p in files])
    return labels, images


@pytest.fixture(scope="module")
def library_embeddings(recognizer, dev_faces, mtcnn):
    """Embeddings of the dev faces with the library's alignment (MTCNN + template warp)."""
    from imguard.models import find_faces, warp_faces
    from imguard.models.alignment import similarity_transform as _similarity

    labels, images = dev_faces
    faces = find_faces(images, mtcnn, require_face=True)
    template = np.asarray(recognizer.template, dtype=np.float32)
    mats = torch.from_numpy(np.stack([_similarity(f.landmarks, template) for f in faces]))
    crops = warp_faces(images, mats, tuple(recognizer.input_size))
    return labels, recognizer(crops)


# ---------------------------------------------------------------------------- interface


def test_attributes(recognizer):
    assert recognizer.name == "dlib-resnet"
    assert tuple(recognizer.input_size) == (150, 150)
    assert recognizer.alignment == "landmarks5"
    assert recognizer.differentiable is False
    assert recognizer.threshold == pytest.approx(DLIB_THRESHOLD)
    assert 0.9 < recognizer.threshold < 0.95  # Euclidean 0.6 at descriptor norms ~1.5
    t = recognizer.template
    assert t.shape == (5, 2) and t.dtype == np.float32
    np.testing.assert_allclose(t, DLIB_TEMPLATE_150)
    # left eye left of right eye, eyes above nose above mouth, all inside the chip
    assert t[0, 0] < t[1, 0] and t[3, 0] < t[4, 0]
    assert t[:2, 1].max() < t[2, 1] < t[3:, 1].min()
    assert (t > 0).all() and (t < 150).all()
    assert not any(p.requires_grad for p in recognizer.parameters())


def test_embeddings_are_unit_norm_and_detached(recognizer):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 150, 150, generator=g, requires_grad=True)
    e = recognizer(x)
    assert e.shape == (3, 128) and e.dtype == torch.float32 and e.device == x.device
    assert not e.requires_grad
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    raw = recognizer.descriptors(x)
    assert raw.shape == (3, 128)
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=1), e)
    # batching does not change a face's embedding
    torch.testing.assert_close(recognizer(x[1:2]), e[1:2], atol=1e-5, rtol=0)
    assert recognizer(x[:0]).shape == (0, 128)


def test_rejects_wrong_shapes(recognizer):
    with pytest.raises(ValueError, match="150x150"):
        recognizer(torch.rand(1, 3, 112, 112))
    with pytest.raises(ValueError, match="RGB"):
        recognizer(torch.rand(1, 1, 150, 150))


def test_copy_reloads_the_model(recognizer):
    x = torch.rand(1, 3, 150, 150, generator=torch.Generator().manual_seed(1))
    clone = copy.deepcopy(recognizer)
    torch.testing.assert_close(clone(x), recognizer(x))


def test_default_path_is_the_packaged_model():
    p = default_dlib_model_path()
    assert p.name == "dlib_face_recognition_resnet_model_v1.dat" and p.is_file()


def test_missing_model_path_names_it(tmp_path):
    missing = tmp_path / "no_such_dir" / "dlib_face_recognition_resnet_model_v1.dat"
    with pytest.raises(FileNotFoundError) as info:
        load_dlib_recognizer(missing)
    assert str(missing) in str(info.value)
    assert "imguard[transfer]" in str(info.value)


def test_not_a_model_file(tmp_path):
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"not a dlib model" * 10)
    with pytest.raises(ValueError, match="junk.dat"):
        load_dlib_recognizer(junk)


# ----------------------------------------------------------------------- real dev faces


def _pair_cosines(labels, emb):
    genuine, impostor = [], []
    for i, j in itertools.combinations(range(len(labels)), 2):
        c = float(emb[i] @ emb[j])
        (genuine if labels[i] == labels[j] else impostor).append(c)
    return np.array(genuine), np.array(impostor)


def test_dev_identities_separate(library_embeddings, recognizer):
    # measured: genuine mean 0.956 (min 0.938), impostor mean 0.876 (max 0.898), threshold 0.925
    labels, emb = library_embeddings
    assert emb.shape == (len(labels), 128)
    genuine, impostor = _pair_cosines(labels, emb)
    assert genuine.mean() > impostor.mean() + 0.04
    assert genuine.mean() > recognizer.threshold
    assert impostor.max() < recognizer.threshold


def test_template_alignment_reproduces_dlib_chips(library_embeddings, recognizer, dev_faces):
    """MTCNN + DLIB_TEMPLATE_150 crops embed like dlib's own detector/shape predictor chips."""
    # measured: cosine 0.991 on average, 0.974 at worst
    labels, emb = library_embeddings
    _, images = dev_faces
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    chips = []
    for img in images:
        arr = np.ascontiguousarray((img * 255).round().byte().permute(1, 2, 0).numpy())
        dets = detector(arr, 1)
        assert len(dets) >= 1
        shape = predictor(arr, max(dets, key=lambda r: r.area()))
        chips.append(torch.from_numpy(np.asarray(dlib.get_face_chip(arr, shape, size=150, padding=0.25))))
    chips01 = torch.stack(chips).permute(0, 3, 1, 2).float() / 255.0
    ref = recognizer(chips01)
    agreement = (ref * emb).sum(dim=1)
    assert agreement.min() > 0.96, agreement
    assert agreement.mean() > 0.98, agreement
