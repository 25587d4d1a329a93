"""TF.js graph models read with numpy into a differentiable torch module (no TensorFlow).

A TF.js *graph model* is a frozen TensorFlow graph saved as ``model.json``: the nodes in
``modelTopology.node`` (``name``, ``op``, ``input``, ``attr``) and a ``weightsManifest``
naming every constant tensor (``name``, ``shape``, ``dtype``, optional ``quantization``) in
the order its bytes sit in the concatenated ``.bin`` shards of its group.

Three steps, each usable alone:

:func:`read_tfjs`     parse the JSON, read the shards, dequantize (``float16``; ``uint8`` /
                      ``uint16`` as ``q * scale + min``) into float32/int32 numpy arrays.
:func:`lower_tfjs`    prune the graph to the requested outputs and translate the TF ops into
                      a small JSON-able op list (the *spec*) plus tensors in torch layouts:
                      convolution kernels ``HWIO -> OIHW``, depthwise ``HWCM -> (C*M)1HW``,
                      matmul kernels ``[in,out] -> [out,in]``, fused ops (``_FusedConv2D``,
                      ``FusedDepthwiseConv2dNative``, ``_FusedMatMul``) split into their parts,
                      batch norms into a per-channel scale and shift. With ``fold=True`` a
                      per-channel ``Mul``/``Add``/``Sub``/``RealDiv``/batch norm right after a
                      convolution or matmul is folded into its weight and bias, and chains of
                      ``Relu``/``Minimum``/``Maximum`` by scalars become one clamp (ReLU6).
:class:`GraphModule`  runs a spec with torch ops. Activations keep TF's NHWC layout, so
                      broadcasting, reduction axes and reshapes mean what they meant in the
                      graph; convolutions run on the NCHW view of the same memory (PyTorch's
                      channels-last format). ``SAME`` padding is computed from the actual input
                      size like TF does: for stride 2 on an even size the extra row and column
                      go to the bottom and right.

The spec is plain JSON, so a converted model is a ``.safetensors`` file: the module's
``state_dict`` plus :func:`graph_metadata` (the spec as text), rebuilt by
:func:`graph_from_state`. Supported ops: Placeholder, Const, Identity, Conv2D,
DepthwiseConv2dNative, _FusedConv2D, FusedDepthwiseConv2dNative, MatMul, _FusedMatMul,
BiasAdd, Add/AddV2, Sub, Mul, RealDiv, Maximum, Minimum, Relu, Relu6, Elu, LeakyRelu, Prelu,
Sigmoid, Tanh, Softmax, Neg, Abs, Exp, Log, Sqrt, Rsqrt, Square, FusedBatchNorm(V2/V3),
Mean/Sum/Max/Min, Reshape, Squeeze, ConcatV2, Pad/PadV2, AvgPool, MaxPool. Anything else is
reported by name.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._tf import same_pads

__all__ = [
    "SPEC_FORMAT",
    "GraphModule",
    "TfjsGraph",
    "graph_from_state",
    "graph_metadata",
    "load_tfjs",
    "lower_tfjs",
    "read_tfjs",
]

#: Name and version of the spec format (stored in safetensors metadata).
SPEC_FORMAT = "imguard.graph"
SPEC_VERSION = 1

_NP_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int32": np.int32,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "int8": np.int8,
    "int16": np.int16,
    "bool": np.bool_,
}


# --------------------------------------------------------------------------------------
# Reading: JSON + shards -> numpy
# --------------------------------------------------------------------------------------
@dataclass
class TfjsGraph:
    """A TF.js graph model read into memory: its nodes (as in the JSON) and weights."""

    path: str
    nodes: list[dict[str, Any]]
    weights: dict[str, np.ndarray]
    signature: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  #: format, generatedBy, convertedBy

    def node(self, name: str) -> dict[str, Any]:
        for n in self.nodes:
            if n["name"] == name:
                return n
        raise KeyError(f"no node {name!r} in the TF.js graph {self.path}")

    @property
    def names(self) -> set[str]:
        return {n["name"] for n in self.nodes}


def _dequantize(raw: np.ndarray, entry: Mapping[str, Any]) -> np.ndarray:
    q = entry.get("quantization")
    dtype = entry["dtype"]
    if not q:
        return raw
    qd = q["dtype"]
    if qd == "float16":
        return raw.astype(np.float32)
    if qd in ("uint8", "uint16"):
        if "scale" not in q or "min" not in q:
            raise ValueError(f"weight {entry['name']!r}: {qd} quantization without scale/min is not supported")
        vals = raw.astype(np.float64) * float(q["scale"]) + float(q["min"])
        return np.round(vals).astype(np.int32) if dtype == "int32" else vals.astype(np.float32)
    raise ValueError(f"weight {entry['name']!r}: unsupported quantization dtype {qd!r}")


def read_tfjs(path: str | os.PathLike) -> TfjsGraph:
    """Read a TF.js graph model: the ``model.json`` at ``path`` and the shards it names.

    Weights come back dequantized: float tensors as float32, integer tensors as int32.
    Raises FileNotFoundError for a missing JSON or shard, ValueError for a file that is not a
    TF.js graph model (e.g. a layers model) or weights that do not fit their shards.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TF.js model file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path!r} is not a TF.js graph model: expected a JSON file ({e})") from e
    topo = doc.get("modelTopology") if isinstance(doc, dict) else None
    if not isinstance(topo, dict) or "node" not in topo or "weightsManifest" not in doc:
        kind = "a TF.js layers model" if isinstance(topo, dict) and "model_config" in topo else "something else"
        raise ValueError(
            f"{path!r} is {kind}, not a TF.js graph model: expected JSON with "
            "'modelTopology.node' (the graph) and 'weightsManifest'"
        )
    folder = os.path.dirname(path)
    weights: dict[str, np.ndarray] = {}
    for group in doc["weightsManifest"]:
        chunks = []
        for rel in group["paths"]:
            shard = os.path.join(folder, rel)
            if not os.path.isfile(shard):
                raise FileNotFoundError(f"weight shard {shard!r} named by {path!r} does not exist (keep the .bin files beside the JSON)")
            with open(shard, "rb") as f:
                chunks.append(f.read())
        buf = b"".join(chunks)
        offset = 0
        for entry in group["weights"]:
            shape = [int(s) for s in entry.get("shape", [])]
            stored = (entry.get("quantization") or {}).get("dtype", entry["dtype"])
            if stored not in _NP_DTYPES:
                raise ValueError(f"weight {entry['name']!r} has unsupported dtype {stored!r}")
            np_dtype = np.dtype(_NP_DTYPES[stored]).newbyteorder("<")
            count = int(np.prod(shape)) if shape else 1
            nbytes = count * np_dtype.itemsize
            if offset + nbytes > len(buf):
                raise ValueError(
                    f"weight {entry['name']!r} ({stored} {shape}) runs past the end of its shards "
                    f"({len(buf)} bytes): the .bin does not belong to {path!r}"
                )
            raw = np.frombuffer(buf, dtype=np_dtype, count=count, offset=offset).reshape(shape)
            offset += nbytes
            arr = _dequantize(raw, entry)
            if arr.dtype == np.float16 or arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            elif arr.dtype.kind in "iu" and arr.dtype != np.int32:
                arr = arr.astype(np.int32)
            weights[entry["name"]] = np.array(arr)  # own the memory (frombuffer is read-only)
        if offset != len(buf):
            raise ValueError(f"{path!r}: the shards hold {len(buf)} bytes but the manifest names {offset}")
    info = {k: doc[k] for k in ("format", "generatedBy", "convertedBy") if k in doc}
    return TfjsGraph(path, list(topo["node"]), weights, doc.get("signature") or {}, info)


