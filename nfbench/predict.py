"""``nfbench predict``: apply a saved detector to a folder of your own images.

Writes into ``--out`` (a new folder, or one an earlier ``predict`` wrote)::

    scores.csv          one row per image: file, image score and, with a threshold, the
                        threshold and the prediction (1 = anomalous: score > threshold)
    maps/<name>.npy     the anomaly map (float32, the scoring size squared)
    maps/<name>.png     the map through a perceptual colormap (inferno), one scale for all
                        images (``predictions.json`` holds it), so maps compare across images
    overlays/<name>.png the map blended over the image at the image's own size
    predictions.json    model, config, threshold and its rule, timing, environment, and
                        every image's score and prediction

The threshold, as in ``decide``, comes from normal images only: ``--normal FOLDER`` (its
``--quantile`` of their image scores), or ``--threshold VALUE``, or the one saved with the
model (``decide --save-model``). Images of any size are read and resized to the model's
input size (``--size`` scores at another size where the method allows it; one clear error
where it does not). CFlow-AD and CLS-CNFs normalise transductively by default (the maxima are
taken over the images scored together), so their scores depend on the folder scored as a
whole, as in the papers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from nfbench.atomic import atomic_folder
from nfbench.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SUMMARY = "predictions.json"
COLORMAP = "inferno"  # perceptually uniform, readable in grey


def image_files(folder: Path | str) -> list[Path]:
    """The image files under ``folder`` (recursively, sorted); one clear error for none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--images {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return files


def image_set(files: list[Path], size: int, name: str):
    """The files as an :class:`~nfbench.datasets.base.ImageSet` (no labels: all 0)."""
    from nfbench.datasets.base import ImageSet

    n = len(files)
    return ImageSet(paths=tuple(str(f) for f in files), labels=(0,) * n,
                    mask_paths=(None,) * n, size=int(size), defect_types=("",) * n, name=name)


def score_files(detector: Any, files: list[Path], size: int, name: str):
    """The detector's :class:`~nfbench.methods.base.Scores` of ``files`` at ``size``; a method
    that cannot score that size gives one clear error."""
    images = image_set(files, size, name)
    images.load_images([0])  # an unreadable first image fails here, with its name
    try:
        return detector.score(images)
    except UserError:
        raise
    except (RuntimeError, ValueError) as exc:
        from nfbench.methods.base import effective_config

        trained = effective_config(detector).input_size
        raise UserError(f"{detector.name} cannot score {size} px images (trained at "
                        f"{trained} px): {str(exc).splitlines()[0]}") from None


def _names(files: list[Path], folder: Path) -> list[str]:
    """Output names: the path below ``folder`` without suffix, "/" -> "__" (unique)."""
    return ["__".join(f.relative_to(folder).with_suffix("").parts) for f in files]


def _colour(maps: np.ndarray, low: float, high: float) -> np.ndarray:
    """``maps`` scaled by one ``[low, high]`` through :data:`COLORMAP`: uint8 RGB."""
    from matplotlib import colormaps

    scaled = np.clip((maps - low) / max(high - low, 1e-12), 0.0, 1.0)
    return (colormaps[COLORMAP](scaled)[..., :3] * 255).round().astype(np.uint8)


def _overlay(image_path: Path, coloured: np.ndarray, alpha: float = 0.5):
    from PIL import Image

    with Image.open(image_path) as img:
        base = img.convert("RGB")
    heat = Image.fromarray(coloured).resize(base.size, Image.BILINEAR)
    return Image.blend(base, heat, alpha)


def check_out(out: Path) -> None:
    """Refuse, before any work, an ``out`` that holds something else than predict's output."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                              and not (out / SUMMARY).is_file())):
        raise UserError(f"--out {out} exists and is not an earlier predict output; choose a "
                        "new folder")


def resolve_threshold(detector: Any, *, threshold: float | None, normal: Path | None,
                      quantile: float, size: int) -> dict[str, Any] | None:
    """The threshold and how it was set (see the module docstring), or None."""
    from nfbench.pipeline.decision import threshold_from_normals

    if threshold is not None and normal is not None:
        raise UserError("give --threshold or --normal, not both")
    if normal is not None:
        files = image_files(normal)
        scores = score_files(detector, files, size, "normal").image
        return {"value": threshold_from_normals(scores, quantile),
                "rule": f"{quantile:g}-quantile of the image scores of {len(files)} normal "
                        f"images under {normal}", "source": "--normal"}
    if threshold is not None:
        return {"value": float(threshold), "rule": "given with --threshold",
                "source": "--threshold"}
    saved = (getattr(detector, "artifact_", None) or {}).get("threshold")
    return {**saved, "source": "saved with the model"} if saved else None


def predict(model: Path | str, images: Path | str, out: Path | str, *,
            threshold: float | None = None, normal: Path | None = None, quantile: float = 1.0,
            size: int | None = None, device: str | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Score every image under ``images`` with the model saved in ``model``; write the
    outputs of the module docstring into ``out`` (whole or not at all). Returns the
    summary (``predictions.json``)."""
    from tqdm.auto import tqdm

    from nfbench.artifacts import load_detector
    from nfbench.pipeline.experiment import environment

    images, out = Path(images), Path(out)
    check_out(out)
    files = image_files(images)
    detector = load_detector(model, device=device)
    manifest = detector.artifact_
    size = int(size or manifest["config"]["input_size"])
    start = time.perf_counter()
    scores = score_files(detector, files, size, images.name)
    seconds = time.perf_counter() - start
    chosen = resolve_threshold(detector, threshold=threshold, normal=normal, quantile=quantile,
                               size=size)
    low, high = float(scores.pixel.min()), float(scores.pixel.max())
    names = _names(files, images)
    rows = []
    for i, (path, name) in enumerate(zip(files, names)):
        row = {"file": str(path.relative_to(images)), "image_score": float(scores.image[i])}
        if chosen is not None:
            row["threshold"] = chosen["value"]
            row["prediction"] = int(scores.image[i] > chosen["value"])
        rows.append(row)
    summary = {
        "model": str(Path(model)), "method": manifest["method"], "images": str(images),
        "n_images": len(files), "size": size, "config": manifest["config"],
        "threshold": chosen, "map_scale": {"low": low, "high": high, "colormap": COLORMAP},
        "timing": {"score_seconds": seconds, "images_per_second": len(files) / max(seconds, 1e-9)},
        "environment": environment(), "predictions": rows,
    }
    check_out(out)
    with atomic_folder(out) as tmp:
        import pandas as pd

        (tmp / "maps").mkdir()
        (tmp / "overlays").mkdir()
        pd.DataFrame(rows).to_csv(tmp / "scores.csv", index=False)
        from PIL import Image

        bar = tqdm(list(enumerate(zip(files, names))), desc="predict: maps and overlays",
                   disable=not progress, leave=False)
        for i, (path, name) in bar:
            np.save(tmp / "maps" / f"{name}.npy", scores.pixel[i].astype(np.float32))
            coloured = _colour(scores.pixel[i], low, high)
            Image.fromarray(coloured).save(tmp / "maps" / f"{name}.png")
            _overlay(path, coloured).save(tmp / "overlays" / f"{name}.png")
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary
