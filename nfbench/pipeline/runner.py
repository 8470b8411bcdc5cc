"""Execute planned runs: each writes its result record (JSON) and figure material (NPZ).

A run is the unit of work. Before anything executes, each run's identity
(:mod:`nfbench.pipeline.identity`) is compared with the record already on disk: a record with the same
identity is kept (the run is skipped), a missing or different one is (re)made, ``force``
remakes all. An interrupted bench therefore resumes where it stopped.

Executors:

* ``local`` on a CPU: the small networks of the demo profile use two threads poorly, so a
  batch of runs can be spread over ``jobs`` worker processes, each with ``threads`` torch
  threads (one run per category: they share nothing but the on-disk caches, whose writes are
  atomic). Results are deterministic for a given thread count; the record says how many
  threads made it.
* ``local`` on a machine with CUDA GPUs: one worker process per GPU slot (``runs_per_gpu``
  slots per visible GPU), each pinned to its GPU, so that every GPU runs
  ``runs_per_gpu`` runs at a time.
* ``ray``: every run a Ray task (:mod:`nfbench.pipeline.ray_executor`); records are written here, on
  the driver.

Both run each run through :mod:`nfbench.pipeline.execution` (fit, score, stamp, store).

Progress (runs done / total, skipped, elapsed, estimated remaining) goes to stderr after every
run even when ``progress`` is off (``--quiet`` silences bars, not the run counter).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

from tqdm.auto import tqdm

from nfbench.datasets.staging import cleanup_on_terminate  # SIGTERM raises KeyboardInterrupt
from nfbench.errors import UserError
# the one execution path (shared with the Ray executor); re-exported names
from nfbench.pipeline.execution import compute, run_device, store, summary, with_device  # noqa: F401
from nfbench.pipeline.plan import Run

#: The device a worker process was pinned to (local multi-GPU executor), else None.
_WORKER_DEVICE: str | None = None


def default_jobs() -> int:
    """Worker processes for a CPU batch: up to 4 (a GPU batch has one per GPU slot)."""
    return max(1, min(4, os.cpu_count() or 1))


def run_one(run: Run, results_dir: Path, models_dir: Path | None = None) -> Path:
    """Fit and score one run (:mod:`nfbench.pipeline.execution`, on this worker's GPU slot
    where the run's device is ``auto``/``cuda``); write its record and figure material (and,
    with ``models_dir``, its fitted detector); returns the record path."""
    if _WORKER_DEVICE is not None and run_device(run) in ("auto", "cuda"):
        run = with_device(run, _WORKER_DEVICE)
    record, examples = compute(run, models_dir)
    return store(record, examples, results_dir, run)


def pending(runs: list[Run], results_dir: Path, force: bool = False) -> list[Run]:
    """The runs whose record is missing, has another identity or lacks whole figure
    material (all with ``force``)."""
    from nfbench.pipeline.experiment import examples_whole
    from nfbench.pipeline.identity import run_identity, stored_identity

    if force:
        return list(runs)
    # a record is kept only beside whole figure material (a truncated .npz is remade)
    return [run for run in runs
            if stored_identity(Path(results_dir) / run.record_path) != run_identity(run)["digest"]
            or not examples_whole((Path(results_dir) / run.record_path).with_suffix(".npz"))]


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Runs done / total, failures, elapsed and estimated remaining, one line per event on
    stderr (and a tqdm bar when ``bar``)."""

    def __init__(self, total: int, skipped: int, label: str = "runs", bar: bool = True):
        self.total, self.skipped, self.label = total, skipped, label
        self.done, self.failed, self.start = 0, [], time.perf_counter()
        self.bar = tqdm(total=total, initial=skipped, desc=label, unit="run", disable=not bar)
        self.quiet_lines = not bar
        if skipped:
            self._line(f"{skipped} run(s) already recorded with the same identity: skipped")

    def _line(self, text: str) -> None:
        if self.quiet_lines:
            print(f"[{self.label}] {text}", file=sys.stderr, flush=True)
        else:
            tqdm.write(text, file=sys.stderr)

    def update(self, run_id: str, ok: bool = True, message: str = "") -> None:
        if ok:
            self.done += 1
        else:
            self.failed.append(run_id)
        finished = self.done + len(self.failed)
        elapsed = time.perf_counter() - self.start
        left = self.total - self.skipped - finished
        remaining = elapsed / finished * left if finished else 0.0
        self.bar.update()
        failures = f", {len(self.failed)} failed ({', '.join(self.failed)})" if self.failed else ""
        self._line(f"{self.skipped + self.done}/{self.total} runs done{failures}, elapsed "
                   f"{_clock(elapsed)}, remaining ~{_clock(remaining)}"
                   + (f" | {message}" if message else ""))

    def close(self) -> None:
        self.bar.close()


