"""imguard.distributed.protect_dataset: a Ray Dataset of uploads (bytes, paths or URIs) in, a
Dataset with the protected PNG bytes and a status row per image out, on a local Ray cluster (2
CPUs, the tiny models of test_distributed). Broken rows become failed rows; every protected
image is bit-identical to Protector.protect with the same seed (batch size 1). The worker
class and the URI reader are also tested in this process, without Ray."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from test_distributed import build_protector, failing_protector, ray_cluster  # noqa: F401 - the fixture

STEPS, SEED = 2, 7
BROKEN = b"this is not an image file"


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    """Four images (three 24x24 PNGs; a JPEG stored 20x28 that its EXIF turns upright to 28x20)
    and one broken file."""
    d = tmp_path_factory.mktemp("uploads")
    for i in range(3):
        arr = np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(d / f"img{i}.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the reader turns it upright, from bytes as from the file
    arr = np.random.default_rng(9).integers(0, 256, (28, 20, 3), dtype=np.uint8)
    Image.fromarray(arr).save(d / "img3.jpg", exif=exif, quality=95)
    (d / "broken.png").write_bytes(BROKEN)
    return d


def _factory(vae_dir):
    return functools.partial(build_protector, str(vae_dir))


@pytest.fixture(scope="module")
def expected(uploads, tiny_vae_dir):
    """Protector.protect of each good file (one thread, as the Ray workers run), as PNG bytes."""
    import torch

    from imguard.io import encode_image

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p = _factory(tiny_vae_dir)()
        return {f.name: encode_image(p.protect(str(f), seed=SEED, steps=STEPS)) for f in sorted(uploads.iterdir())
                if f.name != "broken.png"}
    finally:
        torch.set_num_threads(n)


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _check_done(row: dict, source: bytes, want: bytes) -> None:
    assert row["status"] == "done" and row["error"] is None, row["error"]
    assert row["input_sha256"] == hashlib.sha256(source).hexdigest()
    assert row["protected"][:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(_pixels(row["protected"]), _pixels(want))
    assert row["protected"] == want  # the same bytes, not only the same pixels
    assert row["seed"] == SEED and 0 < row["achieved"] <= row["eps"] + 1e-3
    settings = json.loads(row["settings"])
    assert settings["seed"] == SEED and settings["steps"] == STEPS and settings["method"] == "facelock"
    assert settings["batch_size"] == 1 and settings["format"] == "png"
    assert set(json.loads(row["visibility"])) >= {"psnr", "ssim", "invisible"}


def test_a_dataset_of_upload_bytes(ray_cluster, uploads, tiny_vae_dir, expected):
    """ray.data.read_binary_files (a bytes and a path column), two actors (half a CPU each: the
    read tasks need the other one): four protected rows bit-identical to Protector.protect, and
    the broken file as a failed row."""
    from imguard.distributed import OUTPUT_COLUMNS, protect_dataset

    ds = ray_cluster.data.read_binary_files(str(uploads), include_paths=True)
    out = protect_dataset(ds, "bytes", protector=_factory(tiny_vae_dir), seed=SEED, protect_kwargs={"steps": STEPS},
                          concurrency=2, num_cpus=0.5)
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in out.take_all()}
    assert all(set(r) == {"bytes", "path", *OUTPUT_COLUMNS} for r in rows.values())
    assert sorted(rows) == ["broken.png", "img0.png", "img1.png", "img2.png", "img3.jpg"]
    for name, want in expected.items():
        _check_done(rows[name], (uploads / name).read_bytes(), want)
    bad = rows["broken.png"]
    assert bad["status"] == "failed" and bad["protected"] is None and bad["achieved"] is None
    assert "<bytes>" in bad["error"] and "not a readable image file" in bad["error"], bad["error"]
    assert "0x" not in bad["error"]  # no memory address in the message
    assert bad["input_sha256"] == hashlib.sha256(BROKEN).hexdigest() and bad["seed"] == SEED


def test_a_dataset_of_uris(ray_cluster, uploads, tiny_vae_dir, expected):
    """A string column: file:// URIs and plain paths are read by the worker; a missing file, a
    scheme nothing reads and a null are failed rows naming what went wrong."""
    from imguard.distributed import protect_dataset

    items = [
        {"id": 0, "uri": (uploads / "img0.png").as_uri()},
        {"id": 1, "uri": str(uploads / "img3.jpg")},
        {"id": 2, "uri": (uploads / "missing.png").as_uri()},
        {"id": 3, "uri": "nosuchscheme://bucket/img1.png"},
        {"id": 4, "uri": None},
    ]
    ds = ray_cluster.data.from_items(items)
    out = protect_dataset(ds, "uri", protector=_factory(tiny_vae_dir), seed=SEED, protect_kwargs={"steps": STEPS},
                          drop_input=True)
    rows = {r["id"]: r for r in out.take_all()}
    assert "uri" not in rows[0]
    _check_done(rows[0], (uploads / "img0.png").read_bytes(), expected["img0.png"])
    _check_done(rows[1], (uploads / "img3.jpg").read_bytes(), expected["img3.jpg"])
    assert [rows[i]["status"] for i in (2, 3, 4)] == ["failed"] * 3
    assert "image file not found" in rows[2]["error"] and "missing.png" in rows[2]["error"]
    assert "'nosuchscheme'" in rows[3]["error"], rows[3]["error"]
    assert "null" in rows[4]["error"]
    assert all(rows[i]["input_sha256"] is None and rows[i]["protected"] is None for i in (2, 3, 4))


def test_a_worker_that_cannot_load_its_models_fails_the_dataset(ray_cluster, uploads):
    from imguard.distributed import protect_dataset

    ds = ray_cluster.data.from_items([{"bytes": (uploads / "img0.png").read_bytes()}])
    with pytest.raises(Exception, match="missing-vae"):
        protect_dataset(ds, protector=failing_protector).take_all()


def test_protect_dataset_checks_its_arguments_before_any_work(ray_cluster, tiny_vae_dir):
    from imguard import Protector
    from imguard.distributed import protect_dataset

    ds = ray_cluster.data.from_items([{"bytes": b"x", "status": "new", "n": 1}])
    with pytest.raises(KeyError, match="no column 'image'.*bytes"):
        protect_dataset(ds, "image")
    with pytest.raises(ValueError, match="already has column.*status.*rename_columns"):
        protect_dataset(ds, "bytes")
    ok = ray_cluster.data.from_items([{"bytes": b"x", "n": 1}])
    with pytest.raises(TypeError, match="holds int64, not image files.*read_binary_files"):
        protect_dataset(ok, "n")
    with pytest.raises(TypeError, match="kind='bytes'"):
        protect_dataset(ok, "bytes", kind="uri")
    with pytest.raises(ValueError, match="kind must be one of"):
        protect_dataset(ok, kind="url")
    with pytest.raises(TypeError, match="not a Protector"):
        protect_dataset(ok, protector=Protector("facelock", device="cpu"))
    with pytest.raises(ValueError, match="give seed= to protect_dataset"):
        protect_dataset(ok, protect_kwargs={"seed": 1})
    with pytest.raises(ValueError, match="batch_size"):
        protect_dataset(ok, batch_size=0)
    with pytest.warns(UserWarning, match="take all 2 CPUs.*waits for ever"):
        protect_dataset(ok, concurrency=2)


# -- without Ray: the worker class in this process, and the URI reader


def _table(column: str, values: list, typ=None):
    import pyarrow as pa

    return pa.table({"id": list(range(len(values))), column: pa.array(values, type=typ)})


def test_the_worker_in_this_process_batches_same_sized_images(uploads, tiny_vae_dir, expected):
    """batch_size=3 over five rows: the three 24x24 PNGs are protected as one batch (their
    results then depend on each other: not compared), the JPEG alone (its result is that of
    Protector.protect), the broken row fails; kind="path" reads the files here."""
    pa = pytest.importorskip("pyarrow")
    import torch

    from imguard.distributed import ProtectDatasetWorker

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        w = ProtectDatasetWorker(_factory(tiny_vae_dir), "path", kind="path", batch_size=3, seed=SEED,
                                 protect_kwargs={"steps": STEPS})
        names = ["img0.png", "img1.png", "img2.png", "broken.png", "img3.jpg"]
        out = w(_table("path", [str(uploads / f) for f in names], pa.string())).to_pylist()
    finally:
        torch.set_num_threads(n)
    assert [r["status"] for r in out] == ["done", "done", "done", "failed", "done"]
    assert out[4]["protected"] == expected["img3.jpg"]
    assert str(uploads / "broken.png") in out[3]["error"]
    assert json.loads(out[0]["settings"])["batch_size"] == 3
    for r, f in zip(out, names):
        assert r["path"] == str(uploads / f) and r["input_sha256"] == hashlib.sha256((uploads / f).read_bytes()).hexdigest()


def test_read_uri_bytes(tmp_path, monkeypatch):
    pafs = pytest.importorskip("pyarrow.fs")
    from imguard.distributed import read_uri_bytes
    from imguard.io import ImageReadError

    f = tmp_path / "a b.png"
    f.write_bytes(b"data")
    assert read_uri_bytes(f.as_uri()) == b"data"  # file://, percent-encoded
    assert read_uri_bytes(str(f)) == b"data"  # a plain path
    assert read_uri_bytes(f"file:{f}") == b"data"  # file:/abs/path
    assert read_uri_bytes(f.as_uri(), filesystem=pafs.LocalFileSystem()) == b"data"
    with pytest.raises(ImageReadError, match="another host"):
        read_uri_bytes("file://server/share/a.png")
    with pytest.raises(ImageReadError, match="is a folder"):
        read_uri_bytes(tmp_path.as_uri())
    fsspec = pytest.importorskip("fsspec")
    mem = fsspec.filesystem("memory")
    mem.pipe("/imguard-test/x.png", b"in memory")
    assert read_uri_bytes("memory://imguard-test/x.png") == b"in memory"  # a scheme pyarrow does not read: fsspec
    with pytest.raises(ImageReadError, match="nothing here reads 'nosuchscheme' URIs"):
        read_uri_bytes("nosuchscheme://a/b.png")
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(ImageReadError, match=r"'s3x' URIs .* fsspec is not installed: pip install fsspec"):
        read_uri_bytes("s3x://bucket/a.png")