# --------------------------------------------------------------------------------------
# Attributes of TF nodes as TF.js writes them
# --------------------------------------------------------------------------------------
def _attr(node: Mapping[str, Any], key: str, default: Any = None) -> Any:
    a = (node.get("attr") or {}).get(key)
    if a is None:
        return default
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    if "type" in a:
        return a["type"]
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "s" in lst:
            return [base64.b64decode(v).decode() for v in lst["s"]]
        if "f" in lst:
            return [float(v) for v in lst["f"]]
        return []
    return default


def _ref(text: str) -> str | None:
    """A node name from an input reference (``None`` for a control dependency ``^x``)."""
    if text.startswith("^"):
        return None
    name, _, port = text.partition(":")
    if port not in ("", "0"):
        raise ValueError(f"input {text!r} uses output {port} of a multi-output op, which is not supported")
    return name


# --------------------------------------------------------------------------------------
# Lowering: TF nodes -> spec (JSON-able op list) + tensors in torch layouts
# --------------------------------------------------------------------------------------
_TENSOR_FIELDS = ("key", "weight", "bias", "scale", "shift")
_BINARY = {"Add": "add", "AddV2": "add", "Sub": "sub", "Mul": "mul", "RealDiv": "div", "Maximum": "maximum", "Minimum": "minimum"}
_UNARY = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Elu": "elu", "Neg": "neg", "Abs": "abs", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Rsqrt": "rsqrt", "Square": "square"}
_REDUCE = {"Mean": "mean", "Sum": "sum", "Max": "max", "Min": "min"}
#: The one whitelist of unary functions, shared by the converter (``_UNARY`` names) and the
#: runtime (a spec read back from a cache file can name nothing else).
_UNARY_FNS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "elu": F.elu, "neg": torch.neg, "abs": torch.abs,
              "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "square": torch.square}
assert set(_UNARY.values()) == set(_UNARY_FNS)
#: What each op of a graph spec may name in its ``fn`` field (checked when a spec is loaded).
_SPEC_FNS = {"unary": set(_UNARY_FNS), "binary": {"add", "sub", "mul", "div", "maximum", "minimum"},
             "reduce": set(_REDUCE.values()), "pool": {"max", "avg"}}
_SPEC_OPS = {"input", "const", "conv", "linear", "binary", "clamp", "affine", "unary", "leaky_relu", "prelu", "softmax",
             "reduce", "reshape", "squeeze", "concat", "pad", "pool"}
_IDENTITY = {"Identity", "StopGradient", "Snapshot"}


