"""Conditions: a purification followed by an edit proxy (an autoencoder round trip or the real editor)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .editor import EditPrompt
from ..models import load_autoencoder
from ..transforms import Purification

from .judging import _attacked_flag

@dataclass
class Proxy:
    """An edit proxy: an autoencoder round trip or the real editor."""

    label: str
    kind: str  #: "autoencoder" or "editor"
    spec: str
    name: str
    run: Callable[[torch.Tensor, EditPrompt | None, int], torch.Tensor]
    info: dict = field(default_factory=dict)


def _spec_text(spec: Any) -> str:
    return spec if isinstance(spec, str) else getattr(spec, "name", type(spec).__name__)


def _label_for(spec: Any) -> str:
    """A short label: the last path / hub-id part (``taesd:/w/taef2`` -> ``taef2``)."""
    s = _spec_text(spec).rstrip("/")
    return (s.split(":", 1)[1] if s.startswith("taesd:") else s).replace("\\", "/").split("/")[-1] or s


def _autoencoder_label(spec: Any) -> str:
    """Like :func:`_label_for`, marked ``-vae`` where the name does not say so, so that an
    editor's VAE (``instruct-pix2pix-vae``) is not confused with the editor itself."""
    label = _label_for(spec)
    plain = isinstance(spec, str) and spec.startswith("taesd:") or "vae" in label.lower() or not isinstance(spec, str)
    return label if plain else f"{label}-vae"


def _autoencoder_specs(autoencoders: Any) -> list[tuple[str, Any]]:
    """None, a spec, a list of specs / (label, spec) pairs, or a dict label -> spec."""
    if autoencoders is None:
        return []
    if isinstance(autoencoders, Mapping):
        items = list(autoencoders.items())
    elif isinstance(autoencoders, (list, tuple)):
        items = [a if isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], str) else (_autoencoder_label(a), a) for a in autoencoders]
    else:
        items = [(_autoencoder_label(autoencoders), autoencoders)]
    labels = [lab for lab, _ in items]
    dup = {lab for lab in labels if labels.count(lab) > 1}
    if dup:
        raise ValueError(f"two autoencoders share the label(s) {sorted(dup)}; give labels: autoencoders={{'label': spec, ...}}")
    return items


def _autoencoder_proxy(label: str, spec: Any, device: torch.device) -> Proxy:
    ae = load_autoencoder(spec, device)

    @torch.no_grad()
    def run(x: torch.Tensor, prompt: EditPrompt | None, seed: int) -> torch.Tensor:
        return ae.decode(ae.encode(x.to(device))).float().clamp(0, 1).cpu()

    return Proxy(label, "autoencoder", _spec_text(spec), getattr(ae, "name", _spec_text(spec)), run)


def _editor_proxy(spec: Any, device: torch.device, settings: dict) -> Proxy:
    from .editor import load_editor

    editor = load_editor(spec, device=device, **settings)

    def run(x: torch.Tensor, prompt: EditPrompt | None, seed: int) -> torch.Tensor:
        return editor.edit(x.to(device), prompt.text, seed).cpu()

    return Proxy(_label_for(editor.name), "editor", _spec_text(spec), editor.name, run, info=editor.settings())


@dataclass
class Condition:
    purification: Purification
    proxy: Proxy
    prompt: EditPrompt | None = None



def _conditions(purifs, ae_proxies, editor_proxy, editor_purifs, prompts) -> list[Condition]:
    conds = [Condition(p, prox) for p in purifs for prox in ae_proxies]
    if editor_proxy is not None:
        conds += [Condition(p, editor_proxy, pr) for p in editor_purifs for pr in prompts]
    return conds


def _grid_condition(conds: list[Condition], attacked: dict) -> Condition | None:
    """The condition the per-image grid shows: the editor's first prompt, else the attacked
    autoencoder (else the first one), without purification."""
    plain = [c for c in conds if c.purification.name == "none"] or conds
    for c in plain:
        if c.proxy.kind == "editor":
            return c
    for c in plain:
        if any(_attacked_flag(a, "vae", c.proxy.spec, c.proxy.name) for a in attacked.values() if a):
            return c
    return plain[0] if plain else None


