"""Synthetic defects of CLS-CNFs (Oh & Kim 2024, §III-A, Fig. 1), deterministic from a numpy
``Generator``.

A defect is made in five steps:

1. a *pattern mask* ``M_p``: Perlin noise with lattice resolution ``2^a x 2^b``
   (``a, b ~ U{0..5}``), rotated by ``U(-90, 90)`` degrees, thresholded at 0.5 (DRAEM's recipe,
   which AD-CLSCNFs' ``synthetic_data_loader.py`` reuses);
2. an *object mask* ``M_o`` from the grayscale normal image: 3x3 Gaussian blur, Otsu threshold,
   the dark side (or the bright side for categories whose object is brighter than the
   background), 3x3 opening and closing, Gaussian blur sigma 2, ``2m - 1`` clipped, holes
   filled (:data:`OBJECT_MASK_RULES` holds the original per-category exceptions);
3. the *defect mask* ``M_d = [M_p * M_o > 0]``;
4. a *source* image: with probability ``in_domain_prob`` another normal image of the same
   category (subtle defects, Fig. 1b), else a foreign texture (apparent defects, Fig. 1a: DTD
   in the paper, procedural textures offline), each passed through 3 of 9 random photometric
   augmentations; it is blended in with ``beta ~ U(0, 0.8)``:
   ``x_s = x (1 - M_d) + M_d ((1 - beta) src + beta x)``;
5. a *soft label* from the colour difference ``d = mean_c(x_s - x)``: ``sigmoid(5 d)`` per pixel
   of ``M_d`` (the paper's text, ``soft_label="pixel"``) or one value per image, the mean of
   ``sigmoid(5 d)`` over the defect pixels with ``d != 0`` (the original code,
   ``soft_label="image"``). The difference is signed, as in both: a defect darker than the
   image gets a label below 0.5. Outside ``M_d`` the label is 0; an image whose ``M_d`` is
   empty (no Perlin blob, or all of it in the background) is a normal sample.

Images are ``float32 [H, W, 3]`` in [0, 1] throughout.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from nfbench.errors import UserError

# ------------------------------------------------------------------------------------------
# object-mask rules of the original code (AD-CLSCNFs custom_datasets/synthetic_data_loader.py)
# ------------------------------------------------------------------------------------------

#: Objects brighter than their background (the code's ``reverse_mask_cls``).
_BRIGHT = ("cable", "hazelnut", "metal_nut", "pill", "toothbrush", "01", "03")
#: No object mask, defects anywhere (the code's ``no_bg_use_cls``).
_WHOLE_IMAGE = ("transistor", "tile", "wood", "carpet", "leather", "02")
#: No hole filling (the code's ``no_fill_hole_cls``).
_NO_FILL = ("grid", "metal_nut", "01")
#: Every other MVTec AD category: a dark object, holes filled (the code's default).
_DARK = ("bottle", "capsule", "grid", "screw", "zipper")
#: The offline demo categories (nfbench.datasets.demo): two textures, a bright coin on a dark
#: plate and a bright printed disc on a grey plate. Not in the original; chosen the same way
#: the original's lists were.
_DEMO = {"brick": "none", "gravel": "none", "coin": "bright", "logo": "bright"}

OBJECT_MASK_RULES: dict[str, tuple[str, bool]] = {
    **{c: ("bright", c not in _NO_FILL) for c in _BRIGHT},
    **{c: ("none", True) for c in _WHOLE_IMAGE},
    **{c: ("dark", c not in _NO_FILL) for c in _DARK},
    **{c: (mode, True) for c, mode in _DEMO.items()},
}
OBJECT_MASK_MODES = ("auto", "dark", "bright", "none")


def object_mask_rule(category: str | None, mode: str = "auto") -> tuple[str, bool]:
    """``(mode, fill_holes)`` for ``category``: the original's rule under ``auto`` (whole image
    for categories it does not know), else ``mode`` with hole filling."""
    if mode not in OBJECT_MASK_MODES:
        raise UserError(f"object_mask must be one of {', '.join(OBJECT_MASK_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode, True
    return OBJECT_MASK_RULES.get(category or "", ("none", True))


# ------------------------------------------------------------------------------------------
# Perlin noise and the pattern mask
# ------------------------------------------------------------------------------------------

def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator
                 ) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` with ``res = (ry, rx)`` lattice cells, scaled by
    sqrt(2) so that values lie in about [-1, 1]. ``float32 [H, W]``."""
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
    top = corner(0, 0) + u * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + u * (corner(1, 1) - corner(1, 0))
    return (np.sqrt(2) * (top + v * (bottom - top))).astype(np.float32)


