"""The sample table every dataset yields, and the image sets the methods consume.

A *sample table* is a pandas DataFrame with one row per image and the columns of
:data:`SAMPLE_COLUMNS`. An :class:`ImageSet` is a slice of such a table (one category, one
split) together with the square input size the methods see; it loads images as float tensors
in [0, 1] (the backbone applies its own normalisation) and masks as boolean arrays, and it has
a content fingerprint that keys the feature cache.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from nfbench.datasets.content_hash import files_sha1
from nfbench.errors import DatasetLayoutError

SAMPLE_COLUMNS = ["path", "split", "label", "defect_type", "mask_path", "category"]
"""Columns of a sample table: ``label`` is 0 (normal) or 1 (anomalous); ``mask_path`` is
``None`` for normal images (an all-zero mask)."""


def make_table(rows: Sequence[dict]) -> pd.DataFrame:
    """Build a sample table from row dicts, in a stable (category, split, path) order."""
    table = pd.DataFrame(list(rows), columns=SAMPLE_COLUMNS)
    if table.empty:
        return table
    table["label"] = table["label"].astype(int)
    table = table.sort_values(["category", "split", "path"], kind="stable")
    return table.reset_index(drop=True)


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """Read an image as RGB (grayscale replicated to 3 channels), resized to ``size``² bilinearly
    with antialiasing; returns a float tensor ``[3, size, size]`` in [0, 1]."""
    with _open_image(path, "image") as img:
        try:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt pixel data
            raise DatasetLayoutError(f"cannot read image {path}: {exc}") from None
    tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=True)
    return tensor[0].clamp_(0.0, 1.0)


def _open_image(path: str | Path, what: str) -> Image.Image:
    """``Image.open`` with one clear error for a missing, empty or non-image file."""
    try:
        return Image.open(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = "empty file" if Path(path).is_file() and Path(path).stat().st_size == 0 \
            else str(exc)
        raise DatasetLayoutError(f"cannot read {what} {path}: {reason}") from None


def image_size(path: str | Path, what: str = "image") -> tuple[int, int]:
    """``(width, height)`` of an image file from its header (the pixels are not decoded)."""
    with _open_image(path, what) as img:
        return img.size


def check_readable(path: str | Path, what: str = "image") -> tuple[int, int]:
    """Open ``path`` once: header, size and (PNG) chunk checksums, so a 0-byte, truncated or
    non-image file raises :class:`DatasetLayoutError` naming it. Returns ``(width, height)``."""
    with _open_image(path, what) as img:
        size = img.size
        try:
            img.verify()
        except Exception as exc:  # PIL raises many types for damaged data
            raise DatasetLayoutError(f"cannot read {what} {path}: {exc}") from None
    return size


def mask_size_problem(mask_path: str | Path, image_path: str | Path,
                      mask_size: tuple[int, int] | None = None) -> str | None:
    """The one mask rule: a mask must have its image's size (a mask of another size would be
    stretched silently). Returns the problem as a sentence, or None. Reads headers only."""
    mask_size = mask_size or image_size(mask_path, "mask")
    size = image_size(image_path)
    if tuple(mask_size) == tuple(size):
        return None
    return (f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image {image_path} "
            f"is {size[0]}x{size[1]}")


def check_files_present(table: pd.DataFrame) -> None:
    """Every image and mask of ``table`` is a regular file this process may read: a symlink
    loop, a link to a folder, a folder or a file without read permission is one
    :class:`DatasetLayoutError` naming it (one ``stat`` per file; no file is opened)."""
    for column, what in (("path", "image"), ("mask_path", "mask")):
        for path in table[column]:
            if not isinstance(path, (str, Path)):
                continue  # no mask (a normal image)
            try:
                mode = os.stat(path).st_mode  # follows links: a loop fails here (ELOOP)
            except OSError as exc:
                raise DatasetLayoutError(f"cannot read {what} {path}: "
                                         f"{exc.strerror or exc}") from None
            if not stat.S_ISREG(mode):
                raise DatasetLayoutError(f"cannot read {what} {path}: not a regular file")
            if not os.access(path, os.R_OK):
                raise DatasetLayoutError(f"cannot read {what} {path}: permission denied")


def verify_files(table: pd.DataFrame) -> list[str]:
    """Open every image and mask of ``table`` once (header, size, PNG checksums, see
    :func:`check_readable`); one sentence per unreadable file or mismatched mask."""
    problems = []
    for image, mask in zip(table["path"], table["mask_path"]):
        try:
            check_readable(image, "image")
            if isinstance(mask, str):
                problem = mask_size_problem(mask, image, check_readable(mask, "mask"))
                if problem:
                    problems.append(problem)
        except DatasetLayoutError as exc:
            problems.append(str(exc))
    return problems


def load_mask(path: str | Path | None, size: int, image_path: str | Path | None = None
              ) -> np.ndarray:
    """Read a ground-truth mask binarised with ``> 0`` and resized by nearest neighbour;
    ``None`` gives an all-false mask. Returns ``bool [size, size]``. With ``image_path``, a
    mask whose size differs from its image's is refused (it would be stretched silently)."""
    if path is None or (isinstance(path, float) and np.isnan(path)):
        return np.zeros((size, size), dtype=bool)
    with _open_image(path, "mask") as img:
        problem = image_path is not None and mask_size_problem(path, image_path, img.size)
        if problem:
            raise DatasetLayoutError(problem)
        try:
            binary = np.asarray(img.convert("L")) > 0
        except (OSError, SyntaxError, ValueError) as exc:
            raise DatasetLayoutError(f"cannot read mask {path}: {exc}") from None
    pil = Image.fromarray(binary.astype(np.uint8) * 255)
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.NEAREST)
    return np.asarray(pil) > 0


