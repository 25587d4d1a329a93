"""The real editor of the FaceLock evaluation: InstructPix2Pix, and the paper's 25 prompts.

    editor = load_editor("timbrooks/instruct-pix2pix", device="cuda")   # or a local folder
    edited = editor.edit(images01, "Let the person wear sunglasses", seed=0)

Settings follow the FaceLock authors' code: 50 denoising steps, image guidance 1.5, text
guidance 7.5, the Euler-ancestral scheduler, and a fixed seed per edit (every image of a
batch gets its own ``torch.Generator`` seeded with ``seed``, so an image's edit does not
depend on what else is in the batch, and a clean and a protected image see the same noise).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ..models import ModelLoadError
from ..runtime import resolve_device

DEFAULT_EDITOR = "timbrooks/instruct-pix2pix"

#: The 25 editing instructions of FaceLock (Wang et al., 2024), verbatim from the authors'
#: repository (github.com/taco-group/FaceLock, ``utils.py``: ``edit_prompts``), including
#: their spelling ("tatto", "mustach"), which the published numbers were computed with.
#: The repository lists them as one numbered dict; the split into the paper's three
#: categories is ours, by reading: indices 0-9 change facial features, 10-17 add
#: accessories, 18-24 change the background or scene.
FACELOCK_PROMPTS: dict[str, tuple[str, ...]] = {
    "facial_features": (
        "Turn the person's hair pink",
        "Let the person turn bald",
        "Let the person have a tatto",
        "Let the person wear purple makeup",
        "Let the person grow a mustach",
        "Turn the person into a zombie",
        "Change the skin color to Avatar blue",
        "Add elf-like ears",
        "Add large vampire fangs",
        "Apply Goth style makeup",
    ),
    "accessories": (
        "Let the person wear a police suit",
        "Let the person wear a bowtie",
        "Let the person wear a helmet",
        "Let the person wear sunglasses",
        "Let the person wear earrings",
        "Let the person smoke a cigar",
        "Place a headband in the hair",
        "Place a tiara on the top of the head",
    ),
    "background": (
        "Let it be snowy",
        "Change the background to a beach",
        "Add a city skyline background",
        "Add a forest background",
        "Change the background to a desert",
        "Set the background in a library",
        "Let the person stand under the moon",
    ),
}


@dataclass(frozen=True)
class EditPrompt:
    index: int  #: position in the authors' list (0..24)
    category: str
    text: str


EDIT_PROMPTS: tuple[EditPrompt, ...] = tuple(
    EditPrompt(i, cat, text)
    for i, (cat, text) in enumerate((c, t) for c, texts in FACELOCK_PROMPTS.items() for t in texts)
)


def select_prompts(n: int | str | None = None) -> list[EditPrompt]:
    """``n`` of the 25 prompts spread over the three categories (round robin, in list
    order), returned in index order; ``None``/``"all"``: all 25."""
    if n is None or (isinstance(n, str) and n.lower() == "all"):
        return list(EDIT_PROMPTS)
    n = int(n)
    if not 1 <= n <= len(EDIT_PROMPTS):
        raise ValueError(f"the number of prompts must be between 1 and {len(EDIT_PROMPTS)}, got {n}")
    queues = [[p for p in EDIT_PROMPTS if p.category == c] for c in FACELOCK_PROMPTS]
    picked: list[EditPrompt] = []
    while len(picked) < n:
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return sorted(picked, key=lambda p: p.index)


class InstructPix2PixEditor:
    """A diffusers ``StableDiffusionInstructPix2PixPipeline`` behind ``edit(images01, prompt, seed)``."""

    def __init__(
        self,
        pipe: Any,
        name: str = "instruct-pix2pix",
        num_inference_steps: int = 50,
        image_guidance_scale: float = 1.5,
        guidance_scale: float = 7.5,
    ):
        self.pipe = pipe
        self.name = name
        self.num_inference_steps = int(num_inference_steps)
        self.image_guidance_scale = float(image_guidance_scale)
        self.guidance_scale = float(guidance_scale)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.pipe, "device", "cpu"))

    def settings(self) -> dict:
        return {
            "model": self.name,
            "num_inference_steps": self.num_inference_steps,
            "image_guidance_scale": self.image_guidance_scale,
            "guidance_scale": self.guidance_scale,
            "scheduler": type(getattr(self.pipe, "scheduler", None)).__name__,
            "generator": "one CPU torch.Generator per image, seeded with the edit's seed",
        }

    @torch.no_grad()
    def edit(self, images01: torch.Tensor, prompt: str, seed: int) -> torch.Tensor:
        """Edit a batch ``[B,3,H,W]`` in [0,1] (H, W multiples of 8) with one instruction."""
        if images01.dim() != 4 or images01.shape[1] != 3:
            raise ValueError(f"edit expects images shaped [B,3,H,W] in [0,1], got {tuple(images01.shape)}")
        B = images01.shape[0]
        gens = [torch.Generator().manual_seed(int(seed)) for _ in range(B)]
        out = self.pipe(
            prompt=[prompt] * B,
            image=images01.detach().float().clamp(0, 1).to(self.device),
            num_inference_steps=self.num_inference_steps,
            image_guidance_scale=self.image_guidance_scale,
            guidance_scale=self.guidance_scale,
            generator=gens,
            output_type="pt",
        ).images
        return out.float().clamp(0, 1).to(images01.device)

    __call__ = edit


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """``dtype=`` where diffusers has it (it deprecated ``torch_dtype``), else ``torch_dtype=``."""
    try:
        from diffusers.utils import deprecation_utils

        if hasattr(deprecation_utils, "_resolve_dtype"):
            return {"dtype": dtype}
    except ImportError:  # pragma: no cover
        pass
    return {"torch_dtype": dtype}


def _load_pipeline(spec: str, dtype: torch.dtype):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    path = os.path.expanduser(spec)
    local = os.path.isdir(path)
    if not local and spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"editor folder {spec!r} does not exist")
    from ..models.hub import hub_offline

    offline = {"local_files_only": True} if hub_offline() and not local else {}
    try:
        return StableDiffusionInstructPix2PixPipeline.from_pretrained(
            path if local else spec, safety_checker=None, requires_safety_checker=False, **_dtype_kwarg(dtype), **offline
        )
    except Exception as e:  # noqa: BLE001 - hub and file errors vary; re-raised with advice
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        where = f"the folder {path}" if local else f"the Hugging Face hub id {spec!r}"
        raise ModelLoadError(
            f"could not load the InstructPix2Pix editor from {where} ({type(e).__name__}: {first}). "
            "Without network access, download the pipeline elsewhere (e.g. `huggingface-cli download "
            f"{DEFAULT_EDITOR} --local-dir /path/to/instruct-pix2pix`) and pass the folder: "
            "editor='/path/to/instruct-pix2pix' (CLI: --editor /path/to/instruct-pix2pix)."
        ) from e


def load_editor(
    spec: Any = DEFAULT_EDITOR,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    scheduler: str | None = "euler_ancestral",
    **settings: Any,
) -> InstructPix2PixEditor:
    """An :class:`InstructPix2PixEditor` from a hub id, a local pipeline folder, a pipeline
    object, or an editor (returned as is). ``dtype``: fp16 on CUDA, fp32 elsewhere by default.
    ``scheduler="euler_ancestral"`` swaps in the scheduler the FaceLock authors used (None
    keeps the pipeline's own). ``settings``: ``num_inference_steps``, ``image_guidance_scale``,
    ``guidance_scale``. Raises :class:`~imguard.models.ModelLoadError` when it cannot load."""
    if isinstance(spec, InstructPix2PixEditor):
        return spec
    dev = resolve_device(device)
    if dtype is None:
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
    if isinstance(spec, str):
        pipe, name = _load_pipeline(spec, dtype), spec
    elif hasattr(spec, "unet") and callable(spec):
        pipe, name = spec, getattr(spec, "name_or_path", None) or type(spec).__name__
    else:
        raise TypeError(f"editor must be a hub id, a local folder or an InstructPix2Pix pipeline, got {type(spec).__name__}")
    pipe = pipe.to(dev)
    if scheduler == "euler_ancestral":
        from diffusers import EulerAncestralDiscreteScheduler

        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    elif scheduler is not None:
        raise ValueError(f"unknown scheduler {scheduler!r}; use 'euler_ancestral' or None (keep the pipeline's)")
    return InstructPix2PixEditor(pipe, name=str(name), **settings)


__all__ = [
    "DEFAULT_EDITOR", "EDIT_PROMPTS", "EditPrompt", "FACELOCK_PROMPTS", "InstructPix2PixEditor",
    "load_editor", "select_prompts",
]
