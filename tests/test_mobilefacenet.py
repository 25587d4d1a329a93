"""MobileFaceNet from its TFLite file, and the TFLite reader behind it (formats/tflite.py).

Parity is checked against the LiteRT runtime (``ai-edge-litert``, the dev extra) running the
same file; without the runtime a numpy forward of the first layers, read straight from the
FlatBuffer, still checks layout, TF's asymmetric SAME padding and the PReLU folding. Small
TFLite files built here exercise the other ops the reader handles (fp16 and int8 weights,
depth multipliers, dilation, fused activations, reshapes in NHWC order) against the runtime.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import torch

from conftest import FACES, SHARED

tflite = pytest.importorskip("tflite")

from imguard.models.base import ModelLoadError  # noqa: E402
from imguard.models.formats.tflite import TFLiteError, TFLiteModule, read_tflite  # noqa: E402
from imguard.models.mobilefacenet import (  # noqa: E402
    MobileFaceNet,
    convert_mobilefacenet,
    load_mobilefacenet,
)

MFN = SHARED / "weights" / "mobilefacenet" / "MobileFaceNet.tflite"
IDENTITIES = ("sample1", "sample2")

requires_mfn = pytest.mark.skipif(not MFN.is_file(), reason=f"{MFN} (offline assets) is not present")


# ------------------------------------------------------------------------- the runtime


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            return None
    return Interpreter


def _runtime(model):
    """Run a TFLite model (path or bytes) on NHWC float32 arrays: a callable, or skip."""
    cls = _interpreter_class()
    if cls is None:
        pytest.skip("no TFLite runtime (pip install ai-edge-litert)")
    it = cls(model_content=model) if isinstance(model, bytes) else cls(model_path=str(model))
    it.allocate_tensors()

    def run(*arrays):
        for d, a in zip(it.get_input_details(), arrays):
            it.set_tensor(d["index"], np.ascontiguousarray(a, dtype=np.float32))
        it.invoke()
        return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]

    return run


def _runtime_embed(faces01: torch.Tensor) -> np.ndarray:
    """Raw MobileFaceNet embeddings from the runtime; the file's batch is fixed at 2."""
    run = _runtime(MFN)
    x = ((faces01.numpy() * 255.0 - 127.5) / 128.0).transpose(0, 2, 3, 1).astype(np.float32)
    if len(x) % 2:
        x = np.concatenate([x, x[:1]])
    out = np.concatenate([run(x[i: i + 2])[0] for i in range(0, len(x), 2)])
    return out[: len(faces01)]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mfn() -> MobileFaceNet:
    if not MFN.is_file():
        pytest.skip(f"{MFN} is not present")
    return load_mobilefacenet(MFN)


@pytest.fixture(scope="module")
def aligned(mfn, mtcnn) -> dict[str, torch.Tensor]:
    """The dev faces, MTCNN-detected and aligned for MobileFaceNet: {identity: [4,3,112,112]}."""
    pytest.importorskip("facenet_pytorch")
    from PIL import Image

    from imguard.models.alignment import alignment_matrices, warp_faces

    files = {i: sorted((FACES / i).glob("*.png")) for i in IDENTITIES}
    if any(len(v) < 2 for v in files.values()):
        pytest.skip(f"dev faces not found under {FACES}")
    detector = mtcnn
    out = {}
    for ident, paths in files.items():
        crops = []
        for p in paths:
            x = torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32) / 255.0).permute(2, 0, 1)[None]
            face = detector.detect(x)[0]
            assert face is not None, f"no face found in {p}"
            crops.append(warp_faces(x, alignment_matrices([face], mfn), mfn.input_size))
        out[ident] = torch.cat(crops)
    return out


# --------------------------------------------------------------------- MobileFaceNet


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "MobileFaceNet.tflite"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_mobilefacenet(missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        convert_mobilefacenet(missing)


def test_wrong_files_say_what_was_expected(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00\x01 definitely not a model " * 10)
    with pytest.raises(ValueError, match=r"expected the MobileFaceNet TFLite model"):
        load_mobilefacenet(junk)

    other = tmp_path / "other.tflite"  # a valid TFLite model, but not MobileFaceNet
    other.write_bytes(_tiny_relu_model())
    with pytest.raises(ValueError, match=r"not MobileFaceNet.*\[N,112,112,3\]"):
        load_mobilefacenet(other)

    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign), {"model": "sface"})
    with pytest.raises(ValueError, match=r"'sface', not 'mobilefacenet'"):
        load_mobilefacenet(foreign)


