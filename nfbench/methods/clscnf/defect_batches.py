"""CLS-CNFs' synthetic defects made ahead of the encoder fine-tuning by worker processes.

Every batch's defects come from per-sample generators seeded by ``(seed, 2, regen_round,
slot)`` (:func:`batch_seeds`), so a batch does not depend on the ones before it: workers can
make them in any order and the loop still receives exactly the sequential ones, in order
(torch ``DataLoader`` with workers and prefetch). ``workers=0`` makes them in the loop's own
process, as before.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import torch

#: environment variable: worker processes making the defects (default: see :func:`default_workers`)
WORKERS_ENV = "NFBENCH_DEFECT_WORKERS"


def default_workers(device: torch.device) -> int:
    """``$NFBENCH_DEFECT_WORKERS``, else none on a CPU run (the cores train) and up to 8
    (one core left) on a GPU run, whose cores are otherwise idle."""
    value = os.environ.get(WORKERS_ENV)
    if value is not None:
        return max(0, int(value))
    if device.type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def batch_seeds(seed: int, regen_round: int, chosen: Sequence[int]) -> list[np.random.Generator]:
    """One generator per sample slot (D_s is redrawn every ``regen_every`` passes)."""
    return [np.random.default_rng([seed, 2, regen_round, int(s)]) for s in chosen]


class DefectBatches(torch.utils.data.Dataset):
    """Batch ``k`` of ``plan`` (``(regen_round, chosen slots)`` per step): the synthesizer's
    images ``[B, H, W, 3]`` and soft labels ``[B, H, W]`` (numpy, as the loop used them)."""

    def __init__(self, synth, n_images: int, seed: int, plan: Sequence[tuple[int, np.ndarray]]):
        self.synth, self.n_images, self.seed, self.plan = synth, n_images, seed, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        regen_round, chosen = self.plan[k]
        x, target, _ = self.synth.batch(chosen % self.n_images,
                                        batch_seeds(self.seed, regen_round, chosen))
        return x, target


def _as_is(batch):
    return batch


def defect_batches(synth, n_images: int, seed: int, plan: Sequence[tuple[int, np.ndarray]],
                   workers: int = 0, prefetch: int = 2) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The batches of ``plan`` in order, made by ``workers`` processes (``prefetch`` batches
    ahead per worker) or, with ``workers=0``, one by one here."""
    dataset = DefectBatches(synth, n_images, seed, plan)
    if workers <= 0:
        return (dataset[k] for k in range(len(dataset)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False,
                                         num_workers=workers, prefetch_factor=prefetch,
                                         collate_fn=_as_is, multiprocessing_context="fork")
    return iter(loader)
