"""Reading Keras 2 HDF5 model files (``model.save("x.h5")``) without TensorFlow.

A Keras 2 ``.h5`` file holds the model's architecture as JSON in the root attribute
``model_config`` and its weights under ``model_weights/<layer>/``: each layer group lists its
datasets in the attribute ``weight_names`` (``"<layer>/kernel:0"``, ``"<layer>/bias:0"``, ...).
A weights-only file (``save_weights``) has the layer groups at the root and no
``model_config``. Only :mod:`h5py` and numpy are used.

Keras stores tensors channels-last; the helpers below turn them into torch layouts:
``Conv2D`` kernels ``[kh, kw, in, out]`` -> ``[out, in, kh, kw]``, ``Dense`` kernels
``[in, out]`` -> ``[out, in]``, and a ``BatchNormalization`` layer's ``gamma``/``beta``/
``moving_mean``/``moving_variance`` (``gamma`` or ``beta`` absent when the layer was built
with ``scale=False`` or ``center=False``) -> torch's ``weight``/``bias``/``running_mean``/
``running_var``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "HDF5_SIGNATURE",
    "KerasH5",
    "KerasLayer",
    "batchnorm_to_torch",
    "conv2d_kernel_to_torch",
    "dense_kernel_to_torch",
    "is_hdf5",
    "read_keras_h5",
]

#: The first 8 bytes of every HDF5 file (without a user block).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: str | os.PathLike) -> bool:
    """True when ``path`` starts with the HDF5 signature."""
    with open(path, "rb") as fh:
        return fh.read(8) == HDF5_SIGNATURE


@dataclass
class KerasLayer:
    """One layer of a Keras functional/sequential model config."""

    name: str
    class_name: str
    config: dict[str, Any]
    inbound: list[str] = field(default_factory=list)  #: names of the layers feeding it


def _weight_key(layer: str, full_name: str) -> str:
    """``"Conv2d_1a/kernel:0"`` -> ``"kernel"`` (the short name within the layer)."""
    short = full_name.rsplit("/", 1)[-1]
    return short.split(":", 1)[0]


class KerasH5:
    """An open Keras 2 ``.h5`` file: its layers (from the config) and their weights.

    Use as a context manager, or call :meth:`close`. ``weights(name)`` returns the layer's
    arrays keyed by short name (``kernel``, ``bias``, ``beta``, ``moving_mean``, ...).
    """

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"Keras h5 file {self.path!r} does not exist")
        if not is_hdf5(self.path):
            raise ValueError(f"{self.path!r} is not an HDF5 file (a Keras .h5 model was expected)")
        self._file = h5py.File(self.path, "r")
        attrs = self._file.attrs
        self.keras_version = _text(attrs.get("keras_version", ""))
        self.backend = _text(attrs.get("backend", ""))
        raw = attrs.get("model_config")
        self.config: dict[str, Any] | None = json.loads(_text(raw)) if raw is not None else None
        self._weights_root = self._file["model_weights"] if "model_weights" in self._file else self._file
        if "layer_names" not in self._weights_root.attrs:
            self.close()
            raise ValueError(
                f"{self.path!r} is an HDF5 file but not a Keras 2 model or weights file "
                "(no 'layer_names' attribute on its weights group)"
            )
        self.layer_names = [_text(n) for n in self._weights_root.attrs["layer_names"]]
        self.layers: list[KerasLayer] = _layers_from_config(self.config) if self.config else []
        self._by_name = {layer.name: layer for layer in self.layers}

    @property
    def model_name(self) -> str:
        return str((self.config or {}).get("config", {}).get("name", ""))

    def layer(self, name: str) -> KerasLayer:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"layer {name!r} is not in the model config of {self.path!r}") from None

    def has_weights(self, name: str) -> bool:
        return name in self._weights_root

    def weights(self, name: str) -> dict[str, np.ndarray]:
        """The layer's weight arrays (float32 or their stored dtype), keyed by short name."""
        if name not in self._weights_root:
            raise KeyError(f"layer {name!r} has no weights in {self.path!r}")
        group = self._weights_root[name]
        out: dict[str, np.ndarray] = {}
        for full in group.attrs.get("weight_names", []):
            full = _text(full)
            out[_weight_key(name, full)] = np.asarray(group[full][()])
        return out

    def close(self) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "KerasH5":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_keras_h5(path: str | os.PathLike) -> KerasH5:
    """Open a Keras 2 ``.h5`` file (see :class:`KerasH5`)."""
    return KerasH5(path)


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)


def _layers_from_config(config: dict[str, Any]) -> list[KerasLayer]:
    layers = []
    for entry in config.get("config", {}).get("layers", []):
        name = entry.get("name") or entry.get("config", {}).get("name", "")
        inbound: list[str] = []
        for node in entry.get("inbound_nodes", []) or []:
            if isinstance(node, list):  # Keras 2: [[layer, node_index, tensor_index, kwargs], ...]
                inbound.extend(str(t[0]) for t in node if isinstance(t, list) and t)
        layers.append(KerasLayer(name=name, class_name=entry.get("class_name", ""), config=entry.get("config", {}), inbound=inbound))
    return layers


def conv2d_kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
    """A Keras ``Conv2D`` kernel ``[kh, kw, in, out]`` as a torch weight ``[out, in, kh, kw]``."""
    if kernel.ndim != 4:
        raise ValueError(f"a Conv2D kernel is 4-D [kh, kw, in, out], got shape {kernel.shape}")
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def dense_kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
    """A Keras ``Dense`` kernel ``[in, out]`` as a torch ``Linear`` weight ``[out, in]``."""
    if kernel.ndim != 2:
        raise ValueError(f"a Dense kernel is 2-D [in, out], got shape {kernel.shape}")
    return np.ascontiguousarray(kernel.T)


def batchnorm_to_torch(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A Keras ``BatchNormalization`` layer's arrays as torch ``BatchNorm`` entries.

    ``gamma`` (absent with ``scale=False``) becomes ones; ``beta`` (absent with
    ``center=False``) becomes zeros.
    """
    for k in ("moving_mean", "moving_variance"):
        if k not in weights:
            raise ValueError(f"a BatchNormalization layer needs {k!r}; got {sorted(weights)}")
    mean = np.asarray(weights["moving_mean"], np.float32)
    return {
        "weight": np.asarray(weights.get("gamma", np.ones_like(mean)), np.float32),
        "bias": np.asarray(weights.get("beta", np.zeros_like(mean)), np.float32),
        "running_mean": mean,
        "running_var": np.asarray(weights["moving_variance"], np.float32),
    }