def test_no_path_without_model_cache_says_how_to_pass_one(monkeypatch):
    monkeypatch.setitem(sys.modules, "imguard.models.hub", None)  # makes `from .hub import` fail
    with pytest.raises(ModelLoadError, match=r"mobilefacenet:/path/to/MobileFaceNet.tflite"):
        load_mobilefacenet()


@pytest.mark.real
@requires_mfn
def test_interface_unit_norm_and_any_batch(mfn):
    assert (mfn.name, mfn.input_size, mfn.alignment, mfn.embedding_dim) == ("mobilefacenet", (112, 112), "landmarks5", 192)
    assert 0.0 < mfn.threshold < 1.0 and not mfn.training
    params = list(mfn.parameters())
    assert sum(p.numel() for p in params) == 1_292_992  # the file's 1.29 M weights
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in params)
    x = torch.rand(5, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batch = mfn(x)
        singles = torch.cat([mfn(x[i: i + 1]) for i in range(5)])
        three = mfn(x[:3])
    assert batch.shape == (5, 192) and batch.dtype == torch.float32
    torch.testing.assert_close(batch.norm(dim=1), torch.ones(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(singles, batch, atol=1e-5, rtol=0)
    torch.testing.assert_close(three, batch[:3], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="112x112"):
        mfn(torch.rand(1, 3, 96, 96))


@pytest.mark.real
@requires_mfn
def test_parity_with_runtime_on_aligned_dev_faces(mfn, aligned):
    faces = torch.cat([aligned[i] for i in IDENTITIES])
    reference = _runtime_embed(faces)
    with torch.no_grad():
        ours = mfn.net((faces * 255.0 - 127.5) / 128.0).numpy()
    err = np.abs(ours - reference).max()
    ref_n = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cos = (mfn(faces).detach().numpy() * ref_n).sum(1)
    print(f"\nmobilefacenet vs LiteRT on {len(faces)} aligned dev faces: max |diff| {err:.2e} "
          f"(outputs up to {np.abs(reference).max():.2f}), min cosine {cos.min():.8f}")
    assert err < 1e-4
    assert cos.min() > 0.999999


@pytest.mark.real
@requires_mfn
def test_parity_with_runtime_on_noise_and_fusion_is_exact(mfn):
    faces = torch.rand(4, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    reference = _runtime_embed(faces)
    x = (faces * 255.0 - 127.5) / 128.0
    unfused = TFLiteModule(*read_tflite(MFN, fuse=False))
    with torch.no_grad():
        ours, plain = mfn.net(x).numpy(), unfused(x).numpy()
    err = np.abs(ours - reference).max()
    print(f"\nmobilefacenet vs LiteRT on noise: max |diff| {err:.2e}; fused vs unfused PReLU {np.abs(ours - plain).max():.1e}")
    assert err < 1e-4
    assert np.abs(ours - plain).max() < 1e-5
    assert len(mfn.net.program["ops"]) < len(unfused.program["ops"])


@pytest.mark.real
@requires_mfn
def test_first_layers_match_a_numpy_forward_read_from_the_file(mfn):
    """Independent of any runtime: conv (stride 2, TF SAME) + PReLU straight from the FlatBuffer."""
    buf = MFN.read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)

    def const(i):
        t = graph.Tensors(i)
        data = model.Buffers(t.Buffer()).DataAsNumpy().tobytes()
        return np.frombuffer(data, np.float32).reshape(t.ShapeAsNumpy())

    conv = graph.Operators(0)
    w, b = const(conv.Inputs(1)), const(conv.Inputs(2))  # [O,kh,kw,I], [O]
    slope_half = const(graph.Operators(4).Inputs(0))  # MUL by c in relu(x) + c*(x - |x|)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 112, 112, 3)).astype(np.float32)
    # TF SAME for 112 px, kernel 3, stride 2: 56 outputs, 1 pixel of padding, at the bottom/right
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 1), (0, 1), (0, 0)))
    patches = np.stack([xp[:, i: i + 111: 2, j: j + 111: 2, :] for i in range(3) for j in range(3)], axis=3)
    y = np.einsum("nhwkc,okc->nhwo", patches.reshape(2, 56, 56, 9, 3), w.reshape(w.shape[0], 9, 3)) + b
    y = np.maximum(y, 0) + slope_half * (y - np.abs(y))

    program = dict(mfn.net.program)
    ops = program["ops"][:2]
    assert [o["op"] for o in ops] == ["conv2d", "prelu"]
    program.update(ops=ops, outputs=[{"id": ops[1]["out"], "name": "first", "shape": [2, 56, 56, 64]}])
    part = TFLiteModule(program, dict(mfn.net.state_dict()))
    with torch.no_grad():
        ours = part(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert ours.shape == y.shape
    # the conv sums terms up to ~200 in float32: errors of ~1e-5 (a misplaced pad row gives ~10)
    np.testing.assert_allclose(ours, y, atol=5e-5, rtol=0)


@pytest.mark.real
@requires_mfn
def test_genuine_above_threshold_above_impostor(mfn, aligned):
    with torch.no_grad():
        emb = {i: mfn(aligned[i]) for i in IDENTITIES}
    genuine = [float(e[i] @ e[j]) for e in emb.values() for i, j in itertools.combinations(range(len(e)), 2)]
    impostor = (emb[IDENTITIES[0]] @ emb[IDENTITIES[1]].T).flatten().tolist()
    print(f"\nmobilefacenet genuine min/mean/max {min(genuine):.3f}/{np.mean(genuine):.3f}/{max(genuine):.3f}; "
          f"impostor {min(impostor):.3f}/{np.mean(impostor):.3f}/{max(impostor):.3f}; threshold {mfn.threshold}")
    assert min(genuine) > mfn.threshold > max(impostor)


@pytest.mark.real
@requires_mfn
def test_gradients_reach_the_input(mfn, aligned):
    faces = aligned[IDENTITIES[0]][:2].clone().requires_grad_(True)
    emb = mfn(faces)
    (emb[0] @ emb[1]).backward()
    assert faces.grad is not None and torch.isfinite(faces.grad).all() and faces.grad.abs().sum() > 0
    assert all(p.grad is None for p in mfn.parameters())


@pytest.mark.real
@requires_mfn
def test_safetensors_round_trip_and_registry(mfn, tmp_path):
    from safetensors.torch import save_file

    from imguard.models.recognizers import load_face_recognizer

    sd, meta = convert_mobilefacenet(MFN)
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["model"] == "mobilefacenet" and len(meta["source_sha256"]) == 64
    path = tmp_path / "mobilefacenet.safetensors"
    save_file(sd, str(path), meta)
    sd2, meta2 = convert_mobilefacenet(path)  # a converted file passes through
    assert meta2 == meta and set(sd2) == set(sd) and all(torch.equal(sd[k], sd2[k]) for k in sd)
    rebuilt = load_face_recognizer(f"mobilefacenet:{path}")
    assert rebuilt.name.startswith("mobilefacenet") and rebuilt.alignment == "landmarks5"
    x = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), mfn(x), atol=2e-6, rtol=0)


