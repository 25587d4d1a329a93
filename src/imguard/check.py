"""The protection check that comes with every result.

After protecting, imguard asks a recognizer that was **not** attacked whether the person in the
protected photo, after a round trip through an autoencoder of the SD 1.x latent space (what a
diffusion editor sees), is still the person of the original. The judge is dlib's ResNet when
``imguard[transfer]`` is installed (never attacked by imguard), else an offline recognizer left
out of the attacked ensemble; with none available the check says so and judges with an
attacked one, labelled as such.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from .models import FaceDetector, ModelLoadError, ModelSpec, autoencoders_of, load_autoencoder, load_face_recognizer, members_of

__all__ = ["CHECK_AUTOENCODER", "JUDGE_ORDER", "ProtectionCheck", "Checker", "LazyChecker"]

#: The autoencoder the check round-trips through (SD 1.x latent space, bundled).
CHECK_AUTOENCODER = "taesd"
#: Judges tried in order; the first that was not attacked and loads is used.
JUDGE_ORDER = ("dlib", "faceres", "facenet", "mobilefacenet", "sface")


@dataclass
class ProtectionCheck:
    """Identity similarity of the protected photo's round trip to the original, for one image."""

    judge: str  #: the recognizer that judged
    judge_attacked: bool  #: whether the protection attacked that recognizer
    autoencoder: str  #: the round trip the protected photo went through
    autoencoder_attacked: bool
    similarity: float | None  #: cosine similarity to the original (None: no face found)
    threshold: float  #: the judge's "same person" threshold
    identity_lost: bool  #: similarity below threshold, or no face found after the round trip

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        sim = "no face found" if self.similarity is None else f"similarity {self.similarity:.2f}"
        verdict = "identity hidden" if self.identity_lost else "still recognisable"
        return (f"check: {verdict} ({sim}, threshold {self.threshold:.2f}) by {self.judge} "
                f"({'attacked' if self.judge_attacked else 'not attacked'}) after a {self.autoencoder} round trip "
                f"({'attacked' if self.autoencoder_attacked else 'not attacked'})")


def _labels(model: Any) -> set[str]:
    """The labels (:attr:`ModelSpec.label`) of a model's members."""
    members, _ = members_of(model)
    return {ModelSpec.of(m).label for m in members}


class Checker:
    """Loads the judge and the round-trip autoencoder once; checks batches of results."""

    def __init__(self, device: torch.device | str = "cpu", judge: Any = "auto", detector: Any = None):
        self.device = torch.device(device)
        self.judge_spec = judge
        self.detector = detector
        self._judges: dict[frozenset, Any] = {}
        self._autoencoder = None

    def _judge_for(self, attacked: set[str]):
        key = frozenset(attacked)
        if key in self._judges:
            return self._judges[key]
        if self.judge_spec != "auto":
            rec = load_face_recognizer(self.judge_spec, self.device)
            self._judges[key] = rec
            return rec
        fallback = None
        for name in JUDGE_ORDER:
            try:
                rec = load_face_recognizer(name, self.device)
            except (ModelLoadError, ImportError, OSError, ValueError):
                continue
            if name not in attacked:
                self._judges[key] = rec
                return rec
            fallback = fallback or rec
        if fallback is None:
            raise ModelLoadError("no recognizer could load for the protection check; install imguard[transfer] for dlib, or fetch one with `imguard models fetch faceres`")
        self._judges[key] = fallback
        return fallback

    def check(self, original: torch.Tensor, protected: torch.Tensor, face_model: Any, vae: Any) -> list[ProtectionCheck]:
        """Checks for a batch: ``original`` and ``protected`` [B,3,H,W] in [0,1] (H, W multiples of 8)."""
        from .metrics import IdentityMetric

        attacked = _labels(face_model)
        judge = self._judge_for(attacked)
        judge_name = str(getattr(judge, "name", "?"))
        if self._autoencoder is None:
            self._autoencoder = load_autoencoder(CHECK_AUTOENCODER, self.device)
        ae_attacked = any(ModelSpec.of(a).same_as(CHECK_AUTOENCODER) for a in autoencoders_of(vae))
        if self.detector is None:
            self.detector = FaceDetector(self.device)
        metric = IdentityMetric(judge, self.detector)
        with torch.no_grad():
            ref, had_face = metric.embed(original.to(self.device))
            trip = self._autoencoder.decode(self._autoencoder.encode(protected.to(self.device))).clamp(0, 1)
            sim, _ = metric.similarity(ref, trip)
        out = []
        short = ModelSpec.of(judge_name).label
        for s, face in zip(sim.tolist(), had_face.tolist()):
            ok = s == s  # not NaN
            out.append(ProtectionCheck(
                judge=short, judge_attacked=short in attacked,
                autoencoder=CHECK_AUTOENCODER, autoencoder_attacked=ae_attacked,
                similarity=float(s) if ok else None, threshold=metric.threshold,
                # no face in the original: nothing to judge; none left after the round trip: hidden
                identity_lost=bool(face) and ((not ok) or s < metric.threshold),
            ))
        return out


class LazyChecker:
    """A protector's check: the :class:`Checker` made on first use, with the judge named by
    ``judge`` (a spec, or "auto") and the protector's MTCNN detector when its models use one."""

    def __init__(self, device: torch.device | str, judge: Any = "auto"):
        self.device, self.judge, self._checker = device, judge, None

    def __call__(self, original: torch.Tensor, protected: torch.Tensor, models: Any) -> list[ProtectionCheck] | None:
        """:meth:`Checker.check` with the attacked models of ``models`` (a
        :class:`~imguard.models.Models`); None when the models have no detector (tests)."""
        if self._checker is None:
            detector = models.detector if models.specs["detector"] == "mtcnn" else None
            self._checker = Checker(self.device, judge=self.judge, detector=detector)
        if models.detector is None:  # no detector (tests): the check needs faces, skip it
            return None
        return self._checker.check(original, protected, models.recognizer, models.autoencoder)
