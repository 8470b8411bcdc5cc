"""The profiling stage's untimed measurements (FLOPs on fake tensors and sizes, no clock) of
every paper, counted in worker processes into the profiling cache before the timed ones run
one at a time (:func:`nfbench.pipeline.complexity.profile_paper`). Its own module because the
worker pool (:mod:`nfbench.pipeline.runner`) imports the cost model, which imports
:mod:`nfbench.pipeline.complexity`."""

from __future__ import annotations

import functools

from nfbench.pipeline.complexity import cached, is_cached, measurements
from nfbench.pipeline.runner import in_worker, map_in_workers, workers_for


def count_untimed(papers: list[str], profile: str, params: dict, device: str | None = None,
                  time_paper: bool = False, jobs: int | None = None) -> int:
    """Fill the cache with every untimed measurement of ``papers`` not in it yet, spread over
    worker processes, so that :func:`~nfbench.pipeline.complexity.profile_paper` then only
    times, one measurement at a time on otherwise idle cores. CPU only (a fork must not follow
    CUDA's start): on a GPU machine this does nothing and ``profile_paper`` counts as it goes.
    Returns how many were counted here (none when fewer than two were missing)."""
    import torch

    if (device or "auto") != "cpu" and torch.cuda.is_available():
        return 0
    tasks = [(paper, profile, params, device, time_paper, index)
             for paper in papers
             for index, m in enumerate(measurements(paper, profile, params, device, time_paper))
             if not m.timed and not is_cached(m)]
    if len(tasks) < 2:  # one count gains nothing from a worker
        return 0
    jobs, threads = workers_for(len(tasks), jobs)
    map_in_workers(tasks, jobs, _count_one, functools.partial(in_worker, _count_one),
                   lambda task, result: None, threads=threads)
    return len(tasks)


def _count_one(paper: str, profile: str, params: dict, device: str | None, time_paper: bool,
               index: int) -> None:
    """Measurement ``index`` of ``paper`` into the cache (a worker of :func:`count_untimed`)."""
    m = measurements(paper, profile, params, device, time_paper)[index]
    cached(m.kind, m.method, m.what, m.measure)
