"""Trained stages on disk and the CNF stage both methods train.

:class:`StageCache` keeps trained stages (flows, CLS-CNFs' fine-tuned encoders) keyed by
everything that determines them, so that variants differing only in how they score train a
stage once; :func:`fit_cnf_stage` builds and trains (or reuses) the conditional flows.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from nfbench.datasets.base import ImageSet
from nfbench.feature_cache import load_entry, save_entry
from nfbench.methods.cnf.config import CNFSettings, cnf_fields
from nfbench.methods.cnf.flows import build_flows
from nfbench.methods.cnf.training import train_flows
from nfbench.paths import cache_root
from nfbench.code_digest import code_digest
from nfbench.progress import bars_enabled

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent trainers then duplicate work
    fcntl = None


def stage_code(module: str) -> str:
    """The code digest of a stage trained by ``module``: every nfbench module it imports,
    followed transitively (:func:`nfbench.code_digest.code_digest`), so that a change
    of the training code (or of anything it uses: base, encoder, backbones, ...) never reuses a
    stale stage, and a docstring edit keeps the stage."""
    return code_digest(module)


class StageCache:
    """Trained stages (flows, fine-tuned encoders) on disk, keyed by everything that
    determines them: code, settings, training images, seed and the stage they build on.

    Variants that differ only in how they *score* (score map, w, normalisation) or that share
    a stage (CLS-CNFs-nsFE's CNFs are FE_PRE-CNFs) then train it once. An entry is written
    atomically and read with ``weights_only=True``; a stage's per-meta-epoch snapshots are
    entries of their own in ``<key>.snapshots/`` beside it. :meth:`claim` makes concurrent
    processes (shards, workers, Ray tasks) train a stage once: the others wait, then load it.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled

    @staticmethod
    def key(description: dict) -> str:
        return hashlib.sha1(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:24]

    @staticmethod
    def path(kind: str, key: str) -> Path:
        return cache_root() / "stages" / kind / f"{key}.pt"

    @classmethod
    def snapshot_path(cls, kind: str, key: str, meta: int) -> Path:
        """Where the snapshot after meta-epoch ``meta`` (1-based) of a stage lives."""
        return cls.path(kind, key).with_suffix(".snapshots") / f"meta{meta}.pt"

    @contextmanager
    def claim(self, kind: str, key: str) -> Iterator[None]:
        """Hold the stage's lock while loading or training it: an exclusive ``flock`` on
        ``<key>.lock`` beside the entry. A second process claiming the same stage waits (one
        line on stderr) until the first has saved it, then loads it; the OS releases the
        lock of a holder that dies (killed, crashed), so a stale claim never blocks. On NFS,
        Linux maps ``flock`` to the server's byte-range locks, so cluster nodes sharing a cache
        folder exclude each other too."""
        if not self.enabled or fcntl is None:
            yield
            return
        lock = self.path(kind, key).with_suffix(".lock")
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock, "a+")
        except OSError:
            try:  # another user's lock file in a shared cache: a read-only handle locks too
                handle = open(lock)
            except OSError:  # no cache folder to lock in: saving the stage will say so
                yield
                return
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                print(f"stage {kind}/{key} is claimed by {holder} (training or loading it); "
                      "waiting for it", file=sys.stderr)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                if handle.writable():  # who holds it, for the waiting message above
                    handle.seek(0)
                    handle.truncate()
                    handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
                    handle.flush()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self, kind: str, key: str) -> dict | None:
        path = self.path(kind, key)
        if not self.enabled:
            return None
        return load_entry(path, key, what="stage cache")  # verified: key, checksum, finite

    def save(self, kind: str, key: str, state: dict) -> None:
        if not self.enabled:
            return
        save_entry(self.path(kind, key), key, state)

    def save_snapshot(self, kind: str, key: str, meta: int, state: dict) -> None:
        """Keep the weights after meta-epoch ``meta`` (a verified entry of its own)."""
        if self.enabled:
            save_entry(self.snapshot_path(kind, key, meta), f"{key}/meta{meta}", state)

    def has_snapshots(self, kind: str, key: str, count: int) -> bool:
        """Whether the snapshots after meta-epochs 1..``count`` are all on disk."""
        return all(self.snapshot_path(kind, key, m).is_file() for m in range(1, count + 1))

    def load_snapshot(self, kind: str, key: str, meta: int) -> dict:
        """The verified snapshot after meta-epoch ``meta``; RuntimeError when it is damaged
        (it is then deleted, so that the next run trains the stage again)."""
        state = load_entry(self.snapshot_path(kind, key, meta), f"{key}/meta{meta}",
                           what="stage cache")
        if state is None:
            self.path(kind, key).unlink(missing_ok=True)
            raise RuntimeError(f"stage {kind}/{key}: the snapshot of meta-epoch {meta} is "
                               "damaged; it and the stage were removed, run again to retrain")
        return state


