"""Dataset registry: each dataset yields a sample table and knows how it is obtained.

``load_table(name, root, categories)`` validates the layout (one clear error naming what is
missing) and returns the sample table; ``obtain(name, root)`` downloads and checks a real
dataset, or builds the offline demo set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from nfbench.datasets import btad, dtd, mtd, mvtec_ad
from nfbench.datasets.base import SAMPLE_COLUMNS, ImageSet, make_table
from nfbench.datasets.download import Archive
from nfbench.errors import UserError
from nfbench.paths import default_dataset_root


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's name, categories, loader and download archives (empty: built locally)."""

    name: str
    categories: tuple[str, ...]
    loader: Callable[..., pd.DataFrame]
    archives: tuple[Archive, ...] = ()
    notice: str | None = None
    description: str = ""


def _load_demo(root: Path, categories: Sequence[str] | None = None) -> pd.DataFrame:
    if not Path(root).is_dir():
        raise UserError(f"demo dataset not found at {root}; run 'nfbench data download demo'")
    return mvtec_ad.load_folder(root, categories)


def _demo_categories() -> tuple[str, ...]:
    from nfbench.datasets.demo.categories import DEMO_CATEGORIES

    return tuple(DEMO_CATEGORIES)


DATASETS: dict[str, DatasetSpec] = {
    "mvtec_ad": DatasetSpec("mvtec_ad", mvtec_ad.CATEGORIES, mvtec_ad.load, mvtec_ad.ARCHIVES,
                            mvtec_ad.LICENCE_NOTICE, "MVTec AD, 15 categories (official layout)"),
    "btad": DatasetSpec("btad", btad.CATEGORIES, btad.load, btad.ARCHIVES, btad.LICENCE_NOTICE,
                        "BTAD, products 01-03"),
    "mtd": DatasetSpec("mtd", mtd.CATEGORIES, mtd.load, mtd.ARCHIVES, mtd.LICENCE_NOTICE,
                       "Magnetic Tile Defects, DifferNet split"),
    "dtd": DatasetSpec("dtd", dtd.CATEGORIES, dtd.load, dtd.ARCHIVES, dtd.LICENCE_NOTICE,
                       "Describable Textures (CLS-CNFs' foreign defect source; no test split)"),
    "demo": DatasetSpec("demo", (), _load_demo, (), None,
                        "offline demo set: scikit-image photographs with generated defects"),
    "folder": DatasetSpec("folder", (), mvtec_ad.load_folder, (), None,
                          "any folder in MVTec AD layout (--root required)"),
}


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset ``name``; a :class:`UserError` listing valid names otherwise."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name]


def categories_of(name: str, root: Path | None = None) -> tuple[str, ...]:
    """Categories of a dataset (for ``demo``/``folder``: the category folders at ``root``)."""
    spec = get_dataset(name)
    if spec.categories:
        return spec.categories
    if name == "demo" and root is None:
        return _demo_categories()
    return tuple(mvtec_ad.find_categories(Path(root or default_dataset_root(name))))


def load_table(name: str, root: Path | None = None,
               categories: Sequence[str] | None = None,
               check_files: bool = True) -> pd.DataFrame:
    """The validated sample table of dataset ``name`` at ``root`` (default location if None).
    ``check_files``: every image and mask must be a readable regular file (one
    :class:`DatasetLayoutError` naming the first that is not, before any digest or run reads
    it; ``data verify`` lists them all instead)."""
    spec = get_dataset(name)
    if name == "folder" and root is None:
        raise UserError("the 'folder' dataset needs --root DIR (a folder in MVTec AD layout)")
    root = Path(root) if root is not None else default_dataset_root(name)
    table = spec.loader(root, categories)
    if check_files:
        from nfbench.datasets.base import check_files_present

        check_files_present(table)
    return table


def image_sets(table: pd.DataFrame, category: str, size: int) -> tuple[ImageSet, ImageSet]:
    """The (train, test) image sets of one category at input size ``size``."""
    rows = table[table["category"] == category]
    if rows.empty:
        raise UserError(f"no images of category {category!r}; available: "
                        f"{', '.join(sorted(table['category'].unique()))}")
    train = ImageSet.from_table(rows[rows["split"] == "train"], size, name=f"{category}/train")
    test = ImageSet.from_table(rows[rows["split"] == "test"], size, name=f"{category}/test")
    test.check_masks()  # before any training: a mask of another size is refused
    return train, test


def obtain(name: str, root: Path | None = None, progress: bool = True) -> Path:
    """Download (and check) dataset ``name`` into ``root``, or build the demo set; a second call
    does nothing."""
    spec = get_dataset(name)
    root = Path(root) if root is not None else default_dataset_root(name)
    if name == "demo":
        from nfbench.datasets.demo.generator import generate_demo

        generate_demo(root, progress=progress)
    elif spec.archives:
        from nfbench.datasets.install import fetch

        fetch(list(spec.archives), root, notice=spec.notice, progress=progress,
              validate=spec.loader)  # layout and counts, before the dataset is installed
    else:
        raise UserError(f"dataset {name!r} cannot be downloaded: point --root at your own copy")
    spec.loader(root)  # validate what is now on disk
    return root


def count_table(table: pd.DataFrame) -> str:
    """Per-category image counts (train, test good, test defective) and the total, as text."""
    lines = [f"{'category':16s} {'train':>6s} {'test good':>10s} {'test defective':>15s}"]
    groups = list(table.groupby("category")) + [("total", table)]
    for category, rows in groups:
        train, good, bad = mvtec_ad.split_counts(rows)
        lines.append(f"{category:16s} {train:6d} {good:10d} {bad:15d}")
    return "\n".join(lines)


__all__ = ["SAMPLE_COLUMNS", "count_table", "ImageSet", "DatasetSpec", "DATASETS", "get_dataset", "load_table",
           "image_sets", "obtain", "categories_of", "make_table"]
