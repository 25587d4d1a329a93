"""A sample portrait shipped with imguard, so the first run needs no photo of your own.

``astronaut.png``: NASA's portrait of astronaut Eileen Collins (public domain), as shipped by
scikit-image (``skimage.data.astronaut``), downscaled to 256x256. Source and licence:
``SOURCE.md`` next to it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EXAMPLE", "example_path"]

#: The sample portrait (256x256 RGB PNG).
EXAMPLE = Path(__file__).with_name("astronaut.png")


def example_path() -> Path:
    """The path of the sample portrait (``imguard protect --example`` protects it)."""
    return EXAMPLE
