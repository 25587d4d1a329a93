"""TensorFlow Lite FlatBuffers as torch modules: a small interpreter of the file's op list.

A ``.tflite`` file is a FlatBuffer (schema in the PyPI package ``tflite``; no TensorFlow is
needed) holding tensors, constant buffers and a list of operators. :func:`read_tflite` turns
it into a *program* (a JSON-able dict: the graph's inputs, outputs and ops in execution order,
each op naming its runtime inputs by tensor id and its constants by weight key) and a dict of
float32 *weights*; :class:`TFLiteModule` runs that program with torch ops, so the network is
differentiable and runs on any device and batch size. Because the structure is data, a
converted model is saved as a safetensors file whose metadata holds the program
(:func:`program_metadata`, :func:`program_from_metadata`) and is rebuilt from it without the
original file.

What the conversion takes care of:

- **Layout.** Rank-4 activations are kept NCHW (TFLite's are NHWC): kernels are transposed
  once (``[O,kh,kw,I]`` -> ``[O,I,kh,kw]``; depthwise ``[1,kh,kw,C*m]`` -> ``[C*m,1,kh,kw]``),
  per-channel constants broadcast against NCHW, and ops whose meaning depends on the memory
  order (RESHAPE, FULLY_CONNECTED on a rank-4 input, MEAN, CONCATENATION) go through NHWC or
  map their axes. A rank-4 graph input is given NCHW; rank-4 outputs come back NCHW.
- **Padding.** ``SAME`` follows TensorFlow: when the total padding is odd (e.g. kernel 3,
  stride 2 on an even size) the extra row/column goes at the bottom/right, so such asymmetric
  pads are applied explicitly.
- **Fused activations** of convolutions, FULLY_CONNECTED and the elementwise ops.
- **Quantized constants** (int8/uint8/int16/int32 with scales, per tensor or per axis; float16)
  are dequantized to float32, and DEQUANTIZE ops on constants are folded. Quantized
  activations (fully integer models) are refused.
- **Batch.** Files fix the batch dimension; reshapes keep it free (``-1``).
- **PReLU.** Converters that lack PReLU write it as ``relu(x) + c * (x - abs(x))``; that
  five-op pattern is folded into one PRELU with slope ``2c`` (the same numbers; one op to
  run and to keep for the backward pass instead of five).

Ops understood: see :data:`SUPPORTED_OPS`; any other op is refused by name.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._tf import same_pads

__all__ = [
    "PROGRAM_FORMAT",
    "SUPPORTED_OPS",
    "TFLiteError",
    "TFLiteModule",
    "program_from_metadata",
    "program_metadata",
    "read_tflite",
]

#: The value of the ``format`` metadata key of a safetensors file holding a converted program.
PROGRAM_FORMAT = "imguard.tflite-program/1"

#: TFLite builtin ops the converter maps onto torch (DEQUANTIZE only on constants).
SUPPORTED_OPS = (
    "ABS", "ADD", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "DIV",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "MEAN", "MUL", "PRELU", "RELU",
    "RELU6", "RELU_N1_TO_1", "RESHAPE", "SUB", "TANH",
)

_ACTIVATIONS = {0: None, 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH"}
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


class TFLiteError(ValueError):
    """A file is not a TFLite model, or uses something this converter does not handle."""


# ------------------------------------------------------------------------------ reading


@dataclass
class _Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    type_name: str  # FLOAT32, INT8, ...
    data: np.ndarray | None  # constants only: float32 when dequantized, else the raw dtype
    quantized: bool


_NUMPY_TYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64, "INT32": np.int32,
    "INT64": np.int64, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_,
}


def _names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _dequantize(raw: np.ndarray, quant, tensor_name: str) -> np.ndarray:
    scales = quant.ScaleAsNumpy().astype(np.float32)
    zero = quant.ZeroPointAsNumpy() if quant.ZeroPointLength() else np.zeros(scales.shape, np.int64)
    zero = np.asarray(zero, dtype=np.int64).reshape(-1)
    if zero.size not in (1, scales.size):
        raise TFLiteError(f"tensor {tensor_name!r}: {zero.size} zero points for {scales.size} scales")
    if scales.size == 1:
        return ((raw.astype(np.int64) - int(zero[0])) * scales[0]).astype(np.float32)
    axis = quant.QuantizedDimension()
    if raw.ndim == 0 or axis >= raw.ndim or raw.shape[axis] != scales.size:
        raise TFLiteError(
            f"tensor {tensor_name!r}: {scales.size} quantization scales do not match its shape "
            f"{raw.shape} on axis {axis}"
        )
    shape = [1] * raw.ndim
    shape[axis] = -1
    zero = np.broadcast_to(zero, scales.shape).reshape(shape)
    return ((raw.astype(np.int64) - zero) * scales.reshape(shape)).astype(np.float32)


def _read_tensors(model, graph, buf: bytes) -> list[_Tensor]:
    import tflite

    type_names = _names(tflite.TensorType)
    tensors = []
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        type_name = type_names.get(t.Type(), str(t.Type()))
        shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        quant = t.Quantization()
        quantized = bool(quant is not None and quant.ScaleLength())
        data = None
        b = model.Buffers(t.Buffer()) if t.Buffer() < model.BuffersLength() else None
        raw_bytes = None
        if b is not None:
            if b.Offset() > 1:  # large models keep buffers after the FlatBuffer
                raw_bytes = buf[b.Offset(): b.Offset() + b.Size()]
            elif b.DataLength():
                raw_bytes = b.DataAsNumpy().tobytes()
        if raw_bytes:
            name = t.Name().decode("utf-8", "replace")
            if type_name not in _NUMPY_TYPES:
                raise TFLiteError(f"constant tensor {name!r} has unsupported type {type_name}")
            raw = np.frombuffer(raw_bytes, dtype=np.dtype(_NUMPY_TYPES[type_name]).newbyteorder("<"))
            if raw.size != int(np.prod(shape)):
                raise TFLiteError(f"constant tensor {name!r}: {raw.size} values for shape {shape}")
            raw = raw.reshape(shape)
            if quantized:
                data = _dequantize(raw, quant, name)
            elif raw.dtype.kind == "f":
                data = raw.astype(np.float32)
            else:
                data = raw.copy()
        tensors.append(_Tensor(i, t.Name().decode("utf-8", "replace"), shape, type_name, data, quantized))
    return tensors


def _load(source: str | os.PathLike | bytes) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), "<bytes>"
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TFLite file not found: {path}")
    with open(path, "rb") as fh:
        return fh.read(), path


def read_tflite(source: str | os.PathLike | bytes, fuse: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """Convert a TFLite model into ``(program, weights)`` for :class:`TFLiteModule`.

    ``source``: a path or the file's bytes. ``fuse``: fold the relu/abs PReLU pattern into
    PRELU ops. Raises FileNotFoundError for a missing path and :class:`TFLiteError` for a file
    that is not a TFLite FlatBuffer or uses an op, a type or a layout not handled here.
    """
    try:
        import tflite
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ImportError("reading .tflite files needs the 'tflite' package (pip install tflite)") from e
    buf, where = _load(source)
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise TFLiteError(f"{where} is not a TFLite model (no 'TFL3' FlatBuffer identifier)")
    try:
        model = tflite.Model.GetRootAsModel(buf, 0)
        if model.SubgraphsLength() != 1:
            raise TFLiteError(f"{where} has {model.SubgraphsLength()} subgraphs; only single-graph models are supported")
        graph = model.Subgraphs(0)
        tensors = _read_tensors(model, graph, buf)
        op_names = _names(tflite.BuiltinOperator)
        codes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            codes.append(op_names.get(code, f"CUSTOM:{(oc.CustomCode() or b'').decode()}" if code == 32 else str(code)))
        raw_ops = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            ins = [int(v) for v in op.InputsAsNumpy()] if op.InputsLength() else []
            outs = [int(v) for v in op.OutputsAsNumpy()] if op.OutputsLength() else []
            raw_ops.append((codes[op.OpcodeIndex()], ins, outs, op))
        inputs = [int(v) for v in graph.InputsAsNumpy()]
        outputs = [int(v) for v in graph.OutputsAsNumpy()]
    except TFLiteError:
        raise
    except Exception as e:  # a damaged FlatBuffer fails somewhere inside the generated readers
        raise TFLiteError(f"{where} could not be read as a TFLite model: {type(e).__name__}: {e}") from e

    unsupported = sorted({name for name, *_ in raw_ops if name not in SUPPORTED_OPS})
    if unsupported:
        raise TFLiteError(f"{where} uses TFLite ops this converter does not handle: {', '.join(unsupported)} "
                          f"(supported: {', '.join(SUPPORTED_OPS)})")
    conv = _Converter(tensors)
    for name, ins, outs, op in raw_ops:
        conv.add(name, ins, outs, op)
    ops = conv.ops
    if fuse:
        ops = _fuse_prelu(ops, conv.weights, set(outputs))
    used = {r for op in ops for r in op["in"] if isinstance(r, str)}
    weights = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in conv.weights.items() if k in used}
    for i in inputs + outputs:
        t = tensors[i]
        if t.data is not None:
            raise TFLiteError(f"{where}: graph input/output {t.name!r} is a constant")
        if t.type_name != "FLOAT32":
            raise TFLiteError(f"{where}: graph input/output {t.name!r} is {t.type_name}; only float32 models are supported")
    program = {
        "inputs": [{"id": i, "name": tensors[i].name, "shape": list(tensors[i].shape)} for i in inputs],
        "outputs": [{"id": i, "name": tensors[i].name, "shape": list(tensors[i].shape)} for i in outputs],
        "ops": ops,
        "tflite_ops": dict(Counter(name for name, *_ in raw_ops)),
    }
    return program, weights


def _options(op, cls_name: str):
    import tflite

    table = op.BuiltinOptions()
    if table is None:
        return None
    opts = getattr(tflite, cls_name)()
    opts.Init(table.Bytes, table.Pos)
    return opts


class _Converter:
    """Maps TFLite ops one by one onto program entries, with weights in torch layout."""

    def __init__(self, tensors: list[_Tensor]):
        self.tensors = tensors
        self.weights: dict[str, np.ndarray] = {}
        self.ops: list[dict] = []

    # ---- helpers
    def const(self, i: int) -> bool:
        return i >= 0 and self.tensors[i].data is not None

    def rank(self, i: int) -> int:
        return len(self.tensors[i].shape)

    def runtime(self, i: int, what: str) -> int:
        t = self.tensors[i]
        if t.data is not None:
            raise TFLiteError(f"{what}: input {t.name!r} is a constant where an activation was expected")
        if t.type_name != "FLOAT32":
            raise TFLiteError(f"{what}: activation {t.name!r} is {t.type_name}; quantized activations are not supported "
                              "(only float models, possibly with quantized or float16 weights)")
        return i

    def weight(self, i: int, layout: str, what: str) -> str:
        t = self.tensors[i]
        if t.data is None:
            raise TFLiteError(f"{what}: {t.name!r} must be a constant")
        if t.data.dtype != np.float32:
            raise TFLiteError(f"{what}: constant {t.name!r} is {t.type_name} without quantization parameters")
        a = t.data
        if layout == "oihw":  # CONV_2D [O,kh,kw,I]
            a = a.transpose(0, 3, 1, 2)
        elif layout == "dw":  # DEPTHWISE_CONV_2D [1,kh,kw,C*m]
            a = a.transpose(3, 0, 1, 2)
        elif layout == "nchw":  # broadcast against an NCHW activation
            a = a.reshape((1,) * (4 - a.ndim) + a.shape).transpose(0, 3, 1, 2)
        key = f"t{i}" if layout == "raw" else f"t{i}_{layout}"
        self.weights[key] = np.ascontiguousarray(a)
        return key

    def operand(self, i: int, nchw: bool, what: str) -> int | str:
        if self.const(i):
            if nchw and self.rank(i) > 4:
                raise TFLiteError(f"{what}: constant of rank {self.rank(i)}")
            return self.weight(i, "nchw" if nchw else "raw", what)
        return self.runtime(i, what)

    def emit(self, op: str, ins: list, out: int, **attrs) -> None:
        self.ops.append({"op": op, "in": ins, "out": out, **attrs})

    def batch_shape(self, i: int, ref: int, what: str) -> list[int]:
        """The static shape of tensor ``i`` with the batch left free (-1)."""
        shape = list(self.tensors[i].shape)
        if not shape or not self.tensors[ref].shape or shape[0] != self.tensors[ref].shape[0]:
            raise TFLiteError(f"{what}: only reshapes that keep the batch dimension first are supported "
                              f"({self.tensors[ref].shape} -> {tuple(shape)})")
        return [-1] + shape[1:]

    # ---- ops
    def add(self, name: str, ins: list[int], outs: list[int], op) -> None:
        what = f"{name} -> {self.tensors[outs[0]].name!r}" if outs else name
        if len(outs) != 1:
            raise TFLiteError(f"{what}: ops with {len(outs)} outputs are not supported")
        out = outs[0]
        if name == "DEQUANTIZE":
            if not self.const(ins[0]):
                raise TFLiteError(f"{what}: DEQUANTIZE of an activation (a quantized model) is not supported")
            self.tensors[out].data = self.tensors[ins[0]].data.astype(np.float32)
            return
        if all(self.const(i) for i in ins if i >= 0):
            raise TFLiteError(f"{what}: an op on constants only (other than DEQUANTIZE) is not supported")
        handler = getattr(self, f"_op_{name.lower()}", None)
        if handler is None:
            handler = self._op_binary if name in ("ADD", "SUB", "MUL", "DIV") else self._op_unary
        handler(name, ins, out, op, what)

    def _act(self, op, cls: str, what: str) -> str | None:
        opts = _options(op, cls)
        code = opts.FusedActivationFunction() if opts is not None else 0
        if code not in _ACTIVATIONS:
            raise TFLiteError(f"{what}: fused activation {code} is not supported")
        return _ACTIVATIONS[code]

    def _op_unary(self, name, ins, out, op, what):
        x = self.runtime(ins[0], what)
        self.emit(name.lower(), [x], out)

    def _op_binary(self, name, ins, out, op, what):
        a, b = ins[:2]
        ranks = [self.rank(i) for i in (a, b) if not self.const(i)]
        nchw = self.rank(out) == 4
        if nchw and any(r != 4 for r in ranks):
            raise TFLiteError(f"{what}: broadcasting a rank-4 activation against a lower-rank activation is not supported")
        cls = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions", "DIV": "DivOptions"}[name]
        self.emit(name.lower(), [self.operand(a, nchw, what), self.operand(b, nchw, what)], out, act=self._act(op, cls, what))

    def _op_prelu(self, name, ins, out, op, what):
        x = self.runtime(ins[0], what)
        self.emit("prelu", [x, self.operand(ins[1], self.rank(x) == 4, what)], out)

    def _conv_common(self, x: int, opts, what: str) -> dict:
        if self.rank(x) != 4:
            raise TFLiteError(f"{what}: a convolution input must be rank 4 (NHWC)")
        return {
            "stride": [opts.StrideH(), opts.StrideW()],
            "dilation": [max(opts.DilationHFactor(), 1), max(opts.DilationWFactor(), 1)],
            "padding": "SAME" if opts.Padding() == 0 else "VALID",
        }

    def _op_conv_2d(self, name, ins, out, op, what):
        x = self.runtime(ins[0], what)
        opts = _options(op, "Conv2DOptions")
        w_shape = self.tensors[ins[1]].shape
        c_in = self.tensors[x].shape[3]
        if len(w_shape) != 4 or c_in % w_shape[3]:
            raise TFLiteError(f"{what}: kernel {w_shape} does not fit {c_in} input channels")
        refs = [x, self.weight(ins[1], "oihw", what)]
        if len(ins) > 2 and ins[2] >= 0:
            refs.append(self.weight(ins[2], "raw", what))
        self.emit("conv2d", refs, out, groups=c_in // w_shape[3], act=self._act(op, "Conv2DOptions", what),
                  **self._conv_common(x, opts, what))

    def _op_depthwise_conv_2d(self, name, ins, out, op, what):
        x = self.runtime(ins[0], what)
        opts = _options(op, "DepthwiseConv2DOptions")
        w_shape = self.tensors[ins[1]].shape
        c_in = self.tensors[x].shape[3]
        if len(w_shape) != 4 or w_shape[0] != 1 or w_shape[3] % c_in:
            raise TFLiteError(f"{what}: depthwise kernel {w_shape} does not fit {c_in} input channels")
        refs = [x, self.weight(ins[1], "dw", what)]
        if len(ins) > 2 and ins[2] >= 0:
            refs.append(self.weight(ins[2], "raw", what))
        self.emit("conv2d", refs, out, groups=c_in, act=self._act(op, "DepthwiseConv2DOptions", what),
                  **self._conv_common(x, opts, what))

    def _op_reshape(self, name, ins, out, op, what):
        x = self.runtime(ins[0], what)
        self.emit("reshape", [x], out, shape=self.batch_shape(out, x, what),
                  nchw_in=self.rank(x) == 4, nchw_out=self.rank(out) == 4)

    def _op_fully_connected(self, name, ins, out, op, what):
        x = self.runtime(ins[0], what)
        opts = _options(op, "FullyConnectedOptions")
        if opts is not None and opts.WeightsFormat() != 0:
            raise TFLiteError(f"{what}: shuffled FULLY_CONNECTED weights are not supported")
        w = self.tensors[ins[1]]
        if len(w.shape) != 2:
            raise TFLiteError(f"{what}: weights of shape {w.shape}")
        refs = [x, self.weight(ins[1], "raw", what)]
        if len(ins) > 2 and ins[2] >= 0:
            refs.append(self.weight(ins[2], "raw", what))
        self.emit("linear", refs, out, act=self._act(op, "FullyConnectedOptions", what),
                  shape=self.batch_shape(out, x, what), nchw_in=self.rank(x) == 4, nchw_out=self.rank(out) == 4)

    def _op_l2_normalization(self, name, ins, out, op, what):
        x = self.runtime(ins[0], what)
        self.emit("l2norm", [x], out, dim=1 if self.rank(x) == 4 else -1, act=self._act(op, "L2NormOptions", what))

    def _op_mean(self, name, ins, out, op, what):
        x = self.runtime(ins[0], what)
        if not self.const(ins[1]):
            raise TFLiteError(f"{what}: MEAN axes must be constant")
        rank = self.rank(x)
        axes = sorted({int(a) % rank for a in np.asarray(self.tensors[ins[1]].data).reshape(-1)})
        opts = _options(op, "ReducerOptions")
        keep = bool(opts.KeepDims()) if opts is not None else False
        nchw_in = rank == 4
        if nchw_in and keep:  # stays NCHW: map the axes
            axes, nchw_in = [_NHWC_TO_NCHW_AXIS[a] for a in axes], False
        self.emit("mean", [x], out, dims=axes, keepdim=keep, nchw_in=nchw_in, nchw_out=False)

    def _op_concatenation(self, name, ins, out, op, what):
        opts = _options(op, "ConcatenationOptions")
        rank = self.rank(out)
        axis = opts.Axis() % rank
        if rank == 4:
            axis = _NHWC_TO_NCHW_AXIS[axis]
        refs = [self.operand(i, rank == 4, what) for i in ins]
        self.emit("concat", refs, out, dim=axis, act=self._act(op, "ConcatenationOptions", what))


def _fuse_prelu(ops: list[dict], weights: dict[str, np.ndarray], graph_outputs: set[int]) -> list[dict]:
    """Fold ``relu(x) + c * (x - abs(x))`` (five ops) into ``prelu(x, 2c)``."""
    uses: Counter = Counter(r for op in ops for r in op["in"] if isinstance(r, int))
    uses.update(graph_outputs)
    producer = {op["out"]: k for k, op in enumerate(ops)}
    drop: set[int] = set()
    replace: dict[int, dict] = {}
    for k, add in enumerate(ops):
        if add["op"] != "add" or add.get("act") or not all(isinstance(r, int) for r in add["in"]):
            continue
        parts = [ops[producer[r]] if r in producer else None for r in add["in"]]
        relu = next((p for p in parts if p is not None and p["op"] == "relu"), None)
        mul = next((p for p in parts if p is not None and p["op"] == "mul" and not p.get("act")), None)
        if relu is None or mul is None:
            continue
        const = [r for r in mul["in"] if isinstance(r, str)]
        sub_ref = [r for r in mul["in"] if isinstance(r, int)]
        if len(const) != 1 or len(sub_ref) != 1 or sub_ref[0] not in producer:
            continue
        sub = ops[producer[sub_ref[0]]]
        x = relu["in"][0]
        if sub["op"] != "sub" or sub.get("act") or sub["in"][0] != x or not isinstance(sub["in"][1], int):
            continue
        absolute = ops[producer[sub["in"][1]]] if sub["in"][1] in producer else None
        if absolute is None or absolute["op"] != "abs" or absolute["in"][0] != x:
            continue
        if any(uses[o["out"]] != 1 for o in (relu, mul, sub)) or uses[absolute["out"]] != 1:
            continue
        key = f"{const[0]}_prelu"
        weights[key] = np.ascontiguousarray(2.0 * weights[const[0]])
        replace[k] = {"op": "prelu", "in": [x, key], "out": add["out"]}
        drop.update(producer[o["out"]] for o in (relu, mul, sub, absolute))
    return [replace.get(k, op) for k, op in enumerate(ops) if k not in drop]


# ----------------------------------------------------------------------- running (torch)


def _activation(x: torch.Tensor, act: str | None) -> torch.Tensor:
    if act is None:
        return x
    if act == "RELU":
        return F.relu(x)
    if act == "RELU6":
        return F.hardtanh(x, 0.0, 6.0)
    if act == "RELU_N1_TO_1":
        return F.hardtanh(x, -1.0, 1.0)
    if act == "TANH":
        return torch.tanh(x)
    raise ValueError(f"unknown activation {act!r}")


def _conv2d(op: dict, x, w, b=None):
    sh, sw = op["stride"]
    dh, dw = op["dilation"]
    padding: Any = 0
    if op["padding"] == "SAME":
        top, bottom = same_pads(x.shape[2], w.shape[2], sh, dh)
        left, right = same_pads(x.shape[3], w.shape[3], sw, dw)
        if top == bottom and left == right:
            padding = (top, left)
        else:
            x = F.pad(x, (left, right, top, bottom))
    y = F.conv2d(x, w, b, (sh, sw), padding, (dh, dw), op["groups"])
    return _activation(y, op["act"])


def _nhwc(x, flag: bool):
    return x.permute(0, 2, 3, 1) if flag else x


def _nchw(x, flag: bool):
    return x.permute(0, 3, 1, 2) if flag else x


def _linear(op: dict, x, w, b=None):
    x = _nhwc(x, op["nchw_in"])
    y = _activation(F.linear(x.reshape(-1, w.shape[1]), w, b), op["act"])
    return _nchw(y.reshape(op["shape"]), op["nchw_out"])


def _prelu(op: dict, x, slope):
    shape = (1,) * (x.dim() - slope.dim()) + tuple(slope.shape)
    if x.dim() >= 2 and shape[1] == x.shape[1] and all(v == 1 for i, v in enumerate(shape) if i != 1):
        return F.prelu(x, slope.reshape(-1).to(x.dtype))  # one slope per channel (dim 1)
    return torch.where(x >= 0, x, x * slope)


_RUN: dict[str, Callable[..., torch.Tensor]] = {
    "conv2d": _conv2d,
    "linear": _linear,
    "add": lambda op, a, b: _activation(a + b, op["act"]),
    "sub": lambda op, a, b: _activation(a - b, op["act"]),
    "mul": lambda op, a, b: _activation(a * b, op["act"]),
    "div": lambda op, a, b: _activation(a / b, op["act"]),
    "abs": lambda op, x: x.abs(),
    "relu": lambda op, x: F.relu(x),
    "relu6": lambda op, x: F.hardtanh(x, 0.0, 6.0),
    "relu_n1_to_1": lambda op, x: F.hardtanh(x, -1.0, 1.0),
    "logistic": lambda op, x: torch.sigmoid(x),
    "tanh": lambda op, x: torch.tanh(x),
    "prelu": _prelu,
    "reshape": lambda op, x: _nchw(_nhwc(x, op["nchw_in"]).reshape(op["shape"]), op["nchw_out"]),
    "l2norm": lambda op, x: _activation(F.normalize(x, dim=op["dim"], eps=1e-6), op["act"]),
    "mean": lambda op, x: _nhwc(x, op["nchw_in"]).mean(dim=op["dims"], keepdim=op["keepdim"]),
    "concat": lambda op, *xs: _activation(torch.cat(xs, dim=op["dim"]), op["act"]),
}


class TFLiteModule(nn.Module):
    """Runs a program from :func:`read_tflite` with torch ops (differentiable, any batch size).

    ``forward(*inputs)`` takes the graph inputs in order (rank-4 ones NCHW) and returns the
    output, or a tuple of outputs (rank-4 ones NCHW). The weights are frozen parameters named
    by the program's weight keys, so ``state_dict()`` has exactly those keys.
    """

    def __init__(self, program: Mapping[str, Any], weights: Mapping[str, torch.Tensor]):
        super().__init__()
        for field in ("inputs", "outputs", "ops"):
            if field not in program:
                raise TFLiteError(f"a TFLite program needs {field!r}; got keys {sorted(program)}")
        unknown = sorted({op["op"] for op in program["ops"]} - set(_RUN))
        if unknown:
            raise TFLiteError(f"the program uses ops this version cannot run: {', '.join(unknown)}")
        needed = {r for op in program["ops"] for r in op["in"] if isinstance(r, str)}
        missing = sorted(needed - set(weights))
        if missing:
            raise TFLiteError(f"weights missing for the program: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        bad = sorted(k for k in needed if not k.isidentifier())
        if bad:
            raise TFLiteError(f"weight keys must be identifiers, got {bad[:5]}")
        self.program = dict(program)
        for k in sorted(needed):  # the state dict keys are the program's weight keys
            self.register_parameter(k, nn.Parameter(weights[k].detach().to(torch.float32).clone(), requires_grad=False))
        # after which op each runtime tensor can be dropped (memory in no-grad use)
        last_use: dict[int, int] = {}
        for k, op in enumerate(self.program["ops"]):
            for r in op["in"]:
                if isinstance(r, int):
                    last_use[r] = k
        keep = {o["id"] for o in self.program["outputs"]}
        self._free = [[r for r, k2 in last_use.items() if k2 == k and r not in keep] for k in range(len(self.program["ops"]))]

    def input_shape(self, index: int = 0) -> tuple[int, ...]:
        """The file's shape of input ``index`` as this module takes it (rank 4: NCHW), batch first."""
        s = list(self.program["inputs"][index]["shape"])
        return tuple(s[:1] + s[3:] + s[1:3]) if len(s) == 4 else tuple(s)

    def forward(self, *inputs: torch.Tensor):
        specs = self.program["inputs"]
        if len(inputs) != len(specs):
            raise ValueError(f"this model takes {len(specs)} input(s), got {len(inputs)}")
        env: dict[int, torch.Tensor] = {}
        for k, (spec, x) in enumerate(zip(specs, inputs)):
            want = self.input_shape(k)
            if x.dim() != len(want) or tuple(x.shape[1:]) != want[1:]:
                layout = " (NCHW)" if len(want) == 4 else ""
                raise ValueError(f"input {spec['name']!r} must be [B, {', '.join(map(str, want[1:]))}]{layout}, got {tuple(x.shape)}")
            env[spec["id"]] = x
        consts = self._parameters
        for op, free in zip(self.program["ops"], self._free):
            args = [env[r] if isinstance(r, int) else consts[r] for r in op["in"]]
            env[op["out"]] = _RUN[op["op"]](op, *args)
            for r in free:
                env.pop(r, None)
        outs = [env[o["id"]] for o in self.program["outputs"]]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def extra_repr(self) -> str:
        counts = Counter(op["op"] for op in self.program["ops"])
        return f"ops={len(self.program['ops'])} ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})"


# ------------------------------------------------------------------------- safetensors


def program_metadata(program: Mapping[str, Any]) -> dict[str, str]:
    """safetensors metadata (``dict[str, str]``) that holds ``program``."""
    return {"format": PROGRAM_FORMAT, "program": json.dumps(program, separators=(",", ":"))}


def program_from_metadata(metadata: Mapping[str, str] | None, where: str = "the file") -> dict:
    """The program stored by :func:`program_metadata`; :class:`TFLiteError` if absent or damaged."""
    metadata = metadata or {}
    if metadata.get("format") != PROGRAM_FORMAT or "program" not in metadata:
        raise TFLiteError(f"{where} holds no converted TFLite program (metadata 'format' is "
                          f"{metadata.get('format')!r}, expected {PROGRAM_FORMAT!r})")
    try:
        program = json.loads(metadata["program"])
    except json.JSONDecodeError as e:
        raise TFLiteError(f"{where}: the stored TFLite program is not valid JSON ({e})") from e
    if not isinstance(program, dict):
        raise TFLiteError(f"{where}: the stored TFLite program is not a JSON object")
    return program
