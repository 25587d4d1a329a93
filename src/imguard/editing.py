"""Compatibility: the editor moved to :mod:`imguard.evaluation.editor` (this name is that module)."""

import sys

from .evaluation import editor as _editor

sys.modules[__name__] = _editor
