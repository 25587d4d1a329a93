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

from ._errors import ModelLoadError

#: The editor FaceLock attacks; its VAE is the default autoencoder.
DEFAULT_VAE = "timbrooks/instruct-pix2pix"


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


def load_autoencoder(spec: Any = None, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """Resolve an autoencoder spec to a frozen module with ``encode``/``decode`` in [0,1].

    ``spec`` may be: ``None`` (the InstructPix2Pix VAE from the hub), a hub id, a local
    diffusers folder or single file, ``"taesd:PREFIX"`` (a TAESD-family pair
    ``PREFIX_encoder.pth``/``PREFIX_decoder.pth``), an ``AutoencoderKL`` instance, any module
    with ``encode``/``decode``, or a zero-argument function returning one of those.
    """
    if spec is None:
        spec = DEFAULT_VAE
    if callable(spec) and not isinstance(spec, nn.Module) and not hasattr(spec, "encode"):
        spec = spec()
    if isinstance(spec, str):
        if spec.startswith("taesd:"):
            from .taesd import load_taesd

            try:
                model = load_taesd(spec[len("taesd:"):], device=device)
            except (FileNotFoundError, ValueError) as e:
                raise ModelLoadError(f"could not load the tiny autoencoder {spec!r}: {e}") from e
            model.name = spec
        else:
            model = DiffusersVAE(_from_pretrained(spec, torch.float32), name=spec)
    elif _is_diffusers_kl(spec):
        model = DiffusersVAE(spec, name=type(spec).__name__)
    elif hasattr(spec, "encode") and hasattr(spec, "decode"):
        model = spec if isinstance(spec, nn.Module) and hasattr(spec, "name") else ModuleAutoencoder(spec)
    else:
        raise TypeError(
            "vae must be a hub id, a local path, 'taesd:PREFIX', an AutoencoderKL, or a module "
            f"with encode(x01)/decode(z); got {type(spec).__name__}"
        )
    return freeze(model, device, dtype)


def _is_diffusers_kl(obj: Any) -> bool:
    try:
        from diffusers import AutoencoderKL
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, AutoencoderKL)


def freeze(model: Any, device: torch.device | str, dtype: torch.dtype = torch.float32):
    """Eval mode, no parameter gradients, on ``device``."""
    if isinstance(model, nn.Module):
        model = model.to(device=device, dtype=dtype)
        model.eval()
        model.requires_grad_(False)
    return model


LoaderFn = Callable[[], Any]
