"""Normal (defect-free) demo images: crops of scikit-image's bundled photographs, jittered in
position, rotation and illumination; the two objects lie on a plain plate."""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi

from nfbench.datasets.demo.categories import CATEGORY_KIND, CATEGORY_TINT, DEMO_CATEGORIES
from nfbench.errors import UserError


@functools.lru_cache(maxsize=None)
def source(name: str) -> np.ndarray:
    """A bundled scikit-image image as float32 in [0, 1] (H×W or H×W×3)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        image = image[..., :3]
    image = np.asarray(image, dtype=np.float32) / 255.0
    image.setflags(write=False)
    return image


@functools.lru_cache(maxsize=None)
def _coin_sprite() -> tuple[np.ndarray, np.ndarray]:
    """The largest coin of ``skimage.data.coins()``: (premultiplied RGB, alpha), square crop."""
    from skimage import filters, measure, segmentation

    gray = source("coins")
    edges = filters.sobel(gray)
    markers = np.zeros(gray.shape, np.int32)
    markers[gray < 30 / 255] = 1
    markers[gray > 150 / 255] = 2
    objects = ndi.binary_fill_holes(segmentation.watershed(edges, markers) == 2)
    labels = measure.label(objects)
    region = max(measure.regionprops(labels), key=lambda r: r.area)
    cy, cx = (int(round(v)) for v in region.centroid)
    half = int(max(region.bbox[2] - region.bbox[0], region.bbox[3] - region.bbox[1]) * 0.5) + 6
    pad = np.pad(gray, half, mode="edge")
    lab = np.pad(labels == region.label, half)
    sl = (slice(cy, cy + 2 * half + 1), slice(cx, cx + 2 * half + 1))
    alpha = ndi.gaussian_filter(ndi.binary_erosion(lab[sl]).astype(np.float32), 0.8)
    premult = np.repeat((pad[sl] * alpha)[..., None], 3, axis=-1)
    sprite = premult.astype(np.float32), alpha.astype(np.float32)
    for a in sprite:
        a.setflags(write=False)
    return sprite


@functools.lru_cache(maxsize=None)
def _logo_sprite() -> tuple[np.ndarray, np.ndarray]:
    """The printed disc of ``skimage.data.logo()`` (the white S band is part of the print):
    (premultiplied RGB, alpha), square crop."""
    rgb = source("logo")
    ink = rgb.min(-1) < 0.9
    ys, xs = np.nonzero(ink)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    radius = (ys.max() - ys.min() + xs.max() - xs.min()) / 4
    yy, xx = np.mgrid[0:rgb.shape[0], 0:rgb.shape[1]].astype(np.float32)
    alpha = np.clip(radius - 1.0 - np.hypot(yy - cy, xx - cx) + 0.5, 0, 1).astype(np.float32)
    premult = (rgb * alpha[..., None]).astype(np.float32)
    for a in (premult, alpha):
        a.setflags(write=False)
    return premult, alpha


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def warp(image: np.ndarray, size: int, center_src, center_out, angle: float, zoom: float,
          flip: tuple[bool, bool] = (False, False), order: int = 1, mode: str = "mirror"
          ) -> np.ndarray:
    """Output pixel ``o`` samples ``image`` at ``center_src + M (o - center_out)``;
    ``zoom`` is source pixels per output pixel, ``angle`` in radians."""
    c, s = np.cos(angle), np.sin(angle)
    m = zoom * np.array([[c, -s], [s, c]])
    m = m @ np.diag([-1.0 if flip[0] else 1.0, -1.0 if flip[1] else 1.0])
    offset = np.asarray(center_src, float) - m @ np.asarray(center_out, float)
    if image.ndim == 2:
        return ndi.affine_transform(image, m, offset, output_shape=(size, size), order=order,
                                    mode=mode)
    return np.stack([ndi.affine_transform(image[..., k], m, offset, output_shape=(size, size),
                                          order=order, mode=mode)
                     for k in range(image.shape[2])], axis=-1)


def _photometric(gray: np.ndarray, rng: np.random.Generator, strength: float = 1.0
                 ) -> np.ndarray:
    """Mild gamma / contrast / brightness jitter, as from a slightly varying light source."""
    gamma = rng.uniform(1 - 0.1 * strength, 1 + 0.1 * strength)
    contrast = rng.uniform(1 - 0.08 * strength, 1 + 0.08 * strength)
    brightness = rng.uniform(-0.03, 0.03) * strength
    out = np.clip(gray, 0.0, 1.0) ** gamma
    return (out - 0.5) * contrast + 0.5 + brightness


def _texture_normal(category: str, rng: np.random.Generator, size: int) -> np.ndarray:
    src = source(category)
    side = src.shape[0] * rng.uniform(0.5, 0.6)  # crop side in source pixels
    if category == "brick":  # anisotropic: keep the courses horizontal
        angle = np.deg2rad(rng.uniform(-3, 3))
        flip = (bool(rng.integers(2)), bool(rng.integers(2)))
    else:
        angle = np.deg2rad(90 * rng.integers(4) + rng.uniform(-10, 10))
        flip = (bool(rng.integers(2)), False)
    reach = side / 2 * (abs(np.cos(angle)) + abs(np.sin(angle)))
    lo, hi = reach, src.shape[0] - reach
    center = rng.uniform(lo, max(lo, hi), size=2)
    gray = warp(src, size, center, ((size - 1) / 2, (size - 1) / 2), angle, side / size, flip)
    gray = _photometric(gray, rng)
    tint = np.asarray(CATEGORY_TINT[category], np.float32) * rng.uniform(0.98, 1.02, size=3)
    return np.clip(gray[..., None] * tint, 0.0, 1.0).astype(np.float32)


def _object_normal(category: str, rng: np.random.Generator, size: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The object on a plain background: (RGB image, object alpha, background without it).

    ``coin``: one ancient coin, any in-plane rotation within ±30°, on a dark plate.
    ``logo``: a printed disc (the scikit-image logo), aligned within ±2°, on a grey plate.
    """
    if category == "coin":
        premult, alpha = _coin_sprite()
        diameter = size * rng.uniform(0.58, 0.63)
        angle = np.deg2rad(rng.uniform(-30, 30))
        level, bg_tint = 0.22, (0.92, 0.96, 1.0)
    else:
        premult, alpha = _logo_sprite()
        diameter = size * rng.uniform(0.66, 0.70)
        angle = np.deg2rad(rng.uniform(-2, 2))
        level, bg_tint = 0.38, (0.95, 0.97, 1.0)
    n = alpha.shape[0]
    diameter_src = 2 * np.sqrt(alpha.sum() / np.pi)
    reach = 0.05 if category == "coin" else 0.02
    center_out = (size - 1) / 2 + rng.uniform(-reach, reach, size=2) * size
    zoom = diameter_src / diameter
    src_c = ((n - 1) / 2, (alpha.shape[1] - 1) / 2)
    a = np.clip(warp(alpha, size, src_c, center_out, angle, zoom, order=3, mode="constant"),
                0, 1)
    p = warp(premult, size, src_c, center_out, angle, zoom, order=3, mode="constant")
    colour = np.where(a[..., None] > 0.02, p / np.maximum(a, 0.02)[..., None], 0.0)
    obj = _photometric(colour, rng, strength=0.8)

    yy, xx = grid(size)
    g = rng.normal(0, 1, size=2) * 0.03
    background = (level + rng.uniform(-0.02, 0.02)
                  + g[0] * (yy / size - 0.5) + g[1] * (xx / size - 0.5))
    shift = np.array([1.0, 1.0]) * size / 128
    shadow = ndi.gaussian_filter(ndi.shift(a, shift, order=1), size / 64)
    plate = background + rng.normal(0, 0.006, size=(size, size))
    bg_rgb = (plate[..., None] * np.asarray(bg_tint, np.float32)).astype(np.float32)
    shaded = bg_rgb * (1 - 0.35 * shadow)[..., None]
    tint = np.asarray(CATEGORY_TINT[category], np.float32) * rng.uniform(0.98, 1.02, size=3)
    rgb = shaded * (1 - a[..., None]) + (obj * a[..., None]) * tint
    return (np.clip(rgb, 0.0, 1.0).astype(np.float32), a.astype(np.float32),
            np.clip(bg_rgb, 0.0, 1.0))


def normal_scene(category: str, rng: np.random.Generator, size: int
            ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(RGB image, object alpha or None, background without the object or None)."""
    if category not in CATEGORY_KIND:
        raise UserError(f"unknown demo category {category!r}; valid: {', '.join(DEMO_CATEGORIES)}")
    if CATEGORY_KIND[category] == "object":
        return _object_normal(category, rng, size)
    return _texture_normal(category, rng, size), None, None


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def make_normal(category: str, rng: np.random.Generator, image_size: int = 256) -> np.ndarray:
    """One defect-free image (H×W×3 uint8) of ``category`` drawn with ``rng``."""
    return to_uint8(normal_scene(category, rng, image_size)[0])


__all__ = ["make_normal", "normal_scene"]
