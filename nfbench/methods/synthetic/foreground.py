"""Object (foreground) masks of CLS-CNFs' synthetic defects, ``M_o`` (§III-A; AD-CLSCNFs
``custom_datasets/synthetic_data_loader.py``, ``docs/original-code.md`` §1b
"Object mask"): where on a normal image a defect may be drawn, with the original's
per-category rules.

PatchFlow's original restricts its validation defects to a gray > 50 foreground as well; that
needs per-category knowledge and nfbench leaves it out (:mod:`.validation`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from nfbench.methods import package_data
from nfbench.errors import check_choice

# ------------------------------------------------------------------------------------------
# object-mask rules of the original code (AD-CLSCNFs custom_datasets/synthetic_data_loader.py)
# ------------------------------------------------------------------------------------------

OBJECT_MASK_MODES = ("auto", "dark", "bright", "none")


def _object_mask_rules() -> dict[str, tuple[str, bool]]:
    """``{category: (mode, fill_holes)}`` from ``object_masks.yaml`` beside this module (the
    original's category lists, and the demo categories' modes), checked here."""
    name = "object_masks.yaml"
    data = package_data.load(__file__, name)
    lists = ("bright", "whole_image", "no_fill", "dark")
    if set(data) != {*lists, "demo"}:
        package_data.fail(__file__, name, "top", f"expected the keys {', '.join(lists)}, demo")
    for key in lists:
        if not isinstance(data[key], list) or not all(isinstance(c, str) for c in data[key]):
            package_data.fail(__file__, name, key, "expected a list of category names")
    demo = data["demo"]
    if not isinstance(demo, dict) or not set(demo.values()) <= set(OBJECT_MASK_MODES[1:]):
        package_data.fail(__file__, name, "demo",
                          f"expected {{category: {' | '.join(OBJECT_MASK_MODES[1:])}}}")
    no_fill = set(data["no_fill"])
    return {
        **{c: ("bright", c not in no_fill) for c in data["bright"]},
        **{c: ("none", True) for c in data["whole_image"]},
        **{c: ("dark", c not in no_fill) for c in data["dark"]},
        **{c: (mode, True) for c, mode in demo.items()},
    }


OBJECT_MASK_RULES: dict[str, tuple[str, bool]] = _object_mask_rules()


def object_mask_rule(category: str | None, mode: str = "auto") -> tuple[str, bool]:
    """``(mode, fill_holes)`` for ``category``: the original's rule under ``auto`` (whole image
    for categories it does not know), else ``mode`` with hole filling."""
    check_choice("object_mask", mode, OBJECT_MASK_MODES)
    if mode != "auto":
        return mode, True
    return OBJECT_MASK_RULES.get(category or "", ("none", True))


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