def pattern_mask(shape: tuple[int, int], rng: np.random.Generator, max_exponent: int = 6,
                 threshold: float = 0.5) -> np.ndarray:
    """``M_p``: Perlin noise with ``2^U{0..max_exponent-1}`` cells per axis, rotated by
    ``U(-90, 90)`` degrees (zeros fill the corners), thresholded. ``bool [H, W]``."""
    res = (2 ** int(rng.integers(0, max_exponent)), 2 ** int(rng.integers(0, max_exponent)))
    noise = perlin_noise(shape, res, rng)
    noise = ndi.rotate(noise, float(rng.uniform(-90, 90)), reshape=False, order=1,
                       mode="constant", cval=0.0)
    return noise > threshold


# ------------------------------------------------------------------------------------------
# object mask
# ------------------------------------------------------------------------------------------

def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values)) if np.ptp(values) > 0 else float(values.flat[0])


def object_mask(image: np.ndarray, mode: str, fill_holes: bool = True) -> np.ndarray:
    """``M_o`` in [0, 1] (``float32 [H, W]``): where defects may appear (see module doc).

    ``mode``: ``dark`` (object darker than the background), ``bright`` or ``none`` (all ones).
    """
    h, w = image.shape[:2]
    if mode == "none":
        return np.ones((h, w), np.float32)
    gray = image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114
    gray = np.round(gray * 255.0)  # the original thresholds 8-bit images
    blurred = ndi.gaussian_filter(gray, sigma=0.8, truncate=1.25)  # cv2 3x3 kernel, sigma 0.8
    bright = blurred > _otsu(blurred)
    mask = bright if mode == "bright" else ~bright
    square = np.ones((3, 3), bool)
    mask = ndi.binary_closing(ndi.binary_opening(mask, square), square)
    soft = ndi.gaussian_filter(mask.astype(np.float32), sigma=2.0, mode="reflect")
    soft = np.clip(2.0 * soft - 1.0, 0.0, 1.0)
    if fill_holes:
        holes = ndi.binary_fill_holes(soft > 0) & (soft <= 0)
        soft[holes] = 1.0
    return soft.astype(np.float32)


# ------------------------------------------------------------------------------------------
# source images and their augmentation
# ------------------------------------------------------------------------------------------

def _gamma(x, rng):  # imgaug GammaContrast((0.5, 2.0), per_channel=True)
    return np.clip(x, 0, 1) ** rng.uniform(0.5, 2.0, size=3)


def _brightness(x, rng):  # MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30))
    return x * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30) / 255.0


def _sharpness(x, rng):  # pillike.EnhanceSharpness(factor in (0, 2))
    blurred = ndi.uniform_filter(x, size=(3, 3, 1))
    return blurred + rng.uniform(0.0, 2.0) * (x - blurred)


def _hue_saturation(x, rng):  # AddToHueAndSaturation((-50, 50), per_channel=True)
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(np.clip(x, 0, 1))
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-50, 50) / 180.0) % 1.0  # OpenCV hue: 180 = 360 deg
    hsv[..., 1] = np.clip(hsv[..., 1] + rng.uniform(-50, 50) / 255.0, 0, 1)
    return hsv2rgb(hsv)


def _solarize(x, rng):  # Solarize(0.5, threshold=(32, 128))
    if rng.random() >= 0.5:
        return x
    t = rng.uniform(32, 128) / 255.0
    return np.where(x > t, 1.0 - x, x)


def _posterize(x, rng):  # Posterize(nb_bits in 1..8)
    levels = 2 ** int(rng.integers(1, 9))
    return np.floor(np.clip(x, 0, 1) * (levels - 1e-6)) / max(levels - 1, 1)


def _invert(x, rng):  # Invert()
    return 1.0 - x


def _autocontrast(x, rng):  # pillike.Autocontrast(cutoff in 0..20 %)
    cut = rng.uniform(0, 20)
    lo = np.percentile(x, cut / 2, axis=(0, 1))
    hi = np.percentile(x, 100 - cut / 2, axis=(0, 1))
    return (x - lo) / np.maximum(hi - lo, 1e-6)


def _equalize(x, rng):  # pillike.Equalize()
    q = np.clip(np.round(x * 255), 0, 255).astype(np.int64)
    out = np.empty_like(x)
    for k in range(3):
        hist = np.bincount(q[..., k].ravel(), minlength=256)
        cdf = np.cumsum(hist).astype(np.float64)
        span = cdf[-1] - cdf[cdf > 0][0]
        lut = (cdf - cdf[cdf > 0][0]) / span if span > 0 else np.arange(256) / 255.0
        out[..., k] = np.clip(lut, 0, 1)[q[..., k]]
    return out


#: The 9 augmenters of the original (``GenerateSyntheticTrainDataset.augmenters``).
AUGMENTERS: tuple[Callable, ...] = (_gamma, _brightness, _sharpness, _hue_saturation, _solarize,
                                    _posterize, _invert, _autocontrast, _equalize)


