"""Offline demo dataset: real photographs bundled with scikit-image plus synthetic defects.

Why: the benchmark must run end to end without downloading MVTec AD, and the scores it
produces must still mean something. The normal images are therefore crops of real textures
(``brick``, ``grass``, ``gravel``) and a real object (a single ancient ``coin`` from
``skimage.data.coins()`` placed on a plain background), jittered in position, rotation and
illumination. Test defects (scratches, holes, foreign patches, stains) vary in size and
contrast, so some are subtle and image AUROC is not trivially 1.0. Defect shapes are geometric
(curves, ellipses, polygons), deliberately *not* the Perlin-noise masks that some methods use
for their own synthetic training anomalies.

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
GENERATOR_VERSION = "1"
GENERATOR_NAME = "nfbench.datasets.demo"

#: The demo categories; their index here seeds their random streams (subsets give the same images).
DEMO_CATEGORIES: tuple[str, ...] = ("brick", "grass", "gravel", "coin")
CATEGORY_KIND: dict[str, str] = {"brick": "texture", "grass": "texture", "gravel": "texture",
                                 "coin": "object"}
#: Defect types of every category (the test sub-folders besides ``good``).
DEFECT_TYPES: tuple[str, ...] = ("scratch", "hole", "patch", "stain")

# Light colour tints (R, G, B) applied to the grayscale sources.
_TINT = {"brick": (1.0, 0.84, 0.74), "grass": (0.82, 1.0, 0.70), "gravel": (1.0, 0.96, 0.90),
         "coin": (1.0, 0.94, 0.82)}
# Foreign material for ``patch`` defects: (skimage.data name, tint or None for colour images).
_FOREIGN = (("brick", _TINT["brick"]), ("grass", _TINT["grass"]), ("gravel", _TINT["gravel"]),
            ("camera", None), ("moon", None), ("astronaut", None), ("coffee", None),
            ("chelsea", None), ("rocket", None))


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _source(name: str) -> np.ndarray:
    """A bundled scikit-image photograph as float32 in [0, 1] (H×W or H×W×3)."""
    import skimage.data

    image = getattr(skimage.data, name)()
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
    """The largest coin of ``skimage.data.coins()``: (premultiplied gray, alpha), square crop."""
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
    sprite = (pad[sl] * alpha).astype(np.float32), alpha.astype(np.float32)
    for a in sprite:
        a.setflags(write=False)
    return sprite


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
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A coin on a plain dark background: returns (RGB image, object alpha)."""
    premult, alpha = _coin_sprite()
    n = alpha.shape[0]
    diameter_src = 2 * np.sqrt(alpha.sum() / np.pi)
    diameter = size * rng.uniform(0.58, 0.63)
    angle = np.deg2rad(rng.uniform(-30, 30))
    center_out = (size - 1) / 2 + rng.uniform(-0.05, 0.05, size=2) * size
    zoom = diameter_src / diameter
    src_c = ((n - 1) / 2, (n - 1) / 2)
    a = np.clip(_warp(alpha, size, src_c, center_out, angle, zoom, order=3, mode="constant"),
                0, 1)
    p = _warp(premult, size, src_c, center_out, angle, zoom, order=3, mode="constant")
    coin = _photometric(np.where(a > 0.02, p / np.maximum(a, 0.02), 0.0), rng, strength=0.8)

    yy, xx = _grid(size)
    g = rng.normal(0, 1, size=2) * 0.03
    background = (0.22 + rng.uniform(-0.02, 0.02)
                  + g[0] * (yy / size - 0.5) + g[1] * (xx / size - 0.5))
    shift = np.array([1.0, 1.0]) * size / 128
    shadow = ndi.gaussian_filter(ndi.shift(a, shift, order=1), size / 64)
    background = background * (1 - 0.35 * shadow) + rng.normal(0, 0.006, size=(size, size))
    bg_rgb = background[..., None] * np.asarray((0.92, 0.96, 1.0), np.float32)
    tint = np.asarray(_TINT[category], np.float32) * rng.uniform(0.98, 1.02, size=3)
    rgb = bg_rgb * (1 - a[..., None]) + (coin * a)[..., None] * tint
    return np.clip(rgb, 0.0, 1.0).astype(np.float32), a.astype(np.float32)


def _normal(category: str, rng: np.random.Generator, size: int
            ) -> tuple[np.ndarray, np.ndarray | None]:
    if category not in CATEGORY_KIND:
        raise UserError(f"unknown demo category {category!r}; valid: {', '.join(DEMO_CATEGORIES)}")
    if CATEGORY_KIND[category] == "object":
        return _object_normal(category, rng, size)
    return _texture_normal(category, rng, size), None


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


