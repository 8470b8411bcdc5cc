"""DTD, the Describable Textures Dataset (Cimpoi et al., CVPR 2014): the foreign-texture
source of CLS-CNFs' synthetic defects (§III-A) in the paper profile. Not an anomaly dataset:
its sample table lists every texture image as a normal ``train`` image of its class.

Layout (the official tarball): ``<root>/images/<class>/*.jpg``, 47 classes x 120 images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from nfbench.datasets.base import make_table
from nfbench.datasets.download import Archive
from nfbench.errors import DatasetLayoutError

CATEGORIES = (
    "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked",
    "crosshatched", "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy",
    "grid", "grooved", "honeycombed", "interlaced", "knitted", "lacelike", "lined", "marbled",
    "matted", "meshed", "paisley", "perforated", "pitted", "pleated", "polka-dotted", "porous",
    "potholed", "scaly", "smeared", "spiralled", "sprinkled", "stained", "stratified", "striped",
    "studded", "swirly", "veined", "waffled", "woven", "wrinkled", "zigzagged")
IMAGES_PER_CLASS = 120

# The official archive (docs/original-code.md §1b); no checksum is published, so the download is
# checked by its file list: every class folder with its 120 images.
ARCHIVES = (
    Archive(url="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
            sha256=None, filename="dtd-r1.0.1.tar.gz", inner_root="dtd", size=625_000_000),
)

LICENCE_NOTICE = ("DTD is provided by the Visual Geometry Group, University of Oxford, for "
                  "research purposes; cite Cimpoi et al., 'Describing Textures in the Wild', "
                  "CVPR 2014.")


def load(root: Path, categories: Sequence[str] | None = None) -> pd.DataFrame:
    """Sample table of DTD at ``root`` (every image a normal ``train`` image of its class)."""
    images = Path(root) / "images"
    if not images.is_dir():
        raise DatasetLayoutError(f"DTD folder {images} does not exist; run "
                                 "'nfbench data download dtd' or pass --root")
    rows = []
    for name in categories or CATEGORIES:
        files = sorted((images / name).glob("*.jpg"))
        if len(files) != IMAGES_PER_CLASS:
            raise DatasetLayoutError(f"{images / name}: {len(files)} images, expected "
                                     f"{IMAGES_PER_CLASS} (incomplete DTD copy)")
        rows += [dict(path=str(p), split="train", label=0, defect_type="good", mask_path=None,
                      category=name) for p in files]
    return make_table(rows)
