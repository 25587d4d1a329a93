"""Compatibility: the evaluation harness is the package :mod:`imguard.evaluation`; its command
line (``imguard eval``) is in :mod:`imguard.cli`. ``python -m imguard.evaluate`` still runs it."""

from .cli import add_eval_arguments as add_arguments  # noqa: F401
from .cli import eval_main as main  # noqa: F401
from .cli import run_eval as run_from_args  # noqa: F401
from .evaluation import *  # noqa: F401,F403
from .evaluation import __all__ as _all

__all__ = [*_all, "add_arguments", "main", "run_from_args"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
