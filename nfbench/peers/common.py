"""The runner shared by the three peer wrappers: our run's settings in, a ``peer`` record out.

A wrapper module (``nfbench.peers.<method>``) exposes ``fit_and_score(cfg, train, test, config,
seed) -> PeerResult``: ``cfg`` is OUR resolved config of that method under the profile (the
same backbone, layers, input size, passes, batch size), ``train``/``test`` our image sets.
Everything else (seeding, data, metrics, timing, the record) is here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from nfbench import metrics
from nfbench.errors import UserError, check_choice
from nfbench.peers import CONFIGS, ENABLE_HINT, METHODS, PEER, PEER_VERSION, deviations, \
    peer_version, record_path

RECORD_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PeerResult:
    """What a wrapper returns: scores of the test set and what it did."""

    image: np.ndarray  # [N] image scores, higher = more anomalous
    pixel: np.ndarray  # [N, S, S] anomaly maps
    settings: dict  # the peer's resolved settings (anomalib constructor/optimizer arguments)
    applied: tuple[str, ...]  # deviation ids changed to the paper's value
    loss_history: tuple[float, ...] = ()


def ours(method: str, profile: str, category: str, params: dict | None = None):
    """(our resolved config of ``method`` for ``category``, the dataset role) under ``profile``:
    the settings of the variant our report compares with (``deviations.yaml``: CS-Flow
    ``full``, PatchFlow ``full``, CLS-CNFs' ``cflow_ad``)."""
    from nfbench.pipeline.experiment import resolve_config
    from nfbench.pipeline.plan import load_params, load_spec, profile_params, variant_settings

    check_choice("peer --method", method, METHODS)
    entry = deviations()[method]
    spec = load_spec(entry["paper"])
    block = profile_params(params if params is not None else load_params(), entry["paper"],
                           profile)
    settings = variant_settings(spec, block, entry["variant"])
    config = resolve_config(method, profile, settings).config
    if hasattr(config, "category_settings"):
        from nfbench.methods.cnf.config import apply_category_settings

        config = apply_category_settings(config, category)
    role = block["datasets"][spec.variant(entry["variant"]).dataset]
    return config, role


def _wrapper(method: str) -> Callable:
    import importlib

    return importlib.import_module(f"nfbench.peers.{method}").fit_and_score


def skipped_record(method: str, config: str, dataset: str, category: str, seed: int,
                   profile: str, reason: str) -> dict[str, Any]:
    """The record a peer run leaves when it cannot run (anomalib missing): never a traceback."""
    return {"record_version": RECORD_VERSION, "kind": "peer", "status": "skipped",
            "peer": PEER, "peer_version": None, "method": method, "config": config,
            "dataset": dataset, "category": category, "seed": seed, "profile": profile,
            "note": f"{reason}; to enable the cross-check: {ENABLE_HINT}",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def epochs(n: int, what: str):
    """``range(n)`` with a per-epoch progress bar (off under ``--quiet``): a peer run trains
    for minutes."""
    from tqdm.auto import tqdm

    from nfbench.progress import bars_enabled

    return tqdm(range(n), desc=f"anomalib {what} fit", unit="epoch", leave=False,
                disable=not bars_enabled())


def run_peer(method: str, dataset: str, category: str, *, config: str = "shipped",
             seed: int = 0, profile: str = "demo", root: Path | None = None,
             params: dict | None = None) -> dict[str, Any]:
    """Train and score anomalib's ``method`` like our run of it; returns the record."""
    from nfbench.datasets import image_sets
    from nfbench.pipeline.experiment import category_table, environment
    from nfbench.methods.base import config_to_dict, seed_everything

    check_choice("--config", config, CONFIGS)
    cfg, _ = ours(method, profile, category, params)
    version = peer_version()
    if version is None:
        return skipped_record(method, config, dataset, category, seed, profile,
                              "anomalib is not installed")
    if version != PEER_VERSION:
        raise UserError(f"the cross-check is written against anomalib {PEER_VERSION}, found "
                        f"{version}; {ENABLE_HINT}")
    table = category_table(dataset, root, category)
    train, test = image_sets(table, category, cfg.input_size)
    labels = np.asarray(test.labels)
    if labels.sum() == 0 or labels.sum() == len(labels):
        raise UserError(f"{test.name}: the test split needs normal and anomalous images")

    seed_everything(seed)
    start = time.perf_counter()
    result = _wrapper(method)(cfg, train, test, config, seed)
    seconds = time.perf_counter() - start
    if not (np.isfinite(result.image).all() and np.isfinite(result.pixel).all()):
        raise RuntimeError(f"anomalib {method} ({config}) produced non-finite scores on {test.name}")
    listed = deviations()[method]["deviations"]
    return {
        "record_version": RECORD_VERSION, "kind": "peer", "status": "ok",
        "peer": PEER, "peer_version": version, "method": method, "config": config,
        "dataset": dataset, "category": category, "seed": seed, "profile": profile,
        "ours": {"paper": deviations()[method]["paper"],
                 "variant": deviations()[method]["variant"], "config": config_to_dict(cfg)},
        "peer_settings": result.settings,
        "deviations_applied": list(result.applied),
        "deviations_kept": [d["id"] for d in listed if d["id"] not in result.applied],
        "metrics": metrics.compute_all(labels, result.image, test.load_masks(), result.pixel),
        "loss_history": list(result.loss_history),
        "timing": {"fit_and_score_seconds": seconds, "device": "cpu"},
        "data": {"root": str(root) if root is not None else None, "n_train": len(train),
                 "n_test": len(test), "n_test_anomalous": int(labels.sum()),
                 "train_fingerprint": train.fingerprint, "test_fingerprint": test.fingerprint},
        "environment": environment(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def stage_runs(profile: str, params: dict) -> list[dict[str, Any]]:
    """The peer runs of ``params['peers'][profile]`` (empty when the block is absent):
    ``{methods: {m: {configs: [...], seeds: [...], categories: all | [...]}}}``; ``all``
    means the categories of our run's dataset role."""
    from nfbench.pipeline.plan import role_categories

    block = (params.get("peers") or {}).get(profile) or {}
    runs = []
    for method, spec in (block.get("methods") or {}).items():
        _, role = ours(method, profile, "", params)
        cats = spec.get("categories", "all")
        cats = role_categories(role) if cats == "all" else [str(c) for c in cats]
        for category in cats:
            for config in spec.get("configs", list(CONFIGS)):
                seeds = spec.get("seeds", [0])
                for seed in seeds.get(config, [0]) if isinstance(seeds, dict) else seeds:
                    runs.append({"method": method, "config": config, "dataset": role["dataset"],
                                 "root": role.get("root"), "category": category,
                                 "seed": int(seed)})
    return runs


def _stage_one(run: dict, profile: str, params: dict, results_dir: str) -> tuple[str, str]:
    from nfbench.pipeline.experiment import write_record

    root = Path(run["root"]) if run["root"] else None
    record = run_peer(run["method"], run["dataset"], run["category"], config=run["config"],
                      seed=run["seed"], profile=profile, root=root, params=params)
    path = Path(results_dir) / record_path(run["method"], run["config"], run["category"],
                                           run["seed"])
    write_record(record, path)
    what = (f"image AUROC {record['metrics']['image_auroc']:.4f} "
            f"({record['timing']['fit_and_score_seconds']:.1f} s)"
            if record["status"] == "ok" else record["note"])
    return str(path), (f"peer {run['method']}/{run['config']}/{run['category']}/"
                       f"seed{run['seed']}: {what}")


def run_stage(profile: str, params: dict, results_dir: Path, quiet: bool = False,
              jobs: int | None = None) -> list[Path]:
    """The ``peers`` pipeline stage: every run of the profile's block, one record each,
    spread over worker processes like ``nfbench bench`` (one thread each on 2 cores)."""
    import os
    import sys
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    # the runner's worker count and initialiser (torch threads; no GPU slot here)
    from nfbench.pipeline.runner import _init_worker, default_jobs

    runs = stage_runs(profile, params)
    if not runs:
        return []
    if peer_version() is not None:  # import anomalib once, before the workers fork (~10 s)
        import anomalib.models.image.csflow.torch_model  # noqa: F401
    jobs = max(1, min(jobs or default_jobs(), len(runs)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = get_context("fork" if sys.platform == "linux" else "spawn")
    paths = []
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                             initargs=(threads, None)) as pool:
        futures = [pool.submit(_stage_one, run, profile, params, str(results_dir))
                   for run in runs]
        for future in as_completed(futures):
            path, summary = future.result()
            paths.append(Path(path))
            if not quiet:
                print(summary, flush=True)
    return sorted(paths)


class CachedEncoder(torch.nn.Module):
    """Stands in for anomalib's ``TimmFeatureExtractor``: returns OUR cached maps.

    anomalib's models call ``encoder(images)`` and read ``{layer: map}``; here ``images`` are
    index images (:func:`index_images`: image ``i`` is the constant ``i``), which survive
    anomalib's own cropping and bilinear pyramid unchanged, so the model's whole forward runs
    as shipped while the features are exactly those of our run. ``features[scale][layer]``
    are ``[N, C, h, w]``; the scale is read off the image side (``size / 2**scale``).
    """

    def __init__(self, features: list[list[torch.Tensor]], layers, size: int, strides):
        super().__init__()
        self.features, self.layers, self.size = features, list(layers), int(size)
        self.out_dims = [int(f.shape[1]) for f in features[0]]
        self.reductions = [int(s) for s in strides]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        index = images[:, 0, 0, 0].round().long().cpu()
        scale = int(round(np.log2(self.size / images.shape[-1])))
        return {layer: fmap[index] for layer, fmap in zip(self.layers, self.features[scale])}


def index_images(index: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, 3, size, size]`` images whose every pixel is the image's index."""
    return index.float()[:, None, None, None].expand(-1, 3, size, size).contiguous()


@contextlib.contextmanager
def substituted(module, name: str, replacement) -> Iterator[None]:
    """Replace ``module.name`` while anomalib builds a model (its constructor stays its own)."""
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)