def _ellipse(yy, xx, center, a, b, theta, rng=None, wobble=0.0) -> np.ndarray:
    dy, dx = yy - center[0], xx - center[1]
    c, s = np.cos(theta), np.sin(theta)
    u, v = (c * dx + s * dy) / a, (-s * dx + c * dy) / b
    r = np.sqrt(u * u + v * v)
    if rng is not None and wobble > 0:  # few low-order harmonics: irregular but not noisy
        phi = np.arctan2(v, u)
        bound = np.ones_like(r)
        for k in (2, 3, 5):
            bound += wobble / k * rng.uniform(-1, 1) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
        return r <= bound
    return r <= 1.0


def _scratch(clean, yy, xx, center, scale, rng):
    """Thin curved line, brighter or darker, 1-5 px wide, fading towards its ends."""
    size = clean.shape[0]
    length = _loguniform(rng, 0.08, 0.45) * size
    half_width = rng.uniform(0.5, 2.2) * max(scale, 0.5)
    t = np.linspace(0.0, 1.0, max(8, int(length * 2)))
    theta0 = rng.uniform(0, 2 * np.pi)
    bend = rng.uniform(-1.5, 1.5) * t + rng.uniform(-1.0, 1.0) * t ** 2
    heading = theta0 + bend
    step = length / (len(t) - 1)
    py = np.cumsum(np.sin(heading)) * step
    px = np.cumsum(np.cos(heading)) * step
    py += center[0] - py[len(t) // 2]
    px += center[1] - px[len(t) // 2]
    iy, ix = np.rint(py).astype(int), np.rint(px).astype(int)
    keep = (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size)
    line = np.zeros((size, size), bool)
    where_t = np.zeros((size, size), np.float32)
    line[iy[keep], ix[keep]] = True
    where_t[iy[keep], ix[keep]] = t[keep]
    dist, (ny, nx) = ndi.distance_transform_edt(~line, return_indices=True)
    region = dist <= half_width
    sign = 1.0 if rng.random() < 0.55 else -1.0
    amp = _loguniform(rng, 0.05, 0.45)
    # fades towards the ends
    profile = 0.45 + 0.55 * np.sqrt(np.clip(np.sin(np.pi * where_t[ny, nx]), 0, 1))
    delta = (sign * amp * profile)[..., None].astype(np.float32)
    return region, 1.0, clean + delta


def _hole(clean, yy, xx, center, scale, rng):
    """Dark pit or bright spot: irregular ellipse with a soft inner edge."""
    size = clean.shape[0]
    a = _loguniform(rng, 0.02, 0.09) * size
    b = a * rng.uniform(0.55, 1.0)
    region = _ellipse(yy, xx, center, a, b, rng.uniform(0, np.pi), rng, wobble=0.25)
    soft = rng.uniform(1.0, max(1.5, 0.6 * b))
    if rng.random() < 0.7:  # dark pit, keeps a trace of the texture
        k = _loguniform(rng, 0.12, 0.85)
        tgt = clean * (1 - k)
    else:  # bright spot (e.g. paint drop, reflection)
        k = _loguniform(rng, 0.12, 0.7)
        tgt = clean + (1 - clean) * k
    return region, soft, tgt


def _patch(clean, yy, xx, center, scale, rng, own_category):
    """Foreign material (another photograph) in an irregular polygon, often matched in
    brightness and contrast so only the texture gives it away."""
    from skimage.draw import polygon2mask

    size = clean.shape[0]
    radius = _loguniform(rng, 0.035, 0.14) * size
    n = int(rng.integers(5, 10))
    phi = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.55, 1.0, n)
    verts = np.stack([center[0] + r * np.sin(phi), center[1] + r * np.cos(phi)], axis=1)
    region = polygon2mask((size, size), verts)
    choices = [i for i, (name, _) in enumerate(_FOREIGN) if name != own_category]
    foreign = _foreign_rgb(choices[int(rng.integers(len(choices)))])
    h, w = foreign.shape[:2]
    zoom = _loguniform(rng, 0.5, 2.0) * 512 / max(h, w) * 256 / size
    src_center = (rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w)
    material = _warp(foreign, size, src_center, center, rng.uniform(0, 2 * np.pi), zoom)
    if region.sum() >= 4:
        m_mean, m_std = material[region].mean(0), material[region].std(0) + 1e-3
        c_mean, c_std = clean[region].mean(0), clean[region].std(0) + 1e-3
        if rng.random() < 0.6:  # matched brightness and contrast: a subtle texture change
            shift = rng.uniform(-0.05, 0.05)
            gain = rng.uniform(0.8, 1.25)
        else:
            shift = rng.uniform(-0.2, 0.2)
            gain = rng.uniform(0.5, 1.6)
        material = (material - m_mean) / m_std * (c_std * gain) + c_mean + shift
    opacity = 1.0 if rng.random() < 0.6 else rng.uniform(0.5, 0.95)
    tgt = clean + opacity * (material - clean)
    return region, rng.uniform(0.5, 1.5), tgt


_STAIN_COLOURS = np.array([(-0.15, -0.35, -0.75), (-1.0, -1.0, -1.0), (0.2, -0.2, -0.7),
                           (-0.6, -0.2, 0.4), (0.15, 0.1, -0.6)], np.float32)


def _stain(clean, yy, xx, center, scale, rng):
    """Low-contrast colour cast over a smooth blob (union of ellipses), fading inwards."""
    size = clean.shape[0]
    radius = _loguniform(rng, 0.05, 0.15) * size
    region = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(2, 5))):
        off = rng.normal(0, 0.45 * radius, size=2)
        a = radius * rng.uniform(0.45, 0.9)
        region |= _ellipse(yy, xx, (center[0] + off[0], center[1] + off[1]), a,
                           a * rng.uniform(0.5, 1.0), rng.uniform(0, np.pi))
    colour = _STAIN_COLOURS[int(rng.integers(len(_STAIN_COLOURS)))]
    amp = _loguniform(rng, 0.06, 0.35)
    tgt = np.clip(clean * (1 + amp * colour), 0, 1)
    return region, rng.uniform(0.25, 0.6) * radius, tgt


