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
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from nfbench import metrics
from nfbench.errors import UserError, check_choice
from nfbench.peers import CONFIGS, ENABLE_HINT, METHODS, PEER, PEER_VERSION, STAGE_CONFIGS, \
    deviations, \
    peer_version, record_path
from nfbench.pipeline.record import RECORD_VERSION, format_metric  # one record version


@dataclasses.dataclass(frozen=True)
class PeerResult:
    """What a wrapper returns: scores of the test set and what it did."""

    image: np.ndarray  # [N] image scores, higher = more anomalous
    pixel: np.ndarray  # [N, S, S] anomaly maps
    settings: dict  # the peer's resolved settings (anomalib constructor/optimizer arguments)
    applied: tuple[str, ...]  # deviation ids changed to the paper's value
    loss_history: tuple[float, ...] = ()


def ours(method: str, profile: str, category: str, params: dict | None = None,
         overrides: dict | None = None):
    """(our resolved config of ``method`` for ``category``, the dataset role) under ``profile``.

    ``overrides``: the run's settings exactly as ``nfbench run`` resolves them
    (:func:`nfbench.pipeline.run_config.resolve_run_args`: params.yaml's block, ``--config``,
    ``--set``, ``--device``), for ``nfbench peer``; ``None``: the settings of the variant our
    report compares with (``deviations.yaml``: CS-Flow ``full``, PatchFlow ``full``, CLS-CNFs'
    ``cflow_ad``), as ``nfbench bench`` gives them, for the ``peers`` stage. Either way the
    config comes from :mod:`nfbench.pipeline.settings`, the one resolver."""
    from nfbench.methods import method_class
    from nfbench.methods.base import category_config
    from nfbench.pipeline.params import load_params, typed
    from nfbench.pipeline.settings import for_variant, resolve_config

    check_choice("peer --method", method, METHODS)
    params = params if params is not None else load_params()
    entry = deviations()[method]
    source = for_variant(params, entry["paper"], profile, entry["variant"])
    settings = dict(source.settings) if overrides is None else dict(overrides)
    config = resolve_config(method, profile, settings, params)
    config = category_config(method_class(method), config, category)
    return config, typed(params).block(entry["paper"], profile).role(source.role)


#: peers modules that never change a peer's result: editing them keeps every peer record
NOT_RESULT_CODE = ("report.py", "cli.py")


def identity_device(requested: str) -> str:
    """The device as a peer's identity counts it: its type, ``auto`` unresolved, so that the
    same peer run is the same on a GPU node, on another GPU and on a CPU head node."""
    return str(requested).split(":")[0]


def peer_identity(method: str, config: str, dataset: str, root, category: str, seed: int,
                  cfg) -> dict[str, Any]:
    """What determines a peer record, as one digest (like a bench run's identity,
    :mod:`nfbench.pipeline.identity`): the peer run's key, OUR resolved config (the peer's
    settings derive from it), the dataset fingerprint, our method's code version (features,
    data, metrics), the peers package's source and anomalib's version."""
    import hashlib
    import json

    from nfbench.methods.base import config_to_dict
    from nfbench.pipeline.identity import code_version, dataset_fingerprint

    ours_config = config_to_dict(cfg)
    ours_config["device"] = identity_device(ours_config.get("device", "auto"))
    peers_code = hashlib.sha1()  # the code that trains and scores a peer (not its report/CLI)
    for path in sorted(Path(__file__).parent.glob("*.py")) + [Path(__file__).with_name(
            "deviations.yaml")]:
        if path.name not in NOT_RESULT_CODE:
            peers_code.update(path.name.encode() + path.read_bytes())
    parts = {"version": RECORD_VERSION, "method": method, "config": config, "seed": int(seed),
             "category": category, "dataset": dataset, "ours": ours_config,
             "dataset_fingerprint": dataset_fingerprint(dataset, str(root) if root else None,
                                                        category),
             "code_version": code_version(method), "peers_code": peers_code.hexdigest()[:16],
             "peer_version": peer_version()}
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return {"digest": hashlib.sha1(blob).hexdigest()[:20], "code_version": parts["code_version"],
            "peers_code": parts["peers_code"],
            "dataset_fingerprint": parts["dataset_fingerprint"]}


