"""One run: a method, a dataset category, a seed and settings in; a result record out.

The record (JSON) says what was measured and how it was made: method, dataset, category,
variant, seed, profile, the resolved config, metrics, timing, environment and the data
fingerprints. Tables and reports are built from records only; they never train.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfbench import metrics
from nfbench.pipeline import protocols
from nfbench.pipeline.settings import build_detector
# the record's writer lives in nfbench.pipeline.record; re-exported for its many callers
from nfbench.pipeline.record import (RECORD_VERSION, record_json,  # noqa: F401
                                     run_record, write_record)
from nfbench.atomic import atomic_path
from nfbench.datasets import ImageSet, get_dataset, image_sets, load_table
from nfbench.errors import UserError
from nfbench.methods.base import (config_to_dict, effective_config, fit_info, resolve_device,
                                  resolved_settings, seed_everything)
from nfbench.precision import apply_run_settings
from nfbench.version import __version__



def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Software and hardware that produced a record; ``device`` is the run's (its GPU is the
    one named, e.g. ``cuda:3``'s, not GPU 0). Costs no import and no process per run: package
    versions come from their installed metadata, the git commit is read once per process."""
    device = torch.device(device) if device is not None else resolve_device("auto")
    gpu = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        gpu = torch.cuda.get_device_name(index)
    return {
        "nfbench": __version__, "python": platform.python_version(),
        "torch": torch.__version__, "timm": _package_version("timm"), "numpy": np.__version__,
        "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": gpu,
        "git_commit": git_commit(),
    }


