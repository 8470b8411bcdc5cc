"""Execute planned runs: each writes its result record (JSON) and figure material (NPZ).

On a CPU, the small networks of the demo profile use two threads poorly, so a batch of runs
can be spread over ``jobs`` worker processes, each with ``threads`` torch threads (one run per
category: they share nothing but the on-disk caches, whose writes are atomic). Results are
deterministic for a given thread count; the record says how many threads made it.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from tqdm.auto import tqdm

from nfbench.experiment import run_experiment, write_examples, write_record
from nfbench.plan import Run


def default_jobs() -> int:
    """Worker processes for a batch: 1 on a GPU (one device), else up to 4 CPU workers."""
    import torch

    return 1 if torch.cuda.is_available() else max(1, min(4, os.cpu_count() or 1))


def run_one(run: Run, results_dir: Path) -> Path:
    """Fit and score one run; write its record and figure material; returns the record path."""
    start = time.perf_counter()
    examples: dict = {}
    record = run_experiment(run.method, run.dataset, run.category,
                            root=Path(run.root) if run.root else None, profile=run.profile,
                            seed=run.seed, overrides=run.settings, shots=run.shots,
                            variant=run.variant, joint=run.joint,
                            joint_categories=list(run.joint_categories) or None,
                            examples=examples)
    record["paper"] = run.paper
    record["run_id"] = run.run_id
    record["timing"]["wall_seconds"] = time.perf_counter() - start
    path = Path(results_dir) / run.record_path
    write_examples(examples, path.with_suffix(".npz"))
    write_record(record, path)
    return path


def _summary(path: Path) -> str:
    import json

    record = json.loads(Path(path).read_text())
    return (f"{record['run_id']}: image AUROC {record['metrics']['image_auroc']:.4f} "
            f"({record['timing']['wall_seconds']:.1f} s)")


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def execute(runs: list[Run], results_dir: Path, progress: bool = True,
            jobs: int | None = None) -> list[Path]:
    """Run every run; returns the record paths. ``jobs`` > 1 spreads the runs over worker
    processes sharing the CPU cores (default :func:`default_jobs`). A failing run stops the
    batch with its error (DVC then reruns the stage); finished runs keep their records."""
    jobs = max(1, min(jobs or default_jobs(), len(runs)))
    bar = tqdm(total=len(runs), desc="runs", unit="run", disable=not progress)
    written = []
    if jobs == 1:
        for run in runs:
            bar.set_postfix_str(run.run_id)
            written.append(run_one(run, results_dir))
            tqdm.write(_summary(written[-1]))
            bar.update()
        return written
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # fork starts workers at once (torch is already imported, no thread pool used yet);
    # elsewhere (macOS, Windows) fork is unsafe and spawn is the default
    context = get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(run_one, run, results_dir) for run in runs]
        for future in as_completed(futures):
            written.append(future.result())
            tqdm.write(_summary(written[-1]))
            bar.update()
    return sorted(written)
