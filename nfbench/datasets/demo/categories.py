"""The demo categories and their defect kinds: the parameters every demo image is drawn from."""

from __future__ import annotations

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

#: Light colour tints (R, G, B) applied to the grayscale sources.
CATEGORY_TINT: dict[str, tuple[float, float, float]] = {
    "brick": (1.0, 0.84, 0.74), "gravel": (1.0, 0.96, 0.90), "coin": (1.0, 0.94, 0.82),
    "logo": (1.0, 1.0, 1.0)}

__all__ = ["DEMO_CATEGORIES", "CATEGORY_KIND", "CATEGORY_DEFECTS", "DEFECT_TYPES", "AREA_RANGE",
           "CATEGORY_TINT"]
