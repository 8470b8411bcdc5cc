"""MVTec AD (Bergmann et al., CVPR 2019 / IJCV 2021) in its official layout.

``<root>/<category>/train/good/*.png``, ``<root>/<category>/test/{good,<defect>}/*.png``,
``<root>/<category>/ground_truth/<defect>/<name>_mask.png``. The same scanner serves the demo
set and any user folder in this layout (``folder`` dataset), without the official counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from nfbench.datasets.base import make_table
from nfbench.datasets.download import Archive
from nfbench.errors import DatasetLayoutError

TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
OBJECTS = ("bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw",
           "toothbrush", "transistor", "zipper")
CATEGORIES = tuple(sorted(TEXTURES + OBJECTS))

#: (train good, test good, test defective) per category; docs/original-code.md §2 (totals 3629 /
#: 467 / 1258 as published by MVTec).
OFFICIAL_COUNTS = {
    "bottle": (209, 20, 63), "cable": (224, 58, 92), "capsule": (219, 23, 109),
    "carpet": (280, 28, 89), "grid": (264, 21, 57), "hazelnut": (391, 40, 70),
    "leather": (245, 32, 92), "metal_nut": (220, 22, 93), "pill": (267, 26, 141),
    "screw": (320, 41, 119), "tile": (230, 33, 84), "toothbrush": (60, 12, 30),
    "transistor": (213, 60, 40), "wood": (247, 19, 60), "zipper": (240, 32, 119),
}

ARCHIVES = (
    Archive(url="https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/"
                "download/420938113-1629952094/mvtec_anomaly_detection.tar.xz",
            sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
            filename="mvtec_anomaly_detection.tar.xz", size=4_900_000_000),
)

LICENCE_NOTICE = ("MVTec AD is distributed under CC BY-NC-SA 4.0 "
                  "(https://creativecommons.org/licenses/by-nc-sa/4.0/): non-commercial use only; "
                  "cite Bergmann et al., IJCV 2021 and CVPR 2019.")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def scan_category(root: Path, category: str) -> list[dict]:
    """Rows of one category folder in MVTec layout; raises :class:`DatasetLayoutError` naming
    the first missing folder or mask."""
    base = Path(root) / category
    for required in ("train/good", "test"):
        if not (base / required).is_dir():
            raise DatasetLayoutError(f"{base / required} is missing (expected MVTec AD layout "
                                     "<category>/train/good, <category>/test/<type>)")
    rows = [dict(path=str(p), split="train", label=0, defect_type="good", mask_path=None,
                 category=category) for p in _images(base / "train" / "good")]
    for type_dir in sorted(d for d in (base / "test").iterdir() if d.is_dir()):
        defect = type_dir.name
        for image in _images(type_dir):
            mask = None
            if defect != "good":
                mask = base / "ground_truth" / defect / f"{image.stem}_mask.png"
                if not mask.is_file():
                    raise DatasetLayoutError(f"mask {mask} for test image {image} is missing")
            rows.append(dict(path=str(image), split="test", label=int(defect != "good"),
                             defect_type=defect, mask_path=None if mask is None else str(mask),
                             category=category))
    if not any(r["split"] == "train" for r in rows):
        raise DatasetLayoutError(f"{base / 'train/good'} holds no images (expected normal "
                                 f"training images, {'/'.join(IMAGE_SUFFIXES)})")
    if not any(r["split"] == "test" for r in rows):
        raise DatasetLayoutError(f"{base / 'test'} holds no images (expected test/good/* and "
                                 "test/<defect type>/* images)")
    return rows


def find_categories(root: Path) -> list[str]:
    """Sub-folders of ``root`` that look like MVTec categories (have ``train/good``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset folder {root} does not exist")
    return sorted(d.name for d in root.iterdir() if (d / "train" / "good").is_dir())


def split_counts(table: pd.DataFrame) -> tuple[int, int, int]:
    """(train, test good, test defective) image counts of a sample table."""
    train = int((table["split"] == "train").sum())
    test = table[table["split"] == "test"]
    return train, int((test["label"] == 0).sum()), int((test["label"] == 1).sum())


def load(root: Path, categories: Sequence[str] | None = None, check_counts: bool = True
         ) -> pd.DataFrame:
    """Sample table of MVTec AD at ``root``; every requested category must have the official
    image counts (a truncated or mixed-up copy fails loudly)."""
    categories = list(categories or CATEGORIES)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise DatasetLayoutError(f"unknown MVTec AD categories {unknown}; valid: {', '.join(CATEGORIES)}")
    if not Path(root).is_dir():
        raise DatasetLayoutError(f"MVTec AD folder {root} does not exist; run "
                                 "'nfbench data download mvtec_ad' or pass --root")
    tables = []
    for category in categories:
        table = make_table(scan_category(Path(root), category))
        counts = split_counts(table)
        if check_counts and counts != OFFICIAL_COUNTS[category]:
            raise DatasetLayoutError(
                f"MVTec AD {category}: found (train, test good, test defective) = {counts}, "
                f"expected {OFFICIAL_COUNTS[category]}")
        tables.append(table)
    return make_table(pd.concat(tables).to_dict("records"))


def load_folder(root: Path, categories: Sequence[str] | None = None) -> pd.DataFrame:
    """Any folder in MVTec layout (the demo set, a user's own data): no official counts."""
    found = find_categories(Path(root))
    categories = list(categories or found)
    missing = [c for c in categories if c not in found]
    if missing:
        raise DatasetLayoutError(f"{root}: no category folder(s) {missing} with train/good; "
                                 f"found: {', '.join(found) or 'none'}")
    if not categories:
        raise DatasetLayoutError(f"{root} holds no category folder: expected MVTec AD layout "
                                 "<category>/train/good/*.png and <category>/test/<type>/*.png")
    rows = [row for c in categories for row in scan_category(Path(root), c)]
    return make_table(rows)
