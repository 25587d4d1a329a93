"""What JPEG encoding does to a perturbation of the size of a protection budget (docs/bulk.md).

Usage: python tools/jpeg_effect.py   (the bundled sample portrait, a +-6/255 sign pattern, Pillow JPEG)
"""

import io, numpy as np
from PIL import Image
x = np.asarray(Image.open("src/imguard/samples/astronaut.png").convert("RGB")).astype(int)
rng = np.random.default_rng(0)
xp = np.clip(x + rng.choice([-6, 6], x.shape), 0, 255)  # a +-6/255 sign pattern: the medium budget's size
for q in (95, 90, 75):
    b = io.BytesIO(); Image.fromarray(xp.astype(np.uint8)).save(b, "JPEG", quality=q); b.seek(0)
    y = np.asarray(Image.open(b).convert("RGB")).astype(int)
    d = y - x; e = y - xp
    print(f"q{q}: |jpeg(x')-x| max {np.abs(d).max()}/255 mean {np.abs(d).mean():.2f}/255; the perturbation kept: corr {np.corrcoef((xp-x).ravel(), d.ravel())[0,1]:.2f}; encoding error max {np.abs(e).max()} mean {np.abs(e).mean():.2f}")