class _Lowering:
    def __init__(self, graph: TfjsGraph):
        self.graph = graph
        self.by_name = {n["name"]: n for n in graph.nodes}
        self.nodes: list[dict[str, Any]] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.alias: dict[str, str] = {}
        self.input: str | None = None

    # helpers -------------------------------------------------------------------------
    def src(self, ref: str) -> str:
        while ref in self.alias:
            ref = self.alias[ref]
        return ref

    def const_value(self, name: str, what: str) -> np.ndarray:
        name = self.src(name)
        node = self.by_name.get(name)
        if node is None or node["op"] != "Const":
            raise ValueError(f"{what} must be a constant in the graph, but {name!r} is computed ({node and node['op']})")
        if name not in self.graph.weights:
            raise ValueError(f"constant {name!r} has no entry in the weights manifest")
        return self.graph.weights[name]

    def add_tensor(self, hint: str, value: np.ndarray) -> str:
        key = _fresh(self.tensors, hint)
        self.tensors[key] = np.ascontiguousarray(value)
        return key

    def emit(self, name: str, op: str, inputs: Sequence[str], **fields: Any) -> str:
        self.nodes.append({"name": name, "op": op, "in": [self.src(i) for i in inputs], **fields})
        return name

    def act(self, name: str, kind: str, x: str, node: Mapping[str, Any], arg: str | None = None) -> str:
        """Emit activation ``kind`` on ``x`` under ``name``."""
        if kind == "Relu":
            return self.emit(name, "clamp", [x], min=0.0, max=None)
        if kind == "Relu6":
            return self.emit(name, "clamp", [x], min=0.0, max=6.0)
        if kind in _UNARY:
            return self.emit(name, "unary", [x], fn=_UNARY[kind])
        if kind == "LeakyRelu":
            alpha = _attr(node, "leakyrelu_alpha", _attr(node, "alpha", 0.2))
            return self.emit(name, "leaky_relu", [x], alpha=float(alpha))
        if kind == "Prelu":
            if arg is None:
                raise ValueError(f"{node['name']}: Prelu without its alpha input")
            return self.emit(name, "prelu", [x, arg])
        raise ValueError(f"{node['name']}: unsupported fused activation {kind!r}")

    # conv-like ops -------------------------------------------------------------------
    def conv(self, node: Mapping[str, Any], inputs: list[str], depthwise: bool, fused: Sequence[str]) -> None:
        name = node["name"]
        fmt = _attr(node, "data_format", "NHWC")
        if fmt != "NHWC":
            raise ValueError(f"{name}: data_format {fmt} is not supported (TF.js graphs use NHWC)")
        k = self.const_value(inputs[1], f"{name}: the filter")
        if k.ndim != 4:
            raise ValueError(f"{name}: expected a 4-D filter, got shape {k.shape}")
        kh, kw, cin, cm = k.shape
        if depthwise:
            weight = k.transpose(2, 3, 0, 1).reshape(cin * cm, 1, kh, kw)
            groups = cin
        else:
            weight = k.transpose(3, 2, 0, 1)
            groups = 1
        strides = _attr(node, "strides", [1, 1, 1, 1])
        dil = _attr(node, "dilations", [1, 1, 1, 1])
        padding = _attr(node, "padding", "VALID")
        if padding == "EXPLICIT":
            ep = _attr(node, "explicit_paddings", [])
            pad: Any = [ep[2], ep[3], ep[4], ep[5]]  # NHWC pairs: H (top, bottom), W (left, right)
        elif padding in ("SAME", "VALID"):
            pad = padding
        else:
            raise ValueError(f"{name}: unsupported padding {padding!r}")
        parts, args = list(fused), inputs[2:]
        bias = scale = shift = None
        if parts and parts[0] == "BiasAdd":
            bias = self.const_value(args[0], f"{name}: the fused bias").reshape(-1)
            parts, args = parts[1:], args[1:]
        elif parts and parts[0] == "FusedBatchNorm":
            eps = float(_attr(node, "epsilon", 1e-3))
            g, b, m, v = (self.const_value(a, f"{name}: batch norm parameters").reshape(-1) for a in args[:4])
            scale = g / np.sqrt(v + eps)
            shift = b - m * scale
            parts, args = parts[1:], args[4:]
        x = f"{name}/_conv" if (parts or scale is not None) else name
        self.emit(x, "conv", [inputs[0]], weight=self.add_tensor(f"{x}.weight", weight.astype(np.float32)),
                  bias=self.add_tensor(f"{x}.bias", bias.astype(np.float32)) if bias is not None else None,
                  stride=[strides[1], strides[2]], dilation=[dil[1], dil[2]], pad=pad, groups=groups)
        if scale is not None:
            tgt = f"{name}/_bn" if parts else name
            x = self.emit(tgt, "affine", [x], scale=self.add_tensor(f"{tgt}.scale", scale.astype(np.float32)),
                          shift=self.add_tensor(f"{tgt}.shift", shift.astype(np.float32)))
        self.activations(node, parts, args, x)

    def activations(self, node: Mapping[str, Any], parts: Sequence[str], args: Sequence[str], x: str) -> None:
        """The fused activations after a conv/matmul; the last one carries the node's name."""
        name = node["name"]
        for i, kind in enumerate(parts):
            tgt = name if i == len(parts) - 1 else f"{name}/_{kind.lower()}"
            x = self.act(tgt, kind, x, node, args[0] if kind == "Prelu" and args else None)

    def matmul(self, node: Mapping[str, Any], inputs: list[str], fused: Sequence[str]) -> None:
        name = node["name"]
        if _attr(node, "transpose_a", False):
            raise ValueError(f"{name}: MatMul with transpose_a is not supported")
        w = self.const_value(inputs[1], f"{name}: the matmul kernel")
        weight = w if _attr(node, "transpose_b", False) else w.T
        parts, args = list(fused), inputs[2:]
        bias = None
        if parts and parts[0] == "BiasAdd":
            bias = self.const_value(args[0], f"{name}: the fused bias").reshape(-1)
            parts, args = parts[1:], args[1:]
        lin = name if not parts else f"{name}/_linear"
        self.emit(lin, "linear", [inputs[0]], weight=self.add_tensor(f"{lin}.weight", weight.astype(np.float32)),
                  bias=self.add_tensor(f"{lin}.bias", bias.astype(np.float32)) if bias is not None else None)
        self.activations(node, parts, args, lin)

    def pool(self, node: Mapping[str, Any], inputs: list[str], fn: str) -> None:
        ks = _attr(node, "ksize", [1, 1, 1, 1])
        st = _attr(node, "strides", [1, 1, 1, 1])
        if ks[0] != 1 or ks[3] != 1 or st[0] != 1 or st[3] != 1:
            raise ValueError(f"{node['name']}: pooling over batch or channels is not supported")
        pad = _attr(node, "padding", "VALID")
        if pad not in ("SAME", "VALID"):
            raise ValueError(f"{node['name']}: pooling with {pad!r} padding is not supported")
        self.emit(node["name"], "pool", inputs[:1], fn=fn, ksize=[ks[1], ks[2]], stride=[st[1], st[2]], pad=pad)

    # one TF node -------------------------------------------------------------------------
    def lower(self, node: Mapping[str, Any]) -> None:
        op, name = node["op"], node["name"]
        inputs = [r for r in (_ref(i) for i in node.get("input", [])) if r is not None]
        if op == "Placeholder":
            if self.input is not None:
                raise ValueError(f"the outputs depend on two inputs ({self.input!r}, {name!r}); one is supported")
            self.input = name
            self.emit(name, "input", [])
        elif op == "Const":
            if name not in self.graph.weights:
                raise ValueError(f"constant {name!r} has no entry in the weights manifest")
            self.emit(name, "const", [], key=self.add_tensor(name, self.graph.weights[name]))
        elif op in _IDENTITY:
            self.alias[name] = self.src(inputs[0])
        elif op in ("Conv2D", "DepthwiseConv2dNative"):
            self.conv(node, inputs, op != "Conv2D", [])
        elif op in ("_FusedConv2D", "FusedDepthwiseConv2dNative"):
            self.conv(node, inputs, op != "_FusedConv2D", _attr(node, "fused_ops", []))
        elif op == "MatMul":
            self.matmul(node, inputs, [])
        elif op == "_FusedMatMul":
            self.matmul(node, inputs, _attr(node, "fused_ops", []))
        elif op == "BiasAdd":
            if _attr(node, "data_format", "NHWC") != "NHWC":
                raise ValueError(f"{name}: BiasAdd in NCHW is not supported")
            self.emit(name, "binary", inputs, fn="add")
        elif op in _BINARY:
            fn = _BINARY[op]
            if fn in ("maximum", "minimum"):
                for i, j in ((1, 0), (0, 1)):  # max/min with a scalar constant is a clamp
                    other = self.by_name.get(self.src(inputs[i]))
                    value = self.graph.weights.get(other["name"]) if other is not None and other["op"] == "Const" else None
                    if value is not None and value.size == 1 and value.dtype.kind == "f":
                        c = float(value.reshape(-1)[0])
                        self.emit(name, "clamp", [inputs[j]], min=c if fn == "maximum" else None, max=c if fn == "minimum" else None)
                        return
            self.emit(name, "binary", inputs, fn=fn)
        elif op in ("Relu", "Relu6", "LeakyRelu") or op in _UNARY:
            self.act(name, op, inputs[0], node)
        elif op == "Prelu":
            self.emit(name, "prelu", inputs[:2])
        elif op == "Softmax":
            self.emit(name, "softmax", inputs[:1], axis=-1)
        elif op in ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"):
            if _attr(node, "data_format", "NHWC") != "NHWC":
                raise ValueError(f"{name}: batch norm in NCHW is not supported")
            eps = float(_attr(node, "epsilon", 1e-3))
            g, b, m, v = (self.const_value(a, f"{name}: batch norm parameters").reshape(-1) for a in inputs[1:5])
            scale = g / np.sqrt(v + eps)
            self.emit(name, "affine", inputs[:1], scale=self.add_tensor(f"{name}.scale", scale.astype(np.float32)),
                      shift=self.add_tensor(f"{name}.shift", (b - m * scale).astype(np.float32)))
        elif op in _REDUCE:
            axes = self.const_value(inputs[1], f"{name}: the reduction axes").reshape(-1)
            self.emit(name, "reduce", inputs[:1], fn=_REDUCE[op], axes=[int(a) for a in axes],
                      keepdims=bool(_attr(node, "keep_dims", False)))
        elif op == "Reshape":
            shape = self.const_value(inputs[1], f"{name}: the target shape").reshape(-1)
            self.emit(name, "reshape", inputs[:1], shape=[int(s) for s in shape])
        elif op == "Squeeze":
            self.emit(name, "squeeze", inputs[:1], axes=list(_attr(node, "squeeze_dims", [])))
        elif op == "ConcatV2":
            n = int(_attr(node, "N", len(inputs) - 1))
            axis = int(self.const_value(inputs[n], f"{name}: the concat axis").reshape(-1)[0])
            self.emit(name, "concat", inputs[:n], axis=axis)
        elif op in ("Pad", "PadV2", "MirrorPad"):
            if op == "MirrorPad":
                raise ValueError(f"{name}: MirrorPad is not supported")
            pads = self.const_value(inputs[1], f"{name}: the paddings").reshape(-1, 2)
            value = float(self.const_value(inputs[2], f"{name}: the pad value").reshape(-1)[0]) if op == "PadV2" else 0.0
            self.emit(name, "pad", inputs[:1], pads=[[int(a), int(b)] for a, b in pads], value=value)
        elif op == "AvgPool":
            self.pool(node, inputs, "avg")
        elif op == "MaxPool":
            self.pool(node, inputs, "max")
        else:
            raise ValueError(f"op {op!r} (node {name!r}) is not supported by the TF.js reader")


