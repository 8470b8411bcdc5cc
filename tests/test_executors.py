"""A run is the unit of work: identity, skip and resume, selection, devices, config path,
the cost model and the Ray executor."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from nfbench.cli import main
from nfbench.errors import UserError
from nfbench.datasets.demo.categories import DEMO_CATEGORIES
from nfbench.pipeline.plan import Run, expand_runs, load_params
from nfbench.pipeline.spec import papers


def _runs(root, categories=DEMO_CATEGORIES[:3], **settings):
    return [Run(paper="demo", method="gaussian", variant="v", dataset="demo", category=c,
                seed=0, profile="demo", settings={"input_size": 64, **settings}, root=str(root))
            for c in categories]


@pytest.fixture
def counted(monkeypatch):
    """Counts the runs that really execute; ``stop_after`` simulates a kill after N runs."""
    import nfbench.pipeline.runner as runner

    calls = {"n": 0, "stop_after": None}
    real = runner.run_one

    def run_one(run, results_dir, models_dir=None):
        if calls["stop_after"] is not None and calls["n"] >= calls["stop_after"]:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(run, results_dir)

    monkeypatch.setattr(runner, "run_one", run_one)
    return calls


def test_interrupted_bench_resumes_with_only_the_missing_runs(tiny_demo, tmp_path, counted,
                                                              one_thread):
    from nfbench.pipeline.runner import execute

    runs = _runs(tiny_demo)
    counted["stop_after"] = 1
    with pytest.raises(KeyboardInterrupt):
        execute(runs, tmp_path, progress=False, jobs=1)
    assert counted["n"] == 1 and (tmp_path / runs[0].record_path).is_file()
    counted["stop_after"], counted["n"] = None, 0
    paths = execute(runs, tmp_path, progress=False, jobs=1)
    assert counted["n"] == 2 and all(p.is_file() for p in paths)
    record = json.loads(paths[0].read_text())
    assert record["identity"]["digest"] and record["identity"]["code_version"]
    assert record["timing"]["device"] == "cpu"  # where it ran (not part of its identity)
    counted["n"] = 0
    execute(runs, tmp_path, progress=False, jobs=1)  # idempotent: nothing to do
    assert counted["n"] == 0
    execute(runs, tmp_path, progress=False, jobs=1, force=True)
    assert counted["n"] == 3


def test_changed_setting_reruns_exactly_the_runs_it_changes(tiny_demo, tmp_path, counted,
                                                            one_thread):
    from nfbench.pipeline.runner import execute

    runs = _runs(tiny_demo, categories=("brick", "coin"))
    execute(runs, tmp_path, progress=False, jobs=1)
    counted["n"] = 0
    changed = [runs[0], dataclasses.replace(runs[1], settings={**runs[1].settings,
                                                                "input_size": 96})]
    execute(changed, tmp_path, progress=False, jobs=1)
    assert counted["n"] == 1
    assert json.loads((tmp_path / runs[1].record_path).read_text())["config"]["input_size"] == 96


def test_identity_covers_config_seed_and_code(tiny_demo):
    from nfbench.pipeline.identity import code_version, method_packages, run_identity

    run = _runs(tiny_demo, categories=("brick",))[0]
    digest = run_identity(run)["digest"]
    assert run_identity(run)["digest"] == digest
    assert run_identity(dataclasses.replace(run, seed=1))["digest"] != digest
    assert run_identity(dataclasses.replace(run, category="coin"))["digest"] != digest
    assert run_identity(dataclasses.replace(run, settings={"input_size": 80}))["digest"] != digest
    # the device is not part of the result (tests/test_identity_stages.py)
    same = dataclasses.replace(run, settings={**run.settings, "device": "cpu"})
    assert run_identity(same)["digest"] == digest
    assert "cnf" in method_packages("clscnf") and "cnf" in method_packages("cflow")  # shared CNF code
    assert "synthetic" in method_packages("patchflow")
    assert code_version("csflow") != code_version("patchflow")


def test_selection_by_table_category_seed_and_shard():
    from nfbench.pipeline.plan import (bench_runs, expand_runs, load_params, load_spec,
                                       parse_shard, select_runs)

    assert load_spec("csflow").table("table1").variants == ("full", "shots16")
    by_table = bench_runs("csflow", "smoke", load_params(), tables=["table1"])
    assert list(dict.fromkeys(r.variant for r in by_table)) == ["full", "shots16"]
    runs = expand_runs("csflow", "paper", load_params(), variants=["full"])
    bottle = select_runs(runs, categories=["bottle"], seeds=[1])
    assert [r.run_id for r in bottle] == ["csflow/full/bottle/seed1"]
    shards = [select_runs(runs, shard=parse_shard(f"{i}/4")) for i in range(4)]
    ids = [r.run_id for shard in shards for r in shard]
    assert sorted(ids) == sorted(r.run_id for r in runs) and len(set(ids)) == len(ids)
    assert shards[1] == select_runs(list(reversed(runs)), shard=(1, 4))  # stable
    with pytest.raises(UserError, match="--shard"):
        parse_shard("4/4")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a CPU-only machine")
def test_cuda_where_there_is_none_is_one_clear_error(tiny_demo, tmp_path, capsys):
    out = tmp_path / "r.json"
    for flags in (["--device", "cuda:3"], ["--set", "device=cuda"]):
        code = main(["run", "--method", "gaussian", "--dataset", "demo", "--root", str(tiny_demo),
                     "--category", "brick", "--out", str(out)] + flags)
        err = capsys.readouterr().err
        assert code == 2 and "no CUDA GPU" in err and err.count("\n") == 1
    assert not out.exists()
    assert main(["bench", "--paper", "csflow", "--device", "cuda", "--results",
                 str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_run_resolves_settings_like_bench_and_config_round_trips(tiny_demo, tmp_path, capsys):
    import yaml

    # csflow on demo under profile demo: params.yaml's block, not the paper's 768 px / 240 epochs
    assert main(["run", "--method", "csflow", "--dataset", "demo", "--category", "brick",
                 "--profile", "demo", "--print-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    block = load_params()["csflow"]["demo"]["settings"]
    assert block["epochs"] != 240 and block["input_size"] != 768  # not the paper defaults
    for key in ("input_size", "epochs", "hidden_channels", "lr"):
        assert config["settings"][key] == block[key], key
    # several pairs after one --set, and repeated flags
    args = ["run", "--method", "gaussian", "--dataset", "demo", "--root", str(tiny_demo),
            "--category", "brick", "--set", "input_size=72", "n_features=2", "--set", "seed=0"]
    with pytest.raises(SystemExit):  # seed is not a setting: argparse is fine, the config not
        raise SystemExit(main(args + ["--print-config"]))
    assert "unknown setting" in capsys.readouterr().err
    assert main(args[:-2] + ["--print-config"]) == 0
    text = capsys.readouterr().out
    saved = tmp_path / "run.yaml"
    saved.write_text(text)
    assert yaml.safe_load(text)["settings"]["input_size"] == 72
    first, again = tmp_path / "a.json", tmp_path / "b.json"
    assert main(args[:-2] + ["--out", str(first)]) == 0
    assert main(["run", "--config", str(saved), "--out", str(again)]) == 0
    assert main(["run", "--config", str(saved), "--set", "input_size=64", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out.split("\n", 1)[1])["settings"]["input_size"] == 64
    a, b = (json.loads(p.read_text()) for p in (first, again))
    assert a["config"] == b["config"] and a["metrics"] == b["metrics"]
    assert a["timing"]["device"] == "cpu"


def test_methods_settings_lists_defaults_and_sources(capsys):
    assert main(["methods", "--settings", "csflow"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.split()[:1] == ["hidden_channels"])
    assert "1024" in line and "fc_internal" in line


def test_plan_estimates_device_hours_and_ends_quietly_in_a_pipe(tmp_path, capsys, monkeypatch):
    from nfbench.peers.common import stage_runs
    from nfbench.pipeline.plan import load_params

    monkeypatch.setattr("nfbench.pipeline.flops.forward_gflops",  # no network built here
                        lambda method, config: {"extractor": 10.0, "trained": 20.0})
    assert main(["plan", "--profile", "paper", "--gpus", "8", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    total = next(l for l in out.splitlines() if l.startswith("total")).split()
    planned = sum(len(expand_runs(paper, "paper")) for paper in papers())
    planned += len(stage_runs("paper", load_params()))  # the peers stage
    assert int(total[1]) == planned and float(total[-1]) < float(total[-2])  # wall < estimate
    assert "RTX 2080 Ti" in out and "(assumed)" in out
    piped = subprocess.run(f"{sys.executable} -m nfbench plan --profile paper -v | head -2",
                           shell=True, capture_output=True, text=True, timeout=120)
    assert piped.stdout.count("\n") == 2 and "Traceback" not in piped.stderr


def test_records_on_disk_calibrate_the_cost_model(tmp_path):
    from nfbench.pipeline.cost import estimate, load_cost_model
    from nfbench.pipeline.plan import expand_runs, load_params

    runs = expand_runs("patchflow", "demo", load_params(), variants=["full"])
    model = load_cost_model()
    modelled, used = estimate(runs, model, tmp_path)
    assert used == {}
    path = tmp_path / runs[0].record_path
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"profile": "demo", "timing": {"fit_seconds": modelled[0] * 2,
                                                              "score_seconds": 0.0}}))
    seconds, used = estimate(runs, model, tmp_path)
    assert used == {"patchflow": 1}
    assert seconds == pytest.approx([2 * s for s in modelled])


def test_ray_executor_matches_local_records(tiny_demo, tmp_path, one_thread, monkeypatch):
    ray = pytest.importorskip("ray")
    from nfbench.pipeline import runner
    from nfbench.pipeline.plan import expand_runs, load_params
    from nfbench.pipeline.runner import execute

    monkeypatch.setattr(runner.os, "cpu_count", lambda: 1)  # local: one job, one thread (Ray's)
    # the smoke selection of PatchFlow (its full variant) on the tiny demo set, and gaussians
    smoke = [dataclasses.replace(r, root=str(tiny_demo), settings={**r.settings, "input_size": 128})
             for r in expand_runs("patchflow", "smoke", load_params(), variants=["full"])]
    runs = smoke + _runs(tiny_demo, categories=("brick", "coin"))
    local = execute(runs, tmp_path / "local", progress=False, jobs=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = execute(runs, tmp_path / "ray", progress=False, executor="ray")
    finally:
        ray.shutdown()
    assert [p.relative_to(tmp_path / "local") for p in local] == \
        [p.relative_to(tmp_path / "ray") for p in remote]
    for a, b in zip(local, remote):
        ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
        # equal up to float summation order (AUPRO integrates in numpy: 1e-15 apart)
        assert ra["metrics"] == pytest.approx(rb["metrics"], rel=1e-9, abs=1e-12)
        assert ra["identity"] == rb["identity"]
        assert b.with_suffix(".npz").is_file()


def test_command_line_seed_zero_wins_over_the_config_file(tmp_path, capsys):
    """--seed 0 is a value, not "unset" (0 == False must not let the file's seed win)."""
    assert main(["run", "--method", "gaussian", "--dataset", "demo", "--category", "brick",
                 "--seed", "3", "--print-config"]) == 0
    saved = tmp_path / "run.yaml"
    saved.write_text(capsys.readouterr().out)
    assert main(["run", "--config", str(saved), "--seed", "0", "--print-config"]) == 0
    assert "seed: 0" in capsys.readouterr().out.splitlines()


def test_bench_of_every_paper_is_one_batch_and_threads_do_not_depend_on_the_batch(
        tmp_path, monkeypatch, capsys):
    """`bench` (the pipeline's one runs stage) hands the runner one batch of every paper's
    runs (one worker pool, longest runs first), `bench --paper P` one of P's; a run's torch
    threads depend on the jobs asked for, not on how many runs the batch has, so a run made
    alone gets the numbers of the whole pipeline."""
    from nfbench.pipeline import runner
    from nfbench.pipeline.plan import expand_runs, load_params

    batches = []
    monkeypatch.setattr(runner, "execute", lambda runs, *a, **k: batches.append(
        ([r.run_id for r in runs], k["label"])))
    assert main(["bench", "--paper", "csflow", "--profile", "demo", "--results",
                 str(tmp_path)]) == 0
    runs = expand_runs("csflow", "demo", load_params())
    assert batches == [([r.run_id for r in runs], "csflow")]
    batches.clear()
    assert main(["bench", "--profile", "demo", "--results", str(tmp_path)]) == 0
    every = [r.run_id for paper in papers() for r in expand_runs(paper, "demo", load_params())]
    assert batches == [(every, "+".join(papers()))]
    assert main(["bench", "--variant", "full", "--results", str(tmp_path)]) == 2
    assert "add --paper" in capsys.readouterr().err
    # a category is selected over every paper's runs: papers without it add none (the demo's
    # logo: CLS-CNFs runs gravel only), no error while one paper has it
    categories = [{r.category for r in expand_runs(p, "demo", load_params())} for p in papers()]
    partial = sorted(set.union(*categories) - set.intersection(*categories))
    category = partial[0] if partial else every[0].split("/")[2]
    batches.clear()
    assert main(["bench", "--profile", "demo", "--category", category, "--results",
                 str(tmp_path)]) == 0
    assert batches[0][0] == [r for r in every if r.split("/")[2] == category]
    assert main(["bench", "--profile", "demo", "--category", "no_such", "--results",
                 str(tmp_path)]) == 2
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 8)
    assert runner.workers_for(1, None) == (1, 2)  # default jobs: 4 on 8 cores
    assert runner.workers_for(30, None) == (4, 2)
    assert runner.workers_for(1, 2) == (1, 4) and runner.workers_for(5, 2) == (2, 4)


