"""FaceRes and the TF.js graph reader.

The reader's mechanics are checked on a tiny TF.js graph written here (fp16- and
uint8-quantized weights in two shards, fused ops, SAME padding with stride 2 on even sizes)
against an independent numpy implementation of the TF ops. The real model (``real``) is
checked against the same numpy reference run on its own JSON/bin, and on the dev faces.
"""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED, face_paths
from imguard.models.base import ModelLoadError
from imguard.models.formats.tfjs import GraphModule, graph_from_state, graph_metadata, load_tfjs, lower_tfjs, read_tfjs

FACERES_JSON = SHARED / "weights" / "faceres" / "faceres.json"
requires_faceres = pytest.mark.skipif(
    not FACERES_JSON.is_file() or not (FACERES_JSON.parent / "faceres.bin").is_file() or not face_paths(),
    reason="../shared/assets (faceres weights and dev faces) is not present",
)


# --------------------------------------------------------------------------------------
# An independent numpy reference of the TF ops (NHWC), reading the manifest itself
# --------------------------------------------------------------------------------------
def np_weights(json_path: Path) -> dict[str, np.ndarray]:
    doc = json.loads(json_path.read_text())
    out = {}
    for group in doc["weightsManifest"]:
        buf = b"".join((json_path.parent / p).read_bytes() for p in group["paths"])
        off = 0
        for w in group["weights"]:
            q = w.get("quantization") or {}
            dt = np.dtype(q.get("dtype", w["dtype"]))
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            a = np.frombuffer(buf, dt, n, off).reshape(w["shape"])
            off += n * dt.itemsize
            if q.get("dtype") in ("uint8", "uint16"):
                a = a * q["scale"] + q["min"]
            out[w["name"]] = a.astype(np.float64) if a.dtype.kind == "f" or q else a
    return out


def _attr(node, key, default=None):
    a = node.get("attr", {}).get(key)
    if a is None:
        return default
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "list" in a:
        lst = a["list"]
        return [int(v) for v in lst["i"]] if "i" in lst else [base64.b64decode(v).decode() for v in lst.get("s", [])]
    for k, f in (("i", int), ("f", float), ("b", bool)):
        if k in a:
            return f(a[k])
    return default


def _same(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


def np_conv(x, k, stride, padding, depthwise=False):
    B, H, W, C = x.shape
    kh, kw = k.shape[:2]
    if padding == "SAME":
        t, b, oh = _same(H, kh, stride)
        l, r, ow = _same(W, kw, stride)
    else:
        t = b = l = r = 0
        oh, ow = (H - kh) // stride + 1, (W - kw) // stride + 1
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    taps = [xp[:, i : i + stride * oh : stride, j : j + stride * ow : stride, :] for i in range(kh) for j in range(kw)]
    kt = k.reshape(kh * kw, *k.shape[2:])
    if depthwise:  # out[..., c*M + m] = sum_t x_t[..., c] * k[t, c, m]
        out = sum(tap[..., :, None] * kt[i][None, None, None] for i, tap in enumerate(taps))
        return out.reshape(B, oh, ow, -1)
    p = np.concatenate(taps, axis=-1)  # [B, oh, ow, taps*C], tap-major like kt
    return (p.reshape(-1, kh * kw * C) @ kt.reshape(kh * kw * C, -1)).reshape(B, oh, ow, -1)


def np_pool(x, k, s, fn):
    B, H, W, C = x.shape
    t, b, oh = _same(H, k, s)
    l, r, ow = _same(W, k, s)
    fill = -np.inf if fn == "max" else np.nan
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=fill)
    win = np.stack([xp[:, i : i + s * oh : s, j : j + s * ow : s] for i in range(k) for j in range(k)])
    return win.max(0) if fn == "max" else np.nanmean(win, 0)  # TF averages valid pixels only


