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

Progress (runs done / total, skipped, elapsed, estimated remaining) goes to stderr after every
run even when ``progress`` is off (``--quiet`` silences bars, not the run counter).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from tqdm.auto import tqdm

from nfbench.errors import UserError
from nfbench.pipeline.experiment import run_experiment, write_examples, write_record
from nfbench.pipeline.plan import Run

#: The device a worker process was pinned to (local multi-GPU executor), else None.
_WORKER_DEVICE: str | None = None


def default_jobs() -> int:
    """Worker processes for a CPU batch: up to 4 (a GPU batch has one per GPU slot)."""
    return max(1, min(4, os.cpu_count() or 1))


def with_device(run: Run, device: str | None) -> Run:
    """``run`` with its ``device`` setting replaced (None: unchanged)."""
    if device is None:
        return run
    return dataclasses.replace(run, settings={**run.settings, "device": device})


def run_device(run: Run) -> str:
    return str(run.settings.get("device", "auto"))


def compute(run: Run, models_dir: Path | None = None) -> tuple[dict, dict]:
    """Fit and score one run; returns its record (with identity) and figure material. With
    ``models_dir``, the fitted detector is saved to ``models_dir/<run_id>``
    (:mod:`nfbench.artifacts`)."""
    import contextlib

    from nfbench.pipeline.devices import validate_device
    from nfbench.pipeline.identity import run_identity

    if _WORKER_DEVICE is not None and run_device(run) in ("auto", "cuda"):
        run = with_device(run, _WORKER_DEVICE)
    validate_device(run_device(run))
    identity = run_identity(run)
    start = time.perf_counter()
    examples: dict = {}
    if models_dir is not None:  # imported only then: a plain bench does not depend on it
        from nfbench.artifacts import keep_detector, save_detector
    with keep_detector() if models_dir is not None else contextlib.nullcontext([]) as kept:
        record = run_experiment(run.method, run.dataset, run.category,
                                root=Path(run.root) if run.root else None, profile=run.profile,
                                seed=run.seed, overrides=run.settings, shots=run.shots,
                                variant=run.variant, joint=run.joint,
                                joint_categories=list(run.joint_categories) or None,
                                examples=examples)
    record["paper"] = run.paper
    record["run_id"] = run.run_id
    record["identity"] = identity
    record["timing"]["wall_seconds"] = time.perf_counter() - start
    if models_dir is not None:
        save_detector(kept[0], Path(models_dir) / run.run_id, record=record)
    return record, examples


def store(record: dict, examples: dict, results_dir: Path, run: Run) -> Path:
    """Write a run's figure material, then its record (the record last: it marks the run done)."""
    path = Path(results_dir) / run.record_path
    write_examples(examples, path.with_suffix(".npz"))
    write_record(record, path)
    return path


def run_one(run: Run, results_dir: Path, models_dir: Path | None = None) -> Path:
    """Fit and score one run; write its record and figure material (and, with
    ``models_dir``, its fitted detector); returns the record path."""
    record, examples = compute(run, models_dir)
    return store(record, examples, results_dir, run)


def pending(runs: list[Run], results_dir: Path, force: bool = False) -> list[Run]:
    """The runs whose record is missing or has another identity (all with ``force``)."""
    from nfbench.pipeline.identity import run_identity, stored_identity

    if force:
        return list(runs)
    return [run for run in runs
            if stored_identity(Path(results_dir) / run.record_path) != run_identity(run)["digest"]]


def _summary(path: Path) -> str:
    import json

    record = json.loads(Path(path).read_text())
    auroc = record["metrics"]["image_auroc"]  # None when undefined (see the record's reason)
    auroc = "undefined" if auroc is None else f"{auroc:.4f}"
    return (f"{record['run_id']}: image AUROC {auroc} "
            f"({record['timing']['wall_seconds']:.1f} s, {record['timing']['device']})")


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


def _init_worker(threads: int, slots) -> None:
    import torch

    global _WORKER_DEVICE
    torch.set_num_threads(threads)
    if slots is not None:
        _WORKER_DEVICE = slots.get()


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


def execute(runs: list[Run], results_dir: Path, progress: bool = True,
            jobs: int | None = None, force: bool = False, executor: str = "local",
            address: str | None = None, runs_per_gpu: float = 1, device: str | None = None,
            label: str = "runs", models_dir: Path | None = None) -> list[Path]:
    """Make every run's record unless it exists with the same identity; returns the record
    paths of all ``runs``. ``device`` (validated) replaces the runs' device setting. Locally,
    ``jobs`` > 1 spreads CPU runs over worker processes sharing the cores (default
    :func:`default_jobs`); with CUDA GPUs, each GPU runs ``runs_per_gpu`` runs at a time. A
    failing run stops the local batch with its error (DVC then reruns the stage: finished
    runs keep their records and are skipped then). ``models_dir``: save every run's fitted
    detector there (runs skipped by identity save none: use ``force``)."""
    from nfbench.pipeline.devices import validate_device

    validate_device(device)
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
            execute_ray(todo, results_dir, status, address=address, runs_per_gpu=runs_per_gpu)
        elif executor == "local":
            _execute_local(todo, results_dir, status, jobs, runs_per_gpu, models_dir)
        else:
            raise UserError(f"unknown executor {executor!r}; available: local, ray")
    finally:
        status.close()
    return paths


def _execute_local(todo: list[Run], results_dir: Path, status: Progress, jobs: int | None,
                   runs_per_gpu: float, models_dir: Path | None = None) -> None:
    slots = _gpu_slots(todo, runs_per_gpu)
    if slots is not None:
        jobs = len(slots)
    else:
        jobs = max(1, min(jobs or default_jobs(), len(todo)))
    if jobs == 1 and slots is None:
        for run in todo:
            status.update(run.run_id, message=_summary(run_one(run, results_dir, models_dir)))
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    if slots is None:
        # fork starts workers at once (torch is already imported, no thread pool used yet);
        # elsewhere (macOS, Windows) fork is unsafe and spawn is the default
        context, queue = get_context("fork" if sys.platform == "linux" else "spawn"), None
    else:  # CUDA must not be forked; each worker takes one GPU slot
        context = get_context("spawn")
        queue = context.Manager().Queue()
        for slot in slots:
            queue.put(slot)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                             initargs=(threads, queue)) as pool:
        futures = {pool.submit(run_one, run, results_dir, models_dir): run for run in todo}
        for future in as_completed(futures):
            try:
                path = future.result()
            except BaseException:  # stop the batch: queued runs are cancelled, not run
                pool.shutdown(cancel_futures=True)
                raise
            status.update(futures[future].run_id, message=_summary(path))
