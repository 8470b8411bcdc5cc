"""Random photometric (and one geometric) augmentations of an anomaly source, the numpy/scipy
stand-ins for the imgaug augmenters both originals draw 3 of: CLS-CNFs' 9
(``docs/original-code.md`` §1b: GammaContrast, MultiplyAndAddToBrightness,
EnhanceSharpness, AddToHueAndSaturation, Solarize, Posterize, Invert, Autocontrast, Equalize)
and PatchFlow's 10 (§1d names gen_validation_set.py's "augmented copy"; benchmarks/
patchflow.yaml: 3 of 10 photometric/geometric augmentations).

One function per kind of change, ``op(x, rng, **variant) -> x`` on ``float64 [H, W, 3]``;
where the two reimplementations differ, the difference is a keyword, and
:data:`CLSCNF_AUGMENTERS` / :data:`PATCHFLOW_AUGMENTERS` bind each method's:

=================  =====================================  =====================================
op                 CLS-CNFs                               PatchFlow
=================  =====================================  =====================================
gamma              ``clip(x) ** U(0.5, 2)`` per channel   same
brightness         ``x U(0.8, 1.2) + U(-30, 30) / 255``   same
sharpness          3x3 box blur ``b``:                    Gaussian blur ``b`` (sigma 1):
                   ``b + U(0, 2) (x - b)``                ``x + U(0.5, 2) (x - b)``
saturation         HSV: hue ``+U(-50, 50)/180``,          grey mix ``g + U(0, 2) (x - g)``
                   saturation ``+U(-50, 50)/255``         ``+ U(-0.2, 0.2)`` per channel
solarize           p = 0.5, threshold ``U(32, 128)/255``  same
posterize          ``2^U{1..8}`` levels, floor bins       same levels, nearest level
invert             ``1 - x``                              same
autocontrast       cutoff ``U(0, 20)`` % (percentiles)    no cutoff (min / max)
equalize           8-bit histogram CDF                    ranks (exact, no bins)
rotate             (not drawn)                            ``U(-45, 45)`` degrees, zeros outside
=================  =====================================  =====================================

:func:`augment` applies ``n_ops`` distinct ops in random order; PatchFlow clips to [0, 1]
after every op, CLS-CNFs only at the end (``clip_each``).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi


def gamma(x, rng):  # imgaug GammaContrast((0.5, 2.0), per_channel=True)
    return np.clip(x, 0, 1) ** rng.uniform(0.5, 2.0, size=3)


def brightness(x, rng):  # MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30))
    return x * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30) / 255.0


def sharpness(x, rng, blur: str = "box", factors: tuple[float, float] = (0.0, 2.0)):
    """pillike.EnhanceSharpness: ``box``: ``b + f (x - b)`` with a 3x3 box blur ``b``;
    ``gaussian``: unsharp masking ``x + f (x - b)`` with a sigma-1 Gaussian ``b``."""
    if blur == "box":
        blurred = ndi.uniform_filter(x, size=(3, 3, 1))
        return blurred + rng.uniform(*factors) * (x - blurred)
    return x + rng.uniform(*factors) * (x - ndi.gaussian_filter(x, sigma=(1, 1, 0)))


def saturation(x, rng, space: str = "hsv"):
    """AddToHueAndSaturation: ``hsv`` shifts hue (OpenCV's 180 = 360 deg) and saturation by
    ``U(-50, 50)``; ``gray`` scales the distance to the grey level by ``U(0, 2)`` and adds a
    colour offset ``U(-0.2, 0.2)`` per channel."""
    if space == "hsv":
        from skimage.color import hsv2rgb, rgb2hsv

        hsv = rgb2hsv(np.clip(x, 0, 1))
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-50, 50) / 180.0) % 1.0
        hsv[..., 1] = np.clip(hsv[..., 1] + rng.uniform(-50, 50) / 255.0, 0, 1)
        return hsv2rgb(hsv)
    gray = x.mean(axis=2, keepdims=True)
    return gray + rng.uniform(0.0, 2.0) * (x - gray) + rng.uniform(-0.2, 0.2, size=3)


def solarize(x, rng):  # Solarize(0.5, threshold=(32, 128))
    if rng.random() >= 0.5:
        return x
    t = rng.uniform(32, 128) / 255.0
    return np.where(x > t, 1.0 - x, x)


def posterize(x, rng, rounding: str = "floor"):
    """Posterize(nb_bits in 1..8): ``floor``: ``2^bits`` equal bins mapped to their index
    over ``levels - 1``; ``nearest``: the nearest of ``levels`` equally spaced values."""
    levels = 2 ** int(rng.integers(1, 9))
    if rounding == "floor":
        return np.floor(np.clip(x, 0, 1) * (levels - 1e-6)) / max(levels - 1, 1)
    return np.floor(np.clip(x, 0, 1) * (levels - 1) + 0.5) / (levels - 1)


def invert(x, rng):  # Invert()
    return 1.0 - x


def autocontrast(x, rng, cutoff: tuple[float, float] | None = (0.0, 20.0)):
    """pillike.Autocontrast: stretch each channel to [0, 1] between the percentiles
    ``cut / 2`` and ``100 - cut / 2``, ``cut ~ U(*cutoff)`` %; ``cutoff=None``: min and max,
    nothing drawn."""
    if cutoff is None:
        lo, hi = x.min(axis=(0, 1)), x.max(axis=(0, 1))
    else:
        cut = rng.uniform(*cutoff)
        lo = np.percentile(x, cut / 2, axis=(0, 1))
        hi = np.percentile(x, 100 - cut / 2, axis=(0, 1))
    return (x - lo) / np.maximum(hi - lo, 1e-6)


def equalize(x, rng, method: str = "histogram"):
    """pillike.Equalize: ``histogram``: each channel through the CDF of its 8-bit histogram;
    ``rank``: each value replaced by its rank over the channel, scaled to [0, 1]."""
    out = np.empty_like(x)
    if method == "histogram":
        q = np.clip(np.round(x * 255), 0, 255).astype(np.int64)
        for k in range(3):
            hist = np.bincount(q[..., k].ravel(), minlength=256)
            cdf = np.cumsum(hist).astype(np.float64)
            span = cdf[-1] - cdf[cdf > 0][0]
            lut = (cdf - cdf[cdf > 0][0]) / span if span > 0 else np.arange(256) / 255.0
            out[..., k] = np.clip(lut, 0, 1)[q[..., k]]
        return out
    for c in range(x.shape[2]):
        ranks = np.argsort(np.argsort(x[..., c], axis=None), axis=None)
        out[..., c] = (ranks / max(ranks.size - 1, 1)).reshape(x.shape[:2])
    return out


def rotate(x, rng):  # Affine(rotate=(-45, 45)), zeros outside
    return ndi.rotate(x, float(rng.uniform(-45, 45)), axes=(0, 1), reshape=False, order=1,
                      mode="constant", cval=0.0)


_p = functools.partial
#: CLS-CNFs' 9 (the original ``GenerateSyntheticTrainDataset.augmenters``), in its order.
CLSCNF_AUGMENTERS: tuple[Callable, ...] = (
    gamma, brightness, _p(sharpness, blur="box", factors=(0.0, 2.0)), _p(saturation, space="hsv"),
    solarize, _p(posterize, rounding="floor"), invert, _p(autocontrast, cutoff=(0.0, 20.0)),
    _p(equalize, method="histogram"))
#: PatchFlow's 10 (after gen_validation_set.py), in its order.
PATCHFLOW_AUGMENTERS: tuple[Callable, ...] = (
    gamma, brightness, _p(sharpness, blur="gaussian", factors=(0.5, 2.0)),
    _p(saturation, space="gray"), solarize, _p(posterize, rounding="nearest"), invert,
    _p(autocontrast, cutoff=None), _p(equalize, method="rank"), rotate)


def augment(image: np.ndarray, rng: np.random.Generator, ops: Sequence[Callable],
            n_ops: int = 3, clip_each: bool = False, dtype=np.float32) -> np.ndarray:
    """``n_ops`` distinct ``ops``, chosen by one ``rng.choice(len(ops), n_ops, replace=False)``
    and applied in that order to ``image`` (as float64); clipped to [0, 1] after every op
    (``clip_each``) or once at the end, returned as ``dtype``."""
    x = image.astype(np.float64)
    for index in rng.choice(len(ops), size=n_ops, replace=False):
        x = ops[int(index)](x, rng)
        if clip_each:
            x = np.clip(x, 0.0, 1.0)
    return np.clip(x, 0.0, 1.0).astype(dtype)


def augment_source(image: np.ndarray, rng: np.random.Generator, n_ops: int = 3) -> np.ndarray:
    """CLS-CNFs' source augmentation: ``n_ops`` of :data:`CLSCNF_AUGMENTERS`, float32."""
    return augment(image, rng, CLSCNF_AUGMENTERS, n_ops)


def patchflow_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PatchFlow's validation-source augmentation: 3 of :data:`PATCHFLOW_AUGMENTERS`,
    clipped after each, float64."""
    return augment(image, rng, PATCHFLOW_AUGMENTERS, 3, clip_each=True, dtype=np.float64)