def np_run(json_path: Path, x: np.ndarray, wanted: list[str]) -> dict[str, np.ndarray]:
    """Interpret the TF nodes the outputs need, in float64, straight from the JSON."""
    doc = json.loads(json_path.read_text())
    nodes = {n["name"]: n for n in doc["modelTopology"]["node"]}
    W = np_weights(json_path)
    memo: dict[str, np.ndarray] = {}

    def act(kind, v, node, extra):
        if kind == "Relu":
            return np.maximum(v, 0)
        if kind == "Relu6":
            return np.clip(v, 0, 6)
        if kind == "BiasAdd":
            return v + extra
        raise NotImplementedError(kind)

    def ev(name):
        if name in memo:
            return memo[name]
        n = nodes[name]
        op, ins = n["op"], [i.split(":")[0] for i in n.get("input", []) if not i.startswith("^")]
        if op == "Placeholder":
            v = x
        elif op == "Const":
            v = W[name]
        elif op == "Identity":
            v = ev(ins[0])
        elif op in ("Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative"):
            v = np_conv(ev(ins[0]), ev(ins[1]), _attr(n, "strides")[1], _attr(n, "padding"), depthwise="Depthwise" in op)
            fused = _attr(n, "fused_ops", [])
            args = [ev(i) for i in ins[2:]]
            for f in fused:
                if f == "BiasAdd":
                    v = v + args.pop(0)
                elif f == "FusedBatchNorm":
                    g, b, m, var = args[:4]
                    args = args[4:]
                    v = (v - m) / np.sqrt(var + _attr(n, "epsilon")) * g + b
                else:
                    v = act(f, v, n, None)
        elif op == "_FusedMatMul":
            v = ev(ins[0]) @ ev(ins[1])
            for f in _attr(n, "fused_ops", []):
                v = act(f, v, n, ev(ins[2]))
        elif op in ("Add", "AddV2", "BiasAdd"):
            v = ev(ins[0]) + ev(ins[1])
        elif op == "Mul":
            v = ev(ins[0]) * ev(ins[1])
        elif op == "Maximum":
            v = np.maximum(ev(ins[0]), ev(ins[1]))
        elif op == "Minimum":
            v = np.minimum(ev(ins[0]), ev(ins[1]))
        elif op == "Relu":
            v = np.maximum(ev(ins[0]), 0)
        elif op == "Sigmoid":
            v = 1 / (1 + np.exp(-ev(ins[0])))
        elif op == "Softmax":
            e = np.exp(ev(ins[0]) - ev(ins[0]).max(-1, keepdims=True))
            v = e / e.sum(-1, keepdims=True)
        elif op == "Mean":
            v = ev(ins[0]).mean(axis=tuple(int(a) for a in ev(ins[1])), keepdims=bool(_attr(n, "keep_dims", False)))
        elif op in ("MaxPool", "AvgPool"):
            v = np_pool(ev(ins[0]), _attr(n, "ksize")[1], _attr(n, "strides")[1], "max" if op == "MaxPool" else "avg")
        elif op == "ConcatV2":
            v = np.concatenate([ev(i) for i in ins[:-1]], axis=int(ev(ins[-1])))
        else:
            raise NotImplementedError(op)
        memo[name] = v
        return v

    return {w: ev(w) for w in wanted}


# --------------------------------------------------------------------------------------
# A tiny TF.js graph model written by the test
# --------------------------------------------------------------------------------------
def _b64(s: str) -> dict:
    return {"s": base64.b64encode(s.encode()).decode()}


def _ints(*v) -> dict:
    return {"list": {"i": [str(i) for i in v]}}


def _node(name, op, inputs=(), **attr):
    return {"name": name, "op": op, "input": list(inputs), "attr": attr}


