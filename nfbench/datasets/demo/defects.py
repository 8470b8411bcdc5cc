"""Demo defects: MVTec AD's kinds (scratch, crack, thread, hole, stain, contamination,
missing, misplaced) drawn as geometric shapes and alpha-composited onto a normal image, with
their exact masks."""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi

from nfbench.datasets.demo.categories import (AREA_RANGE, CATEGORY_DEFECTS, CATEGORY_KIND,
                                              CATEGORY_TINT)
from nfbench.datasets.demo.images import grid, normal_scene, source, to_uint8, warp
from nfbench.errors import UserError

# Foreign material for ``contamination``: (skimage.data name, tint or None for colour images).
_FOREIGN = (("brick", CATEGORY_TINT["brick"]), ("grass", (0.82, 1.0, 0.70)),
            ("gravel", CATEGORY_TINT["gravel"]), ("camera", None), ("moon", None),
            ("astronaut", None), ("coffee", None), ("chelsea", None), ("rocket", None))


@functools.lru_cache(maxsize=None)
def _foreign_rgb(index: int) -> np.ndarray:
    name, tint = _FOREIGN[index]
    image = source(name)
    if image.ndim == 2:
        image = image[..., None] * np.asarray(tint if tint else (1.0, 1.0, 1.0), np.float32)
    image = np.ascontiguousarray(image[..., :3], dtype=np.float32)
    image.setflags(write=False)
    return image


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
        target = warp(foreign, size, src_center, center, rng.uniform(0, 2 * np.pi), zoom)
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
    target = warp(clean, size, center, center, angle, 1.0, order=1)
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
    clean, obj, background = normal_scene(category, rng, image_size)
    size = image_size
    scale = size / 256
    yy, xx = grid(size)
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
    return to_uint8(clean), to_uint8(defective), region


__all__ = ["make_defect_example"]