def _package_version(name: str) -> str | None:
    """An installed package's version from its metadata (no import: timm's takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


#: what a run's code and specs are: a change elsewhere (dvc.lock, results/, reports/, which
#: the pipeline itself rewrites) does not make the runs "dirty"
CODE_PATHS = ("nfbench", "benchmarks", "params.yaml", "pyproject.toml")


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The repository's HEAD commit, with ``-dirty`` if the code or specs (:data:`CODE_PATHS`)
    have uncommitted changes; files the pipeline rewrites (dvc.lock, results, reports) do
    not count. Read once per process (two ``git`` processes), then cached: a worker's code
    does not change under it."""
    try:
        top = Path(__file__).resolve().parent.parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=top, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                *CODE_PATHS], cwd=top, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return (commit + ("-dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def resolve_config(method: str, profile: str, overrides: dict[str, Any],
                   params: dict[str, Any] | None = None):
    """An unfitted detector of ``method`` with its resolved config: the one resolver,
    :func:`nfbench.pipeline.settings.build_detector` (paper defaults, the profile's shared
    settings, then ``overrides``)."""
    return build_detector(method, profile, overrides, params)


def category_table(dataset: str, root: Path | None, category: str):
    """The sample table holding ``category``: loaded alone, or whole where the dataset's
    categories are the folders found at ``root`` (``demo``, ``folder``)."""
    whole = get_dataset(dataset).categories_at_root
    return load_table(dataset, root, None if whole else [category])


def _select_train(train, shots: int | None, seed: int):
    """All training images, or ``shots`` of them drawn with ``seed`` (CS-Flow's 16 shots)."""
    if shots is None:
        return train
    if not 0 < shots <= len(train):
        raise UserError(f"--shots must be in 1..{len(train)}, got {shots}")
    chosen = np.random.default_rng(seed).choice(len(train), size=shots, replace=False)
    return train.subset(sorted(chosen.tolist()))


def example_order(labels, defect_types, count: int) -> list[int]:
    """Up to ``count`` defective test images for the report's maps figure: the first image of
    each defect type (in the test set's sorted order, so deterministic), then, while columns
    remain, the next defective images in that order. Figure material only: no metric reads it."""
    defective = [i for i in range(len(labels)) if labels[i]]
    types = defect_types or ("",) * len(labels)
    first_of: dict[str, int] = {}
    for i in defective:
        first_of.setdefault(str(types[i]), i)
    chosen = list(first_of.values())[:count]
    chosen += [i for i in defective if i not in chosen][: count - len(chosen)]
    return sorted(chosen)


def _examples(test, scores, labels: np.ndarray, masks: np.ndarray, count: int = 6,
              side: int = 128, bins: int = 60) -> dict[str, np.ndarray]:
    """What the report draws: every image score with its label, histograms of normal and
    defective pixel scores (``bins`` bins), and a few anomaly maps (one defective image per defect type first, :func:`example_order`)
    with their images and masks, downsampled to ``side`` px."""
    import torch.nn.functional as F

    order = example_order(labels, test.defect_types, count - 2)
    order += [i for i in range(len(labels)) if not labels[i]][: count - len(order)]
    shrink = lambda a, mode: F.interpolate(torch.as_tensor(a, dtype=torch.float32)[:, None],
                                           size=(side, side), mode=mode)[:, 0].numpy()
    images = test.with_size(side).load_images(order).numpy()
    pixels, defect = scores.pixel, masks > 0.5
    edges = np.linspace(float(pixels.min()), float(pixels.max()), bins + 1)
    return {"labels": labels.astype(np.int8), "image_scores": scores.image.astype(np.float32),
            # pixel-score histograms of normal and defective pixels over the whole test set
            "pixel_hist_edges": edges,
            "pixel_hist_normal": np.histogram(pixels[~defect], edges)[0],
            "pixel_hist_defect": np.histogram(pixels[defect], edges)[0],
            "example_index": np.asarray(order), "example_images": images.astype(np.float16),
            # the defect type of each example (a plain unicode array: loads without pickle)
            "example_defects": np.asarray([str(test.defect_types[i]) if test.defect_types
                                           else ("defective" if labels[i] else "good")
                                           for i in order], dtype=str),
            "example_maps": shrink(scores.pixel[order], "bilinear").astype(np.float32),
            "example_masks": shrink(masks[order], "nearest") > 0.5}


def _evaluate(detector, test, examples: dict | None = None,
              bootstrap: dict | None = None,
              defect_pixels: dict | None = None) -> tuple[dict[str, float], float]:
    """Score ``test`` and compute every metric; returns (metrics, seconds spent scoring).
    If ``examples`` is a dict, it receives what :func:`_examples` keeps for figures; if
    ``bootstrap`` is a dict, it receives the test-set bootstrap replicates of the official
    metrics (:func:`nfbench.metrics.uncertainty.record_bootstrap`: its own RNG, computed after
    the metrics, so it changes no metric value); if ``defect_pixels`` is, it receives the test
    set's share of defective pixels (the chance level of pixel AUPR) under ``test.name``."""
    labels = np.asarray(test.labels)
    if labels.sum() == 0 or labels.sum() == len(labels):
        raise UserError(f"{test.name}: the test split needs normal and anomalous images")
    start = time.perf_counter()
    scores = detector.score(test)
    seconds = time.perf_counter() - start
    if not (np.isfinite(scores.image).all() and np.isfinite(scores.pixel).all()):
        raise RuntimeError(f"{detector.name} produced non-finite scores on {test.name}")
    masks = test.load_masks()
    if defect_pixels is not None:
        defect_pixels[test.name] = float(np.count_nonzero(masks > 0.5) / masks.size)
    if examples is not None:
        examples.update(_examples(test, scores, labels, masks))
    values = metrics.compute_all(labels, scores.image, masks, scores.pixel)
    if bootstrap is not None:
        from nfbench.metrics.uncertainty import record_bootstrap

        bootstrap.update(record_bootstrap(labels, scores.image, masks, scores.pixel, values))
    return values, seconds


def run_experiment(method: str, dataset: str, category: str, *, root: Path | None = None,
                   profile: str = "demo", seed: int = 0, overrides: dict[str, Any] | None = None,
                   shots: int | None = None, variant: str = "default",
                   joint: bool = False, joint_categories: list[str] | None = None,
                   examples: dict | None = None, original_protocol: bool | None = None,
                   fitted: list | None = None) -> dict[str, Any]:
    """Fit ``method`` on the normal train images of ``category`` and score its test images.

    ``shots`` keeps a random subset of that many training images (drawn with ``seed``).
    ``joint`` trains one model on the train images of every category as one normal class and
    scores each category's test set (CS-Flow §4.5); ``category`` is then ``"all"`` and the
    record's metrics are the means over categories, with ``per_category`` beside them;
    ``joint_categories`` limits joint training to those categories (default: all).
    ``examples``, if a dict, receives scores and a few maps of the first category for figures;
    ``fitted``, if a list, receives the fitted detector (``--save-model``).
    ``original_protocol``: also measure, in the same run, what the original code's evaluation
    protocol would have reported (:mod:`nfbench.pipeline.protocols`), stored under
    ``record["original_protocol"]``; the record's ``metrics`` stay the honest ones. Default:
    on, unless the environment sets ``NFBENCH_ORIGINAL_PROTOCOL=0``.
    """
    if original_protocol is None:
        original_protocol = os.environ.get("NFBENCH_ORIGINAL_PROTOCOL", "1") != "0"
    table = load_table(dataset, root, joint_categories) if joint else \
        category_table(dataset, root, category)
    seed_everything(seed)
    detector = resolve_config(method, profile, dict(overrides or {}))
    if fitted is not None:
        fitted.append(detector)
    apply_run_settings(detector.config)  # deterministic / precision: torch's global flags
    size = detector.config.input_size
    if joint:
        category = "all"
        names = sorted(table["category"].unique())
        splits = {name: image_sets(table, name, size) for name in names}
        train = ImageSet.from_table(table[table["split"] == "train"], size, name="all/train")
        tests = {name: test for name, (_, test) in splits.items()}
    else:
        train, test = image_sets(table, category, size)
        tests = {category: test}
    train = _select_train(train, shots, seed)

    protocol = protocols.for_run(detector, train, tests, seed) if original_protocol else None
    seed_everything(seed)
    start = time.perf_counter()
    detector.fit(train, **(protocol.fit_kwargs() if protocol is not None else {}))
    fit_seconds = time.perf_counter() - start - (protocol.seconds if protocol is not None else 0.0)
    per_category, score_seconds, boots, defect_pixels = {}, 0.0, {}, {}
    for name, test in tests.items():
        boots[name] = {}
        per_category[name], seconds = _evaluate(detector, test, examples, boots[name],
                                                defect_pixels)
        examples = None  # figures show the first category only
        score_seconds += seconds
    n_test = sum(len(t) for t in tests.values())
    summary = {key: float(np.mean([m[key] for m in per_category.values()]))
               for key in next(iter(per_category.values()))}
    record = run_record(
        method=method, dataset=dataset, category=category, variant=variant,
        seed=seed, profile=profile, shots=shots, joint=joint,
        config=recorded_config(detector),
        metrics=summary,
        timing={"fit_seconds": fit_seconds, "score_seconds": score_seconds,
                   "images_per_second": n_test / max(score_seconds, 1e-9),
                   "device": str(resolve_device(detector.config.device))},
        data={"root": str(root) if root is not None else None, "n_train": len(train),
                 "n_test": n_test,
                 "n_test_anomalous": int(sum(sum(t.labels) for t in tests.values())),
                 "train_fingerprint": train.fingerprint,
                 "test_fingerprint": {name: t.fingerprint for name, t in tests.items()},
                 # per category: chance level of pixel AUPR, for tables without the NPZ
                 "defect_pixel_fraction": dict(zip(tests, defect_pixels.values()))},
        environment=environment(resolve_device(detector.config.device)),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    if joint:
        record["per_category"] = per_category
    record.update(_bootstrap_fields(boots))
    if fit_info(detector) is not None:  # e.g. the effective schedule
        record["fit_info"] = fit_info(detector)
    if protocol is not None:
        record["original_protocol"] = protocol.finish(summary)
        record["timing"]["protocol_seconds"] = record["original_protocol"]["seconds"]
    _mark_undefined(record)
    return record


def _bootstrap_fields(boots: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """The record's ``bootstrap`` (per metric, replicates of the run's metric: for a joint
    run, replicate b averaged over categories, each category's test set resampled
    independently) and ``intervals`` (per metric, the 95 % percentile interval [lo, hi]);
    ``docs/uncertainty.md``."""
    from nfbench.metrics.uncertainty import BOOT_SEED, LEVEL, N_BOOT

    shared = set.intersection(*(set(b) for b in boots.values())) if boots else set()
    reps = {m: np.mean([b[m] for b in boots.values()], axis=0) for m in sorted(shared)}
    alpha = (1 - LEVEL) / 2
    return {"bootstrap": {"n": N_BOOT, "seed": BOOT_SEED, "stratified": True,
                          "replicates": {m: np.round(r, 6).tolist() for m, r in reps.items()}},
            "intervals": {m: [round(float(np.quantile(r, alpha)), 6),
                              round(float(np.quantile(r, 1 - alpha)), 6)]
                          for m, r in reps.items()}}


def recorded_config(detector: Any) -> dict[str, Any]:
    """The resolved config a run's record holds: the settings ``fit`` used for the category
    (``settings_``: the config with its ``category_settings`` applied; the config itself for
    a method without it) and what ``fit`` resolved that the record lists with them
    (``resolved_settings_``, e.g. CLS-CNFs' ``w_chosen``). ``fit`` never rewrites
    ``detector.config``."""
    return {**config_to_dict(effective_config(detector)), **resolved_settings(detector)}


UNDEFINED_REASONS = {
    "image_auroc": "the test split holds one class only",
    "pixel": "no defective pixel in the ground-truth masks (e.g. all-black masks)",
    # CLS-CNFs' CDO-style curve: its FPRs are min-max rescaled over the points with FPR <= 0.3
    "aupro@clscnf": "no defect region, or fewer than two of the curve's 200 score steps have "
                    "FPR <= 0.3 (its min-max rescaling is then undefined, as in the original)",
}


def _mark_undefined(record: dict[str, Any]) -> None:
    """Undefined metrics (NaN) become ``None`` (JSON ``null``), with the reason in
    ``record["undefined_metrics"]``; a record never holds a bare NaN."""
    reasons = {}
    for where in [record["metrics"], *record.get("per_category", {}).values()]:
        for name, value in where.items():
            if isinstance(value, float) and not np.isfinite(value):
                where[name] = None
                reasons[name] = UNDEFINED_REASONS.get(name, UNDEFINED_REASONS["pixel"])
    if reasons:
        record["undefined_metrics"] = reasons


def write_examples(examples: dict[str, np.ndarray], path: Path) -> None:
    """Save the figure material of a run (``.npz``, plain arrays: loads without pickle)."""
    with atomic_path(path, suffix=".npz") as tmp:  # savez keeps a name ending in .npz
        np.savez_compressed(tmp, **examples)


def read_examples(path: Path) -> dict[str, np.ndarray]:
    """A run's figure material, every array loaded (plain arrays only: a pickled object
    array is refused); a damaged or truncated file is one :class:`UserError` naming it and
    the fix (``nfbench bench`` remakes a run whose ``.npz`` is not whole)."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UserError(f"figure material {path} holds a pickled object array; only plain "
                            "arrays are read (remove it and rerun the bench)") from None
        raise UserError(f"figure material {path} is damaged ({exc}); remove it and rerun "
                        "the bench") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise UserError(f"figure material {path} is damaged or truncated "
                        f"({getattr(exc, 'strerror', None) or exc}); rerun the bench, which "
                        "remakes it") from None


def examples_whole(path: Path) -> bool:
    """Whether ``path`` is a whole ``.npz``: its zip directory (at the end of the file, so
    lost by any truncation) reads, and every member lies inside the file. Reads the
    directory only (about 0.1 ms; decompressing every member would cost 30 ms a run)."""
    import zipfile

    try:
        size = os.path.getsize(path)
        with zipfile.ZipFile(path) as archive:
            return all(info.header_offset + info.compress_size <= size
                       for info in archive.infolist())
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False
