"""imguard: protect portrait photos from malicious diffusion-based editing.

    import imguard
    protected = imguard.protect(img)                      # the medium preset, invisible (perceptual budget)
    protected = imguard.protect(img, "photoguard", eps=8) # eps in /255 pixel units
    imguard.visibility(img, protected)                    # PSNR, SSIM, LPIPS, flat-region change
    imguard.methods()                                     # what is available
"""

from .api import ItemError, Protector, ProtectionResult, methods, protect
from .budget import Budget
from .io import ImageReadError
from .hints import install_warning_format
from .models import ModelLoadError, Models, NoFaceError
from .visibility import Visibility, visibility  # the function shadows the submodule's name on purpose

install_warning_format()  # imguard's warnings: one line, no source line

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "ImageReadError",
    "ItemError",
    "ModelLoadError",
    "Models",
    "NoFaceError",
    "Protector",
    "ProtectionResult",
    "Visibility",
    "__version__",
    "methods",
    "protect",
    "visibility",
]
