"""Autoencoders behind one small interface working in [0,1] image space.

An autoencoder is anything with ``encode(x01) -> z`` and ``decode(z) -> x01``; optionally
``features(x01) -> list[Tensor]`` (intermediate encoder activations, used by the ``ae``
perceptual distance). The Stable Diffusion VAE wants [-1,1] input and a latent scaling
factor: :class:`DiffusersVAE` hides both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .base import ModelLoadError, ModelSpec, freeze, spec_name, split_specs

#: The editor FaceLock attacks (InstructPix2Pix): its VAE, loaded through diffusers.
EDITOR_VAE = "timbrooks/instruct-pix2pix"
#: The default surrogate: TAESD, a tiny autoencoder of the same SD 1.x latent space, bundled.
DEFAULT_VAE = "taesd"

#: Tiny autoencoders bundled with imguard (MIT, see weights/LICENSE-taesd.txt).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUNDLED_AUTOENCODERS = {
    "taesd": "TAESD: tiny autoencoder of the SD 1.x latent space (InstructPix2Pix's), bundled",
    "taef2": "TAEF2: tiny autoencoder of the FLUX.2 latent space, bundled",
}
#: Kinds a spec may start with ("KIND:PATH").
AUTOENCODER_KINDS = (*BUNDLED_AUTOENCODERS, "diffusers")


class DiffusersVAE(nn.Module):
    """A diffusers ``AutoencoderKL`` seen through the [0,1] interface.

    ``encode`` returns the *scaled* latent mean (what a diffusion editor works with);
    ``decode`` takes such a latent and returns an image in [0,1].
    """

    def __init__(self, vae: nn.Module, name: str = "AutoencoderKL"):
        super().__init__()
        self.vae = vae
        self.name = name
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215) or 1.0)
        self.latent_channels = int(getattr(vae.config, "latent_channels", 4))

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(x01 * 2 - 1).latent_dist
        return dist.mean * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self.vae.decode(z / self.scaling_factor).sample
        return ((out + 1) / 2).clamp(0, 1)

    def features(self, x01: torch.Tensor) -> list[torch.Tensor]:
        """Activations after ``conv_in`` and after each down block of the encoder."""
        enc = self.vae.encoder
        h = enc.conv_in(x01 * 2 - 1)
        feats = [h]
        for block in enc.down_blocks:
            h = block(h)
            feats.append(h)
        return feats


class ModuleAutoencoder(nn.Module):
    """Wraps a user object with ``encode``/``decode`` (and maybe ``features``) in [0,1]."""

    def __init__(self, module: Any, name: str | None = None):
        super().__init__()
        self.module = module
        self.name = name or type(module).__name__

    def encode(self, x01):
        return self.module.encode(x01)

    def decode(self, z):
        return self.module.decode(z)

    def features(self, x01):
        if hasattr(self.module, "features"):
            return self.module.features(x01)
        raise NotImplementedError(
            f"autoencoder {self.name} has no features(); use features='lpips' or give it a features(x01) method"
        )


def _from_pretrained(source: str, dtype: torch.dtype) -> nn.Module:
    from diffusers import AutoencoderKL

    path = Path(os.path.expanduser(source))
    if path.is_file():  # a single checkpoint file (.safetensors / .ckpt)
        return AutoencoderKL.from_single_file(str(path), torch_dtype=dtype)
    if path.is_dir():
        if (path / "config.json").is_file():
            return AutoencoderKL.from_pretrained(str(path), torch_dtype=dtype)
        if (path / "vae" / "config.json").is_file():
            return AutoencoderKL.from_pretrained(str(path), subfolder="vae", torch_dtype=dtype)
        raise ModelLoadError(
            f"autoencoder folder {path} has no config.json (nor vae/config.json); "
            "give a diffusers AutoencoderKL folder, a pipeline folder, or a .safetensors file"
        )
    if source.startswith((".", "/", "~")) or os.sep in source and not _looks_like_hub_id(source):
        raise ModelLoadError(f"autoencoder path {source!r} does not exist")
    # a Hugging Face hub id: a pipeline repo keeps its VAE in a 'vae' subfolder
    from .hub import hub_offline

    if hub_offline():  # the local hub cache only: fail at once instead of retrying the network
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # its advice about `accelerate` is noise here
        try:
            for sub in ("vae", None):
                try:
                    return AutoencoderKL.from_pretrained(source, subfolder=sub, torch_dtype=dtype, local_files_only=True)
                except Exception:  # noqa: BLE001 - not in the local cache
                    continue
        finally:
            diffusers_logging.set_verbosity(level)
        raise ModelLoadError(
            f"cannot load the autoencoder {source!r}: offline mode is on (IMGUARD_OFFLINE=1, --offline or "
            "HF_HUB_OFFLINE=1) and it is not in the local Hugging Face cache. Pass a local path, e.g. "
            "vae='/path/to/instruct-pix2pix' (a pipeline folder with vae/), or an offline tiny autoencoder: "
            "vae='taesd' (bundled) or vae='taesd:/path/to/taef2'."
        )
    try:
        return AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype)
    except Exception as first:  # noqa: BLE001 - re-raised with advice below
        try:
            if not _is_missing_file(first):  # unreachable hub etc.: do not wait a second time
                raise first
            return AutoencoderKL.from_pretrained(source, torch_dtype=dtype)
        except Exception:  # noqa: BLE001
            raise ModelLoadError(
                f"could not load the autoencoder {source!r} from the Hugging Face hub "
                f"({type(first).__name__}: {str(first).splitlines()[0] if str(first) else ''}). "
                "Without network access, download it elsewhere and pass a local path, e.g. "
                "vae='/path/to/instruct-pix2pix' (a pipeline folder with vae/) or "
                "vae='/path/to/vae' (a folder with config.json and weights), or use an offline "
                "tiny autoencoder: vae='taesd:/path/to/taef2'."
            ) from first


def _is_missing_file(e: Exception) -> bool:
    """The repo was reached but has no vae/ subfolder (a VAE-only repo)."""
    name = type(e).__name__
    return name in ("EntryNotFoundError", "RemoteEntryNotFoundError") or "does not appear to have a file" in str(e)


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


class AutoencoderEnsemble(nn.Module):
    """Several autoencoders attacked together (methods iterate over :func:`autoencoders_of`)."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.name = "+".join(spec_name(m) for m in members)

    def __iter__(self):
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)


