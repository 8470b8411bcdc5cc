"""Dataset registry: each dataset yields a sample table and knows how it is obtained.

``load_table(name, root, categories)`` validates the layout (one clear error naming what is
missing) and returns the sample table; ``obtain(name, root)`` downloads and checks a real
dataset, or builds the offline demo set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pandas as pd

from nfbench.datasets import btad, dtd, mtd, mvtec_ad
from nfbench.datasets.base import SAMPLE_COLUMNS, ImageSet, make_table
from nfbench.datasets.demo.categories import CATEGORY_KIND, DEMO_CATEGORIES
from nfbench.datasets.download import Archive
from nfbench.errors import UserError
from nfbench.paths import default_dataset_root


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's facts: name, categories, loader, download archives (empty: built locally or
    brought by the user), and what the pipeline and reports read instead of naming datasets:

    * ``label``: the name as a reader knows it (reports);
    * ``stand_in``: an offline stand-in whose numbers are not comparable with the papers';
    * ``categories_at_root``: its categories are the folders found at ``--root`` (a category's
      table is then loaded whole); ``categories`` are those of the default folder;
    * ``needs_root``: no default folder, ``--root`` is required;
    * ``category_kinds``: ``{category: "texture" | "object"}`` where the dataset has the split;
    * ``images_per_category``: (train, test) images of a mean category, for the cost model;
    * ``build``: ``build(root, progress)`` makes the dataset locally instead of downloading.
    """

    name: str
    categories: tuple[str, ...]
    loader: Callable[..., pd.DataFrame]
    archives: tuple[Archive, ...] = ()
    notice: str | None = None
    description: str = ""
    label: str = ""
    stand_in: bool = False
    categories_at_root: bool = False
    needs_root: bool = False
    category_kinds: Mapping[str, str] = field(default_factory=dict)
    images_per_category: tuple[int, int] | None = None
    build: Callable[[Path, bool], None] | None = None


def _load_demo(root: Path, categories: Sequence[str] | None = None) -> pd.DataFrame:
    if not Path(root).is_dir():
        raise UserError(f"demo dataset not found at {root}; run 'nfbench data download demo'")
    return mvtec_ad.load_folder(root, categories)


def _build_demo(root: Path, progress: bool) -> None:
    from nfbench.datasets.demo.generator import generate_demo

    generate_demo(root, progress=progress)


def _mean_counts(counts: Mapping[str, tuple[int, ...]]) -> tuple[int, int]:
    """(train, test) images of a mean category from per-category (train, test...) counts."""
    train = sum(c[0] for c in counts.values())
    test = sum(sum(c[1:]) for c in counts.values())
    return round(train / len(counts)), round(test / len(counts))


_MVTEC_KINDS = {**{c: "texture" for c in mvtec_ad.TEXTURES},
                **{c: "object" for c in mvtec_ad.OBJECTS}}

DATASETS: dict[str, DatasetSpec] = {
    "mvtec_ad": DatasetSpec("mvtec_ad", mvtec_ad.CATEGORIES, mvtec_ad.load, mvtec_ad.ARCHIVES,
                            mvtec_ad.LICENCE_NOTICE, "MVTec AD, 15 categories (official layout)",
                            label="MVTec AD", category_kinds=_MVTEC_KINDS,
                            images_per_category=_mean_counts(mvtec_ad.OFFICIAL_COUNTS)),
    "btad": DatasetSpec("btad", btad.CATEGORIES, btad.load, btad.ARCHIVES, btad.LICENCE_NOTICE,
                        "BTAD, products 01-03", label="BTAD",
                        images_per_category=(600, 247)),  # 1799 train / 741 test over 3
    "mtd": DatasetSpec("mtd", mtd.CATEGORIES, mtd.load, mtd.ARCHIVES, mtd.LICENCE_NOTICE,
                       "Magnetic Tile Defects, DifferNet split", label="Magnetic Tile Defects",
                       # 952 defect-free (80 % train) + 392 defective
                       images_per_category=(762, 582)),
    "dtd": DatasetSpec("dtd", dtd.CATEGORIES, dtd.load, dtd.ARCHIVES, dtd.LICENCE_NOTICE,
                       "Describable Textures (CLS-CNFs' foreign defect source; no test split)",
                       label="Describable Textures"),
    "demo": DatasetSpec("demo", DEMO_CATEGORIES, _load_demo, (), None,
                        "offline demo set: scikit-image photographs with generated defects",
                        label="demo set", stand_in=True, categories_at_root=True,
                        category_kinds=CATEGORY_KIND, build=_build_demo,
                        # the generator's defaults: 60 train, 20 good + 4 types x 8 defective
                        images_per_category=(60, 52)),
    "folder": DatasetSpec("folder", (), mvtec_ad.load_folder, (), None,
                          "any folder in MVTec AD layout (--root required)", label="folder",
                          categories_at_root=True, needs_root=True),
}
#: the dataset whose counts stand for one the cost model knows none of (an MVTec AD category)
TYPICAL_DATASET = "mvtec_ad"


def images_per_category(name: str) -> tuple[int, int]:
    """(train, test) images of a mean category of dataset ``name``, for the cost model; an
    MVTec AD category's for a dataset without counts (``folder``, an unknown name)."""
    spec = DATASETS.get(name)
    if spec is None or spec.images_per_category is None:
        return DATASETS[TYPICAL_DATASET].images_per_category
    return spec.images_per_category


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset ``name``; a :class:`UserError` listing valid names otherwise."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name]


def categories_of(name: str, root: Path | None = None) -> tuple[str, ...]:
    """Categories of a dataset (where they are the folders at ``root``, e.g. ``demo`` and
    ``folder``: those found there, or the declared ones when no ``root`` is given)."""
    spec = get_dataset(name)
    if spec.categories_at_root and (root is not None or not spec.categories):
        return tuple(mvtec_ad.find_categories(Path(root or default_dataset_root(name))))
    return spec.categories


def load_table(name: str, root: Path | None = None,
               categories: Sequence[str] | None = None,
               check_files: bool = True) -> pd.DataFrame:
    """The validated sample table of dataset ``name`` at ``root`` (default location if None).
    ``check_files``: every image and mask must be a readable regular file (one
    :class:`DatasetLayoutError` naming the first that is not, before any digest or run reads
    it; ``data verify`` lists them all instead)."""
    spec = get_dataset(name)
    if spec.needs_root and root is None:
        raise UserError(f"the {name!r} dataset needs --root DIR (a folder in MVTec AD layout)")
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
    if spec.build is not None:
        spec.build(root, progress)
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
           "images_per_category",
           "image_sets", "obtain", "categories_of", "make_table"]