@dataclass(frozen=True)
class ImageSet:
    """The images of one split of one category, as a method sees them.

    ``paths`` are image files, ``labels`` 0/1 per image, ``mask_paths`` a mask file or ``None``
    per image, ``size`` the square side every image is resized to. Use :meth:`from_table`.
    """

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    mask_paths: tuple[str | None, ...]
    size: int
    defect_types: tuple[str, ...] = ()
    name: str = ""
    _fingerprint: list = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def from_table(cls, table: pd.DataFrame, size: int, name: str = "") -> "ImageSet":
        masks = tuple(None if (m is None or (isinstance(m, float) and np.isnan(m))) else str(m)
                      for m in table["mask_path"])
        return cls(paths=tuple(str(p) for p in table["path"]),
                   labels=tuple(int(v) for v in table["label"]),
                   mask_paths=masks, size=int(size),
                   defect_types=tuple(str(d) for d in table["defect_type"]), name=name)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> "ImageSet":
        """The images at ``indices`` (e.g. 16 shots), in that order."""
        pick = lambda seq: tuple(seq[i] for i in indices) if seq else ()
        return ImageSet(pick(self.paths), pick(self.labels), pick(self.mask_paths), self.size,
                        pick(self.defect_types), self.name)

    def with_size(self, size: int) -> "ImageSet":
        """The same images at another input size."""
        return ImageSet(self.paths, self.labels, self.mask_paths, int(size), self.defect_types,
                        self.name)

    def load_images(self, indices: Sequence[int] | None = None) -> torch.Tensor:
        """Images as ``float [N, 3, size, size]`` in [0, 1]."""
        indices = range(len(self)) if indices is None else indices
        return torch.stack([load_image(self.paths[i], self.size) for i in indices])

    def load_masks(self) -> np.ndarray:
        """Ground-truth masks as ``bool [N, size, size]`` (all false for normal images)."""
        return np.stack([load_mask(m, self.size, image) for m, image in
                         zip(self.mask_paths, self.paths)])

    def check_masks(self) -> None:
        """Refuse (:class:`DatasetLayoutError`) a mask whose size differs from its image's,
        reading file headers only."""
        for mask, image in zip(self.mask_paths, self.paths):
            problem = mask is not None and mask_size_problem(mask, image)
            if problem:
                raise DatasetLayoutError(problem)

    @property
    def fingerprint(self) -> str:
        """sha1 over the ordered image contents and the input size: any changed, added,
        removed or reordered image gives a new fingerprint (it keys the feature cache). File
        contents are hashed once per version of a file (:mod:`nfbench.datasets.content_hash`)."""
        if not self._fingerprint:
            digest = hashlib.sha1(f"size={self.size};n={len(self)}".encode())
            for content in files_sha1(list(self.paths)):
                digest.update(content.encode())
            self._fingerprint.append(digest.hexdigest())
        return self._fingerprint[0]
