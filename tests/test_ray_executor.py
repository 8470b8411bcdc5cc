"""The Ray executor's resources and connection (issue 19 §1, issue 21 item 7): GPU tasks
serve one run (max_calls=1, given to @ray.remote where Ray honours it), CPUs per task are
configurable, a run's caches and GPU memory are released, an unreachable cluster is one line
in bounded time."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest

from nfbench.errors import UserError
from nfbench.pipeline import ray_executor


def test_unreachable_address_fails_fast_with_one_line():
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in ("127.0.0.1:1", f"127.0.0.1:{port}"):
        start = time.monotonic()
        with pytest.raises(UserError) as error:
            ray_executor.execute_ray([object()], None, None, address=address, connect_timeout=5)
        assert time.monotonic() - start < 40
        message = str(error.value)
        assert "\n" not in message and f"cannot reach the Ray cluster at {address}" in message


def test_address_that_never_answers_waits_at_most_the_timeout(monkeypatch):
    def silent(address, timeout):
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    with pytest.raises(UserError, match="within 2 s: no answer"):
        ray_executor._check_reachable("10.0.0.1:6379", 2)
    ray_executor._check_reachable("auto", 2)  # nothing to check


def test_bad_resource_flags_are_one_line():
    with pytest.raises(UserError, match="--cpus-per-run must be >= 1"):
        ray_executor.execute_ray([], None, None, threads=0)
    with pytest.raises(UserError, match="--ray-timeout"):
        ray_executor.execute_ray([], None, None, connect_timeout=-1)


def test_gpu_tasks_serve_one_run_and_get_the_cpus_asked():
    assert ray_executor.task_options(True, 2, 4) == {
        "num_cpus": 4, "num_gpus": 0.5, "max_calls": 1, "max_retries": 1,
        "retry_exceptions": False}
    assert ray_executor.task_options(False, 1, 3) == {
        "num_cpus": 3, "max_retries": 1, "retry_exceptions": False}


def test_ray_honours_max_calls_only_in_the_decorator():
    """What the executor relies on, read from Ray itself: ``.options(max_calls=...)`` is
    refused, and GPU options given through ``.options`` leave max_calls unset."""
    ray = pytest.importorskip("ray")

    def f():
        return 1

    with pytest.raises(ValueError, match="max_calls"):
        ray.remote(f).options(max_calls=1)
    assert ray.remote(**ray_executor.task_options(True, 1, 1))(f)._default_options[
        "max_calls"] == 1
    assert ray.remote(f)._default_options.get("max_calls") in (None, 0)


def test_execute_ray_submits_with_the_decorator_options(monkeypatch, tmp_path):
    seen = {}

    class FakeRemote:
        def remote(self, run, env, threads, identity):
            seen["call"] = (env, threads)
            seen["identity"] = identity  # the driver's, stamped by the task
            return "ref"

    fake = SimpleNamespace(
        cluster_resources=lambda: {"GPU": 1, "CPU": 16},
        remote=lambda **options: seen.setdefault("options", options) and (lambda f: FakeRemote()),
        wait=lambda refs, num_returns: (refs, []),
        get=lambda ref: (_ for _ in ()).throw(RuntimeError("boom")))
    monkeypatch.setattr(ray_executor, "_connect", lambda address, timeout: fake)
    monkeypatch.setattr("nfbench.pipeline.identity.run_identity", lambda run: {"digest": "x"})
    run = SimpleNamespace(run_id="p/v/c/0", settings={"device": "auto"})
    status = SimpleNamespace(update=lambda *a, **k: None)
    with pytest.raises(UserError, match="1 run\\(s\\) failed on Ray"):
        ray_executor.execute_ray([run], tmp_path, status, threads=4)
    assert seen["options"]["max_calls"] == 1 and seen["options"]["num_cpus"] == 4
    env, threads = seen["call"]
    assert threads == 4 and env["CUBLAS_WORKSPACE_CONFIG"] and seen["identity"] == {"digest": "x"}


def test_task_releases_caches_after_its_run(monkeypatch):
    import torch

    from nfbench import feature_cache

    feature_cache._EXTRACTORS[("fake",)] = object()
    calls = []
    monkeypatch.setattr("nfbench.pipeline.execution.compute",
                        lambda run, identity=None: calls.append((run, identity)) or "rec")
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    threads = torch.get_num_threads()
    try:
        assert ray_executor._task("run", {"NFBENCH_QUIET": "1"}, 1, {"digest": "d"}) == "rec"
    finally:
        torch.set_num_threads(threads)
    assert calls == [("run", {"digest": "d"})] and emptied == [1] and not feature_cache._EXTRACTORS
