"""The TAESD family of tiny autoencoders, reimplemented in plain PyTorch.

TAESD, TAESDXL, TAEF1 and TAEF2 (by Ollin Boer Bohan) are small convolutional
autoencoders that approximate the latent spaces of the Stable Diffusion, SDXL,
FLUX.1 and FLUX.2 VAEs. Weights ship as two files, ``PREFIX_encoder.pth`` and
``PREFIX_decoder.pth``, each the state dict of an ``nn.Sequential`` (keys such as
``0.weight`` or ``1.conv.0.weight``), usually stored in float16.

All variants share one layout and differ only in

* the number of latent channels (4 for TAESD/TAESDXL, 16 for TAEF1, 32 for TAEF2), and
* whether the three deepest blocks of encoder and decoder carry an extra
  GroupNorm "pool" branch (TAEF2).

Both are read off the state dict by :func:`load_taesd`, so one loader serves every
variant. Images are in [0, 1] on both ends; latents are 8x smaller spatially.

Layout (all convolutions 3x3 with padding 1 unless noted)::

    Block(x):   x = x + pool(x)                       # only with the pool branch
                relu(conv-relu-conv-relu-conv(x) + skip(x))
    Encoder:    conv 3->64, Block,
                [conv stride 2 (no bias), Block x3] x3  (pool in the last three),
                conv 64->C
    Decoder:    tanh(z/3)*3, conv C->64, ReLU, Block x3 (pool),
                [upsample x2, conv (no bias), Block x3] x2,
                upsample x2, conv (no bias), Block, conv 64->3
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TinyAutoencoder", "load_taesd", "save_taesd"]

#: Width of every hidden layer in the TAESD family.
WIDTH = 64
#: Encoder indices of the last Block of each resolution stage (1x, 1/2, 1/4, 1/8).
_STAGE_ENDS = (1, 5, 9, 13)
_ENCODER_SUFFIX = "_encoder.pth"
_DECODER_SUFFIX = "_decoder.pth"


def _conv(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, kernel_size=3, stride=stride, padding=1, bias=bias)


class _SoftClamp(nn.Module):
    """Smoothly squash latents into (-3, 3): ``tanh(z / 3) * 3``."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z / 3) * 3