# ------------------------------------------------------------ the TFLite reader itself


def _aligned_vector(b, data: bytes):
    """A byte vector aligned to 16 (as TFLite converters write constant buffers)."""
    b.StartVector(1, len(data), 16)
    b.head = b.head - len(data)
    b.Bytes[b.head: b.head + len(data)] = data
    b.vectorNumElems = len(data)
    return b.EndVector()


def _offsets_vector(b, start, offsets):
    start(b, len(offsets))
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def build_tflite(tensors: list[dict], ops: list[tuple], inputs: list[int], outputs: list[int]) -> bytes:
    """A TFLite FlatBuffer: tensors {name, shape, type, data?, quant?}; ops (OP, ins, outs, (Options, {Field: v}))."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    buffers = [tflite.BufferStart(b) or tflite.BufferEnd(b)]  # buffer 0: empty
    tensor_offs = []
    for t in tensors:
        buffer_index = 0
        if t.get("data") is not None:
            vec = _aligned_vector(b, np.ascontiguousarray(t["data"]).tobytes())
            tflite.BufferStart(b)
            tflite.BufferAddData(b, vec)
            buffers.append(tflite.BufferEnd(b))
            buffer_index = len(buffers) - 1
        quant = None
        if t.get("quant"):
            q = t["quant"]
            scale = b.CreateNumpyVector(np.asarray(q["scale"], np.float32))
            zero = b.CreateNumpyVector(np.asarray(q["zero_point"], np.int64))
            tflite.QuantizationParametersStart(b)
            tflite.QuantizationParametersAddScale(b, scale)
            tflite.QuantizationParametersAddZeroPoint(b, zero)
            tflite.QuantizationParametersAddQuantizedDimension(b, q.get("axis", 0))
            quant = tflite.QuantizationParametersEnd(b)
        shape = b.CreateNumpyVector(np.asarray(t["shape"], np.int32))
        name = b.CreateString(t["name"])
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddType(b, getattr(tflite.TensorType, t.get("type", "FLOAT32")))
        tflite.TensorAddBuffer(b, buffer_index)
        tflite.TensorAddName(b, name)
        if quant is not None:
            tflite.TensorAddQuantization(b, quant)
        tensor_offs.append(tflite.TensorEnd(b))

    names = sorted({op[0] for op in ops})
    code_offs = []
    for n in names:
        code = getattr(tflite.BuiltinOperator, n)
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tflite.OperatorCodeAddBuiltinCode(b, code)
        tflite.OperatorCodeAddVersion(b, 1)
        code_offs.append(tflite.OperatorCodeEnd(b))
    op_offs = []
    for name, ins, outs, options in ops:
        opt = None
        if options:
            cls, fields = options
            getattr(tflite, f"{cls}Start")(b)
            for field, value in fields.items():
                getattr(tflite, f"{cls}Add{field}")(b, value)
            opt = getattr(tflite, f"{cls}End")(b)
        in_vec = b.CreateNumpyVector(np.asarray(ins, np.int32))
        out_vec = b.CreateNumpyVector(np.asarray(outs, np.int32))
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, names.index(name))
        tflite.OperatorAddInputs(b, in_vec)
        tflite.OperatorAddOutputs(b, out_vec)
        if opt is not None:
            tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, options[0]))
            tflite.OperatorAddBuiltinOptions(b, opt)
        op_offs.append(tflite.OperatorEnd(b))

    tensors_vec = _offsets_vector(b, tflite.SubGraphStartTensorsVector, tensor_offs)
    ops_vec = _offsets_vector(b, tflite.SubGraphStartOperatorsVector, op_offs)
    in_vec = b.CreateNumpyVector(np.asarray(inputs, np.int32))
    out_vec = b.CreateNumpyVector(np.asarray(outputs, np.int32))
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors_vec)
    tflite.SubGraphAddInputs(b, in_vec)
    tflite.SubGraphAddOutputs(b, out_vec)
    tflite.SubGraphAddOperators(b, ops_vec)
    graph = tflite.SubGraphEnd(b)
    graphs_vec = _offsets_vector(b, tflite.ModelStartSubgraphsVector, [graph])
    codes_vec = _offsets_vector(b, tflite.ModelStartOperatorCodesVector, code_offs)
    buffers_vec = _offsets_vector(b, tflite.ModelStartBuffersVector, buffers)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes_vec)
    tflite.ModelAddSubgraphs(b, graphs_vec)
    tflite.ModelAddBuffers(b, buffers_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _tiny_relu_model() -> bytes:
    tensors = [{"name": "x", "shape": [1, 4]}, {"name": "y", "shape": [1, 4]}]
    return build_tflite(tensors, [("RELU", [0], [1], None)], [0], [1])


def _net() -> tuple[bytes, tuple[int, ...]]:
    """A small graph touching every supported op; input NHWC [2,10,11,3] (even and odd sizes: asymmetric and symmetric SAME pads)."""
    rng = np.random.default_rng(0)
    T: list[dict] = []

    def tensor(name, shape, data=None, type="FLOAT32", quant=None):
        T.append({"name": name, "shape": list(shape), "data": data, "type": type, "quant": quant})
        return len(T) - 1

    def f32(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    act = lambda a: {"FusedActivationFunction": getattr(tflite.ActivationFunctionType, a)}  # noqa: E731
    x = tensor("input", (2, 10, 11, 3))
    w1h = tensor("w1_fp16", (8, 3, 3, 3), f32(8, 3, 3, 3).astype(np.float16), "FLOAT16")
    w1 = tensor("w1", (8, 3, 3, 3))
    b1 = tensor("b1", (8,), f32(8))
    c1 = tensor("c1", (2, 5, 6, 8))
    q_scale = np.linspace(0.005, 0.02, 16).astype(np.float32)
    q = rng.integers(-127, 128, (1, 3, 3, 16)).astype(np.int8)
    w2q = tensor("w2_int8", (1, 3, 3, 16), q, "INT8", {"scale": q_scale, "zero_point": np.zeros(16), "axis": 3})
    w2 = tensor("w2", (1, 3, 3, 16))
    b2q = tensor("b2_uint8", (16,), rng.integers(0, 256, 16).astype(np.uint8), "UINT8", {"scale": [0.01], "zero_point": [128]})
    b2 = tensor("b2", (16,))
    d1 = tensor("d1", (2, 5, 6, 16))
    alpha = tensor("alpha", (1, 1, 16), np.abs(f32(1, 1, 16)))
    p1 = tensor("p1", (2, 5, 6, 16))
    r, a, s, m, q1 = (tensor(n, (2, 5, 6, 16)) for n in ("relu", "abs", "sub", "mul", "prelu2"))
    half = tensor("half_slope", (16,), np.abs(f32(16)))
    w3 = tensor("w3", (8, 3, 3, 16), f32(8, 3, 3, 16, scale=0.1))
    b3 = tensor("b3", (8,), f32(8))
    c3 = tensor("c3", (2, 3, 4, 8))
    sc = tensor("scale", (8,), f32(8) + 1)
    m1 = tensor("m1", (2, 3, 4, 8))
    two = tensor("two", (), np.array(2.0, np.float32))
    v1 = tensor("v1", (2, 3, 4, 8))
    a1 = tensor("a1", (2, 3, 4, 8))
    h1, g1 = tensor("tanh", (2, 3, 4, 8)), tensor("sigmoid", (2, 3, 4, 8))
    cat = tensor("cat", (2, 3, 4, 16))
    axes = tensor("axes", (2,), np.array([1, 2], np.int32), "INT32")
    mean = tensor("mean", (2, 16))
    shp = tensor("shape", (2,), np.array([2, 192], np.int32), "INT32")
    flat = tensor("flat", (2, 192))
    wfc, bfc = tensor("wfc", (10, 192), f32(10, 192, scale=0.1)), tensor("bfc", (10,), f32(10))
    fc = tensor("fc", (2, 10))
    wfc2 = tensor("wfc2", (6, 192), f32(6, 192, scale=0.1))
    fc2 = tensor("fc2", (2, 6))
    joined = tensor("joined", (2, 32))
    out = tensor("embedding", (2, 32))
    pooled = tensor("pooled", (2, 1, 1, 16))
    conv = lambda stride, pad, dil=1, **kw: {"Padding": pad, "StrideH": stride, "StrideW": stride,  # noqa: E731
                                             "DilationHFactor": dil, "DilationWFactor": dil, **kw}
    ops = [
        ("DEQUANTIZE", [w1h], [w1], None),
        ("CONV_2D", [x, w1, b1], [c1], ("Conv2DOptions", conv(2, tflite.Padding.SAME, **act("RELU6")))),
        ("DEQUANTIZE", [w2q], [w2], None),
        ("DEQUANTIZE", [b2q], [b2], None),
        ("DEPTHWISE_CONV_2D", [c1, w2, b2], [d1], ("DepthwiseConv2DOptions", conv(1, tflite.Padding.SAME, 2, DepthMultiplier=2))),
        ("PRELU", [d1, alpha], [p1], None),
        ("RELU", [p1], [r], None),
        ("ABS", [p1], [a], None),
        ("SUB", [p1, a], [s], ("SubOptions", act("NONE"))),
        ("MUL", [half, s], [m], ("MulOptions", act("NONE"))),
        ("ADD", [r, m], [q1], ("AddOptions", act("NONE"))),
        ("CONV_2D", [q1, w3, b3], [c3], ("Conv2DOptions", conv(1, tflite.Padding.VALID))),
        ("MUL", [c3, sc], [m1], ("MulOptions", act("NONE"))),
        ("DIV", [m1, two], [v1], ("DivOptions", act("NONE"))),
        ("ADD", [v1, c3], [a1], ("AddOptions", act("RELU_N1_TO_1"))),
        ("TANH", [a1], [h1], None),
        ("LOGISTIC", [a1], [g1], None),
        ("CONCATENATION", [h1, g1], [cat], ("ConcatenationOptions", {"Axis": 3, **act("NONE")})),
        ("MEAN", [cat, axes], [mean], ("ReducerOptions", {"KeepDims": False})),
        ("RESHAPE", [cat, shp], [flat], None),
        ("FULLY_CONNECTED", [flat, wfc, bfc], [fc], ("FullyConnectedOptions", act("RELU"))),
        ("FULLY_CONNECTED", [cat, wfc2, -1], [fc2], ("FullyConnectedOptions", act("NONE"))),
        ("CONCATENATION", [mean, fc, fc2], [joined], ("ConcatenationOptions", {"Axis": 1, **act("NONE")})),
        ("L2_NORMALIZATION", [joined], [out], ("L2NormOptions", act("NONE"))),
        ("MEAN", [cat, axes], [pooled], ("ReducerOptions", {"KeepDims": True})),
    ]
    return build_tflite(T, ops, [x], [out, pooled]), (2, 10, 11, 3)


def test_reader_ops_match_the_runtime():
    data, shape = _net()
    program, weights = read_tflite(data)
    ops = [o["op"] for o in program["ops"]]
    assert ops.count("prelu") == 2 and "abs" not in ops  # the relu/abs pattern was folded
    model = TFLiteModule(program, weights)
    x = np.random.default_rng(1).uniform(-2, 2, shape).astype(np.float32)
    emb_ref, pooled_ref = _runtime(data)(x)
    with torch.no_grad():
        emb, pooled = model(torch.from_numpy(x).permute(0, 3, 1, 2))
    np.testing.assert_allclose(emb.numpy(), emb_ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(pooled.permute(0, 2, 3, 1).numpy(), pooled_ref, atol=1e-5, rtol=0)
    unfused = TFLiteModule(*read_tflite(data, fuse=False))
    with torch.no_grad():
        torch.testing.assert_close(unfused(torch.from_numpy(x).permute(0, 3, 1, 2))[0], emb, atol=1e-6, rtol=0)


def test_reader_batch_free_layouts_and_dequantization_without_runtime():
    data, shape = _net()
    program, weights = read_tflite(data)
    model = TFLiteModule(program, weights)
    x = torch.randn(5, shape[3], shape[1], shape[2], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        emb, pooled = model(x)
        emb2, _ = model(x[2:4])
    assert emb.shape == (5, 32) and pooled.shape == (5, 16, 1, 1)
    torch.testing.assert_close(emb2, emb[2:4], atol=1e-6, rtol=0)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(5), atol=1e-5, rtol=0)
    # kernels are stored in torch layout, the int8 depthwise one dequantized per channel
    conv_w = next(weights[o["in"][1]] for o in program["ops"] if o["op"] == "conv2d" and o["groups"] == 8)
    assert conv_w.shape == (16, 1, 3, 3)
    model_bytes = tflite.Model.GetRootAsModel(data, 0)
    graph = model_bytes.Subgraphs(0)
    t = next(graph.Tensors(i) for i in range(graph.TensorsLength()) if graph.Tensors(i).Name() == b"w2_int8")
    q = model_bytes.Buffers(t.Buffer()).DataAsNumpy().view(np.int8).reshape(1, 3, 3, 16)
    scales = t.Quantization().ScaleAsNumpy()
    np.testing.assert_allclose(conv_w.numpy(), (q * scales).transpose(3, 0, 1, 2), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match=r"must be \[B, 3, 10, 11\] \(NCHW\)"):
        model(torch.randn(1, 10, 11, 3))


def test_reader_refuses_unsupported_ops_and_quantized_activations():
    tensors = [{"name": "x", "shape": [1, 4, 4, 2]}, {"name": "y", "shape": [1, 2, 2, 2]}]
    pool = ("AVERAGE_POOL_2D", [0], [1], ("Pool2DOptions", {"Padding": 1, "StrideW": 2, "StrideH": 2, "FilterWidth": 2, "FilterHeight": 2}))
    with pytest.raises(TFLiteError, match="AVERAGE_POOL_2D"):
        read_tflite(build_tflite(tensors, [pool], [0], [1]))
    q = {"scale": [0.1], "zero_point": [0]}
    tensors = [{"name": "x", "shape": [1, 4], "type": "INT8", "quant": q}, {"name": "y", "shape": [1, 4], "type": "INT8", "quant": q}]
    with pytest.raises(TFLiteError, match="quantized activations"):
        read_tflite(build_tflite(tensors, [("RELU", [0], [1], None)], [0], [1]))
    with pytest.raises(TFLiteError, match="TFL3"):
        read_tflite(b"\x00" * 64)
