"""Protection methods, one small file each, registered by name.

A new method: write ``prepare`` and ``objective``, wrap them in :class:`Method` and call
:func:`register`. See ``docs/methods.md``.
"""

from . import encoder_attacks, facelock  # noqa: F401 - registers the built-in methods
from .base import ENGINE_OPTIONS, Method, Options, get_method, method_names, options_markdown, register, unregister

__all__ = ["ENGINE_OPTIONS", "Method", "Options", "get_method", "method_names", "options_markdown", "register", "unregister"]