class _Upsample(nn.Module):
    """Nearest-neighbour upsampling by 2 (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class Block(nn.Module):
    """Residual block: three 3x3 convs with ReLUs, plus an optional GroupNorm pool branch.

    Submodule names (``conv``, ``pool``, ``skip``) match the keys of the published
    state dicts: ``conv.{0,2,4}`` for the body and ``pool.{0,1,3}`` for the branch
    (1x1 conv to 4x channels without bias, GroupNorm with 4 groups, ReLU, 1x1 conv back
    without bias).
    """

    def __init__(self, n_in: int, n_out: int, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(
            _conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out)
        )
        self.pool = (
            nn.Sequential(
                nn.Conv2d(n_in, 4 * n_in, kernel_size=1, bias=False),
                nn.GroupNorm(4, 4 * n_in),
                nn.ReLU(),
                nn.Conv2d(4 * n_in, n_in, kernel_size=1, bias=False),
            )
            if pool
            else None
        )
        self.skip = (
            nn.Conv2d(n_in, n_out, kernel_size=1, bias=False) if n_in != n_out else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return F.relu(self.conv(x) + self.skip(x))


def _encoder(latent_channels: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [_conv(3, WIDTH), Block(WIDTH, WIDTH)]
    for stage in range(3):
        deepest = stage == 2
        layers.append(_conv(WIDTH, WIDTH, stride=2, bias=False))
        layers.extend(Block(WIDTH, WIDTH, pool=pool and deepest) for _ in range(3))
    layers.append(_conv(WIDTH, latent_channels))
    return nn.Sequential(*layers)  # indices 0..14


def _decoder(latent_channels: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [_SoftClamp(), _conv(latent_channels, WIDTH), nn.ReLU()]
    for stage in range(3):
        deepest = stage == 0
        layers.extend(Block(WIDTH, WIDTH, pool=pool and deepest) for _ in range(3))
        layers.extend([_Upsample(), _conv(WIDTH, WIDTH, bias=False)])
    layers.extend([Block(WIDTH, WIDTH), _conv(WIDTH, 3)])
    return nn.Sequential(*layers)  # indices 0..19


class TinyAutoencoder(nn.Module):
    """A TAESD-family autoencoder working in [0, 1] image space.

    ``encode(x01)`` maps ``[B,3,H,W]`` images in [0,1] (``H``, ``W`` multiples of 8) to
    latents ``[B,C,H/8,W/8]``; ``decode(z)`` maps latents back to images in [0,1]
    (clamped with ``torch.clamp``, which passes gradients inside the range and blocks them
    where the raw output is saturated); ``features(x01)`` returns the encoder activations
    after the Block groups of each resolution stage (1x, 1/2, 1/4, 1/8; 64 channels each)
    for a multi-layer perceptual distance. All three are differentiable w.r.t. their input.

    Inputs are cast to the dtype of the model's parameters, so a float32 model accepts
    float16 input (and vice versa); under ``torch.autocast`` the usual autocast rules apply.
    """

    name: str
    latent_channels: int

    def __init__(self, latent_channels: int = 4, pool: bool = False):
        super().__init__()
        if latent_channels < 1:
            raise ValueError(f"latent_channels must be positive, got {latent_channels}")
        self.latent_channels = int(latent_channels)
        self.pool = bool(pool)
        self.encoder = _encoder(self.latent_channels, self.pool)
        self.decoder = _decoder(self.latent_channels, self.pool)
        self.name = f"taesd:random(latent_channels={self.latent_channels}, pool={self.pool})"

    def extra_repr(self) -> str:
        return f"name={self.name!r}, latent_channels={self.latent_channels}, pool={self.pool}"

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _prepare(self, x01: torch.Tensor) -> torch.Tensor:
        if x01.ndim != 4 or x01.shape[1] != 3:
            raise ValueError(f"expected images of shape [B,3,H,W], got {tuple(x01.shape)}")
        return x01.to(self.dtype)

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        """Images ``[B,3,H,W]`` in [0,1] -> latents ``[B,C,H/8,W/8]``."""
        x = self._prepare(x01)
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(
                f"image height and width must be multiples of 8, got {tuple(x.shape[-2:])}"
            )
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``[B,C,h,w]`` -> images ``[B,3,8h,8w]`` in [0,1]."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"expected latents of shape [B,{self.latent_channels},h,w], got {tuple(z.shape)}"
            )
        return self.decoder(z.to(self.dtype)).clamp(0, 1)

    def features(self, x01: torch.Tensor) -> list[torch.Tensor]:
        """Encoder activations after the Block groups at 1x, 1/2, 1/4 and 1/8 resolution."""
        h = self._prepare(x01)
        feats: list[torch.Tensor] = []
        for i, layer in enumerate(self.encoder[: _STAGE_ENDS[-1] + 1]):
            h = layer(h)
            if i in _STAGE_ENDS:
                feats.append(h)
        return feats

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``decode(encode(x01))``."""
        return self.decode(self.encode(x01))


# --------------------------------------------------------------------------- loading


_EXTENSIONS = (".safetensors", ".pth")


def _pair_files(prefix: Path) -> tuple[Path, Path] | None:
    """The encoder/decoder files of ``prefix`` (safetensors preferred), if both exist."""
    for ext in _EXTENSIONS:
        enc = prefix.with_name(f"{prefix.name}_encoder{ext}")
        dec = prefix.with_name(f"{prefix.name}_decoder{ext}")
        if enc.is_file() and dec.is_file():
            return enc, dec
    return None


def _strip_part(name: str) -> str | None:
    """``taef2`` for ``taef2_encoder.pth`` / ``taef2_decoder.safetensors``; else None."""
    for part in ("_encoder", "_decoder"):
        for ext in _EXTENSIONS:
            if name.endswith(part + ext):
                return name[: -len(part + ext)]
    return None


def _resolve_pair(path: str | os.PathLike) -> tuple[Path, Path, Path]:
    """Return ``(prefix, encoder_file, decoder_file)`` for a prefix, folder or either file."""
    p = Path(os.path.expanduser(os.fspath(path)))
    expected = (
        "expected a prefix like '.../taef2' (reading taef2_encoder.pth and taef2_decoder.pth, or "
        ".safetensors), a folder holding exactly one *_encoder/*_decoder pair, or the path of either file"
    )
    if p.is_dir():
        prefixes = sorted({n for n in (_strip_part(f.name) for f in p.iterdir()) if n})
        pairs = [n for n in prefixes if _pair_files(p / n)]
        if len(pairs) == 1:
            prefix = p / pairs[0]
        elif not pairs:
            found = sorted(f.name for f in p.iterdir() if f.suffix in _EXTENSIONS)
            raise FileNotFoundError(
                f"no *_encoder.pth/*_decoder.pth pair (nor .safetensors) in folder {p}"
                + (f" (found: {', '.join(found)})" if found else " (it holds no weight files)")
                + f"; {expected}"
            )
        else:
            raise ValueError(
                f"folder {p} holds several TAESD pairs ({', '.join(pairs)}); "
                f"pass the prefix of one, e.g. {p / pairs[0]}"
            )
    else:
        stem = _strip_part(p.name)
        prefix = p.with_name(stem) if stem else p
    files = _pair_files(prefix)
    if files is None:
        ext = next((e for e in _EXTENSIONS if any(prefix.with_name(f"{prefix.name}{h}{e}").is_file() for h in ("_encoder", "_decoder"))), ".pth")
        missing = [str(prefix.with_name(f"{prefix.name}{h}{ext}")) for h in ("_encoder", "_decoder")]
        missing = [m for m in missing if not Path(m).is_file()]
        raise FileNotFoundError(
            f"TAESD weights not found: {' and '.join(missing)} (looked for {path!s}); {expected}"
        )
    return prefix, files[0], files[1]


