"""The profiling library: FLOP counters agree with a hand count, timing comes from
torch.utils.benchmark's blocked_autorange."""

from __future__ import annotations

import torch
from torch import nn

from nfbench.profiling import count_flops, measure_module, time_inference


class _ScoresAndMap(nn.Module):
    """images [B, 3, 8, 8] -> (scores [B], map [B, 8, 8]) through one 1x1 convolution."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)

    def forward(self, images):
        maps = self.conv(images).pow(2).sum(1)
        return maps.flatten(1).amax(1), maps


def test_flop_counters_match_a_hand_count_on_a_tuple_output():
    flops = count_flops(_ScoresAndMap(), torch.rand(1, 3, 8, 8))
    macs = 3 * 4 * 8 * 8  # one multiply-add per input channel, output channel and pixel
    assert flops["gmacs_fvcore"] * 1e9 == macs
    assert flops["gflops_torch"] * 1e9 == 2 * macs


def test_timing_runs_blocked_autorange_for_at_least_min_run_time(one_thread):
    calls = []
    timing = time_inference(lambda: calls.append(1), warmup=2, min_run_time=0.05)
    assert timing["median_s"] > 0 and timing["repeats"] >= 1 and timing["min_s"] <= timing["median_s"]
    assert len(calls) > 2 + timing["repeats"]  # warm-up, then several calls per block
    result = measure_module(_ScoresAndMap(), 8, batch_size=2, device=torch.device("cpu"),
                            min_run_time=0.05)
    assert result["images_per_second"] > 0 and result["timing"]["device"] == "cpu"


def test_the_profiling_stage_reuses_measurements_of_unchanged_configs_and_code(
        tmp_path, monkeypatch):
    """A rerun of `nfbench profile` with nothing changed measures nothing again; a changed
    setting or a changed measuring code measures again (cache/profiling/, keyed by both)."""
    import json

    from nfbench.pipeline import complexity
    from nfbench.pipeline.plan import load_params

    monkeypatch.setenv("NFBENCH_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_method(method, settings, batch_size=1, time_it=True):
        calls.append(("method", json.dumps(settings, sort_keys=True)))
        return {"gmacs_fvcore": 1.0, "gflops_torch": 2.0, "parameters": 2e6, "settings": settings}

    def fake_components(method, settings, rows, batch_size, time_it=True):
        calls.append(("components", json.dumps(settings, sort_keys=True)))
        return [{"component": row, "size_mb": 1.0} for row in rows]

    monkeypatch.setattr(complexity, "profile_method", fake_method)
    monkeypatch.setattr(complexity, "profile_components", fake_components)
    params = load_params()
    out = complexity.profile_paper("clscnf", "demo", params, tmp_path / "res", log=lambda _: None)
    first, measured = out.read_text(), len(calls)
    assert measured >= 3 and any(kind == "components" for kind, _ in calls)
    complexity.profile_paper("clscnf", "demo", params, tmp_path / "res", log=lambda _: None)
    assert len(calls) == measured and out.read_text() == first  # all read back, same file
    params["clscnf"]["demo"]["settings"]["input_size"] = 96  # the demo configuration changes
    complexity.profile_paper("clscnf", "demo", params, tmp_path / "res", log=lambda _: None)
    assert 0 < len(calls) - measured < measured
    complexity._measuring_code.cache_clear()
    monkeypatch.setattr(complexity, "_measuring_code", lambda method: "other code")
    complexity.profile_paper("clscnf", "demo", params, tmp_path / "res", log=lambda _: None)
    assert len(calls) - measured > measured - 1  # everything again


def test_the_untimed_counts_of_every_paper_run_in_workers_first_and_change_no_entry(
        tmp_path, monkeypatch):
    """`nfbench profile` counts every paper's untimed measurements (paper-size FLOPs on fake
    tensors) in worker processes into the cache, then times the rest one at a time: the
    profiles are the ones a serial pass writes, and only the timed ones are measured after."""
    import json

    from nfbench.pipeline import complexity
    from nfbench.pipeline.plan import load_params, pipeline_papers
    from nfbench.pipeline.untimed_counts import count_untimed

    calls = []

    def fake_method(method, settings, batch_size=1, time_it=True):
        calls.append(time_it)
        return {"gmacs_fvcore": None, "gflops_torch": float(len(json.dumps(settings))),
                "parameters": 1e6, "settings": settings, "timed": time_it}

    def fake_components(method, settings, rows, batch_size, time_it=True):
        calls.append(time_it)
        return [{"component": row, "size_mb": float(len(row)), "timed": time_it} for row in rows]

    monkeypatch.setattr(complexity, "profile_method", fake_method)
    monkeypatch.setattr(complexity, "profile_components", fake_components)
    params = load_params()
    papers = pipeline_papers(params)

    def profiles(folder: str) -> dict[str, str]:
        return {paper: complexity.profile_paper(paper, "demo", params, tmp_path / folder,
                                                log=lambda _: None).read_text()
                for paper in papers}

    monkeypatch.setenv("NFBENCH_CACHE", str(tmp_path / "serial"))
    serial = profiles("serial-results")
    untimed = calls.count(False)
    assert untimed >= 2 and True in calls
    monkeypatch.setenv("NFBENCH_CACHE", str(tmp_path / "workers"))
    calls.clear()
    assert count_untimed(papers, "demo", params, jobs=2) == untimed
    assert calls == []  # counted in the workers, not here
    assert len(list((tmp_path / "workers" / "profiling").glob("*.json"))) == untimed
    assert profiles("worker-results") == serial
    assert calls and all(calls)  # only the timed ones measured after the workers
    assert count_untimed(papers, "demo", params, jobs=2) == 0  # all cached
