"""MobileFaceNet (192-d embedding, 112x112 ArcFace-aligned faces) from its TFLite file.

The network is the TensorFlow MobileFaceNet distributed as ``MobileFaceNet.tflite`` (input
NHWC ``[2,112,112,3]`` RGB scaled ``(x - 127.5) / 128``, output the raw 192-d embedding
``embeddings``; PReLU written as ``relu(x) + c * (x - abs(x))``). The file is read with the
``tflite`` FlatBuffer schema (no TensorFlow) by :mod:`imguard.models.formats.tflite`, whose
op-list interpreter runs it as torch ops: differentiable, any batch size, any device.

- :func:`convert_mobilefacenet` turns the ``.tflite`` (or an already converted
  ``.safetensors``) into ``(state_dict, metadata)``; ``safetensors.torch.save_file(sd, path,
  metadata)`` stores it, the graph as JSON in the metadata.
- :func:`load_mobilefacenet` builds the frozen :class:`MobileFaceNet` recognizer from either
  file, or from the model cache (:mod:`imguard.models.hub`) when no path is given.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import torch
import torch.nn.functional as F
from torch import nn

from .base import ModelLoadError
from .formats.tflite import TFLiteError, TFLiteModule, program_from_metadata, program_metadata, read_tflite

__all__ = ["MOBILEFACENET_THRESHOLD", "MobileFaceNet", "convert_mobilefacenet", "load_mobilefacenet"]

#: Cosine at/above which two faces are the same person: the midpoint (0.436, rounded down) of
#: the highest impostor and the lowest genuine cosine measured on the dev faces with imguard's
#: MTCNN + ArcFace alignment (genuine 0.493-0.829, impostor -0.116-0.379; see
#: tests/test_mobilefacenet.py). Pairs of different people among the wild faces stay below it
#: as well (at most 0.366, except one pair of two stylised portraits at 0.536).
MOBILEFACENET_THRESHOLD = 0.43

_INPUT_NHWC = (112, 112, 3)
_EMBEDDING_DIM = 192
_MODEL = "mobilefacenet"
_EXPECTED = (
    "the MobileFaceNet TFLite model (MobileFaceNet.tflite: one float32 input [N,112,112,3], "
    "one output [N,192]) or a .safetensors file made from it by convert_mobilefacenet()"
)
_PATH_HINT = "pass face_model='mobilefacenet:/path/to/MobileFaceNet.tflite'"


class MobileFaceNet(nn.Module):
    """MobileFaceNet behind the recognizer interface: aligned RGB faces in [0,1] -> unit [B,192]."""

    name = _MODEL
    input_size = (112, 112)
    alignment = "landmarks5"  # the ArcFace 5-point template (template None = the default)
    template = None
    threshold = MOBILEFACENET_THRESHOLD
    embedding_dim = _EMBEDDING_DIM

    def __init__(self, net: TFLiteModule, source: str | None = None):
        super().__init__()
        self.net = net  #: the TFLite graph as torch ops; takes (x - 127.5) / 128, NCHW
        self.source = source  #: the file the weights came from (informational)

    def forward(self, faces01: torch.Tensor) -> torch.Tensor:
        if faces01.dim() != 4 or faces01.shape[1] != 3:
            raise ValueError(f"MobileFaceNet expects [B,3,112,112] RGB faces in [0,1], got shape {tuple(faces01.shape)}")
        if tuple(faces01.shape[-2:]) != self.input_size:
            raise ValueError(
                f"MobileFaceNet expects 112x112 aligned faces, got {faces01.shape[-2]}x{faces01.shape[-1]}"
            )
        x = (faces01 * 255.0 - 127.5) / 128.0
        return F.normalize(self.net(x).float(), dim=-1)

    def extra_repr(self) -> str:
        return f"source={self.source!r}" if self.source else ""


def _check_program(program: dict, where: str) -> None:
    ins, outs = program.get("inputs", []), program.get("outputs", [])
    ok = (
        len(ins) == 1 and len(outs) == 1
        and len(ins[0].get("shape", [])) == 4 and tuple(ins[0]["shape"][1:]) == _INPUT_NHWC
        and len(outs[0].get("shape", [])) == 2 and outs[0]["shape"][1] == _EMBEDDING_DIM
    )
    if not ok:
        got = ", ".join(f"input {i.get('shape')}" for i in ins) + "; " + ", ".join(f"output {o.get('shape')}" for o in outs)
        raise ValueError(f"{where} is not MobileFaceNet ({got}); expected {_EXPECTED}")


def _is_tflite(path: pathlib.Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(8)
    return len(head) == 8 and head[4:8] == b"TFL3"


def convert_mobilefacenet(src: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(state_dict, metadata)`` of MobileFaceNet from its ``.tflite`` (or a converted ``.safetensors``).

    The metadata (``dict[str, str]``) holds the graph (``format``, ``program``), ``model``,
    ``source`` and, for a TFLite source, its ``source_sha256``; ``safetensors.torch.save_file(
    state_dict, path, metadata)`` writes a file :func:`load_mobilefacenet` reads back.

    Raises FileNotFoundError for a missing file and ValueError for any other file.
    """
    path = pathlib.Path(os.fspath(src)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"MobileFaceNet weights not found: {path}")
    if _is_tflite(path):
        try:
            program, weights = read_tflite(path)
        except TFLiteError as e:
            raise ValueError(f"{path} could not be converted ({e}); expected {_EXPECTED}") from e
        _check_program(program, str(path))
        meta = program_metadata(program)
        meta.update(model=_MODEL, source=path.name, source_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
        return weights, meta
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:  # pragma: no cover - safetensors comes with torch's ecosystem here
        raise ImportError("reading converted MobileFaceNet weights needs the 'safetensors' package") from None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            weights = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is neither a TFLite nor a safetensors file ({e}); expected {_EXPECTED}") from e
    if meta.get("model") != _MODEL:
        raise ValueError(f"{path} holds model {meta.get('model')!r}, not {_MODEL!r}; expected {_EXPECTED}")
    try:
        program = program_from_metadata(meta, str(path))
    except TFLiteError as e:
        raise ValueError(f"{e}; expected {_EXPECTED}") from e
    _check_program(program, str(path))
    return weights, meta


def load_mobilefacenet(path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> MobileFaceNet:
    """The frozen MobileFaceNet recognizer from ``path`` (``.tflite`` or converted ``.safetensors``).

    Without a path the model cache (:func:`imguard.models.hub.model_path`) supplies the file.
    Raises FileNotFoundError (missing file), ValueError (not a MobileFaceNet file) and
    ModelLoadError (no path and no model cache).
    """
    if path is None:
        try:
            from .hub import model_path
        except ImportError as e:
            raise ModelLoadError(
                f"no MobileFaceNet file was given and the model cache is unavailable ({e}); {_PATH_HINT}"
            ) from e
        path = model_path(_MODEL)
    weights, meta = convert_mobilefacenet(path)
    program = program_from_metadata(meta, os.fspath(path))
    try:
        net = TFLiteModule(program, weights)
    except TFLiteError as e:
        raise ValueError(f"{os.fspath(path)}: {e}; expected {_EXPECTED}") from e
    model = MobileFaceNet(net, source=os.fspath(path))
    model.eval().requires_grad_(False)
    return model.to(device)
