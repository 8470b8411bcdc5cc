"""Offline demo dataset: images bundled with scikit-image plus synthetic defects.

Why: the benchmark must run end to end without downloading MVTec AD, and the scores it
produces must still tell a working method from a broken one. The normal images are crops of
two real textures (``brick``, ``gravel``) and two objects on a plain plate, a real ancient
``coin`` (the largest one of ``skimage.data.coins()``) and a printed disc (``logo``, the
scikit-image logo), jittered in position, rotation and illumination. (``grass``, in version 1,
was dropped: its photograph is too irregular for a 60-image normal model, every method sat
near chance on it.)

Test defects are MVTec AD's kinds, per category (:data:`CATEGORY_DEFECTS`): scratches, cracks,
stray threads, holes/pits, stains and foreign contamination on the textures and coin; broken-off
(missing) and misplaced (turned) parts on the objects. They are sized to be visible at the
feature resolutions the methods use (stride 8-32 at 128-256 px): each covers about 1-10 % of
the image (:data:`AREA_RANGE`), with a range of sizes and contrasts so that image AUROC is not
trivially 1.0. Defect shapes are geometric (curves, blobs, polygons), deliberately *not* the
Perlin-noise masks that some methods use for their own synthetic training anomalies.

Layout written by :func:`generate_demo` is exactly MVTec AD's:
``<root>/<cat>/train/good/000.png``, ``<root>/<cat>/test/{good,<defect>}/000.png`` and
``<root>/<cat>/ground_truth/<defect>/000_mask.png`` (0/255, same size as the image), plus
``<root>/demo.json`` describing the parameters and counts.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from nfbench.errors import UserError

#: Bump whenever the images produced for a given seed change.
GENERATOR_VERSION = "2"
GENERATOR_NAME = "nfbench.datasets.demo"

#: The demo categories; their index here seeds their random streams (subsets give the same images).
DEMO_CATEGORIES: tuple[str, ...] = ("brick", "gravel", "coin", "logo")
CATEGORY_KIND: dict[str, str] = {"brick": "texture", "gravel": "texture", "coin": "object",
                                 "logo": "object"}
#: Defect types of each category (its test sub-folders besides ``good``), as in MVTec AD where
#: textures and objects have different defect kinds.
CATEGORY_DEFECTS: dict[str, tuple[str, ...]] = {
    "brick": ("crack", "hole", "scratch", "contamination"),
    "gravel": ("thread", "hole", "stain", "contamination"),
    "coin": ("scratch", "hole", "contamination", "missing"),
    "logo": ("scratch", "contamination", "missing", "misplaced"),
}
#: Every defect type of some category.
DEFECT_TYPES: tuple[str, ...] = ("scratch", "crack", "thread", "hole", "stain", "contamination",
                                 "missing", "misplaced")
#: Defect area as a fraction of the image: every defect covers between these (MVTec AD's
#: defects mostly cover about 0.5-10 % of the image).
AREA_RANGE: tuple[float, float] = (0.008, 0.11)

# Light colour tints (R, G, B) applied to the grayscale sources.
_TINT = {"brick": (1.0, 0.84, 0.74), "gravel": (1.0, 0.96, 0.90), "coin": (1.0, 0.94, 0.82),
         "logo": (1.0, 1.0, 1.0)}
# Foreign material for ``contamination``: (skimage.data name, tint or None for colour images).
_FOREIGN = (("brick", _TINT["brick"]), ("grass", (0.82, 1.0, 0.70)),
            ("gravel", _TINT["gravel"]), ("camera", None), ("moon", None), ("astronaut", None),
            ("coffee", None), ("chelsea", None), ("rocket", None))


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _source(name: str) -> np.ndarray:
    """A bundled scikit-image image as float32 in [0, 1] (H×W or H×W×3)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        image = image[..., :3]
    image = np.asarray(image, dtype=np.float32) / 255.0
    image.setflags(write=False)
    return image


