"""Writes the demo set to disk in MVTec AD layout, deterministically and atomically."""

from __future__ import annotations

import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

import numpy as np

from nfbench.datasets.demo.categories import (AREA_RANGE, CATEGORY_DEFECTS, CATEGORY_KIND,
                                              DEMO_CATEGORIES)
from nfbench.datasets.demo.defects import make_defect_example
from nfbench.datasets.demo.images import make_normal
from nfbench.datasets.staging import (cleanup_on_terminate, new_staging_dir,
                                      remove_stale_staging, replace_tree)
from nfbench.errors import UserError

#: Bump whenever the images produced for a given seed change.
GENERATOR_VERSION = "2"
#: Recorded in ``demo.json`` to tell our demo sets from other folders (the package's name, kept
#: as a literal: existing demo sets must still be recognised when the code moves).
GENERATOR_NAME = "nfbench.datasets.demo"


def _manifest(seed: int, image_size: int, n_train: int, n_test_good: int, n_defect: int,
              categories: Sequence[str]) -> dict:
    counts = {c: {"train": {"good": n_train},
                  "test": {"good": n_test_good, **{d: n_defect for d in CATEGORY_DEFECTS[c]}}}
              for c in categories}
    return {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "seed": seed,
            "image_size": image_size, "n_train": n_train, "n_test_good": n_test_good,
            "n_test_defect_per_type": n_defect, "categories": list(categories),
            "category_kind": {c: CATEGORY_KIND[c] for c in categories},
            "defect_types": {c: list(CATEGORY_DEFECTS[c]) for c in categories},
            "area_range": list(AREA_RANGE), "counts": counts}


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / "demo.json").read_text())
    except (OSError, ValueError):
        return None


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG", compress_level=3)


def _write_category(base: Path, category: str, cat_index: int, seed: int, size: int,
                    n_train: int, n_test_good: int, n_defect: int, tick=None) -> None:
    """One category's images and masks under ``base``; ``tick()`` after each image."""
    tick = tick or (lambda: None)

    def name(i: int, n: int) -> str:
        return f"{i:0{max(3, len(str(n - 1)))}d}"

    for split, code, n in (("train", 0, n_train), ("test", 1, n_test_good)):
        folder = base / category / split / "good"
        folder.mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng([seed, cat_index, code, 0, i])
            _save_png(make_normal(category, rng, size), folder / f"{name(i, n)}.png")
            tick()
    for d_index, defect in enumerate(CATEGORY_DEFECTS[category], start=1):
        images = base / category / "test" / defect
        masks = base / category / "ground_truth" / defect
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for i in range(n_defect):
            rng = np.random.default_rng([seed, cat_index, 1, d_index, i])
            _, defective, mask = make_defect_example(category, defect, rng, size)
            _save_png(defective, images / f"{name(i, n_defect)}.png")
            _save_png(mask.astype(np.uint8) * 255, masks / f"{name(i, n_defect)}_mask.png")
            tick()


def _write_categories(base: Path, categories: tuple[str, ...], seed: int, size: int,
                      n_train: int, n_test_good: int, n_defect: int, tick) -> None:
    """Every category's images, one category per core (fork; the images do not depend on
    the order: each has its own generator); ``tick(n)`` as each category ends. A failure
    ends the other workers before it is raised, so that nothing writes after the caller
    removes the staging folder."""
    tasks = [(base, c, DEMO_CATEGORIES.index(c), seed, size, n_train, n_test_good, n_defect)
             for c in categories]
    jobs = min(len(tasks), os.cpu_count() or 1)
    if jobs < 2 or sys.platform != "linux":
        for task in tasks:
            _write_category(*task, tick)
        return
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("fork"))
    try:
        for task, future in [(t, pool.submit(_write_category, *t, None)) for t in tasks]:
            future.result()
            tick(n_train + n_test_good + n_defect * len(CATEGORY_DEFECTS[task[1]]))
    except BaseException:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
            process.join()
        raise
    pool.shutdown()


def generate_demo(root: Path, *, seed: int = 0, image_size: int = 256, n_train: int = 60,
                  n_test_good: int = 20, n_test_defect_per_type: int = 8,
                  categories: Sequence[str] = DEMO_CATEGORIES, progress: bool = True) -> Path:
    """Build the demo dataset in MVTec AD layout at ``root`` and return ``root``.

    Deterministic: the same arguments give byte-identical PNGs (every image has its own
    ``numpy`` generator seeded with ``[seed, category, split, type, index]``). Atomic: images
    are written into a temporary sibling folder renamed to ``root`` once complete. If ``root``
    already holds a demo set with the same parameters (``demo.json``) nothing is done; a demo
    set with other parameters is replaced; any other existing non-empty folder is an error.
    """
    root = Path(root)
    categories = tuple(categories)
    unknown = [c for c in categories if c not in CATEGORY_KIND]
    if unknown or not categories:
        raise UserError(f"unknown demo categories {unknown}; valid: {', '.join(DEMO_CATEGORIES)}")
    if len(set(categories)) != len(categories):
        raise UserError(f"duplicate demo categories in {list(categories)}")
    if image_size < 32:
        raise UserError(f"demo image_size must be at least 32, got {image_size}")
    if seed < 0 or min(n_train, n_test_good, n_test_defect_per_type) < 1:
        raise UserError("demo seed must be >= 0 and every image count >= 1")
    manifest = _manifest(int(seed), int(image_size), int(n_train), int(n_test_good),
                         int(n_test_defect_per_type), categories)
    if root.is_dir():
        existing = _read_manifest(root)
        if existing == manifest:
            return root
        ours = existing is not None and existing.get("generator") == GENERATOR_NAME
        if not ours and any(root.iterdir()):
            raise UserError(f"{root} exists and is not a demo dataset; choose another folder")

    total = sum(n_train + n_test_good + n_test_defect_per_type * len(CATEGORY_DEFECTS[c])
                for c in categories)
    remove_stale_staging(root)
    with cleanup_on_terminate():
        _build(root, tmp=new_staging_dir(root), categories=categories, seed=int(seed),
               image_size=int(image_size), n_train=int(n_train), n_test_good=int(n_test_good),
               n_defect=int(n_test_defect_per_type), manifest=manifest, total=total,
               progress=progress)
    return root


def _build(root: Path, tmp: Path, categories: tuple[str, ...], seed: int, image_size: int,
           n_train: int, n_test_good: int, n_defect: int, manifest: dict, total: int,
           progress: bool) -> None:
    """Write the demo set into the staging folder ``tmp`` and put it in place of ``root``."""
    bar = None
    try:
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="demo dataset", unit="img")
        tick = bar.update if bar is not None else (lambda n=1: None)
        _write_categories(tmp, categories, seed, image_size, n_train, n_test_good, n_defect,
                          tick)
        (tmp / "demo.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        try:  # an outdated demo set (or an empty folder) is swapped out
            replace_tree(tmp, root)
        except OSError:
            if _read_manifest(root) != manifest:  # lost a race to a different build
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bar is not None:
            bar.close()


__all__ = ["GENERATOR_VERSION", "generate_demo"]
