"""Trained stages on disk and the CNF stage both methods train.

:class:`StageCache` keeps trained stages (flows, CLS-CNFs' fine-tuned encoders) keyed by
everything that determines them, so that variants differing only in how they score train a
stage once; :func:`fit_cnf_stage` builds and trains (or reuses) the conditional flows.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from nfbench.datasets.base import ImageSet
from nfbench.feature_cache import load_entry, save_entry
from nfbench.methods.cnf.config import CNFSettings, cnf_fields
from nfbench.methods.cnf.flows import build_flows
from nfbench.methods.cnf.training import train_flows
from nfbench.paths import cache_root
from nfbench.progress import bars_enabled


def code_digest(*files: str | Path) -> str:
    """sha1 of the given source files: part of every stage-cache key, so that a change of the
    training code never reuses a stale stage."""
    digest = hashlib.sha1()
    for name in files:
        digest.update(Path(name).read_bytes())
    return digest.hexdigest()[:16]


#: The code that trains a CNF stage (its digest is part of the stage's key).
STAGE_CODE = tuple(str(Path(__file__).with_name(name))
                   for name in ("flows.py", "training.py", "stage.py"))


class StageCache:
    """Trained stages (flows, fine-tuned encoders) on disk, keyed by everything that
    determines them: code, settings, training images, seed and the stage they build on.

    Variants that differ only in how they *score* (score map, w, normalisation) or that share
    a stage (CLS-CNFs-nsFE's CNFs are FE_PRE-CNFs) then train it once. An entry is written
    atomically and read with ``weights_only=True``.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled

    @staticmethod
    def key(description: dict) -> str:
        return hashlib.sha1(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:24]

    @staticmethod
    def path(kind: str, key: str) -> Path:
        return cache_root() / "stages" / kind / f"{key}.pt"

    def load(self, kind: str, key: str) -> dict | None:
        path = self.path(kind, key)
        if not self.enabled:
            return None
        return load_entry(path, key, what="stage cache")  # verified: key, checksum, finite

    def save(self, kind: str, key: str, state: dict) -> None:
        if not self.enabled:
            return
        save_entry(self.path(kind, key), key, state)


#: Largest total size of the per-meta-epoch snapshots a stage-cache entry keeps (bytes).
SNAPSHOT_LIMIT = 256 * 2**20


def fit_cnf_stage(features: list[torch.Tensor], source: dict, settings: CNFSettings,
                  train: ImageSet, seed: int, device: torch.device, cache: StageCache,
                  desc: str, on_meta_epoch: Callable[[int, nn.ModuleList], None] | None = None
                  ) -> tuple[nn.ModuleList, list[float]]:
    """Build and train (or reuse from the cache) the conditional flows on ``features``;
    returns them with the mean loss per meta-epoch (kept in the cache entry).

    ``on_meta_epoch(m, flows)`` is called (flows in eval mode) after every meta-epoch; a
    reused stage replays it from the per-meta-epoch snapshots its entry keeps (up to
    :data:`SNAPSHOT_LIMIT`), or is trained again if it has none."""
    channels = [f.shape[1] for f in features]
    key = StageCache.key({"stage": "cnf", "code": code_digest(*STAGE_CODE), "source": source,
                          "settings": cnf_fields(settings), "seed": seed,
                          "train": train.fingerprint})
    stored = cache.load("cnf", key)
    if stored is not None and on_meta_epoch is not None and "snapshots" not in stored:
        stored = None
    flows = build_flows(channels, settings, seed=seed + 1000, draw_permutations=stored is None)
    if stored is not None:
        flows = flows.to(device).eval()
        for meta, snapshot in enumerate(stored.get("snapshots", []) if on_meta_epoch else [], 1):
            flows.load_state_dict(snapshot)
            on_meta_epoch(meta, flows)
        flows.load_state_dict(stored["flows"])
        return flows.eval(), [float(v) for v in stored.get("history", torch.zeros(0)).tolist()]
    flows = flows.to(device)
    snapshots: list[dict] = []
    keep = settings.meta_epochs * sum(v.numel() * v.element_size()
                                      for v in flows.state_dict().values()) <= SNAPSHOT_LIMIT

    def at_meta_epoch(meta: int) -> None:
        if keep:
            snapshots.append({k: v.detach().cpu().clone() for k, v in flows.state_dict().items()})
        flows.eval()
        on_meta_epoch(meta, flows)
        flows.train()

    generator = torch.Generator().manual_seed(seed + 2000)
    history = train_flows(flows, features, settings, generator, device, desc=desc,
                          progress=bars_enabled(),
                          on_meta_epoch=at_meta_epoch if on_meta_epoch is not None else None)
    entry: dict[str, Any] = {"flows": {k: v.cpu() for k, v in flows.state_dict().items()},
                             "history": torch.tensor(history, dtype=torch.float64)}
    if snapshots:
        entry["snapshots"] = snapshots
    cache.save("cnf", key, entry)
    return flows, history