class _Terminated(BaseException):
    """Raised in a worker by SIGTERM (from its bench, or its bench's death) during a run, so
    that the atomic writers' ``finally`` blocks remove their temporary files before it exits."""


#: True while a worker executes a run (a signal then unwinds it; otherwise it exits at once).
_IN_RUN = False


def _worker_signal(signum, frame) -> None:
    if _IN_RUN:
        raise _Terminated(signum)
    os._exit(128 + signum)


def _watch_parent(parent: int) -> None:
    """End this worker when its bench dies, whatever killed it (SIGKILL included).

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, the kernel's own parent-death signal (the
    workers are started by the bench's main thread, whose end is what the kernel watches).
    Elsewhere: a daemon thread that polls the parent id once a second."""
    import signal
    import threading

    if sys.platform == "linux":
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, signal.SIGTERM, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent:  # the bench died before the watch was set
                    os._exit(128 + signal.SIGTERM)
                return
        except (OSError, AttributeError):
            pass

    def poll() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=poll, daemon=True, name="nfbench-parent-watch").start()


def _init_worker(threads: int, slots, parent: int | None = None) -> None:
    """A local worker's start: end with the bench (signals, parent death), pin its GPU slot
    (``torch.cuda.set_device``: before any CUDA allocation), set its torch threads."""
    import signal

    import torch

    global _WORKER_DEVICE
    # fork inherits the bench's handlers. Ctrl-C reaches the whole process group: the bench
    # alone acts on it (it cancels the queue and sends SIGTERM), so that a worker never
    # ends first and turns the interruption into a broken pool
    signal.signal(signal.SIGTERM, _worker_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent(parent if parent is not None else os.getppid())
    torch.set_num_threads(threads)
    if slots is not None:
        _WORKER_DEVICE = slots.get()
        if _WORKER_DEVICE.startswith("cuda"):
            torch.cuda.set_device(torch.device(_WORKER_DEVICE))


def in_worker(fn, *args):
    """``fn(*args)`` in a local worker: SIGTERM unwinds it (temporary files removed), then
    the worker exits; the device's cached memory is released after every call, so that the
    next run of this worker starts from an empty allocator."""
    global _IN_RUN
    _IN_RUN = True
    try:
        return fn(*args)
    except _Terminated as stop:
        os._exit(128 + int(stop.args[0]))
    finally:
        _IN_RUN = False
        _release_device_memory()


def _worker_run(run: Run, results_dir: Path, models_dir: Path | None = None) -> Path:
    """:func:`run_one` in a worker (:func:`in_worker`)."""
    return in_worker(run_one, run, results_dir, models_dir)


def _release_device_memory() -> None:
    """``torch.cuda.empty_cache()`` where this process has initialised CUDA (else nothing)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _gpu_slots(runs: list[Run], runs_per_gpu: float) -> list[str] | None:
    """The device of every local GPU worker (None: run on the CPU)."""
    from nfbench.pipeline.devices import visible_gpus

    devices = {run_device(r) for r in runs}
    gpus = visible_gpus()
    if gpus == 0 or devices & {"cpu"}:
        return None
    per_gpu = max(1, int(round(runs_per_gpu)))
    pinned = sorted(d for d in devices if d.startswith("cuda:"))
    targets = pinned if pinned and len(devices) == 1 else [f"cuda:{i}" for i in range(gpus)]
    return [device for device in targets for _ in range(per_gpu)]


def _check_results_dir(results_dir: Path) -> None:
    """Refuse, before the first run, a results folder that is a file or lies under one."""
    for path in (results_dir, *results_dir.parents):
        if path.exists():
            if not path.is_dir():
                raise UserError(f"--results {results_dir} cannot be a results folder: {path} "
                                "is a file")
            return


def execute(runs: list[Run], results_dir: Path, progress: bool = True,
            jobs: int | None = None, force: bool = False, executor: str = "local",
            address: str | None = None, runs_per_gpu: float = 1, device: str | None = None,
            label: str = "runs", cpus_per_run: int | None = None,
            connect_timeout: float | None = None,
            models_dir: Path | None = None) -> list[Path]:
    """Make every run's record unless it exists with the same identity; returns the record
    paths of all ``runs``. ``device`` (validated) replaces the runs' device setting. Locally,
    ``jobs`` > 1 spreads CPU runs over worker processes sharing the cores (default
    :func:`default_jobs`); with CUDA GPUs, each GPU runs ``runs_per_gpu`` runs at a time. A
    failing run stops the local batch with its error (DVC then reruns the stage: finished
    runs keep their records and are skipped then). Ray: ``cpus_per_run`` CPUs and torch
    threads per task, ``connect_timeout`` seconds to reach ``address``. ``models_dir``: save
    every run's fitted detector there (runs skipped by identity save none: use ``force``)."""
    from nfbench.pipeline.devices import validate_device

    validate_device(device)
    _check_results_dir(Path(results_dir))
    runs = [with_device(run, device) for run in runs]
    for requested in {run_device(r) for r in runs}:
        validate_device(requested)
    todo = pending(runs, results_dir, force)
    paths = [Path(results_dir) / run.record_path for run in runs]
    status = Progress(len(runs), len(runs) - len(todo), label, bar=progress)
    try:
        if not todo:
            return paths
        if executor == "ray":
            from nfbench.pipeline.ray_executor import execute_ray

            if models_dir is not None:
                raise UserError("--save-models needs --executor local")
            execute_ray(todo, results_dir, status, address=address, runs_per_gpu=runs_per_gpu,
                        threads=cpus_per_run, connect_timeout=connect_timeout)
        elif executor == "local":
            _execute_local(todo, results_dir, status, jobs, runs_per_gpu, models_dir)
        else:
            raise UserError(f"unknown executor {executor!r}; available: local, ray")
    finally:
        status.close()
    return paths


def _longest_first(todo: list[Run], results_dir: Path) -> list[Run]:
    """``todo`` ordered by estimated seconds (the cost model of ``nfbench plan``, refined by
    any earlier record of the run): the runs of the stage group (:func:`stage_group`) with the
    most work first, longest run first within it, so that a pool does not end with one long
    run or one long group alone; the given order where no estimate can be made. Order changes
    no number: every run is independent and deterministic."""
    from nfbench.pipeline.cost import estimate, load_cost_model
    from nfbench.pipeline.plan import stage_group

    try:
        seconds, _ = estimate(todo, load_cost_model(), results_dir)
    except Exception:  # an estimate is an optimisation, never a reason to fail
        return list(todo)
    groups = [stage_group(run) for run in todo]
    group_seconds: dict[tuple, float] = {}
    for group, run_seconds in zip(groups, seconds):
        group_seconds[group] = group_seconds.get(group, 0.0) + run_seconds
    order = sorted(range(len(todo)), key=lambda i: (-group_seconds[groups[i]], -seconds[i]))
    return [todo[i] for i in order]


def _stop_pool(pool: ProcessPoolExecutor, grace: float = 10.0) -> None:
    """Cancel the queued runs and end every worker now: SIGTERM (a worker unwinds its run,
    removing temporary files), SIGKILL for any still alive after ``grace`` seconds."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1.0)


def _make_pool(jobs: int, slots: list[str] | None, threads: int) -> ProcessPoolExecutor:
    """The local worker pool: ``jobs`` CPU workers, or one worker per GPU slot, each started
    by :func:`_init_worker` (it ends with the bench, is pinned to its slot, uses ``threads``
    torch threads)."""
    parent: int | None = os.getpid()
    if slots is None:
        # fork starts workers at once (torch is already imported, no thread pool used yet);
        # elsewhere (macOS, Windows) fork is unsafe and spawn is the default
        context, queue = get_context("fork" if sys.platform == "linux" else "spawn"), None
        if sys.platform == "linux":
            _preload_for_workers()
    else:  # CUDA must not be forked; each worker takes one GPU slot
        if sys.platform == "linux":
            # a fork server that imported the heavy modules (not CUDA) once: workers start
            # with them loaded instead of importing torch each
            context = get_context("forkserver")
            context.set_forkserver_preload(["torch", "nfbench.pipeline.experiment"])
            parent = None  # a worker's parent is the fork server (it ends with the bench)
        else:
            context = get_context("spawn")
        queue = context.Queue()
        for slot in slots:
            queue.put(slot)
    return ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                               initargs=(threads, queue, parent))


def worker_device() -> str | None:
    """The GPU slot (device) this local worker is pinned to; None outside such a worker."""
    return _WORKER_DEVICE


def threads_per_job(jobs: int) -> int:
    """Torch threads of each of ``jobs`` CPU workers sharing this machine's cores. It depends
    on the jobs asked for, never on how many runs a batch has, because a CPU result depends
    on its thread count: a run made alone (``bench --variant V --category C``) and the same
    run made in a whole paper's pool give the same numbers."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def workers_for(todo: int, jobs: int | None) -> tuple[int, int]:
    """(worker processes, torch threads each) for ``todo`` CPU calls at ``jobs`` jobs
    (default :func:`default_jobs`): no more workers than calls, threads from the jobs asked
    (:func:`threads_per_job`)."""
    asked = jobs or default_jobs()
    return max(1, min(asked, todo)), threads_per_job(asked)


def _preload_for_workers() -> None:
    """Import, before a fork, what every worker would otherwise import on its first run:
    ``torch._dynamo`` (the first optimizer built imports it, about 2.5 s a process)."""
    import torch._dynamo  # noqa: F401


def map_in_workers(tasks: list[tuple], jobs: int, local, worker, on_done,
                   slots: list[str] | None = None, threads: int | None = None,
                   exclusive=None) -> None:
    """``local(*task)`` for every task in this process when ``jobs`` is 1 and no GPU slot is
    given, else ``worker(*task)`` (a picklable function that wraps its call in
    :func:`in_worker`) in a pool of ``jobs`` workers (:func:`_make_pool`: one per GPU slot);
    ``on_done(task, result)`` as each ends. Torch threads per call: ``threads`` (default
    ``cpu_count // jobs``), in this process too. Tasks start in the given order, except that
    two tasks with a key of ``exclusive(*task)`` in common never run at once while no task
    with that key has finished (runs that may train the same stage: the second would only
    wait for the first's lock; :func:`_dispatch`). The bench's and the
    peers stage's one pool. Ctrl-C or SIGTERM: nothing queued starts and the workers end now;
    a failure: nothing queued starts, the calls under way finish (their records are kept),
    then it raises."""
    threads = threads or threads_per_job(jobs)
    with cleanup_on_terminate():
        if jobs == 1 and slots is None:
            import torch

            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                for task in tasks:
                    on_done(task, local(*task))
            finally:
                torch.set_num_threads(before)
            return
        pool = _make_pool(jobs, slots, threads)
        try:
            _dispatch(pool, tasks, jobs, worker, on_done, exclusive)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: nothing queued starts, workers end now
            _stop_pool(pool)
            raise
        except BaseException:  # a failed run: nothing queued starts; the runs under way
            try:  # finish and keep their records (the next bench skips them)
                pool.shutdown(wait=True, cancel_futures=True)
            except KeyboardInterrupt:
                _stop_pool(pool)
                raise
            raise
        pool.shutdown()


def _dispatch(pool: ProcessPoolExecutor, tasks: list[tuple], jobs: int, worker, on_done,
              exclusive=None) -> None:
    """Keep ``jobs`` tasks in flight, each time the first queued one that shares no key of
    ``exclusive(*task)`` (a collection of keys: the stages it may train) with a running task,
    counting only keys no finished task had: a stage trained by a finished run is only read
    by the others, which may then run at once. ``on_done`` as each ends. A failure raises at
    once (the caller lets the running ones finish)."""
    # (task, its exclusive keys), each computed once
    queued = [(task, frozenset(exclusive(*task)) if exclusive is not None else frozenset())
              for task in tasks]
    running: dict = {}  # future -> (task, exclusive keys)
    trained: set = set()  # keys of finished tasks: their stages exist now

    def fill() -> None:
        while len(running) < jobs:
            held = set().union(*(keys for _, keys in running.values())) - trained
            index = next((i for i, (_, keys) in enumerate(queued) if not keys & held), None)
            if index is None:
                return
            task, keys = queued.pop(index)
            running[pool.submit(worker, *task)] = (task, keys)

    fill()
    while running:
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            task, keys = running.pop(future)
            on_done(task, future.result())  # a failure stops the batch (the caller)
            trained.update(keys)
        fill()


def _execute_local(todo: list[Run], results_dir: Path, status: Progress, jobs: int | None,
                   runs_per_gpu: float, models_dir: Path | None = None) -> None:
    slots = _gpu_slots(todo, runs_per_gpu)
    if slots is not None:  # one worker per GPU slot, cpu_count // slots threads each
        jobs, threads = len(slots), None
    else:
        jobs, threads = workers_for(len(todo), jobs)
    from nfbench.pipeline.plan import shared_stages

    ordered = todo if jobs == 1 and slots is None else _longest_first(todo, results_dir)
    map_in_workers([(run, results_dir, models_dir) for run in ordered], jobs, run_one,
                   _worker_run, lambda task, path: status.update(task[0].run_id,
                                                                 message=summary(path)),
                   slots, threads, exclusive=lambda run, *_: shared_stages(run))
