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
         "--jobs", "2", "--results", str(results), "--quiet"],
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
