"""2-D gradient (Perlin) noise and the thresholded Perlin mask, shared by CLS-CNFs' training
defects (:mod:`.defects`) and PatchFlow's validation anomalies (:mod:`.validation`).

Both originals take DRAEM's recipe (a lattice of random unit gradients, quintic fade, scale
``2^U{0..5}`` per axis, rotation ``U(-90, 90)``, threshold), see
``docs/original-code.md`` §1b "Synthetic defects" (AD-CLSCNFs
``synthetic_data_loader.py``: "perlin.py is DRAEM's", threshold 0.5) and §1d
(PatchFlow ``gen_validation_set.py``: "Perlin or Gaussian-blob masks"). The two
reimplementations here differ in float operations only, kept so that each method's numbers
stay what they were; they are parameters of one function:

=====================  ==================================  ==================================
parameter              CLS-CNFs (:data:`CLSCNF_PERLIN`)    PatchFlow (:data:`PATCHFLOW_PERLIN`)
=====================  ==================================  ==================================
``interpolation``      ``"offset"``: ``a + t (b - a)``     ``"weighted"``: ``a (1 - t) + b t``
                       (DRAEM's ``lerp_np``)
``dtype``              float32                             float64
mask ``threshold``     0.5 (§1b)                           ``U(0.6, 0.7)``, drawn after the
                                                           rotation (nfbench's choice; the
                                                           reference names no value)
mask ``pad_to``        1 (any shape)                       32 (noise of the next multiple of
                                                           32, cropped: a lattice that
                                                           divides the side)
lattice exponents      ``U{0..max_exponent-1}``,           ``U{0..5}``
                       ``max_exponent`` = 6 (§1b)
=====================  ==================================  ==================================

The lattice coordinates ``i * r / n`` of the CLS-CNFs version equal PatchFlow's former
``(i / (n // r)) % 1`` bit for bit whenever ``r`` divides ``n`` (both are the correctly
rounded value of the same fraction), which its padding guarantees.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

INTERPOLATIONS = ("offset", "weighted")

#: ``perlin_noise`` / ``pattern_mask`` keywords of CLS-CNFs' original reimplementation.
CLSCNF_PERLIN: dict = {"interpolation": "offset", "dtype": np.float32}
#: ``perlin_noise`` / ``pattern_mask`` keywords of PatchFlow's original reimplementation.
PATCHFLOW_PERLIN: dict = {"interpolation": "weighted", "dtype": np.float64}


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator,
                 interpolation: str = "offset", dtype=np.float32) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` with ``res = (ry, rx)`` lattice cells, scaled by
    sqrt(2) so that values lie in about [-1, 1]; one ``rng.random((ry + 1, rx + 1))`` draw (the
    gradient angles). ``interpolation`` and ``dtype``: see the module docstring."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    h, w = shape
    ry, rx = int(res[0]), int(res[1])
    angles = 2 * np.pi * rng.random((ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys, xs = np.arange(h) * ry / h, np.arange(w) * rx / w
    yi, xi = ys.astype(int), xs.astype(int)
    yf, xf = ys - yi, xs - xi

    def corner(oy: int, ox: int) -> np.ndarray:
        g = grads[yi + oy][:, xi + ox]  # [H, W, 2]
        return g[..., 0] * (yf - oy)[:, None] + g[..., 1] * (xf - ox)[None, :]

    u, v = _fade(xf)[None, :], _fade(yf)[:, None]
    if interpolation == "offset":
        top = corner(0, 0) + u * (corner(0, 1) - corner(0, 0))
        bottom = corner(1, 0) + u * (corner(1, 1) - corner(1, 0))
        noise = top + v * (bottom - top)
    else:
        top = corner(0, 0) * (1 - u) + corner(0, 1) * u
        bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
        noise = top * (1 - v) + bottom * v
    return (np.sqrt(2) * noise).astype(dtype)


def pattern_mask(shape: tuple[int, int], rng: np.random.Generator, max_exponent: int = 6,
                 threshold: float | tuple[float, float] = 0.5, *, pad_to: int = 1,
                 interpolation: str = "offset", dtype=np.float32) -> np.ndarray:
    """Thresholded Perlin noise (CLS-CNFs' ``M_p``): ``2^U{0..max_exponent-1}`` cells per
    axis, rotated by ``U(-90, 90)`` degrees (zeros fill the corners), ``> threshold``; a
    ``(low, high)`` threshold is drawn ``U(low, high)`` after the rotation. The noise is made
    at ``shape`` rounded up to a multiple of ``pad_to`` and cropped. ``bool [H, W]``.

    Draws, in order: the two exponents, the gradients, the angle, (the threshold)."""
    res = (2 ** int(rng.integers(0, max_exponent)), 2 ** int(rng.integers(0, max_exponent)))
    h, w = shape
    padded = (int(math.ceil(h / pad_to) * pad_to), int(math.ceil(w / pad_to) * pad_to))
    noise = perlin_noise(padded, res, rng, interpolation, dtype)
    if padded != (h, w):
        noise = noise[:h, :w]
    noise = ndi.rotate(noise, float(rng.uniform(-90, 90)), reshape=False, order=1,
                       mode="constant", cval=0.0)
    if isinstance(threshold, tuple):
        threshold = rng.uniform(*threshold)
    return noise > threshold
