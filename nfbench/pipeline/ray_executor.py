"""``nfbench bench --executor ray [--address ADDR]``: every run a Ray task.

* Resources: on a cluster with GPUs each run asks for ``1 / runs_per_gpu`` GPU (Ray's
  fractional GPUs: K runs share one GPU); every run asks for ``cpus_per_run`` CPUs
  (``bench --cpus-per-run N``, else ``NFBENCH_RAY_THREADS``, default 1) and uses as many
  torch threads (a GPU run's data loading, synthetic defects and metrics use the CPU).
* A GPU task's worker process serves one run only (``max_calls=1``): module-level caches
  (feature extractors, encoders), the CUDA context and the caching allocator's memory leave
  with it, and the next run starts on a clean GPU. Ray applies ``max_calls`` only when given
  to ``@ray.remote(...)``: ``.options(max_calls=...)`` raises and ``.options(num_gpus=...)``
  skips the automatic ``max_calls=1`` of GPU functions (ray/remote_function.py,
  ``RemoteFunction.__init__`` and ``options``; Ray 2.60), so every option is given there.
  A task also releases the caches and ``torch.cuda.empty_cache()`` when its run ends.
* Connecting: ``--address host:port`` is checked with a TCP connection of at most
  ``connect_timeout`` seconds (``NFBENCH_RAY_TIMEOUT``, default 30) before ``ray.init``
  (which would retry for minutes): an unreachable cluster is one error line.
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
from nfbench.precision import CUBLAS_WORKSPACE
from nfbench.progress import QUIET_VARIABLE


#: seconds to wait for a Ray cluster's address to answer (``NFBENCH_RAY_TIMEOUT`` overrides)
CONNECT_TIMEOUT = 30.0


def _task(run, env: dict[str, str], threads: int, identity: dict | None = None):
    """Runs on a Ray worker: fit and score ``run`` (its record stamped with the driver's
    ``identity``); returns (record, examples). The caches the run filled and the GPU memory
    it held are released when it ends."""
    os.environ.update(env)  # before torch touches CUDA (CUBLAS_WORKSPACE_CONFIG)
    import torch

    from nfbench.pipeline.devices import release_memory
    from nfbench.pipeline.execution import compute

    torch.set_num_threads(threads)
    try:
        return compute(run, identity=identity)
    finally:
        release_memory()


def _check_reachable(address: str, timeout: float) -> None:
    """One TCP connection to a ``host:port`` (or ``ray://host:port``) address, at most
    ``timeout`` seconds: :class:`UserError` when nothing answers. ``auto``/``local`` pass."""
    import socket

    target = address.split("://", 1)[-1]
    if target in ("auto", "local") or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        port_number = int(port)
    except ValueError:
        raise UserError(f"--address expects host:port, got {address!r}") from None
    try:
        with socket.create_connection((host.strip("[]"), port_number), timeout=timeout):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise UserError(f"cannot reach the Ray cluster at {address} within {timeout:g} s: "
                        f"{reason}") from None


def _connect(address: str | None, timeout: float | None = None):
    """Ray, initialised and connected to ``address`` (None: a local cluster). The address is
    checked first (:func:`_check_reachable`) so that a wrong one fails in bounded time."""
    try:
        import ray
    except ImportError:
        raise UserError('--executor ray needs Ray: pip install -e ".[ray]"') from None
    if not ray.is_initialized():
        if timeout is None:
            timeout = float(os.environ.get("NFBENCH_RAY_TIMEOUT", CONNECT_TIMEOUT))
        if address is not None:
            _check_reachable(address, timeout)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except ConnectionError as exc:
            raise UserError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    return ray


def task_options(wants_gpu: bool, runs_per_gpu: float, threads: int) -> dict:
    """The ``@ray.remote(...)`` options of a run's task (see the module docstring)."""
    options = {"num_cpus": threads, "max_retries": 1, "retry_exceptions": False}
    if wants_gpu:
        options.update(num_gpus=1.0 / max(runs_per_gpu, 1e-9), max_calls=1)
    return options


def execute_ray(todo, results_dir: Path, status, address: str | None = None,
                runs_per_gpu: float = 1, threads: int | None = None,
                connect_timeout: float | None = None) -> None:
    """Submit every run of ``todo`` as a Ray task; write each record here as it returns.
    ``threads``: CPUs (and torch threads) per run; ``connect_timeout``: seconds to wait for
    ``address``."""
    from nfbench.paths import cache_root, datasets_root
    from nfbench.pipeline.execution import run_device, store, summary, with_device

    if threads is not None and threads < 1:
        raise UserError(f"--cpus-per-run must be >= 1, got {threads}")
    if connect_timeout is not None and not 0 < connect_timeout < float("inf"):
        raise UserError(f"--ray-timeout must be a positive number of seconds, got {connect_timeout}")
    ray = _connect(address, connect_timeout)
    gpus = ray.cluster_resources().get("GPU", 0)
    wants_gpu = gpus > 0 and not any(run_device(r) == "cpu" for r in todo)
    threads = threads or int(os.environ.get("NFBENCH_RAY_THREADS", "1"))
    # cuBLAS reads its workspace setting when CUDA starts: set before any run (a run's
    # `deterministic` comes from its resolved config); it costs nothing to the others
    env = {"NFBENCH_DATA": str(datasets_root()), "NFBENCH_CACHE": str(cache_root()),
           QUIET_VARIABLE: "1",
           "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)}
    remote = ray.remote(**task_options(wants_gpu, runs_per_gpu, threads))(_task)
    from nfbench.pipeline.identity import run_identity

    # the identity is the driver's, as bench's skip test computes it: a GPU worker would read
    # device "auto" as cuda where the (CPU) driver reads cpu, and every rerun would redo all
    identities = {run.run_id: run_identity(run) for run in todo}
    refs = {}
    for run in todo:
        # a GPU task sees only its GPU (Ray sets CUDA_VISIBLE_DEVICES): "cuda" is that one
        if wants_gpu and run_device(run).startswith("cuda:"):
            run = with_device(run, "cuda")
        refs[remote.remote(run, env, threads, identities[run.run_id])] = run
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
        path = store(record, examples, results_dir, run)
        status.update(run.run_id, message=summary(path))
    if errors:
        raise UserError(f"{len(errors)} run(s) failed on Ray: "
                        + "; ".join(f"{k} ({v})" for k, v in errors.items()))