def fit_cnf_stage(features: list[torch.Tensor], source: dict, settings: CNFSettings,
                  train: ImageSet, seed: int, device: torch.device, cache: StageCache,
                  desc: str, on_meta_epoch: Callable[[int, nn.ModuleList], None] | None = None,
                  keep_snapshots: bool = False) -> tuple[nn.ModuleList, list[float]]:
    """Build and train (or reuse from the cache) the conditional flows on ``features``;
    returns them with the mean loss per meta-epoch (kept in the cache entry).

    ``on_meta_epoch(m, flows)`` is called (flows in eval mode) after every meta-epoch (where
    CFlow-AD's original protocol tests). A stage trained with ``keep_snapshots`` (or with the
    hook) keeps its weights after every meta-epoch on disk beside its entry, whatever their
    size, so that a later run with the hook reuses it (replaying the snapshots) instead of
    training it again; only an entry without them (trained by a run that could not need
    them: CLS-CNFs on fine-tuned features) is trained again for the hook."""
    channels = [f.shape[1] for f in features]
    key = StageCache.key({"stage": "cnf", "code": stage_code(__name__), "source": source,
                          "settings": cnf_fields(settings), "seed": seed,
                          "train": train.fingerprint})
    with cache.claim("cnf", key):  # one process trains it, the others wait and load it
        stored = cache.load("cnf", key)
        replay = 0  # meta-epochs to replay for the hook
        if stored is not None and on_meta_epoch is not None:
            replay = int(stored.get("snapshots", 0))
            if replay != settings.meta_epochs or not cache.has_snapshots("cnf", key, replay):
                stored = None  # trained without snapshots: train again, keeping them
        flows = build_flows(channels, settings, seed=seed + 1000,
                            draw_permutations=stored is None)
        if stored is None:
            return _train_cnf_stage(flows.to(device), features, settings, seed, device, cache,
                                    key, desc, on_meta_epoch,
                                    keep_snapshots or on_meta_epoch is not None)
    flows = flows.to(device).eval()
    for meta in range(1, replay + 1):  # the hook's evaluations, outside the claim
        flows.load_state_dict(cache.load_snapshot("cnf", key, meta))
        on_meta_epoch(meta, flows)
    flows.load_state_dict(stored["flows"])
    return flows.eval(), [float(v) for v in stored.get("history", torch.zeros(0)).tolist()]


def _train_cnf_stage(flows: nn.ModuleList, features: list[torch.Tensor], settings: CNFSettings,
                     seed: int, device: torch.device, cache: StageCache, key: str, desc: str,
                     on_meta_epoch: Callable[[int, nn.ModuleList], None] | None,
                     keep: bool) -> tuple[nn.ModuleList, list[float]]:
    """Train ``flows`` (Alg. 1 lines 19-33), calling the hook and writing the snapshots after
    every meta-epoch, then save the entry (last, so that an entry implies its snapshots) with
    the loss history; returns the flows and that history."""
    kept = 0

    def at_meta_epoch(meta: int) -> None:
        nonlocal kept
        if keep and cache.enabled:
            cache.save_snapshot("cnf", key, meta, {k: v.detach().cpu().clone()
                                                   for k, v in flows.state_dict().items()})
            kept = meta
        if on_meta_epoch is not None:
            flows.eval()
            on_meta_epoch(meta, flows)
            flows.train()

    generator = torch.Generator().manual_seed(seed + 2000)
    history = train_flows(flows, features, settings, generator, device, desc=desc,
                          progress=bars_enabled(),
                          on_meta_epoch=at_meta_epoch if keep or on_meta_epoch is not None
                          else None)
    entry: dict[str, Any] = {"flows": {k: v.cpu() for k, v in flows.state_dict().items()},
                             "history": torch.tensor(history, dtype=torch.float64)}
    if kept:
        entry["snapshots"] = kept
    cache.save("cnf", key, entry)
    return flows, history


def cnf_work_items(config: dict[str, Any], work: Any) -> None:
    """The CNF stage's work for the cost model (``work_items``; :class:`nfbench.pipeline.flops.RunWork`):
    forward + backward of the flows per training image and pass (meta_epochs x sub_epochs,
    times the share of fibers trained), keyed like the stage it trains, so runs sharing the
    stage count it once."""
    import dataclasses

    from nfbench.methods.cnf.config import CNFSettings

    cnf = {f.name: config.get(f.name) for f in dataclasses.fields(CNFSettings)}
    passes = config.get("meta_epochs", 1) * config.get("sub_epochs", 1) * float(
        config.get("fiber_fraction") or 1.0)
    work.add("train", work.key("cnf", work.data, work.seed, work.feature_source, cnf),
             3 * work.trained * work.n_train * passes)