def stored_digest(path: Path) -> str | None:
    """The identity digest of the peer record at ``path`` (None: missing or unreadable)."""
    import json

    try:
        return json.loads(Path(path).read_text()).get("identity", {}).get("digest")
    except (OSError, ValueError, AttributeError):
        return None


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
             params: dict | None = None, overrides: dict | None = None) -> dict[str, Any]:
    """Train and score anomalib's ``method`` like our run of it (``overrides``: see
    :func:`ours`) on that run's device; returns the record (with its identity)."""
    from nfbench.datasets import image_sets
    from nfbench.pipeline.experiment import category_table, environment
    from nfbench.methods.base import config_to_dict, resolve_device, seed_everything

    check_choice("--peer-config", config, CONFIGS)
    cfg, _ = ours(method, profile, category, params, overrides)
    version = peer_version()
    if version is None:
        return skipped_record(method, config, dataset, category, seed, profile,
                              "anomalib is not installed")
    if version != PEER_VERSION:
        raise UserError(f"the cross-check is written against anomalib {PEER_VERSION}, found "
                        f"{version}; {ENABLE_HINT}")
    identity = peer_identity(method, config, dataset, root, category, seed, cfg)
    table = category_table(dataset, root, category)
    train, test = image_sets(table, category, cfg.input_size)
    labels = np.asarray(test.labels)
    if labels.sum() == 0 or labels.sum() == len(labels):
        raise UserError(f"{test.name}: the test split needs normal and anomalous images")

    device = resolve_device(getattr(cfg, "device", "auto"))
    seed_everything(seed)
    start = time.perf_counter()
    result = _wrapper(method)(cfg, train, test, config, seed, device)
    seconds = time.perf_counter() - start
    if not (np.isfinite(result.image).all() and np.isfinite(result.pixel).all()):
        raise RuntimeError(f"anomalib {method} ({config}) produced non-finite scores on {test.name}")
    entry = deviations()[method]
    listed = entry["deviations"]
    return {
        "record_version": RECORD_VERSION, "kind": "peer", "status": "ok",
        "peer": PEER, "peer_version": version, "method": method, "config": config,
        "dataset": dataset, "category": category, "seed": seed, "profile": profile,
        "identity": identity,
        "ours": {"paper": entry["paper"], "variant": entry["variant"],
                 "config": config_to_dict(cfg)},
        "takes_from_ours": {key: getattr(cfg, key) for key in entry["takes_from_ours"]},
        "peer_settings": result.settings,
        "deviations_applied": list(result.applied),
        "deviations_kept": [d["id"] for d in listed if d["id"] not in result.applied],
        "metrics": metrics.compute_all(labels, result.image, test.load_masks(), result.pixel),
        # per-image scores: the report's test-set bootstrap of the difference to ours
        "scores": {"labels": labels.astype(int).tolist(), "image": result.image.tolist()},
        "loss_history": list(result.loss_history),
        "timing": {"fit_and_score_seconds": seconds, "device": str(device)},
        "data": {"root": str(root) if root is not None else None, "n_train": len(train),
                 "n_test": len(test), "n_test_anomalous": int(labels.sum()),
                 "train_fingerprint": train.fingerprint, "test_fingerprint": test.fingerprint},
        "environment": environment(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def stage_runs(profile: str, params: dict) -> list[dict[str, Any]]:
    """The peer runs of ``params['peers'][profile]`` (empty when the block is absent):
    ``{methods: {m: {configs: [...], seeds: [...], categories: all | [...]}}}``; ``all``
    means the categories of our run's dataset role; config ``ours`` (:func:`run_ours`) runs
    extra seeds of our compared variant."""
    block = (params.get("peers") or {}).get(profile) or {}
    runs = []
    for method, spec in (block.get("methods") or {}).items():
        _, role = ours(method, profile, "", params)
        cats = spec.get("categories", "all")
        cats = role.categories if cats == "all" else [str(c) for c in cats]
        for category in cats:
            for config in spec.get("configs", list(CONFIGS)):
                check_choice(f"peers.{profile}.methods.{method}.configs", config, STAGE_CONFIGS)
                seeds = spec.get("seeds", [0])
                for seed in seeds.get(config, [0]) if isinstance(seeds, dict) else seeds:
                    runs.append({"method": method, "config": config, "dataset": role.dataset,
                                 "root": role.root, "category": category,
                                 "seed": int(seed)})
    return runs


def run_ours(method: str, dataset: str, category: str, *, seed: int, profile: str,
             root: Path | None, params: dict | None = None) -> tuple[dict, dict]:
    """One seed of OUR compared variant (``deviations.yaml``), made exactly as ``nfbench
    bench`` makes it (:func:`nfbench.pipeline.experiment.run_experiment`, without the
    original-protocol measurements, which the cross-check does not read); returns (record
    with its peer identity, figure material with the per-image scores)."""
    from nfbench.pipeline.experiment import run_experiment
    from nfbench.pipeline.params import load_params
    from nfbench.pipeline.settings import variant_settings

    params = params if params is not None else load_params()
    entry = deviations()[method]
    settings = variant_settings(params, entry["paper"], profile, entry["variant"])
    cfg, _ = ours(method, profile, category, params)
    examples: dict = {}
    record = run_experiment(method, dataset, category, root=root, profile=profile, seed=seed,
                            overrides=settings, variant=entry["variant"], examples=examples,
                            original_protocol=False)
    record.update(kind="peer_ours", status="ok", config="ours",
                  identity=peer_identity(method, "ours", dataset, root, category, seed, cfg))
    return record, examples


def _stage_one(run: dict, profile: str, params: dict, results_dir: str) -> tuple[str, str]:
    """One peer run of the stage, its record (and figure material) written
    (:func:`nfbench.pipeline.execution.write_run`); returns (record path, progress line)."""
    from nfbench.pipeline.execution import write_run

    root = Path(run["root"]) if run["root"] else None
    path = Path(results_dir) / record_path(run["method"], run["config"], run["category"],
                                           run["seed"])
    if run["config"] == "ours":
        record, examples = run_ours(run["method"], run["dataset"], run["category"],
                                    seed=run["seed"], profile=profile, root=root, params=params)
        record["timing"]["fit_and_score_seconds"] = (record["timing"]["fit_seconds"] +
                                                     record["timing"]["score_seconds"])
    else:
        record = run_peer(run["method"], run["dataset"], run["category"], config=run["config"],
                          seed=run["seed"], profile=profile, root=root, params=params)
        examples = None
    write_run(record, examples, path)
    what = (f"image AUROC {format_metric(record['metrics']['image_auroc'])} "
            f"({record['timing']['fit_and_score_seconds']:.1f} s)"
            if record["status"] == "ok" else record["note"])
    return str(path), (f"peer {run['method']}/{run['config']}/{run['category']}/"
                       f"seed{run['seed']}: {what}")


def pending_runs(runs: list[dict], profile: str, params: dict, results_dir: Path,
                 force: bool = False) -> list[dict]:
    """The runs whose record is missing or carries another identity (all with ``force``;
    without anomalib every anomalib run is pending: its record says why it was skipped; an
    ``ours`` run also needs its figure material)."""
    if force:
        return list(runs)
    pending = []
    for run in runs:
        if run["config"] != "ours" and peer_version() is None:
            pending.append(run)
            continue
        cfg, _ = ours(run["method"], profile, run["category"], params)
        digest = peer_identity(run["method"], run["config"], run["dataset"], run["root"],
                               run["category"], run["seed"], cfg)["digest"]
        path = Path(results_dir) / record_path(run["method"], run["config"], run["category"],
                                               run["seed"])
        if stored_digest(path) != digest or (run["config"] == "ours" and
                                             not path.with_suffix(".npz").is_file()):
            pending.append(run)
    return pending


def stale_records(runs: list[dict], results_dir: Path) -> list[Path]:
    """Records below ``results/peers`` that no run of the block makes any more."""
    from nfbench.pipeline.record import unwanted_files

    return unwanted_files(results_dir, "peers/*/*/*/seed*.*",
                          [Path(results_dir) / record_path(r["method"], r["config"],
                                                           r["category"], r["seed"])
                           for r in runs])


def run_stage(profile: str, params: dict, results_dir: Path, quiet: bool = False,
              jobs: int | None = None, force: bool = False) -> tuple[list[Path], int]:
    """The ``peers`` pipeline stage: every run of the profile's block whose record is missing
    or has another identity (:func:`pending_runs`), one record each, spread over worker
    processes like ``nfbench bench``; records of runs no longer in the block are removed.
    Returns (every record path of the block, the number of runs trained)."""
    import functools

    # the bench's worker pool (torch threads per worker; no GPU slot here)
    from nfbench.pipeline.runner import in_worker, map_in_workers, workers_for

    runs = stage_runs(profile, params)
    for path in stale_records(runs, results_dir):
        path.unlink()
    every = sorted(Path(results_dir) / record_path(r["method"], r["config"], r["category"],
                                                   r["seed"]) for r in runs)
    todo = _longest_first(pending_runs(runs, profile, params, results_dir, force), results_dir)
    if not quiet and len(todo) < len(runs):
        print(f"peers: {len(runs) - len(todo)} run(s) already recorded with the same "
              "identity: skipped", flush=True)
    if not todo:
        return every, 0
    if peer_version() is not None:  # import anomalib once, before the workers fork (~10 s)
        import anomalib.models.image.csflow.torch_model  # noqa: F401
    jobs, threads = workers_for(len(todo), jobs)

    def done(task, result) -> None:
        if not quiet:
            print(result[1], flush=True)

    # one job: in this process (a fork after torch has started its threads can hang)
    map_in_workers([(run, profile, params, str(results_dir)) for run in todo], jobs,
                   _stage_one, functools.partial(in_worker, _stage_one), done, threads=threads)
    return every, len(todo)


def _longest_first(todo: list[dict[str, Any]], results_dir: Path) -> list[dict[str, Any]]:
    """``todo`` ordered by the seconds an earlier record of each run took (the committed peer
    records of a fresh clone), longest first, so that the pool does not end with one long
    run alone; runs without a readable earlier record go first. Order changes no number."""
    def seconds(run: dict[str, Any]) -> float:
        path = Path(results_dir) / record_path(run["method"], run["config"], run["category"],
                                               run["seed"])
        try:
            return float(json.loads(path.read_text())["timing"]["fit_and_score_seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return math.inf
    return sorted(todo, key=seconds, reverse=True)


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
        return {layer: fmap[index].to(images.device)  # the maps stay on the CPU until read
                for layer, fmap in zip(self.layers, self.features[scale])}


def index_images(index: torch.Tensor, size: int, device: torch.device | str = "cpu"
                 ) -> torch.Tensor:
    """``[B, 3, size, size]`` images whose every pixel is the image's index, on ``device``."""
    return index.float()[:, None, None, None].expand(-1, 3, size, size).contiguous().to(device)


@contextlib.contextmanager
def substituted(module, name: str, replacement) -> Iterator[None]:
    """Replace ``module.name`` while anomalib builds a model (its constructor stays its own)."""
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)
