"""A bench's worker processes end with it on every signal, and nothing half-written stays.

These tests start a real ``nfbench bench --jobs 2`` (real forked worker processes, the smoke
profile on the tiny demo set) in its own process group, signal it while its workers run, and
then look at the process table (psutil) and the results folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("full", "steps2", "steps3", "steps4", "steps5", "scales2", "scales1",
            "baseline_gaussian")


def _group(pgid: int) -> list[psutil.Process]:
    alive = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return alive


def _start_bench(tiny_demo: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    results = tmp_path / "results"
    env = {**os.environ, "NFBENCH_DATA": str(tiny_demo.parent),
           "NFBENCH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    bench = subprocess.Popen(
        [sys.executable, "-m", "nfbench", "bench", "--paper", "patchflow", "--profile", "smoke",
         "--jobs", "2", "--results", str(results), "--quiet",
         # named variants run as one batch over the workers (a whole paper runs one batch per
         # variant, and the smoke profile has one category: no workers)
         *[arg for v in VARIANTS for arg in ("--variant", v)]],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # both workers started (they fork at the first run)
        if len(psutil.Process(bench.pid).children()) >= 2:
            break
        assert bench.poll() is None, bench.communicate()
        time.sleep(0.2)
    else:
        pytest.fail("the bench started no workers")
    time.sleep(2.0)  # the workers are inside their first runs
    return bench, results


def _assert_nothing_left(bench: subprocess.Popen, results: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while _group(bench.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _group(bench.pid) == [], "processes of the bench outlived it"
    bench.wait(5)
    records = sorted(results.rglob("*.json"))
    assert len(records) < 8  # queued runs did not run
    for record in records:  # every record whole, with its figure material
        json.loads(record.read_text())
        assert record.with_suffix(".npz").is_file()
    hidden = [p for p in results.rglob(".*")] if results.exists() else []
    assert hidden == [], f"temporary files left: {hidden}"
    time.sleep(1.0)
    assert sorted(results.rglob("*.json")) == records  # nothing written after the end


@pytest.mark.parametrize("how", ["sigterm-bench", "sigkill-bench", "sigint-group",
                                 "sigint-bench"])
def test_workers_end_with_their_bench(how, tiny_demo, tmp_path):
    bench, results = _start_bench(tiny_demo, tmp_path)
    start = time.monotonic()
    if how == "sigterm-bench":
        os.kill(bench.pid, signal.SIGTERM)
    elif how == "sigkill-bench":
        os.kill(bench.pid, signal.SIGKILL)
    elif how == "sigint-group":
        os.killpg(bench.pid, signal.SIGINT)
    else:
        os.kill(bench.pid, signal.SIGINT)
    _assert_nothing_left(bench, results, seconds=20)
    assert time.monotonic() - start < 20
    if how != "sigkill-bench":
        assert bench.returncode != 0
        assert "Traceback" not in bench.stderr.read()


# --------------------------------------------------------------------------------------------
# issue 19 §1-2: local workers pinned to their GPU, empty_cache between runs, imports before
# the workers start, longest runs first


def _pinned_in_a_fork(queue_out) -> None:
    """In a forked child (the test process keeps its signal handlers): fake CUDA, start a
    worker with one GPU slot, report the device it pinned."""
    import queue

    import torch

    from nfbench.pipeline import runner

    pinned = []
    torch.cuda.set_device = lambda device: pinned.append(str(device))
    slots = queue.SimpleQueue()
    slots.put("cuda:1")
    runner._init_worker(1, slots, os.getppid())
    queue_out.put((runner.worker_device(), pinned))


def test_local_gpu_worker_is_pinned_to_its_slot():
    from multiprocessing import get_context

    context = get_context("fork")
    out = context.Queue()
    child = context.Process(target=_pinned_in_a_fork, args=(out,))
    child.start()
    assert out.get(timeout=60) == ("cuda:1", ["cuda:1"])
    child.join(10)


def test_device_cache_is_emptied_after_every_run_of_a_worker(monkeypatch, tmp_path):
    import torch

    from nfbench.pipeline import runner

    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    monkeypatch.setattr(runner, "run_one", lambda run, results, models_dir=None: Path(results) / "r.json")
    for _ in range(2):
        runner._worker_run(None, tmp_path)
    assert len(emptied) == 2


def test_gpu_workers_start_from_a_preloaded_fork_server_each_with_its_slot():
    from nfbench.pipeline import runner

    pool = runner._make_pool(2, ["cpu", "cpu"], threads=1)  # slots: the GPU path, on a CPU
    try:
        assert pool._mp_context.get_start_method() == ("forkserver" if sys.platform == "linux"
                                                       else "spawn")
        devices = [pool.submit(runner.worker_device).result(timeout=120) for _ in range(2)]
        assert devices == ["cpu", "cpu"]
    finally:
        pool.shutdown()


def test_runs_are_submitted_longest_first(tmp_path):
    from nfbench.pipeline import runner
    from nfbench.pipeline.cost import estimate, load_cost_model
    from nfbench.pipeline.plan import expand_runs, load_params

    params = load_params()
    runs = [*expand_runs("patchflow", "smoke", params)[:2], *expand_runs("csflow", "smoke",
                                                                          params)[:2]]
    seconds = dict(zip([r.run_id for r in runs], estimate(runs, load_cost_model(), tmp_path)[0]))
    shortest_first = sorted(runs, key=lambda r: seconds[r.run_id])
    ordered = runner._longest_first(shortest_first, tmp_path)
    assert sorted(r.run_id for r in ordered) == sorted(r.run_id for r in runs)
    assert [seconds[r.run_id] for r in ordered] == sorted(seconds.values(), reverse=True)
    assert len(set(seconds.values())) > 1 and ordered != shortest_first
