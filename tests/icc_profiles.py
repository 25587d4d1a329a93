"""Build small ICC v2 matrix/TRC RGB profiles (Adobe-RGB-like, Display-P3-like) for tests.

Pillow's ImageCms can only create sRGB, LAB and XYZ profiles, so the wide-gamut ones are
written here from the ICC specification (header, tag table, desc/wtpt/XYZ/curv tags).
"""

from __future__ import annotations

import struct

D50 = (0.9642, 1.0, 0.8249)

#: D50-adapted colorants (the rXYZ/gXYZ/bXYZ tags of the published profiles)
ADOBE_RGB = ((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446))
DISPLAY_P3 = ((0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419), (0.1571, 0.0666, 0.7841))


def _s15(v: float) -> bytes:
    return struct.pack(">i", int(round(v * 65536)))


def _xyz(v) -> bytes:
    return b"XYZ " + b"\0" * 4 + b"".join(_s15(c) for c in v)


def _curve(gamma: float) -> bytes:
    return b"curv" + b"\0" * 4 + struct.pack(">I", 1) + struct.pack(">H", int(round(gamma * 256))) + b"\0\0"


def _desc(text: str) -> bytes:
    a = text.encode("ascii") + b"\0"
    return b"desc" + b"\0" * 4 + struct.pack(">I", len(a)) + a + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67


def _text(text: str) -> bytes:
    return b"text" + b"\0" * 4 + text.encode("ascii") + b"\0"


def matrix_profile(description: str, colorants=ADOBE_RGB, gamma: float = 2.2) -> bytes:
    """An RGB display profile: the three colorants (XYZ, D50) and one gamma curve."""
    curve = _curve(gamma)
    tags = [(b"desc", _desc(description)), (b"cprt", _text("test profile, no copyright")), (b"wtpt", _xyz(D50)),
            (b"rXYZ", _xyz(colorants[0])), (b"gXYZ", _xyz(colorants[1])), (b"bXYZ", _xyz(colorants[2])),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        while (offset + len(data)) % 4:
            data += b"\0"
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    while len(data) % 4:
        data += b"\0"
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntr" + b"RGB " + b"XYZ "
              + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + b"\0" * 4 + struct.pack(">I", 0) + b"\0" * 4 * 2
              + b"\0" * 8 + struct.pack(">I", 0) + b"".join(_s15(c) for c in D50) + b"\0" * 4)
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + data
