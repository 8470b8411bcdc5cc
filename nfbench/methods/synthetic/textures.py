"""Foreign anomaly sources of CLS-CNFs' "apparent" defects (§III-A, Fig. 1a): the DTD
textures the paper used (``docs/original-code.md`` §1b: "a DTD image
(``dtd/images/*/*.jpg``)") or, offline, procedural textures made from Perlin noise (§7: "the
Perlin noise itself (or a bundled texture) can be the source"). A source is a
``callable(size, rng) -> float32 [size, size, 3]`` in [0, 1].
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from nfbench.errors import UserError
from nfbench.methods.synthetic.perlin import perlin_noise


def procedural_texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """An offline stand-in for a DTD texture: multi-octave Perlin noise, stripes or blobs,
    mapped through two random colours. ``float32 [size, size, 3]``."""
    kind = int(rng.integers(3))
    if kind == 0:  # fractal noise
        base = 2 ** int(rng.integers(1, 4))
        field = sum(perlin_noise((size, size), (base * 2 ** o, base * 2 ** o), rng) / 2 ** o
                    for o in range(4))
    elif kind == 1:  # warped stripes
        yy, xx = np.mgrid[0:size, 0:size] / size
        angle, freq = rng.uniform(0, np.pi), rng.uniform(4, 24)
        warp = perlin_noise((size, size), (4, 4), rng) * rng.uniform(0, 2)
        field = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + warp)
    else:  # blobs
        field = ndi.gaussian_filter(rng.standard_normal((size, size)), sigma=rng.uniform(1, 6))
    field = (field - field.min()) / max(np.ptp(field), 1e-6)
    c0, c1 = rng.random(3), rng.random(3)
    return (c0 + field[..., None] * (c1 - c0)).astype(np.float32)


class DTDTextures:
    """The Describable Textures Dataset as an anomaly source (``<root>/images/*/*.jpg``,
    https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz)."""

    def __init__(self, root: str | Path):
        root = Path(root)
        candidates = [root / "images", root / "dtd" / "images"]
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is None:
            raise UserError(f"DTD not found under {root} (expected images/<class>/*.jpg); download "
                            "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz "
                            "and extract it there, or set foreign_source=procedural")
        self.paths = sorted(str(p) for p in folder.glob("*/*.jpg"))
        if not self.paths:
            raise UserError(f"no DTD images in {folder}")

    def __call__(self, size: int, rng: np.random.Generator) -> np.ndarray:
        return _load_resized(self.paths[int(rng.integers(len(self.paths)))], size)


@functools.lru_cache(maxsize=256)
def _load_resized(path: str, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
    array = array / 255.0
    array.setflags(write=False)
    return array
