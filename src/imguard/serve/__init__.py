"""``imguard serve``: protect photos from a local web page (see :mod:`imguard.serve.app`)."""

from .app import DIFF_GAIN, Limits, create_app, difference_image, serve

__all__ = ["DIFF_GAIN", "Limits", "create_app", "difference_image", "serve"]
