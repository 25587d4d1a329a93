"""The evaluation harness: does a protection survive editing, and what does it cost?

    from imguard.evaluation import evaluate
    report = evaluate(
        "photos/",                                   # originals (any image format)
        {"facelock": "out/facelock/", "encoder": "out/encoder/"},   # protected, matched by stem
        out_dir="eval/",
        face_model="sface",                          # the recognizer that judges identity
        autoencoders={"taef2": "taesd:/path/taef2"}, # edit proxies: D(E(x)) round trips
        attacked={"face_model": "facenet", "vae": "taesd:/path/taef2"},
        purifications="all",
        editor=None,                                 # or "timbrooks/instruct-pix2pix" / a folder
    )

For every image and every *condition* (a purification followed by an edit proxy: an
autoencoder round trip, or the real InstructPix2Pix editor with one of the paper's prompts)
the clean original and each protected version go through the same condition; then

* identity: the recognizer's cosine similarity between the clean original and each edited
  image, faces detected anew on the edited image. The protection succeeds on an image when
  the similarity is below the recognizer's threshold, or when no face is found at all;
* fidelity of the edit (the FaceLock paper's numbers): PSNR, SSIM, LPIPS between the edit of
  the clean image and the edit of the protected one, and CLIP-I (CLIP image similarity
  between the clean original and each edit) where CLIP loads.

Imperceptibility (max |delta| in /255, PSNR, SSIM, LPIPS between original and protected) is
measured at the native size. ``none`` (the original itself as the "protected" image) is
evaluated alongside as the no-protection baseline.

Every number states the models that judged it and whether the protection attacked them
(``attacked=``, compared by name; "not stated" when the caller did not say). Outputs: one
JSON (every raw number, versions, seeds, command line), a Markdown table (mean +- std per
method and condition) and a PNG grid per image.

The package, one job per module: :mod:`~imguard.evaluation.inputs` (pairing by stem),
:mod:`~imguard.evaluation.judging` (which models judged, whether they were attacked),
:mod:`~imguard.evaluation.conditions` (purifications and edit proxies),
:mod:`~imguard.evaluation.harness` (:func:`evaluate`), :mod:`~imguard.evaluation.report`
(JSON and Markdown), :mod:`~imguard.evaluation.grids` (PNG grids),
:mod:`~imguard.evaluation.editor` (the real InstructPix2Pix editor and FaceLock's prompts),
and :mod:`imguard.metrics` (PSNR, SSIM, LPIPS, CLIP-I, identity; beside the API, whose check uses it). The command line
(``imguard eval``) lives in :mod:`imguard.cli`.
"""

from .. import metrics
from . import editor
from .conditions import Condition, Proxy
from .grids import GRID_LABELS, GRID_TILE, save_grid
from .harness import evaluate
from .inputs import BASELINE, CLEAN, DEFAULT_SIZE, MissingImageError, list_images, match_inputs
from .judging import same_model
from .report import CONDITION_METRICS, IMPERCEPTIBILITY_METRICS, EvalReport, stats, summarize, summarize_images

__all__ = [
    "BASELINE", "CLEAN", "CONDITION_METRICS", "Condition", "DEFAULT_SIZE", "EvalReport", "GRID_LABELS", "GRID_TILE",
    "IMPERCEPTIBILITY_METRICS", "MissingImageError", "Proxy", "editor", "evaluate", "list_images", "match_inputs",
    "metrics", "same_model", "save_grid", "stats", "summarize", "summarize_images",
]
