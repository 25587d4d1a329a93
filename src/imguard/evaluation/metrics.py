"""The evaluation's metrics: :mod:`imguard.metrics` (kept beside the API, whose protection check
uses it; the API never imports :mod:`imguard.evaluation`). This name is that module."""

import sys

from .. import metrics as _metrics

sys.modules[__name__] = _metrics