def augment_source(image: np.ndarray, rng: np.random.Generator, n_ops: int = 3) -> np.ndarray:
    """Apply ``n_ops`` distinct augmenters, chosen at random, in random order."""
    x = image.astype(np.float64)
    for index in rng.choice(len(AUGMENTERS), size=n_ops, replace=False):
        x = AUGMENTERS[int(index)](x, rng)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


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


# ------------------------------------------------------------------------------------------
# one synthetic defect
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SyntheticSettings:
    """How defects are drawn (defaults: AD-CLSCNFs ``synthetic_data_loader.py`` / config.py)."""

    in_domain_prob: float = 0.5  # use_in_domain_data: 50 % in-domain source, 50 % DTD
    beta_max: float = 0.8  # beta ~ U(0, 0.8)
    perlin_max_exponent: int = 6  # lattice 2^randint(0, 6) per axis
    perlin_threshold: float = 0.5
    n_augment: int = 3  # 3 of the 9 augmenters
    soft_label: str = "image"  # "image" (code) | "pixel" (paper text)
    label_gain: float = 5.0  # sigmoid(5 * d)


@dataclass
class Sample:
    """A synthetic sample: ``image [H, W, 3]``, soft ``label [H, W]`` in [0, 1] and the binary
    defect mask ``mask [H, W]`` (``label > 0`` exactly on ``mask``)."""

    image: np.ndarray
    label: np.ndarray
    mask: np.ndarray


def soft_label(normal: np.ndarray, defective: np.ndarray, mask: np.ndarray, mode: str,
               gain: float = 5.0) -> np.ndarray:
    """Soft label of a defect (see module doc); 0 outside ``mask``."""
    diff = (defective - normal).mean(axis=-1)
    prob = 1.0 / (1.0 + np.exp(-gain * diff))
    label = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return label
    if mode == "pixel":
        label[mask] = prob[mask]
    elif mode == "image":
        changed = mask & (diff != 0)
        label[mask] = prob[changed].mean() if changed.any() else 0.5
    else:
        raise UserError(f"soft_label must be 'image' or 'pixel', got {mode!r}")
    return label


class DefectSynthesizer:
    """Draws synthetic defects on the normal images of one category.

    ``images``: ``float32 [N, H, W, 3]`` in [0, 1]; ``object_masks``: ``[N, H, W]`` (see
    :func:`object_mask`); ``foreign``: ``callable(size, rng) -> [size, size, 3]`` (a
    :class:`DTDTextures` or :func:`procedural_texture`).
    """

    def __init__(self, images: np.ndarray, object_masks: np.ndarray,
                 foreign: Callable[[int, np.random.Generator], np.ndarray],
                 settings: SyntheticSettings = SyntheticSettings()):
        self.images, self.object_masks = images, object_masks
        self.foreign, self.settings = foreign, settings

    @classmethod
    def for_images(cls, images: np.ndarray, category: str | None, mode: str = "auto",
                   foreign: Callable | None = None,
                   settings: SyntheticSettings = SyntheticSettings()) -> "DefectSynthesizer":
        rule, fill = object_mask_rule(category, mode)
        masks = np.stack([object_mask(img, rule, fill) for img in images])
        return cls(images, masks, foreign or procedural_texture, settings)

    def source(self, index: int, rng: np.random.Generator) -> np.ndarray:
        n, size = len(self.images), self.images.shape[1]
        if n > 1 and rng.random() < self.settings.in_domain_prob:
            other = int(rng.integers(n - 1))
            src = self.images[other + (other >= index)]  # another normal image of the category
        else:
            src = self.foreign(size, rng)
        return augment_source(src, rng, self.settings.n_augment)

    def sample(self, index: int, rng: np.random.Generator) -> Sample:
        """A defect on normal image ``index`` (or the image itself when ``M_d`` is empty)."""
        s = self.settings
        image = self.images[index]
        shape = image.shape[:2]
        m_p = pattern_mask(shape, rng, s.perlin_max_exponent, s.perlin_threshold)
        source = self.source(index, rng)
        beta = float(rng.uniform(0.0, s.beta_max))
        m_d = m_p & (self.object_masks[index] > 0)
        if not m_d.any():
            return Sample(image.copy(), np.zeros(shape, np.float32), m_d)
        m = m_d[..., None]
        defective = np.where(m, (1 - beta) * source + beta * image, image).astype(np.float32)
        return Sample(defective, soft_label(image, defective, m_d, s.soft_label, s.label_gain), m_d)

    def batch(self, indices: Sequence[int], rngs: Sequence[np.random.Generator]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images ``[B, H, W, 3]``, labels ``[B, H, W]`` and masks ``[B, H, W]``."""
        samples = [self.sample(int(i), r) for i, r in zip(indices, rngs)]
        return (np.stack([s.image for s in samples]), np.stack([s.label for s in samples]),
                np.stack([s.mask for s in samples]))
