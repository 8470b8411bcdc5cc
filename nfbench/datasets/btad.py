"""BTAD / BeanTech AD (Mishra et al., 2021): products 01, 02, 03.

Layout: ``<root>/<product>/train/ok``, ``test/ok``, ``test/ko``, ``ground_truth/ko``. Images
and masks are ``.bmp`` or ``.png``; a mask is matched by the image's exact stem (never by
stripping characters from the name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from nfbench.datasets.base import make_table
from nfbench.datasets.download import Archive
from nfbench.datasets.mvtec_ad import IMAGE_SUFFIXES
from nfbench.errors import DatasetLayoutError

CATEGORIES = ("01", "02", "03")

ARCHIVES = (
    Archive(url="https://avires.dimi.uniud.it/papers/btad/btad.zip",
            sha256="461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
            filename="btad.zip", inner_root="BTech_Dataset_transformed"),
)

LICENCE_NOTICE = ("BTAD is distributed by the University of Udine (README in the archive: "
                  "CC BY-SA); cite Mishra et al., 'VT-ADL', ISIE 2021.")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _mask_for(image: Path, mask_dir: Path) -> Path:
    for suffix in (".png", ".bmp"):
        candidate = mask_dir / f"{image.stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise DatasetLayoutError(f"no mask {mask_dir / image.stem}.png or .bmp for {image}")


def load(root: Path, categories: Sequence[str] | None = None) -> pd.DataFrame:
    """Sample table of BTAD at ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"BTAD folder {root} does not exist; run "
                                 "'nfbench data download btad' or pass --root")
    categories = list(categories or CATEGORIES)
    rows = []
    for product in categories:
        if product not in CATEGORIES:
            raise DatasetLayoutError(f"unknown BTAD product {product!r}; valid: 01, 02, 03")
        base = root / product
        for required in ("train/ok", "test/ok", "test/ko", "ground_truth/ko"):
            if not (base / required).is_dir():
                raise DatasetLayoutError(f"{base / required} is missing (expected BTAD layout)")
        for split, folder, label in (("train", "train/ok", 0), ("test", "test/ok", 0),
                                     ("test", "test/ko", 1)):
            for image in _images(base / folder):
                mask = _mask_for(image, base / "ground_truth" / "ko") if label else None
                rows.append(dict(path=str(image), split=split, label=label,
                                 defect_type="ko" if label else "ok",
                                 mask_path=None if mask is None else str(mask), category=product))
    return make_table(rows)