def _needed(graph: TfjsGraph, outputs: Sequence[str]) -> list[dict[str, Any]]:
    """The nodes the outputs depend on, inputs before users."""
    by_name = {n["name"]: n for n in graph.nodes}
    order: list[dict[str, Any]] = []
    state: dict[str, int] = {}
    for out in outputs:
        if out not in by_name:
            raise ValueError(f"output {out!r} is not a node of the graph {graph.path}")
        stack: list[tuple[str, bool]] = [(out, False)]
        while stack:
            name, done = stack.pop()
            if done:
                state[name] = 2
                order.append(by_name[name])
                continue
            if state.get(name):
                if state[name] == 1:
                    raise ValueError(f"the graph has a cycle through {name!r}")
                continue
            if name not in by_name:
                raise ValueError(f"node {name!r} is referenced but not defined in {graph.path}")
            state[name] = 1
            stack.append((name, True))
            for ref in by_name[name].get("input", []):
                r = _ref(ref)
                if r is not None and not state.get(r):
                    stack.append((r, False))
                elif r is not None and state.get(r) == 1:
                    raise ValueError(f"the graph has a cycle through {r!r}")
    return order


def _uses(nodes: Sequence[Mapping[str, Any]], outputs: Iterable[str]) -> dict[str, int]:
    count: dict[str, int] = {}
    for n in nodes:
        for i in n["in"]:
            count[i] = count.get(i, 0) + 1
    for o in outputs:
        count[o] = count.get(o, 0) + 1
    return count


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """``value`` as a [channels] vector when it broadcasts over the last axis only, else None."""
    if value.dtype.kind != "f":
        return None
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]), np.float32)
    if value.size == channels and value.shape[-1] == channels:
        return value.reshape(-1).astype(np.float32)
    return None


