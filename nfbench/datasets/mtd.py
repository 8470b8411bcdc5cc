"""Magnetic Tile Defects (Huang et al., 2020) with DifferNet's train split, as CS-Flow uses it.

Layout: ``<root>/MT_<Class>/Imgs/<name>.jpg`` with a same-name ``<name>.png`` mask beside each
image (masks are never taken for images). Train = the 761 defect-free file names of DifferNet's
split (``mtd_train_filenames.txt``, shipped with nfbench); test = the other 191 defect-free and
the 392 defective images. Images are grayscale; the loader turns them into 3 channels.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Sequence

import pandas as pd

from nfbench.datasets.base import make_table
from nfbench.datasets.download import Archive
from nfbench.errors import DatasetLayoutError

CATEGORIES = ("magnetic_tile",)
DEFECT_CLASSES = ("Blowhole", "Break", "Crack", "Fray", "Uneven")
CLASS_COUNTS = {"Blowhole": 115, "Break": 85, "Crack": 57, "Fray": 32, "Uneven": 103, "Free": 952}
TRAIN_SPLIT_SHA256 = "ddf6ddb1b4a123d9506a4d25e870ad32e2b845386c55201fca8307fdc7e62652"
COMMIT = "cc4eb530b57b9cb7225bf76023873043ffd50655"

ARCHIVES = (
    # The repository has no release or checksum: pin a commit archive (docs/original-code.md §3).
    # GitHub does not guarantee byte-stable tarballs (they are regenerated on demand), so
    # neither its sha256 nor its size is pinned, and nobody has measured them here (no network):
    # the unpacked tree is verified in the staging folder instead, before it is installed and
    # marked complete (every class count and the 761 train names, see load), and the marker
    # records the sha256 and size actually downloaded. Resumes are checked with If-Range.
    Archive(url=f"https://github.com/abin24/Magnetic-tile-defect-datasets./archive/{COMMIT}.tar.gz",
            sha256=None, filename=f"mtd-{COMMIT}.tar.gz",
            inner_root=f"Magnetic-tile-defect-datasets.-{COMMIT}"),
)

LICENCE_NOTICE = ("Magnetic Tile Defects: cite Huang, Qiu and Yuan, 'Surface defect saliency of "
                  "magnetic tile', The Visual Computer 2020.")


def train_filenames() -> list[str]:
    """DifferNet's 761 MTD train file names, verified against the published sha256."""
    data = resources.files("nfbench.datasets").joinpath("mtd_train_filenames.txt").read_bytes()
    if hashlib.sha256(data).hexdigest() != TRAIN_SPLIT_SHA256:
        raise RuntimeError("mtd_train_filenames.txt does not match DifferNet's split (sha256)")
    return [line.strip() for line in data.decode().splitlines() if line.strip()]


def load(root: Path, categories: Sequence[str] | None = None, check_counts: bool = True
         ) -> pd.DataFrame:
    """Sample table of MTD at ``root``."""
    root = Path(root)
    if categories and list(categories) != list(CATEGORIES):
        raise DatasetLayoutError(f"MTD has one category, {CATEGORIES[0]!r}")
    if not root.is_dir():
        raise DatasetLayoutError(f"MTD folder {root} does not exist; run "
                                 "'nfbench data download mtd' or pass --root")
    train_names = set(train_filenames())
    rows, counts = [], {}
    for cls in ("Free",) + DEFECT_CLASSES:
        folder = root / f"MT_{cls}" / "Imgs"
        if not folder.is_dir():
            raise DatasetLayoutError(f"{folder} is missing (expected MTD layout MT_<Class>/Imgs)")
        images = sorted(folder.glob("*.jpg"))
        counts[cls] = len(images)
        for image in images:
            mask = image.with_suffix(".png")
            if cls != "Free" and not mask.is_file():
                raise DatasetLayoutError(f"mask {mask} for {image} is missing")
            is_train = cls == "Free" and image.name in train_names
            rows.append(dict(path=str(image), split="train" if is_train else "test",
                             label=int(cls != "Free"), defect_type=cls.lower(),
                             mask_path=str(mask) if cls != "Free" else None,
                             category=CATEGORIES[0]))
    found_train = {Path(r["path"]).name for r in rows if r["split"] == "train"}
    missing = sorted(train_names - found_train)
    if missing:
        raise DatasetLayoutError(f"{len(missing)} of DifferNet's MTD train images are missing "
                                 f"from {root / 'MT_Free/Imgs'} (first: {missing[0]})")
    if check_counts and counts != CLASS_COUNTS:
        raise DatasetLayoutError(f"MTD image counts {counts} differ from the official {CLASS_COUNTS}")
    return make_table(rows)