@functools.lru_cache(maxsize=None)
def _foreign_rgb(index: int) -> np.ndarray:
    name, tint = _FOREIGN[index]
    image = _source(name)
    if image.ndim == 2:
        image = image[..., None] * np.asarray(tint if tint else (1.0, 1.0, 1.0), np.float32)
    image = np.ascontiguousarray(image[..., :3], dtype=np.float32)
    image.setflags(write=False)
    return image


@functools.lru_cache(maxsize=None)
def _coin_sprite() -> tuple[np.ndarray, np.ndarray]:
    """The largest coin of ``skimage.data.coins()``: (premultiplied RGB, alpha), square crop."""
    from skimage import filters, measure, segmentation

    gray = _source("coins")
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
    rgb = _source("logo")
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


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _warp(image: np.ndarray, size: int, center_src, center_out, angle: float, zoom: float,
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


# --------------------------------------------------------------------------------------------
# normal images
# --------------------------------------------------------------------------------------------

def _texture_normal(category: str, rng: np.random.Generator, size: int) -> np.ndarray:
    src = _source(category)
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
    gray = _warp(src, size, center, ((size - 1) / 2, (size - 1) / 2), angle, side / size, flip)
    gray = _photometric(gray, rng)
    tint = np.asarray(_TINT[category], np.float32) * rng.uniform(0.98, 1.02, size=3)
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
    a = np.clip(_warp(alpha, size, src_c, center_out, angle, zoom, order=3, mode="constant"),
                0, 1)
    p = _warp(premult, size, src_c, center_out, angle, zoom, order=3, mode="constant")
    colour = np.where(a[..., None] > 0.02, p / np.maximum(a, 0.02)[..., None], 0.0)
    obj = _photometric(colour, rng, strength=0.8)

    yy, xx = _grid(size)
    g = rng.normal(0, 1, size=2) * 0.03
    background = (level + rng.uniform(-0.02, 0.02)
                  + g[0] * (yy / size - 0.5) + g[1] * (xx / size - 0.5))
    shift = np.array([1.0, 1.0]) * size / 128
    shadow = ndi.gaussian_filter(ndi.shift(a, shift, order=1), size / 64)
    plate = background + rng.normal(0, 0.006, size=(size, size))
    bg_rgb = (plate[..., None] * np.asarray(bg_tint, np.float32)).astype(np.float32)
    shaded = bg_rgb * (1 - 0.35 * shadow)[..., None]
    tint = np.asarray(_TINT[category], np.float32) * rng.uniform(0.98, 1.02, size=3)
    rgb = shaded * (1 - a[..., None]) + (obj * a[..., None]) * tint
    return (np.clip(rgb, 0.0, 1.0).astype(np.float32), a.astype(np.float32),
            np.clip(bg_rgb, 0.0, 1.0))


def _normal(category: str, rng: np.random.Generator, size: int
            ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(RGB image, object alpha or None, background without the object or None)."""
    if category not in CATEGORY_KIND:
        raise UserError(f"unknown demo category {category!r}; valid: {', '.join(DEMO_CATEGORIES)}")
    if CATEGORY_KIND[category] == "object":
        return _object_normal(category, rng, size)
    return _texture_normal(category, rng, size), None, None


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def make_normal(category: str, rng: np.random.Generator, image_size: int = 256) -> np.ndarray:
    """One defect-free image (H×W×3 uint8) of ``category`` drawn with ``rng``."""
    return _to_uint8(_normal(category, rng, image_size)[0])


# --------------------------------------------------------------------------------------------
# defects
# --------------------------------------------------------------------------------------------

def _alpha(region: np.ndarray, soft_in: float) -> np.ndarray:
    """Compositing alpha of a defect region: > 0.5 exactly on ``region``, rising to 1 over
    ``soft_in`` pixels inside, and falling to 0 within ~1.5 pixels outside (anti-aliased rim)."""
    inside = ndi.distance_transform_edt(region)
    outside = ndi.distance_transform_edt(~region)
    d = np.where(region, inside - 0.5, 0.5 - outside)
    alpha = np.where(d >= 0, 0.5 + 0.5 * np.minimum(d / max(soft_in, 0.5), 1.0),
                     np.clip(0.5 + 0.5 * d, 0.0, 0.5))
    return alpha.astype(np.float32)


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _blob(yy, xx, center, area: float, rng, wobble: float = 0.3) -> np.ndarray:
    """An irregular ellipse of about ``area`` pixels (a few low-order boundary harmonics)."""
    ratio = rng.uniform(0.5, 1.0)
    a = np.sqrt(area / (np.pi * ratio))
    b = a * ratio
    theta = rng.uniform(0, np.pi)
    dy, dx = yy - center[0], xx - center[1]
    c, s = np.cos(theta), np.sin(theta)
    u, v = (c * dx + s * dy) / a, (-s * dx + c * dy) / b
    r = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    bound = np.ones_like(r)
    for k in (2, 3, 5):
        bound += wobble / k * rng.uniform(-1, 1) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return r <= bound


def _polyline(size: int, center, length: float, heading0: float, turn: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (iy, ix) of a path of ``length`` through ``center`` whose heading
    changes by ``turn`` (radians per step), and the path parameter t in [0, 1] per point."""
    n = len(turn)
    t = np.linspace(0.0, 1.0, n)
    heading = heading0 + np.cumsum(turn)
    step = length / (n - 1)
    py = np.cumsum(np.sin(heading)) * step
    px = np.cumsum(np.cos(heading)) * step
    py += center[0] - py[n // 2]
    px += center[1] - px[n // 2]
    return np.stack([py, px]), t


def _rasterise(size: int, paths: list[np.ndarray]) -> np.ndarray:
    line = np.zeros((size, size), bool)
    for path in paths:
        iy, ix = np.rint(path).astype(int)
        keep = (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size)
        line[iy[keep], ix[keep]] = True
    return line


def _towards(clean: np.ndarray, level, k: float) -> np.ndarray:
    """``clean`` pulled towards ``level`` by ``k`` (0: unchanged, 1: flat ``level``)."""
    return clean + k * (np.asarray(level, np.float32) - clean)


def _scratch(ctx, center, rng):
    """A long thin curved line, bright (scraped metal, paint) or dark (groove), 3-8 px wide."""
    size = ctx["size"]
    length = rng.uniform(0.35, 0.75) * size
    n = max(16, int(length * 2))
    turn = np.full(n, rng.uniform(-2.0, 2.0) / n) + rng.normal(0, 0.2 / np.sqrt(n), n)
    path, _ = _polyline(size, center, length, rng.uniform(0, 2 * np.pi), turn)
    line = _rasterise(size, [path])
    half_width = rng.uniform(1.5, 3.5) * ctx["scale"]
    region = ndi.distance_transform_edt(~line) <= half_width
    bright = rng.random() < 0.5
    level = (0.95, 0.95, 0.92) if bright else (0.05, 0.05, 0.06)
    return region, 1.0, _towards(ctx["clean"], level, rng.uniform(0.45, 0.85))


def _crack(ctx, center, rng):
    """A dark jagged crack with one or two branches, 2-6 px wide."""
    size = ctx["size"]
    length = rng.uniform(0.3, 0.6) * size
    n = max(16, int(length))
    turn = rng.normal(0, 0.35, n) * (rng.random(n) < 0.25)  # straight runs with sharp kinks
    main, _ = _polyline(size, center, length, rng.uniform(0, 2 * np.pi), turn)
    paths = [main]
    for _ in range(int(rng.integers(1, 3))):
        j = int(rng.integers(n // 5, 4 * n // 5))
        b_len = length * rng.uniform(0.2, 0.45)
        m = max(8, int(b_len))
        d = np.diff(main[:, max(j - 1, 0):j + 1], axis=1)[:, 0]
        heading = np.arctan2(d[0], d[1]) + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        b_turn = rng.normal(0, 0.35, m) * (rng.random(m) < 0.25)
        branch, _ = _polyline(size, (0.0, 0.0), b_len, heading, b_turn)
        branch += main[:, j:j + 1] - branch[:, :1]  # the branch starts on the crack
        paths.append(branch[:, :])
    line = _rasterise(size, paths)
    width = rng.uniform(1.0, 2.8) * ctx["scale"]
    region = ndi.distance_transform_edt(~line) <= width
    return region, 0.8, _towards(ctx["clean"], (0.02, 0.02, 0.02), rng.uniform(0.6, 0.9))


def _hole(ctx, center, rng):
    """A pit or dent: an irregular dark hollow with a lit rim on one side."""
    size, yy, xx, clean = ctx["size"], ctx["yy"], ctx["xx"], ctx["clean"]
    area = _loguniform(rng, 0.01, 0.06) * size * size
    region = _blob(yy, xx, center, area, rng, wobble=0.3)
    radius = np.sqrt(area / np.pi)
    # shading of a hollow lit from one side: dark bottom, bright upper rim
    light = rng.uniform(0, 2 * np.pi)
    dy, dx = yy - center[0], xx - center[1]
    side = (np.sin(light) * dy + np.cos(light) * dx) / max(radius, 1.0)
    k = rng.uniform(0.55, 0.85)
    shade = np.clip(0.5 - 0.5 * side, 0, 1)[..., None]  # 1 where the rim faces the light
    dark = clean * (1 - k)
    target = dark + shade * 0.6 * (0.92 - dark) * (ndi.distance_transform_edt(region)
                                                   < 0.25 * radius)[..., None]
    return region, rng.uniform(1.0, 0.4 * radius + 1.0), target


_STAIN_COLOURS = np.array([(0.55, 0.30, 0.05), (0.05, 0.05, 0.05), (0.85, 0.75, 0.20),
                           (0.20, 0.35, 0.75), (0.60, 0.10, 0.10), (0.92, 0.92, 0.88)],
                          np.float32)


def _contamination(ctx, center, rng):
    """Foreign matter: a piece of another material (another photograph) or a coloured
    deposit (oil, rust, paint, dust), 2-10 % of the image."""
    from skimage.draw import polygon2mask

    size, yy, xx, clean = ctx["size"], ctx["yy"], ctx["xx"], ctx["clean"]
    area = _loguniform(rng, 0.02, 0.10) * size * size
    if rng.random() < 0.5:  # a foreign fragment in an irregular polygon
        radius = np.sqrt(area / np.pi) * 1.15
        n = int(rng.integers(5, 10))
        phi = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = radius * rng.uniform(0.6, 1.0, n)
        verts = np.stack([center[0] + r * np.sin(phi), center[1] + r * np.cos(phi)], axis=1)
        region = polygon2mask((size, size), verts)
        choices = [i for i, (name, _) in enumerate(_FOREIGN) if name != ctx["category"]]
        foreign = _foreign_rgb(choices[int(rng.integers(len(choices)))])
        h, w = foreign.shape[:2]
        zoom = _loguniform(rng, 0.5, 2.0) * 512 / max(h, w) * 256 / size
        src_center = (rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w)
        target = _warp(foreign, size, src_center, center, rng.uniform(0, 2 * np.pi), zoom)
        return region, rng.uniform(0.5, 1.5), target
    region = np.zeros((size, size), bool)  # a deposit: union of a few blobs
    parts = int(rng.integers(1, 4))
    for _ in range(parts):
        off = rng.normal(0, 0.35 * np.sqrt(area / np.pi), size=2)
        region |= _blob(yy, xx, center + off, area / parts * 1.3, rng, wobble=0.4)
    colour = _STAIN_COLOURS[int(rng.integers(len(_STAIN_COLOURS)))]
    target = _towards(clean, colour, rng.uniform(0.5, 0.85))
    return region, rng.uniform(1.0, 4.0), target


def _missing(ctx, center, rng):
    """A missing part: a piece broken off the rim, the plate shows through."""
    size, yy, xx, obj = ctx["size"], ctx["yy"], ctx["xx"], ctx["obj"]
    area = _loguniform(rng, 0.015, 0.07) * size * size
    rim = np.flatnonzero((obj > 0.5) & ~ndi.binary_erosion(obj > 0.5, iterations=2))
    c = np.array(np.unravel_index(rim[int(rng.integers(len(rim)))], (size, size)), float)
    region = _blob(yy, xx, c, 2.0 * area, rng, wobble=0.35) & (obj > 0.02)
    return region, 0.8, ctx["background"]


_THREAD_COLOURS = np.array([(0.85, 0.20, 0.10), (0.15, 0.30, 0.90), (0.95, 0.95, 0.90),
                            (0.80, 0.55, 0.20), (0.10, 0.10, 0.10)], np.float32)


def _thread(ctx, center, rng):
    """A stray fibre or wire lying on the surface: a long wavy coloured line, 3-7 px wide."""
    size = ctx["size"]
    length = rng.uniform(0.4, 0.8) * size
    n = max(16, int(length * 2))
    t = np.linspace(0.0, 1.0, n)
    heading = (rng.uniform(-1.5, 1.5) * t
               + rng.uniform(0.2, 0.5) * np.sin(rng.uniform(2, 5) * np.pi * t + rng.uniform(0, 6)))
    turn = np.diff(heading, prepend=heading[0])
    path, _ = _polyline(size, center, length, rng.uniform(0, 2 * np.pi), turn)
    half_width = rng.uniform(1.5, 3.5) * ctx["scale"]
    region = ndi.distance_transform_edt(~_rasterise(size, [path])) <= half_width
    colour = _THREAD_COLOURS[int(rng.integers(len(_THREAD_COLOURS)))]
    return region, 1.0, _towards(ctx["clean"], colour, rng.uniform(0.6, 0.9))


def _stain(ctx, center, rng):
    """A liquid stain (oil, rust, paint): a smooth blob with a colour cast, 2-10 % of the
    image, fading towards its edge."""
    size, yy, xx, clean = ctx["size"], ctx["yy"], ctx["xx"], ctx["clean"]
    area = _loguniform(rng, 0.02, 0.10) * size * size
    region = np.zeros((size, size), bool)
    parts = int(rng.integers(2, 4))
    for _ in range(parts):
        off = rng.normal(0, 0.3 * np.sqrt(area / np.pi), size=2)
        region |= _blob(yy, xx, center + off, area / parts * 1.4, rng, wobble=0.3)
    colour = _STAIN_COLOURS[int(rng.integers(len(_STAIN_COLOURS)))]
    target = clean * (1 - 0.6) + 0.6 * colour * (0.5 + clean.mean(-1, keepdims=True))
    k = rng.uniform(0.5, 0.9)
    return region, rng.uniform(0.15, 0.3) * np.sqrt(area), clean + k * (target - clean)


def _misplaced(ctx, center, rng):
    """A misplaced part: a round piece of the print turned by 25-90 degrees in place, as if
    a sticker or inlay had been fitted the wrong way round."""
    size, yy, xx, clean = ctx["size"], ctx["yy"], ctx["xx"], ctx["clean"]
    area = _loguniform(rng, 0.025, 0.08) * size * size
    radius = np.sqrt(area / np.pi)
    region = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius ** 2
    angle = np.deg2rad(rng.choice([-1, 1]) * rng.uniform(25, 90))
    target = _warp(clean, size, center, center, angle, 1.0, order=1)
    return region, 0.8, target


_DEFECTS = {"scratch": _scratch, "crack": _crack, "thread": _thread, "hole": _hole,
            "stain": _stain,
            "contamination": _contamination, "missing": _missing, "misplaced": _misplaced}


def make_defect_example(category: str, defect_type: str, rng: np.random.Generator,
                        image_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(clean, defective, mask)`` for one test image: H×W×3 uint8 images and a bool mask.

    The defect is alpha-composited onto the clean image; ``mask`` is ``alpha > 0.5`` and
    covers a fraction of the image within :data:`AREA_RANGE` (checked at 256 px; tiny images
    may fall slightly outside). Only an anti-aliased rim at most ~1.5 px wide outside the mask
    is touched besides it, so ``defective == clean`` wherever a 2-pixel dilation of ``mask``
    is False.
    """
    if category in CATEGORY_KIND and defect_type not in CATEGORY_DEFECTS[category]:
        raise UserError(f"unknown defect type {defect_type!r} for demo category {category!r}; "
                        f"valid: {', '.join(CATEGORY_DEFECTS[category])}")
    clean, obj, background = _normal(category, rng, image_size)
    size = image_size
    scale = size / 256
    yy, xx = _grid(size)
    ctx = {"category": category, "size": size, "scale": scale, "yy": yy, "xx": xx,
           "clean": clean, "obj": obj, "background": background}
    if obj is not None:  # defects lie on the object, not on the background
        allowed = ndi.binary_erosion(obj > 0.5, iterations=max(1, int(round(2 * scale))))
        if defect_type == "missing":
            allowed = obj > 0.02
        anchors = np.flatnonzero(ndi.binary_erosion(obj > 0.5, iterations=max(1, size // 10)))
    else:
        allowed = None
        margin = int(0.12 * size)
        inner = np.zeros((size, size), bool)
        inner[margin:size - margin, margin:size - margin] = True
        anchors = np.flatnonzero(inner)
    lo, hi = AREA_RANGE[0] * size * size, AREA_RANGE[1] * size * size
    best = None
    for _ in range(50):
        center = np.array(np.unravel_index(anchors[int(rng.integers(len(anchors)))],
                                           (size, size)), float) + rng.uniform(-0.5, 0.5, 2)
        region, soft, target = _DEFECTS[defect_type](ctx, center, rng)
        if allowed is not None:
            region = region & allowed
        area = int(region.sum())
        if lo <= area <= hi:
            best = (region, soft, target)
            break
        if best is None or abs(np.log(max(area, 1) / np.sqrt(lo * hi))) < best[3]:
            best = (region, soft, target, abs(np.log(max(area, 1) / np.sqrt(lo * hi))))
    region, soft, target = best[:3]
    alpha = _alpha(region, soft)
    target = np.clip(target, 0.0, 1.0)
    # exactly clean where alpha == 0 (kept in clean's float32 so the uint8 rounding matches)
    defective = (clean + alpha[..., None] * (target - clean)).astype(clean.dtype)
    return _to_uint8(clean), _to_uint8(defective), region


# --------------------------------------------------------------------------------------------
# dataset on disk
# --------------------------------------------------------------------------------------------

def _manifest(seed: int, image_size: int, n_train: int, n_test_good: int, n_defect: int,
              categories: Sequence[str]) -> dict:
    counts = {c: {"train": {"good": n_train},
                  "test": {"good": n_test_good, **{d: n_defect for d in CATEGORY_DEFECTS[c]}}}
              for c in categories}
    return {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "seed": seed,
            "image_size": image_size, "n_train": n_train, "n_test_good": n_test_good,
            "n_test_defect_per_type": n_defect, "categories": list(categories),
            "category_kind": {c: CATEGORY_KIND[c] for c in categories},
            "defect_types": {c: list(CATEGORY_DEFECTS[c]) for c in categories},
            "area_range": list(AREA_RANGE), "counts": counts}


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / "demo.json").read_text())
    except (OSError, ValueError):
        return None


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG", compress_level=3)


def _write_category(base: Path, category: str, cat_index: int, seed: int, size: int,
                    n_train: int, n_test_good: int, n_defect: int, tick) -> None:
    def name(i: int, n: int) -> str:
        return f"{i:0{max(3, len(str(n - 1)))}d}"

    for split, code, n in (("train", 0, n_train), ("test", 1, n_test_good)):
        folder = base / category / split / "good"
        folder.mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng([seed, cat_index, code, 0, i])
            _save_png(make_normal(category, rng, size), folder / f"{name(i, n)}.png")
            tick()
    for d_index, defect in enumerate(CATEGORY_DEFECTS[category], start=1):
        images = base / category / "test" / defect
        masks = base / category / "ground_truth" / defect
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for i in range(n_defect):
            rng = np.random.default_rng([seed, cat_index, 1, d_index, i])
            _, defective, mask = make_defect_example(category, defect, rng, size)
            _save_png(defective, images / f"{name(i, n_defect)}.png")
            _save_png(mask.astype(np.uint8) * 255, masks / f"{name(i, n_defect)}_mask.png")
            tick()


def generate_demo(root: Path, *, seed: int = 0, image_size: int = 256, n_train: int = 60,
                  n_test_good: int = 20, n_test_defect_per_type: int = 8,
                  categories: Sequence[str] = DEMO_CATEGORIES, progress: bool = True) -> Path:
    """Build the demo dataset in MVTec AD layout at ``root`` and return ``root``.

    Deterministic: the same arguments give byte-identical PNGs (every image has its own
    ``numpy`` generator seeded with ``[seed, category, split, type, index]``). Atomic: images
    are written into a temporary sibling folder renamed to ``root`` once complete. If ``root``
    already holds a demo set with the same parameters (``demo.json``) nothing is done; a demo
    set with other parameters is replaced; any other existing non-empty folder is an error.
    """
    root = Path(root)
    categories = tuple(categories)
    unknown = [c for c in categories if c not in CATEGORY_KIND]
    if unknown or not categories:
        raise UserError(f"unknown demo categories {unknown}; valid: {', '.join(DEMO_CATEGORIES)}")
    if len(set(categories)) != len(categories):
        raise UserError(f"duplicate demo categories in {list(categories)}")
    if image_size < 32:
        raise UserError(f"demo image_size must be at least 32, got {image_size}")
    if seed < 0 or min(n_train, n_test_good, n_test_defect_per_type) < 1:
        raise UserError("demo seed must be >= 0 and every image count >= 1")
    manifest = _manifest(int(seed), int(image_size), int(n_train), int(n_test_good),
                         int(n_test_defect_per_type), categories)
    if root.is_dir():
        existing = _read_manifest(root)
        if existing == manifest:
            return root
        ours = existing is not None and existing.get("generator") == GENERATOR_NAME
        if not ours and any(root.iterdir()):
            raise UserError(f"{root} exists and is not a demo dataset; choose another folder")

    total = sum(n_train + n_test_good + n_test_defect_per_type * len(CATEGORY_DEFECTS[c])
                for c in categories)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    bar = None
    try:
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="demo dataset", unit="img")
        tick = bar.update if bar is not None else (lambda: None)
        for category in categories:
            _write_category(tmp, category, DEMO_CATEGORIES.index(category), int(seed),
                            int(image_size), int(n_train), int(n_test_good),
                            int(n_test_defect_per_type), tick)
        (tmp / "demo.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if root.exists():  # an outdated demo set (or an empty folder): swap it out
            trash = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(root, trash)
            os.rename(tmp, root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                os.rename(tmp, root)
            except OSError:
                if _read_manifest(root) != manifest:  # lost a race to a different build
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return root


__all__ = ["DEMO_CATEGORIES", "CATEGORY_KIND", "CATEGORY_DEFECTS", "DEFECT_TYPES",
           "AREA_RANGE", "GENERATOR_VERSION",
           "generate_demo", "make_normal", "make_defect_example"]
