"""``nfbench selfcheck``: the CPU half runs and passes, a failing check is a non-zero exit,
the GPU half is skipped cleanly without CUDA (issue 19 §4)."""

from __future__ import annotations

import pytest
import torch

from nfbench.pipeline import selfcheck as sc


@pytest.fixture
def demo_data(tiny_demo, monkeypatch):
    monkeypatch.setenv("NFBENCH_DATA", str(tiny_demo.parent))
    return tiny_demo


def test_cpu_half_runs_and_passes(demo_data, tmp_path, one_thread):
    lines = []
    checks = sc.selfcheck("cpu", tmp_path / "work", log=lines.append, methods=["gaussian"])
    by_name = {c.name: c for c in checks}
    assert {c.status for c in checks if c.name in sc.GPU_CHECKS} == {"SKIP"}
    for name in ("demo dataset", "smoke cpu gaussian", "deterministic cpu", "executor local"):
        assert by_name[name].status == "PASS", (name, by_name[name])
    assert "identical metrics" in by_name["deterministic cpu"].tolerance
    assert lines[-1].startswith("4 passed, 0 failed, 7 skipped")
    assert (tmp_path / "work" / "results-local").is_dir()
    # the run flags are back to the defaults afterwards
    assert not torch.are_deterministic_algorithms_enabled()


def test_gpu_half_is_skipped_cleanly_without_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_run(*args, **kwargs):
        raise AssertionError("no run without CUDA")

    monkeypatch.setattr(sc.SelfCheck, "smoke", no_run)
    ctx = sc.SelfCheck(tmp_path, log=lambda line: None)
    sc.gpu_checks(ctx)
    assert [c.name for c in ctx.checks] == list(sc.GPU_CHECKS)
    assert {c.status for c in ctx.checks} == {"SKIP"}
    assert all("no CUDA GPU" in c.value for c in ctx.checks)


def test_cuda_requested_without_cuda_is_one_line(monkeypatch, capsys):
    from nfbench.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["selfcheck", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: device cuda requested") and "\n" not in err


def test_a_failing_check_fails_the_command(monkeypatch, capsys, tmp_path):
    from nfbench.cli import main

    def half(ctx):
        ctx.add(sc.Check("smoke cpu x", "PASS", "fine"))
        ctx.attempt("deterministic cpu", lambda: (False, "differ", "identical metrics"))
        ctx.attempt("executor local", lambda: 1 / 0)

    monkeypatch.setattr(sc, "cpu_checks", half)
    monkeypatch.setattr(sc, "ensure_demo", lambda: tmp_path)
    assert main(["selfcheck", "--device", "cpu", "--work", str(tmp_path / "w")]) == 2
    out, err = capsys.readouterr()
    assert "FAIL  deterministic cpu" in out and "ZeroDivisionError" in out
    assert "2 check(s) failed: deterministic cpu, executor local" in err


def test_which_methods_run_in_bf16_and_the_quick_one_come_from_the_networks(tmp_path):
    """No method name in the selfcheck: a method without coupling subnets (the Gaussian
    baseline) has no bf16 check, and the quick method is the fastest flow method measured."""
    ctx = sc.SelfCheck(work=tmp_path, log=lambda _: None,
                       methods=["gaussian", "csflow", "patchflow"])
    assert not ctx.has_flows("gaussian")
    assert ctx.has_flows("csflow") and ctx.has_flows("patchflow")
    assert ctx.quick == "csflow"  # nothing ran yet: the first flow method
    ctx.seconds.update(gaussian=0.1, csflow=9.0, patchflow=3.0)
    assert ctx.quick == "patchflow"  # the fastest flow method, never the flowless one