def write_tiny_tfjs(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    f16 = {  # stored as float16 (quantization float16), in two shards of group 1
        "k1": rng.normal(0, 0.3, (3, 3, 3, 4)),
        "bn_mul": rng.uniform(0.5, 2, 4),
        "bn_add": rng.normal(0, 0.5, 4),
        "kdw": rng.normal(0, 0.5, (3, 3, 4, 2)),
        "bdw": rng.normal(0, 0.2, 8),
        "k2": rng.normal(0, 0.4, (1, 1, 8, 6)),
        "g2": rng.uniform(0.5, 1.5, 6),
        "b2": rng.normal(0, 0.2, 6),
        "m2": rng.normal(0, 0.2, 6),
        "v2": rng.uniform(0.5, 2, 6),
    }
    u8 = {"fc_w": rng.normal(0, 0.5, (12, 5)), "fc_b": rng.normal(0, 0.1, 5)}  # uint8 in group 2
    plain = {"six": np.float32(6.0), "zero": np.float32(0.0)}  # float32 scalars, group 2
    ints = {"axes": np.array([1, 2], np.int32), "cat_axis": np.array(-1, np.int32)}
    groups = [{"paths": ["tiny.1.bin", "tiny.2.bin"], "weights": []}, {"paths": ["tiny.3.bin"], "weights": []}]
    blob1 = b""
    for name, v in f16.items():
        groups[0]["weights"].append({"name": name, "shape": list(v.shape), "dtype": "float32", "quantization": {"dtype": "float16", "original_dtype": "float32"}})
        blob1 += v.astype("<f2").tobytes()
    blob2 = b""
    for name, v in u8.items():
        lo, hi = float(v.min()), float(v.max())
        scale = (hi - lo) / 255
        q = np.round((v - lo) / scale).astype(np.uint8)
        groups[1]["weights"].append({"name": name, "shape": list(v.shape), "dtype": "float32", "quantization": {"dtype": "uint8", "scale": scale, "min": lo, "original_dtype": "float32"}})
        blob2 += q.tobytes()
    for name, v in {**plain, **ints}.items():
        groups[1]["weights"].append({"name": name, "shape": list(v.shape), "dtype": "float32" if v.dtype == np.float32 else "int32"})
        blob2 += v.astype(v.dtype.newbyteorder("<")).tobytes()
    cut = len(blob1) // 3
    (folder / "tiny.1.bin").write_bytes(blob1[:cut])
    (folder / "tiny.2.bin").write_bytes(blob1[cut:])
    (folder / "tiny.3.bin").write_bytes(blob2)

    same, nhwc = _b64("SAME"), _b64("NHWC")
    nodes = [_node(n, "Const") for n in [*f16, *u8, *plain, *ints]] + [
        _node("x", "Placeholder"),
        _node("c1", "Conv2D", ["x", "k1"], strides=_ints(1, 2, 2, 1), padding=same, data_format=nhwc),  # 10x10 -> 5x5, pads (0,1)
        _node("c1/mul", "Mul", ["c1", "bn_mul"]),
        _node("c1/add", "Add", ["c1/mul", "bn_add"]),
        _node("c1/relu", "Relu", ["c1/add"]),
        _node("c1/min", "Minimum", ["c1/relu", "six"]),
        _node("c1/max", "Maximum", ["c1/min", "zero"]),
        _node("dw", "FusedDepthwiseConv2dNative", ["c1/max", "kdw", "bdw"], strides=_ints(1, 1, 1, 1), padding=same,
              fused_ops={"list": {"s": [_b64("BiasAdd")["s"], _b64("Relu6")["s"]]}}, num_args={"i": "1"}),
        _node("pw", "_FusedConv2D", ["dw", "k2", "g2", "b2", "m2", "v2"], strides=_ints(1, 1, 1, 1), padding=same,
              fused_ops={"list": {"s": [_b64("FusedBatchNorm")["s"], _b64("Relu")["s"]]}}, epsilon={"f": 0.001}, num_args={"i": "4"}),
        _node("mp", "MaxPool", ["pw"], ksize=_ints(1, 3, 3, 1), strides=_ints(1, 2, 2, 1), padding=same),
        _node("ap", "AvgPool", ["pw"], ksize=_ints(1, 2, 2, 1), strides=_ints(1, 2, 2, 1), padding=same),
        _node("cat", "ConcatV2", ["mp", "ap", "cat_axis"], N={"i": "2"}),
        _node("cat/id", "Identity", ["cat"]),
        _node("pool", "Mean", ["cat/id", "axes"], keep_dims={"b": False}),
        _node("fc", "_FusedMatMul", ["pool", "fc_w", "fc_b"], fused_ops={"list": {"s": [_b64("BiasAdd")["s"]]}}, num_args={"i": "1"}),
        _node("prob", "Softmax", ["fc"]),
        _node("gate", "Sigmoid", ["fc"]),
    ]
    doc = {"format": "graph-model", "modelTopology": {"node": nodes}, "weightsManifest": groups}
    path = folder / "tiny.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory) -> Path:
    return write_tiny_tfjs(tmp_path_factory.mktemp("tfjs"))


def _x_tiny(batch=3):
    return np.random.default_rng(5).uniform(0, 1, (batch, 10, 10, 3))


@pytest.mark.parametrize("fold", [True, False])
def test_tiny_graph_matches_numpy(tiny_json, fold):
    x = _x_tiny()
    names = ["c1/max", "dw", "pw", "mp", "ap", "pool", "prob", "gate"]
    ref = np_run(tiny_json, x, names)
    module = load_tfjs(tiny_json, ["prob", "gate"], fold=fold)
    got = module.run(torch.from_numpy(x).float(), names)
    for n in names:
        assert got[n].shape == ref[n].shape, n
        np.testing.assert_allclose(got[n].detach().numpy(), ref[n], atol=2e-5, rtol=1e-5, err_msg=n)
    prob, gate = module(torch.from_numpy(x).float())
    np.testing.assert_allclose(prob.numpy(), ref["prob"], atol=2e-6)
    np.testing.assert_allclose(gate.numpy(), ref["gate"], atol=2e-6)
    assert ref["c1/max"].shape == (3, 5, 5, 4) and ref["mp"].shape == (3, 3, 3, 6)


def test_tiny_graph_reading_and_folding(tiny_json):
    g = read_tfjs(tiny_json)
    raw = np_weights(tiny_json)
    # fp16 dequantized exactly, uint8 as q*scale+min, int32 untouched, all as float32/int32
    assert g.weights["k1"].dtype == np.float32 and np.array_equal(g.weights["k1"], raw["k1"].astype(np.float32))
    np.testing.assert_allclose(g.weights["fc_w"], raw["fc_w"], rtol=1e-6)
    assert g.weights["axes"].dtype == np.int32 and g.weights["axes"].tolist() == [1, 2]
    spec, tensors = lower_tfjs(g, ["prob"])
    ops = [n["op"] for n in spec["nodes"]]
    # conv -> Mul -> Add folded into one conv; Relu/Minimum/Maximum into one clamp [0, 6]
    first = spec["nodes"][1]
    assert first["op"] == "conv" and first["name"] == "c1/add" and first["pad"] == "SAME" and first["stride"] == [2, 2]
    assert spec["nodes"][2] == {"name": "c1/max", "op": "clamp", "in": ["c1/add"], "min": 0.0, "max": 6.0}
    assert spec["fused"]["c1"] == "c1/add" and spec["fused"]["c1/relu"] == "c1/max"
    assert "affine" not in ops and "gate" not in {n["name"] for n in spec["nodes"]}  # pruned to "prob"
    module = GraphModule(spec, tensors)
    with pytest.raises(KeyError, match="folded into 'c1/add'"):
        module.run(torch.zeros(1, 10, 10, 3), ["c1/mul"])
    assert module.run(torch.zeros(1, 10, 10, 3), ["cat/id"])["cat/id"].shape == (1, 3, 3, 12)  # an Identity alias


def test_tiny_graph_safetensors_roundtrip(tiny_json, tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    module = load_tfjs(tiny_json, ["prob"])
    f = tmp_path / "tiny.safetensors"
    save_file(module.state_dict(), str(f), graph_metadata(module))
    with safe_open(str(f), framework="pt") as h:
        meta = h.metadata()
    back = graph_from_state(load_file(str(f)), meta)
    x = torch.from_numpy(_x_tiny()).float()
    assert torch.equal(back(x), module(x))
    with pytest.raises(ValueError, match="graph reader"):
        graph_from_state(load_file(str(f)), {"format": "something else"})
    # a cache file is data: its spec may name only the converter's whitelisted ops and functions
    for change, match in (({"op": "unary", "fn": "load"}, "not on the whitelist"), ({"op": "eval"}, "not one of imguard's")):
        bad = json.loads(meta["graph"])
        bad["nodes"][-1].update(change)
        with pytest.raises(ValueError, match=match):
            graph_from_state(load_file(str(f)), {**meta, "graph": json.dumps(bad)})


def test_tiny_graph_gradients_and_batch(tiny_json):
    module = load_tfjs(tiny_json, ["gate"])
    x = torch.from_numpy(_x_tiny(4)).float().requires_grad_(True)
    y = module(x)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    one = module(x[1:2].detach())
    torch.testing.assert_close(one, y[1:2].detach(), atol=1e-6, rtol=1e-6)


def test_reader_errors(tiny_json, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_tfjs(tmp_path / "nope.json")
    layers = tmp_path / "layers.json"
    layers.write_text(json.dumps({"modelTopology": {"model_config": {}}, "weightsManifest": []}))
    with pytest.raises(ValueError, match="layers model"):
        read_tfjs(layers)
    # a shard missing
    folder = tmp_path / "partial"
    folder.mkdir()
    doc = json.loads(tiny_json.read_text())
    (folder / "tiny.json").write_text(json.dumps(doc))
    for name in ("tiny.1.bin", "tiny.2.bin"):
        (folder / name).write_bytes((tiny_json.parent / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="tiny.3.bin"):
        read_tfjs(folder / "tiny.json")
    # an op the reader does not know is named
    doc["modelTopology"]["node"].append(_node("odd", "Cumsum", ["x", "axes"]))
    (folder / "tiny.3.bin").write_bytes((tiny_json.parent / "tiny.3.bin").read_bytes())
    (folder / "tiny.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="'Cumsum'"):
        load_tfjs(folder / "tiny.json", ["odd"])
    with pytest.raises(ValueError, match="not a node"):
        load_tfjs(folder / "tiny.json", ["missing"])


# --------------------------------------------------------------------------------------
# The real model
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faceres():
    from imguard.models.faceres import load_faceres

    return load_faceres(str(FACERES_JSON)).eval()


@pytest.fixture(scope="module")
def dev_crops(faceres, mtcnn):
    """The dev faces cropped for faceres (MTCNN box widened by box_scale), with identities."""
    from PIL import Image

    from imguard.models import alignment_matrices, warp_faces

    paths = face_paths()
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()) for p in paths])
    x = x.permute(0, 3, 1, 2).float() / 255  # the dev faces are all 512x512
    faces = mtcnn.detect(x)
    assert all(f is not None for f in faces)
    return warp_faces(x, alignment_matrices(faces, faceres), faceres.input_size), [p.parent.name for p in paths]


@pytest.mark.real
@requires_faceres
def test_faceres_matches_numpy_reference(faceres, dev_crops):
    crop = dev_crops[0][:1]
    x = (crop.permute(0, 2, 3, 1) * 255).numpy().astype(np.float64)
    names = ["conv1_relu/clip_by_value", "conv_pw_1_relu/clip_by_value", "global_pooling/Mean"]
    ref = np_run(FACERES_JSON, x, names)
    with torch.no_grad():
        got = faceres.graph.run(torch.from_numpy(x).float(), names)
    # first conv (stride 2, SAME) + batch-norm bias + ReLU6, straight from the JSON/bin arrays
    assert ref[names[0]].shape == (1, 112, 112, 32)
    np.testing.assert_allclose(got[names[0]].numpy(), ref[names[0]], atol=1e-4)
    np.testing.assert_allclose(got[names[1]].numpy(), ref[names[1]], atol=1e-3)  # BN folded into the weights
    np.testing.assert_allclose(got[names[2]].numpy(), ref[names[2]], atol=1e-4)
    emb = faceres(crop)
    np.testing.assert_allclose(emb.numpy()[0], ref[names[2]][0] / np.linalg.norm(ref[names[2]][0]), atol=1e-5)


@pytest.mark.real
@requires_faceres
def test_faceres_genuine_above_impostor(faceres, dev_crops):
    crops, ids = dev_crops
    with torch.no_grad():
        e = faceres(crops)
    S = (e @ e.T).numpy()
    pairs = list(itertools.combinations(range(len(ids)), 2))
    gen = np.array([S[i, j] for i, j in pairs if ids[i] == ids[j]])
    imp = np.array([S[i, j] for i, j in pairs if ids[i] != ids[j]])
    assert len(gen) == 12 and len(imp) == 16
    assert gen.mean() > imp.mean() + 0.08
    assert imp.mean() < faceres.threshold < gen.mean()
    assert np.mean(gen >= faceres.threshold) >= 0.75 and np.mean(imp >= faceres.threshold) <= 0.15


@pytest.mark.real
@requires_faceres
def test_faceres_interface(faceres, dev_crops):
    crops = dev_crops[0][:3].clone()
    assert faceres.name == "faceres" and faceres.input_size == (224, 224) and faceres.alignment == "bbox"
    assert 1.1 <= faceres.box_scale <= 1.5
    x = crops.clone().requires_grad_(True)
    e = faceres(x)
    assert e.shape == (3, 1024) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    (e[:, :10].sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        one = faceres(crops[1:2])
    torch.testing.assert_close(one, e[1:2].detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.real
@requires_faceres
def test_faceres_safetensors_and_registry(faceres, dev_crops, tmp_path):
    from safetensors.torch import save_file

    from imguard.models import load_face_recognizer
    from imguard.models.faceres import convert_faceres, load_faceres

    state, meta = convert_faceres(FACERES_JSON)
    assert all(isinstance(v, str) for v in meta.values()) and meta["model"] == "faceres"
    f = tmp_path / "faceres.safetensors"
    save_file(state, str(f), meta)
    again_state, again_meta = convert_faceres(f)  # passed through
    assert again_meta == meta and set(again_state) == set(state)
    back = load_face_recognizer(f"faceres:{f}")
    crops = dev_crops[0][:2]
    with torch.no_grad():
        assert torch.equal(back(crops), faceres(crops))
    assert back.threshold == faceres.threshold and back.box_scale == faceres.box_scale
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_faceres(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="model='faceres'"):
        other = tmp_path / "other.safetensors"
        save_file({"w": torch.zeros(2)}, str(other))
        load_faceres(str(other))


def test_faceres_wrong_files(tiny_json, tmp_path, monkeypatch):
    import sys

    from imguard.models.faceres import load_faceres

    with pytest.raises(ValueError, match="global_pooling/Mean"):
        load_faceres(str(tiny_json))  # a TF.js graph, but not FaceRes
    txt = tmp_path / "faceres.onnx"
    txt.write_bytes(b"\0")
    with pytest.raises(ValueError, match="faceres.json"):
        load_faceres(str(txt))
    monkeypatch.setitem(sys.modules, "imguard.models.hub", None)  # the model cache cannot be imported
    with pytest.raises(ModelLoadError, match="faceres:/path/to/faceres.json"):
        load_faceres(None)