def _read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(file))
        else:
            sd = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"could not read TAESD weights from {file}: {type(e).__name__}: {e}") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{file} does not hold a state dict of tensors")
    return {k: v.float() for k, v in sd.items()}


def _infer_variant(enc_sd: dict, dec_sd: dict, enc_file: Path, dec_file: Path) -> tuple[int, bool]:
    """Latent channels and pool flag from the encoder's last conv and the pool keys."""
    try:
        latent_channels = int(enc_sd["14.weight"].shape[0])
        dec_latent = int(dec_sd["1.weight"].shape[1])
    except KeyError as e:
        raise ValueError(
            f"{enc_file} / {dec_file} do not look like TAESD-family weights (missing key {e}); "
            "expected nn.Sequential state dicts with keys like '0.weight', '1.conv.0.weight'"
        ) from None
    if latent_channels != dec_latent:
        raise ValueError(
            f"encoder {enc_file} makes {latent_channels}-channel latents but decoder "
            f"{dec_file} expects {dec_latent}"
        )

    def has_pool(sd: Iterable[str]) -> bool:
        return any(".pool." in k for k in sd)

    enc_pool, dec_pool = has_pool(enc_sd), has_pool(dec_sd)
    if enc_pool != dec_pool:
        raise ValueError(
            f"encoder {enc_file} {'has' if enc_pool else 'lacks'} the GroupNorm pool branch but "
            f"decoder {dec_file} {'has' if dec_pool else 'lacks'} it"
        )
    return latent_channels, enc_pool


def load_taesd(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TinyAutoencoder:
    """Load a TAESD-family autoencoder (TAESD, TAESDXL, TAEF1, TAEF2, ...).

    ``path`` is a prefix such as ``".../taef2"`` (reading ``taef2_encoder.pth`` and
    ``taef2_decoder.pth``), a folder holding exactly one ``*_encoder.pth``/``*_decoder.pth``
    pair, or the path of either file. The number of latent channels and the presence of the
    GroupNorm pool branch are inferred from the state dicts, which must match the model
    exactly (strict loading).

    Returns a frozen model (``eval()``, ``requires_grad_(False)``) on ``device`` in ``dtype``
    (float32 by default, whatever the files store). Raises :class:`FileNotFoundError` naming
    the missing file(s), or :class:`ValueError` for unreadable or mismatched weights.
    """
    prefix, enc_file, dec_file = _resolve_pair(path)
    enc_sd, dec_sd = _read_state_dict(enc_file), _read_state_dict(dec_file)
    latent_channels, pool = _infer_variant(enc_sd, dec_sd, enc_file, dec_file)
    model = TinyAutoencoder(latent_channels=latent_channels, pool=pool)
    for part, sd, file in ((model.encoder, enc_sd, enc_file), (model.decoder, dec_sd, dec_file)):
        try:
            part.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ValueError(
                f"{file} does not match the TAESD layout "
                f"(latent_channels={latent_channels}, pool={pool}): {e}"
            ) from e
    model.name = f"taesd:{prefix}"
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def save_taesd(
    model: TinyAutoencoder, prefix: str | os.PathLike, dtype: torch.dtype | None = torch.float16
) -> None:
    """Write ``prefix_encoder.pth`` and ``prefix_decoder.pth`` in the published format.

    The files hold the encoder's and decoder's ``nn.Sequential`` state dicts on the CPU,
    in ``dtype`` (float16 like the released weights; ``None`` keeps the model's dtype).
    """
    prefix = Path(os.path.expanduser(os.fspath(prefix)))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for part, suffix in ((model.encoder, _ENCODER_SUFFIX), (model.decoder, _DECODER_SUFFIX)):
        sd = {
            k: (v.detach().to("cpu", dtype) if dtype is not None else v.detach().cpu()).clone()
            for k, v in part.state_dict().items()
        }
        torch.save(sd, prefix.with_name(prefix.name + suffix))