def _fresh(tensors: Mapping[str, Any], hint: str) -> str:
    key, i = hint, 2
    while key in tensors:
        key, i = f"{hint}#{i}", i + 1
    return key


def _fold(nodes: list[dict[str, Any]], tensors: dict[str, np.ndarray], outputs: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Fold per-channel affine ops into the conv/linear before them; merge chains of clamps."""
    by_name = {n["name"]: n for n in nodes}
    fused: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        uses = _uses(nodes, outputs)
        for idx, n in enumerate(nodes):
            if n["op"] == "clamp":
                prev = by_name.get(n["in"][0])
                if prev is not None and prev["op"] == "clamp" and uses.get(prev["name"], 0) == 1 and prev["name"] not in outputs:
                    lo_a = -math.inf if prev["min"] is None else prev["min"]
                    hi_a = math.inf if prev["max"] is None else prev["max"]
                    lo_c = -math.inf if n["min"] is None else n["min"]
                    hi_c = math.inf if n["max"] is None else n["max"]
                    # clamp_c(clamp_a(x)) == clamp(x, clamp_c(lo_a), clamp_c(hi_a)) for lo_a <= hi_a
                    lo, hi = min(max(lo_a, lo_c), hi_c), min(max(hi_a, lo_c), hi_c)
                    new = {"name": n["name"], "op": "clamp", "in": list(prev["in"]),
                           "min": None if lo == -math.inf else lo, "max": None if hi == math.inf else hi}
                else:
                    continue
            else:
                layer, consts = None, None
                if n["op"] == "binary" and n["fn"] in ("add", "sub", "mul", "div"):
                    a, b = (by_name.get(i) for i in n["in"])
                    if a is not None and a["op"] in ("conv", "linear") and b is not None and b["op"] == "const":
                        layer, consts = a, (n["fn"], tensors[b["key"]])
                    elif n["fn"] in ("add", "mul") and b is not None and b["op"] in ("conv", "linear") and a is not None and a["op"] == "const":
                        layer, consts = b, (n["fn"], tensors[a["key"]])
                elif n["op"] == "affine":
                    a = by_name.get(n["in"][0])
                    if a is not None and a["op"] in ("conv", "linear"):
                        layer, consts = a, ("affine", (tensors[n["scale"]], tensors[n["shift"]]))
                if layer is None or uses.get(layer["name"], 0) != 1 or layer["name"] in outputs:
                    continue
                w = tensors[layer["weight"]]
                cout = w.shape[0]
                b = tensors[layer["bias"]] if layer["bias"] else np.zeros(cout, np.float32)
                fn, c = consts
                if fn == "affine":
                    s, t = _per_channel(c[0], cout), _per_channel(c[1], cout)
                else:
                    s = t = _per_channel(c, cout)
                if s is None or t is None or (fn == "div" and np.any(s == 0)):
                    continue
                shape = (cout,) + (1,) * (w.ndim - 1)
                if fn == "mul":
                    w, b = w * s.reshape(shape), b * s
                elif fn == "div":
                    w, b = w / s.reshape(shape), b / s
                elif fn == "add":
                    b = b + t
                elif fn == "sub":
                    b = b - t
                else:
                    w, b = w * s.reshape(shape), b * s + t
                tensors[layer["weight"]] = w.astype(np.float32)
                bkey = layer["bias"] or _fresh(tensors, f"{layer['name']}.bias")
                tensors[bkey] = b.astype(np.float32)
                new = {**layer, "name": n["name"], "bias": bkey}
            gone = prev["name"] if n["op"] == "clamp" else layer["name"]
            fused[gone] = n["name"]
            nodes[idx] = new
            by_name[n["name"]] = new
            nodes = [m for m in nodes if m["name"] != gone]
            del by_name[gone]
            changed = True
            break
    # follow chains (a -> b, b -> c gives a -> c), keep only names that are gone
    alive = {n["name"] for n in nodes}
    out = {}
    for k in fused:
        if k in alive:
            continue
        v = fused[k]
        while v not in alive and v in fused:
            v = fused[v]
        out[k] = v
    return nodes, out


def _prune(nodes: list[dict[str, Any]], tensors: dict[str, np.ndarray], outputs: Sequence[str]):
    by_name = {n["name"]: n for n in nodes}
    keep: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in keep:
            continue
        keep.add(name)
        stack.extend(by_name[name]["in"])
    nodes = [n for n in nodes if n["name"] in keep]
    used = {n[f] for n in nodes for f in _TENSOR_FIELDS if n.get(f)}
    return nodes, {k: v for k, v in tensors.items() if k in used}


def _rekey(nodes: list[dict[str, Any]], tensors: dict[str, np.ndarray]):
    """Readable, module-safe tensor keys from the final node names."""
    out: dict[str, np.ndarray] = {}
    for n in nodes:
        for f in _TENSOR_FIELDS:
            if n.get(f):
                base = re.sub(r"[^0-9A-Za-z_]", "_", n["name"]) + ("" if f == "key" else f"__{f}")
                if hasattr(nn.Module, base) or not base:
                    base = f"t_{base}"
                key, i = base, 2
                while key in out:
                    key, i = f"{base}_{i}", i + 1
                out[key] = tensors[n[f]]
                n[f] = key
    return nodes, out


def lower_tfjs(graph: TfjsGraph, outputs: Sequence[str], fold: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Translate the part of ``graph`` that ``outputs`` need into ``(spec, tensors)``.

    ``spec`` is JSON-able: ``{"format", "version", "input", "outputs", "nodes", "fused"}``;
    each node has ``name``, ``op``, ``in`` (names of earlier nodes) and its fields, tensor
    fields naming entries of ``tensors`` (numpy, torch layouts). With ``fold`` the per-channel
    ops after a convolution or matmul are folded into it and clamp chains merged; ``fused``
    maps each node folded away to the node that now computes past it.
    """
    outputs = [_ref(o) or o for o in outputs]
    low = _Lowering(graph)
    for node in _needed(graph, outputs):
        low.lower(node)
    if low.input is None:
        raise ValueError(f"the outputs {outputs} do not depend on any Placeholder input")
    outs = [low.src(o) for o in outputs]
    nodes, tensors = _prune(low.nodes, low.tensors, outs)
    fused: dict[str, str] = {}
    if fold:
        nodes, fused = _fold(nodes, tensors, outs)
        nodes, tensors = _prune(nodes, tensors, outs)
    nodes, tensors = _rekey(copy.deepcopy(nodes), tensors)
    spec = {"format": SPEC_FORMAT, "version": SPEC_VERSION, "input": low.input, "outputs": outs,
            "nodes": nodes, "fused": fused, "aliases": {k: low.src(k) for k in low.alias}}
    return spec, tensors


# --------------------------------------------------------------------------------------
# Running a spec with torch
# --------------------------------------------------------------------------------------
def _pads_2d(pad: Any, h: int, w: int, k: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> list[int]:
    """[top, bottom, left, right]."""
    if pad == "VALID":
        return [0, 0, 0, 0]
    if pad == "SAME":
        return [*same_pads(h, k[0], stride[0], dilation[0]), *same_pads(w, k[1], stride[1], dilation[1])]
    return [int(p) for p in pad]


def _as_const_of(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A weight ``t`` in the dtype of the activation ``x`` it meets (e.g. bf16 under autocast)."""
    if isinstance(t, nn.Parameter) and x.is_floating_point() and not isinstance(x, nn.Parameter):
        return t.to(dtype=x.dtype)
    return t


class GraphModule(nn.Module):
    """A lowered graph (see :func:`lower_tfjs`) as a torch module.

    ``forward(x)`` takes the graph's input as TF had it (NHWC for images) and returns its
    output, or a tuple for several; :meth:`run` returns any named nodes as a dict.
    Float tensors are (frozen) parameters, integer ones buffers.
    """

    def __init__(self, spec: Mapping[str, Any], tensors: Mapping[str, np.ndarray | torch.Tensor]):
        super().__init__()
        if spec.get("format") != SPEC_FORMAT or int(spec.get("version", -1)) != SPEC_VERSION:
            raise ValueError(f"not an imguard graph spec (format {spec.get('format')!r} version {spec.get('version')!r}; expected {SPEC_FORMAT!r} {SPEC_VERSION})")
        self.spec = json.loads(json.dumps(spec))
        self.nodes: list[dict[str, Any]] = self.spec["nodes"]
        self.outputs: list[str] = list(self.spec["outputs"])
        self.weights = nn.Module()
        names: set[str] = set()
        registered: set[str] = set()
        for n in self.nodes:
            op = n.get("op")
            if op not in _SPEC_OPS:
                raise ValueError(f"graph spec: node {n.get('name')!r} has op {op!r}, which is not one of imguard's ({', '.join(sorted(_SPEC_OPS))})")
            if op in _SPEC_FNS and n.get("fn") not in _SPEC_FNS[op]:
                raise ValueError(f"graph spec: node {n.get('name')!r} ({op}) names function {n.get('fn')!r}, which is not "
                                 f"on the whitelist ({', '.join(sorted(_SPEC_FNS[op]))})")
            for i in n["in"]:
                if i not in names:
                    raise ValueError(f"graph spec: node {n['name']!r} reads {i!r}, which is not defined before it")
            names.add(n["name"])
            for f in _TENSOR_FIELDS:
                key = n.get(f)
                if not key or key in registered:
                    continue
                if hasattr(nn.Module, key) or "." in key:
                    raise ValueError(f"graph spec: {key!r} cannot name a tensor")
                registered.add(key)
                if key not in tensors:
                    raise ValueError(f"graph spec: tensor {key!r} of node {n['name']!r} is missing from the weights")
                t = torch.as_tensor(np.asarray(tensors[key])) if not isinstance(tensors[key], torch.Tensor) else tensors[key]
                t = t.detach().clone()
                if t.is_floating_point():
                    self.weights.register_parameter(key, nn.Parameter(t.float(), requires_grad=False))
                else:
                    self.weights.register_buffer(key, t)
        # when each value can be freed (its last reader)
        self._last: dict[str, int] = {}
        for idx, n in enumerate(self.nodes):
            for i in n["in"]:
                self._last[i] = idx

    def _t(self, key: str) -> torch.Tensor:
        return getattr(self.weights, key)

    def _op(self, n: Mapping[str, Any], args: list[torch.Tensor]) -> torch.Tensor:
        op = n["op"]
        if op == "const":
            return self._t(n["key"])
        if op == "conv":
            x = args[0].permute(0, 3, 1, 2)  # NHWC data seen as NCHW (channels-last memory)
            w = self._t(n["weight"])
            b = self._t(n["bias"]) if n["bias"] else None
            t, bo, l, r = _pads_2d(n["pad"], x.shape[2], x.shape[3], w.shape[2:], n["stride"], n["dilation"])
            if t == bo and l == r:
                y = F.conv2d(x, w.to(x.dtype), None if b is None else b.to(x.dtype), n["stride"], (t, l), n["dilation"], n["groups"])
            else:
                x = F.pad(x, (l, r, t, bo))
                y = F.conv2d(x, w.to(x.dtype), None if b is None else b.to(x.dtype), n["stride"], 0, n["dilation"], n["groups"])
            return y.permute(0, 2, 3, 1)
        if op == "linear":
            b = self._t(n["bias"]) if n["bias"] else None
            return F.linear(args[0], self._t(n["weight"]).to(args[0].dtype), None if b is None else b.to(args[0].dtype))
        if op == "binary":
            a, b = _as_const_of(args[0], args[1]), _as_const_of(args[1], args[0])
            fn = n["fn"]
            if fn == "add":
                return a + b
            if fn == "sub":
                return a - b
            if fn == "mul":
                return a * b
            if fn == "div":
                return a / b
            if fn == "maximum":
                return torch.maximum(a, b)
            if fn == "minimum":
                return torch.minimum(a, b)
        if op == "clamp":
            return torch.clamp(args[0], min=n["min"], max=n["max"])
        if op == "affine":
            x = args[0]
            return x * self._t(n["scale"]).to(x.dtype) + self._t(n["shift"]).to(x.dtype)
        if op == "unary":
            x, fn = args[0], n["fn"]
            if fn == "square":
                return x * x
            return _UNARY_FNS[fn](x)
        if op == "leaky_relu":
            return F.leaky_relu(args[0], n["alpha"])
        if op == "prelu":
            x, alpha = args[0], _as_const_of(args[1], args[0])
            return torch.where(x >= 0, x, alpha * x)
        if op == "softmax":
            return torch.softmax(args[0], dim=n["axis"])
        if op == "reduce":
            x, axes = args[0], [a % args[0].ndim for a in n["axes"]]
            if n["fn"] == "mean":
                return x.mean(dim=axes, keepdim=n["keepdims"])
            if n["fn"] == "sum":
                return x.sum(dim=axes, keepdim=n["keepdims"])
            y = x
            for a in sorted(axes, reverse=True):
                y = (y.amax if n["fn"] == "max" else y.amin)(dim=a, keepdim=n["keepdims"])
            return y
        if op == "reshape":
            shape = list(n["shape"])
            if shape and shape[0] in (-1, 1):  # TF.js exports often fix the batch at 1
                shape[0] = args[0].shape[0]
            return args[0].reshape(shape)
        if op == "squeeze":
            x = args[0]
            axes = [a % x.ndim for a in n["axes"]] or [d for d in range(1, x.ndim) if x.shape[d] == 1]
            for a in sorted(axes, reverse=True):
                x = x.squeeze(a)
            return x
        if op == "concat":
            return torch.cat(args, dim=n["axis"])
        if op == "pad":
            x = args[0]
            flat: list[int] = []
            for before, after in reversed(n["pads"]):
                flat += [before, after]
            return F.pad(x, flat, value=n["value"])
        if op == "pool":
            x = args[0].permute(0, 3, 1, 2)
            kh, kw = n["ksize"]
            t, bo, l, r = _pads_2d(n["pad"], x.shape[2], x.shape[3], (kh, kw), n["stride"], (1, 1))
            if n["fn"] == "max":
                y = F.max_pool2d(F.pad(x, (l, r, t, bo), value=-math.inf), (kh, kw), n["stride"])
            else:  # TF averages over the valid (unpadded) pixels only
                y = F.avg_pool2d(F.pad(x, (l, r, t, bo)), (kh, kw), n["stride"])
                if t or bo or l or r:
                    ones = F.pad(torch.ones_like(x[:1, :1]), (l, r, t, bo))
                    y = y / F.avg_pool2d(ones, (kh, kw), n["stride"])
            return y.permute(0, 2, 3, 1)
        raise ValueError(f"graph spec: unknown op {op!r} in node {n['name']!r}")

    def run(self, x: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The values of the nodes ``names`` (default: the outputs) for input ``x``.

        Names folded into a later node (see ``spec["fused"]``) no longer exist and are refused
        with the name that now holds the value past them.
        """
        names = list(self.outputs if names is None else names)
        known = {n["name"] for n in self.nodes}
        aliases = self.spec.get("aliases", {})
        wanted = {}
        for name in names:
            real = aliases.get(name, name)
            if real not in known:
                if real in self.spec.get("fused", {}):
                    raise KeyError(f"node {name!r} was folded into {self.spec['fused'][real]!r}; lower with fold=False to read it")
                raise KeyError(f"no node {name!r} in this graph")
            wanted[real] = name
        env: dict[str, torch.Tensor] = {}
        result: dict[str, torch.Tensor] = {}
        stop = max(i for i, n in enumerate(self.nodes) if n["name"] in wanted)
        for idx, n in enumerate(self.nodes[: stop + 1]):
            if n["op"] == "input":
                env[n["name"]] = x
                value = x
            else:
                value = self._op(n, [env[i] for i in n["in"]])
                env[n["name"]] = value
            if n["name"] in wanted:
                result[wanted[n["name"]]] = value
            for i in n["in"]:
                if self._last.get(i) == idx:
                    env.pop(i, None)
        return {name: result[name] for name in names}

    def forward(self, x: torch.Tensor):
        out = self.run(x, self.outputs)
        vals = [out[o] for o in self.outputs]
        return vals[0] if len(vals) == 1 else tuple(vals)


def load_tfjs(path: str | os.PathLike, outputs: Sequence[str], fold: bool = True) -> GraphModule:
    """Read a TF.js graph model and build the torch module computing ``outputs``."""
    spec, tensors = lower_tfjs(read_tfjs(path), outputs, fold=fold)
    return GraphModule(spec, tensors)


def graph_metadata(module: GraphModule) -> dict[str, str]:
    """The safetensors metadata (all strings) that rebuilds ``module`` from its state dict."""
    return {"format": SPEC_FORMAT, "format_version": str(SPEC_VERSION), "graph": json.dumps(module.spec, separators=(",", ":"))}


def graph_from_state(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str], prefix: str = "") -> GraphModule:
    """Rebuild a :class:`GraphModule` from a state dict and :func:`graph_metadata`.

    ``prefix`` is the module's place in a larger state dict (e.g. ``"graph."``).
    """
    if not metadata or metadata.get("format") != SPEC_FORMAT or "graph" not in metadata:
        raise ValueError(f"expected safetensors metadata written by imguard's graph reader (format {SPEC_FORMAT!r} with a 'graph' entry), got keys {sorted(metadata or {})}")
    spec = json.loads(metadata["graph"])
    lead = f"{prefix}weights."
    tensors = {k[len(lead):]: v for k, v in state.items() if k.startswith(lead)}
    return GraphModule(spec, tensors)