def test_runs_never_train_one_stage_at_once_and_read_it_together_once_trained():
    """The pool's dispatcher starts tasks in the given order but skips one that shares a key
    (a stage it may train) with a running task, so a worker never waits on another's stage
    lock; once a task with that key has finished (the stage exists), the others sharing it
    run at once."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from nfbench.pipeline import runner

    lock, running, started, overlaps = threading.Lock(), set(), [], []

    def work(keys, index):
        with lock:
            overlaps.append((index, set(running)))
            running.add(index)
            started.append(index)
        time.sleep(0.2 if index == 0 else 0.05)
        with lock:
            running.discard(index)
        return index

    # 0 trains stage "s" (and "t"); 1 and 2 read "s"; 3 is independent; 4 shares "t" only
    tasks = [({"s", "t"}, 0), ({"s"}, 1), ({"s"}, 2), ({"u"}, 3), ({"t"}, 4)]
    done = []
    with ThreadPoolExecutor(2) as pool:
        runner._dispatch(pool, tasks, 2, work, lambda task, result: done.append(result),
                         exclusive=lambda keys, index: keys)
    assert sorted(done) == [0, 1, 2, 3, 4]
    assert started[:2] == [0, 3]  # 1, 2 (stage "s") waited for 0; 3 went ahead
    assert started.index(4) > started.index(3)  # 4 ("t") waited for 0 too, then kept its place
    with_zero = [index for index, others in overlaps if 0 in others]
    assert set(with_zero) <= {3}  # nothing sharing a key with 0 started while 0 ran
    assert any(index == 2 and 1 in others for index, others in overlaps)  # 1 and 2 together


def test_the_runs_that_may_share_a_stage_are_those_of_one_trained_stage():
    """CLS-CNFs' runs on one category share the FE stage they fine-tune (and the CNF stage
    trained on it), FE_REG has its own, CFlow-AD runs share their CNF stage, and a method that
    shares no stage (CS-Flow) has no key."""
    from nfbench.pipeline.plan import expand_runs, load_params, shared_stages

    params = load_params()
    runs = {(r.variant, r.category): r for r in expand_runs("clscnf", "demo", params)}
    keys = {name: shared_stages(runs[name, "gravel"])
            for name in ("fe_cls", "full", "cls", "fe_reg", "cflow_ad", "cflow_ad_inductive",
                         "baseline_gaussian")}
    assert keys["fe_cls"] == keys["full"] and keys["fe_cls"] & keys["cls"]
    assert not keys["fe_reg"] & keys["fe_cls"]
    assert keys["cflow_ad"] == keys["cflow_ad_inductive"] and not keys["cflow_ad"] & keys["full"]
    assert keys["baseline_gaussian"] == frozenset()
    if ("fe_cls", "logo") in runs:
        assert not shared_stages(runs["fe_cls", "logo"]) & keys["fe_cls"]
    assert shared_stages(expand_runs("csflow", "demo", params)[0]) == frozenset()


def test_a_whole_paper_bench_removes_the_records_of_runs_its_profile_no_longer_has(
        tmp_path, monkeypatch):
    """`bench --paper P` is the paper's DVC stage: a record of a run the profile no longer has
    (a category dropped from params.yaml) is removed with its figure material, so the stage's
    output holds what the params say; a filtered bench (--variant, --category ...) keeps it."""
    from nfbench.pipeline import runner
    from nfbench.pipeline.plan import expand_runs, load_params

    monkeypatch.setattr(runner, "execute", lambda runs, *a, **k: None)
    planned = expand_runs("csflow", "demo", load_params())[0]
    kept = tmp_path / planned.record_path
    dropped = tmp_path / "csflow" / "runs" / planned.variant / "no_such_category" / "seed0.json"
    other_paper = tmp_path / "patchflow" / "runs" / "full" / "no_such_category" / "seed0.json"
    for path in (kept, dropped, other_paper):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        path.with_suffix(".npz").write_bytes(b"")
    assert main(["bench", "--paper", "csflow", "--profile", "demo", "--variant",
                 planned.variant, "--results", str(tmp_path)]) == 0
    assert dropped.exists()
    assert main(["bench", "--paper", "csflow", "--profile", "demo", "--results",
                 str(tmp_path)]) == 0
    assert not dropped.exists() and not dropped.with_suffix(".npz").exists()
    assert kept.exists() and kept.with_suffix(".npz").exists() and other_paper.exists()