class IdentityAutoencoder(nn.Module):
    """``"identity"``: no autoencoder at all (``decode(encode(x)) == x``). As an ensemble
    member (``vae="taesd,identity"``) it makes the attack also fool the recognizer on the
    protected image itself, which an autoencoder the protection never saw, if it is faithful,
    passes on; its ``features`` are the pixels."""

    name = "identity"

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        return x01

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def features(self, x01: torch.Tensor) -> list[torch.Tensor]:
        return [x01]


def autoencoders_of(ae: Any) -> list:
    """The members of an ensemble, or ``[ae]``."""
    return list(ae.members) if isinstance(ae, AutoencoderEnsemble) else [ae]


def _load_named(spec: str, dtype: torch.dtype) -> nn.Module:
    from .taesd import load_taesd

    if spec.strip().lower() == "identity":
        return IdentityAutoencoder()
    parsed = ModelSpec.parse(spec, AUTOENCODER_KINDS)
    if parsed.kind in BUNDLED_AUTOENCODERS:
        target = parsed.path or str(WEIGHTS_DIR / parsed.kind)
        try:
            model = load_taesd(target)
        except (FileNotFoundError, ValueError) as e:
            raise ModelLoadError(
                f"could not load the tiny autoencoder {spec!r}: {e}. Give the weights as "
                f"'{parsed.kind}:/path/prefix' (PREFIX_encoder.pth/.safetensors and PREFIX_decoder...)."
            ) from e
        model.name = spec if parsed.path else parsed.kind
        return model
    source = parsed.path if parsed.kind == "diffusers" else spec
    return DiffusersVAE(_from_pretrained(source, dtype), name=source)


def _load_one(spec: Any, dtype: torch.dtype) -> nn.Module:
    if callable(spec) and not isinstance(spec, nn.Module) and not hasattr(spec, "encode"):
        spec = spec()
    if isinstance(spec, str):
        return _load_named(spec, dtype)
    if _is_diffusers_kl(spec):
        return DiffusersVAE(spec, name=type(spec).__name__)
    if hasattr(spec, "encode") and hasattr(spec, "decode"):
        return spec if isinstance(spec, nn.Module) and hasattr(spec, "name") else ModuleAutoencoder(spec)
    raise TypeError(
        "vae must be 'taesd', 'taef2', 'identity', a hub id, a local path, 'taesd:PREFIX', an AutoencoderKL, a "
        f"module with encode(x01)/decode(z), or a list of these; got {type(spec).__name__}"
    )


def load_autoencoder(spec: Any = None, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """Resolve an autoencoder spec to a frozen module with ``encode``/``decode`` in [0,1].

    ``spec`` may be: ``None`` or ``"taesd"`` (the bundled SD 1.x-space tiny autoencoder),
    ``"taef2"`` (bundled, FLUX.2 space), ``"identity"`` (no autoencoder: an ensemble member
    that attacks the image itself), ``"taesd:PREFIX"`` (a TAESD-family pair
    ``PREFIX_encoder``/``PREFIX_decoder`` .pth or .safetensors), a hub id (e.g. the editor's
    ``"timbrooks/instruct-pix2pix"``), a local diffusers folder or single file, an
    ``AutoencoderKL`` instance, any module with ``encode``/``decode``, a zero-argument
    function returning one of those, or several of these (a list, or names separated by
    commas): an :class:`AutoencoderEnsemble`.
    """
    if spec is None:
        spec = DEFAULT_VAE
    if isinstance(spec, AutoencoderEnsemble):
        return freeze(spec, device, dtype)
    items = split_specs(spec)
    errors, members = [], []
    for item in items:
        try:
            members.append(freeze(_load_one(item, dtype), device, dtype))
        except ModelLoadError as e:
            errors.append(str(e))
    if errors:
        raise ModelLoadError(errors[0] if len(errors) == 1 else "several autoencoders could not load:\n- " + "\n- ".join(errors))
    return members[0] if len(members) == 1 else AutoencoderEnsemble(members)


def _is_diffusers_kl(obj: Any) -> bool:
    try:
        from diffusers import AutoencoderKL
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, AutoencoderKL)


LoaderFn = Callable[[], Any]