def make_defect_example(category: str, defect_type: str, rng: np.random.Generator,
                        image_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(clean, defective, mask)`` for one test image: H×W×3 uint8 images and a bool mask.

    The defect is alpha-composited onto the clean image; ``mask`` is ``alpha > 0.5``. Only an
    anti-aliased rim at most ~1.5 px wide outside the mask is touched besides it, so
    ``defective == clean`` wherever a 2-pixel dilation of ``mask`` is False.
    """
    if defect_type not in DEFECT_TYPES:
        raise UserError(f"unknown demo defect type {defect_type!r}; "
                        f"valid: {', '.join(DEFECT_TYPES)}")
    clean, obj = _normal(category, rng, image_size)
    size = image_size
    scale = size / 256
    yy, xx = _grid(size)
    if obj is not None:  # defects lie on the object, not on the background
        allowed = ndi.binary_erosion(obj > 0.5, iterations=max(1, int(round(2 * scale))))
        anchors = np.flatnonzero(ndi.binary_erosion(obj > 0.5, iterations=max(1, size // 16)))
    else:
        allowed = None
        margin = int(0.08 * size)
        inner = np.zeros((size, size), bool)
        inner[margin:size - margin, margin:size - margin] = True
        anchors = np.flatnonzero(inner)
    for _ in range(50):
        center = np.array(np.unravel_index(anchors[int(rng.integers(len(anchors)))],
                                           (size, size)), float) + rng.uniform(-0.5, 0.5, 2)
        if defect_type == "scratch":
            region, soft, target = _scratch(clean, yy, xx, center, scale, rng)
        elif defect_type == "hole":
            region, soft, target = _hole(clean, yy, xx, center, scale, rng)
        elif defect_type == "patch":
            region, soft, target = _patch(clean, yy, xx, center, scale, rng, category)
        else:
            region, soft, target = _stain(clean, yy, xx, center, scale, rng)
        if allowed is not None:
            region &= allowed
        if region.sum() >= max(4, int(8 * scale * scale)):
            break
    alpha = _alpha(region, soft)
    target = np.clip(target, 0.0, 1.0)
    defective = clean + alpha[..., None] * (target - clean)  # exactly clean where alpha == 0
    return _to_uint8(clean), _to_uint8(defective), region


# --------------------------------------------------------------------------------------------
# dataset on disk
# --------------------------------------------------------------------------------------------

def _manifest(seed: int, image_size: int, n_train: int, n_test_good: int, n_defect: int,
              categories: Sequence[str]) -> dict:
    counts = {c: {"train": {"good": n_train},
                  "test": {"good": n_test_good, **{d: n_defect for d in DEFECT_TYPES}}}
              for c in categories}
    return {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "seed": seed,
            "image_size": image_size, "n_train": n_train, "n_test_good": n_test_good,
            "n_test_defect_per_type": n_defect, "categories": list(categories),
            "category_kind": {c: CATEGORY_KIND[c] for c in categories},
            "defect_types": list(DEFECT_TYPES), "counts": counts}


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
    for d_index, defect in enumerate(DEFECT_TYPES, start=1):
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

    per_category = n_train + n_test_good + n_test_defect_per_type * len(DEFECT_TYPES)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    bar = None
    try:
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=per_category * len(categories), desc="demo dataset", unit="img")
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


__all__ = ["DEMO_CATEGORIES", "CATEGORY_KIND", "DEFECT_TYPES", "GENERATOR_VERSION",
           "generate_demo", "make_normal", "make_defect_example"]
