"""Options named for their audience: Python names in the API, flags on the command line.

Errors and warnings raised by the library name the Python option that fixes them, written as
:func:`python_option` writes it (``face_model='facenet:/path'``, ``require_face=True``). The
``imguard`` command renders the same text with :func:`cli_text`, which turns every such
mention of an option in :data:`CLI_FLAGS` into the flag (``--face-model facenet:/path``,
``--require-face``), so a CLI user is never told about a Python argument.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["CLI_FLAGS", "cli_text", "python_option", "install_warning_format"]

#: Python option name -> the command line's flag for it.
CLI_FLAGS: dict[str, str] = {
    "require_face": "--require-face",
    "face_model": "--face-model",
    "vae": "--vae",
    "features": "--features",
    "working_size": "--working-size",
    "eps": "--eps",
    "steps": "--steps",
    "step_size": "--step-size",
    "norm": "--norm",
    "budget": "--budget",
    "jnd_scale": "--jnd-scale",
    "strength": "--strength",
    "method": "--method",
    "eot": "--eot",
    "grad_repeats": "--grad-repeats",
    "device": "--device",
    "overwrite": "--overwrite",
    "editor": "--editor",
    "seed": "--seed",
}

_NOVALUE = object()


def python_option(name: str, value: Any = _NOVALUE) -> str:
    """How the library names an option in a message: ``name=value`` (``repr`` of the value)."""
    return name if value is _NOVALUE else f"{name}={value!r}"


_VALUE = r"""'(?P<sq>[^']*)'|"(?P<dq>[^"]*)"|(?P<const>True|False|None)\b|(?P<bare>[\w.:/~+-]+)"""
_PATTERN = re.compile(r"(?<![\w.-])(?P<name>" + "|".join(sorted(map(re.escape, CLI_FLAGS), key=len, reverse=True))
                      + r")=(?:" + _VALUE + ")")


def _flag(m: re.Match) -> str:
    flag = CLI_FLAGS[m.group("name")]
    const = m.group("const")
    if const == "True":
        return flag
    if const == "False":
        return f"without {flag}"
    if const == "None":
        return f"without {flag}"
    value = next(v for v in (m.group("sq"), m.group("dq"), m.group("bare")) if v is not None)
    return f"{flag} {value}" if " " not in value else f"{flag} '{value}'"


_CLI_ASIDE = re.compile(r"\s*\(CLI: [^)]*\)")


def cli_text(text: str) -> str:
    """``text`` with every ``option=value`` of :data:`CLI_FLAGS` written as its command-line flag.

    A message may spell both forms, ``editor='/p' (CLI: --editor /p)``, for API users who also
    use the command line; on the command line only the flag is left."""
    return _PATTERN.sub(_flag, _CLI_ASIDE.sub("", str(text)))


def install_warning_format() -> None:
    """imguard's own warnings (messages starting ``imguard:``) print as one line,
    ``imguard: warning: ...``, without Python's category and source line; every other
    warning keeps the format it had."""
    import warnings

    previous = warnings.formatwarning
    if getattr(previous, "_imguard", False):
        return

    def formatwarning(message, category, filename, lineno, line=None):
        text = str(message)
        if text.startswith("imguard:"):
            return "imguard: warning:" + text[len("imguard:"):] + "\n"
        return previous(message, category, filename, lineno, line)

    formatwarning._imguard = True  # type: ignore[attr-defined]
    warnings.formatwarning = formatwarning
