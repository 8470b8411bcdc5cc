"""``nfbench bench --executor ray [--address ADDR]``: every run a Ray task.

* Resources: on a cluster with GPUs each run asks for ``1 / runs_per_gpu`` GPU (Ray's
  fractional GPUs: K runs share one GPU) and one CPU; on a CPU-only cluster each run asks for
  ``threads`` CPUs (default 1) and uses as many torch threads.
* Records are written on the driver, into the results folder given to ``bench`` (so that DVC
  sees them as the stage's outputs); a task returns its record and figure material. Workers
  read the datasets and feature cache at the driver's paths (``NFBENCH_DATA``,
  ``NFBENCH_CACHE``, passed to every task): on several machines they must be on shared
  storage mounted at the same path (or set those variables to where they are mounted).
* A run whose worker dies (node lost, process killed, out of memory) is retried once (Ray's
  ``max_retries=1``); a run that raises is reported as failed by run id, the other runs go
  on, and the bench fails at the end naming the failed runs (their records are absent, so
  the next bench or ``dvc repro`` reruns just those).
* Results equal the local executor's for the same seeds and thread count
  (tests/test_executors.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from nfbench.errors import UserError
from nfbench.progress import QUIET_VARIABLE


def _task(run, env: dict[str, str], threads: int):
    """Runs on a Ray worker: fit and score ``run``; returns (record, examples)."""
    import torch

    os.environ.update(env)
    torch.set_num_threads(threads)
    from nfbench.pipeline.runner import compute

    return compute(run)


def _connect(address: str | None):
    try:
        import ray
    except ImportError:
        raise UserError('--executor ray needs Ray: pip install -e ".[ray]"') from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except ConnectionError as exc:
            raise UserError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    return ray


def execute_ray(todo, results_dir: Path, status, address: str | None = None,
                runs_per_gpu: float = 1, threads: int | None = None) -> None:
    """Submit every run of ``todo`` as a Ray task; write each record here as it returns."""
    from nfbench.paths import cache_root, datasets_root
    from nfbench.pipeline.runner import _summary, run_device, store, with_device

    ray = _connect(address)
    gpus = ray.cluster_resources().get("GPU", 0)
    wants_gpu = gpus > 0 and not any(run_device(r) == "cpu" for r in todo)
    threads = threads or int(os.environ.get("NFBENCH_RAY_THREADS", "1"))
    if wants_gpu:
        options = {"num_gpus": 1.0 / max(runs_per_gpu, 1e-9), "num_cpus": 1}
    else:
        options = {"num_cpus": threads}
    env = {"NFBENCH_DATA": str(datasets_root()), "NFBENCH_CACHE": str(cache_root()),
           QUIET_VARIABLE: "1"}
    remote = ray.remote(_task).options(max_retries=1, retry_exceptions=False, **options)
    from nfbench.pipeline.identity import run_identity

    # the identity is the driver's, as bench's skip test computes it: a GPU worker would read
    # device "auto" as cuda where the (CPU) driver reads cpu, and every rerun would redo all
    identities = {run.run_id: run_identity(run) for run in todo}
    refs = {}
    for run in todo:
        # a GPU task sees only its GPU (Ray sets CUDA_VISIBLE_DEVICES): "cuda" is that one
        if wants_gpu and run_device(run).startswith("cuda:"):
            run = with_device(run, "cuda")
        refs[remote.remote(run, env, threads)] = run
    left = list(refs)
    errors = {}
    while left:
        ready, left = ray.wait(left, num_returns=1)
        run = refs[ready[0]]
        try:
            record, examples = ray.get(ready[0])
        except Exception as exc:  # noqa: BLE001 - a failed task is reported, the rest go on
            cause = getattr(exc, "cause", None) or exc
            text = str(cause).strip().splitlines()
            errors[run.run_id] = f"{type(cause).__name__}: {text[-1] if text else ''}"
            status.update(run.run_id, ok=False, message=errors[run.run_id])
            continue
        record["identity"] = identities[run.run_id]
        path = store(record, examples, results_dir, run)
        status.update(run.run_id, message=_summary(path))
    if errors:
        raise UserError(f"{len(errors)} run(s) failed on Ray: "
                        + "; ".join(f"{k} ({v})" for k, v in errors.items()))
