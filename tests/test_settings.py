"""One settings resolver, typed params, one record (issue 22, items 3-4): no import cycle in
nfbench, the same settings for every reader, null metrics shown as n/a, stale records left
out the same way by every consumer, one execution path."""

from __future__ import annotations

import argparse
import ast
import copy
import json
from pathlib import Path

import pytest

from nfbench.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nfbench"


def _import_graph() -> dict[str, set[str]]:
    """Every nfbench module -> the nfbench modules it imports, at module level or inside a
    function (``from nfbench.x import y`` counts as ``nfbench.x.y`` where that is a module)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {known(a.name) for a in node.names if a.name.startswith("nfbench")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = anchor + ("." + node.module if node.module else "")
                if base.split(".")[0] != "nfbench":
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else known(base))
        graph[name] = {t for t in targets if t and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, first = last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_nfbench_has_no_import_cycle_function_level_imports_included():
    graph = _import_graph()
    assert "nfbench.pipeline.settings" in graph and len(graph) > 100
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_function_level_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# ------------------------------------------------------------------------------------------
# settings


def test_every_reader_resolves_a_variant_the_same_way():
    """bench's runs, ``nfbench run``'s source, profiling and the peers read one resolver."""
    from nfbench.pipeline import settings
    from nfbench.pipeline.complexity import _profile_settings
    from nfbench.pipeline.params import load_params
    from nfbench.pipeline.plan import expand_runs, run_settings
    from nfbench.pipeline.spec import load_spec

    params = load_params()
    run = next(r for r in expand_runs("csflow", "demo", params) if r.variant == "full")
    source = settings.for_method(params, "csflow", "demo", "demo", "full")
    assert run.settings == dict(source.settings) == \
        settings.variant_settings(params, "csflow", "demo", "full")
    assert run_settings("csflow", "demo", "demo", "full", params) == source.as_dict()
    assert _profile_settings(load_spec("csflow"), params, "demo", "full") == \
        settings.config_settings("csflow", "demo", run.settings, params)
    config = settings.resolve_config("csflow", "demo", run.settings, params)
    assert config.backbone == "efficientnet_lite0"
    assert config.epochs == params["csflow"]["demo"]["settings"]["epochs"] != 240


def test_a_dataset_no_block_maps_borrows_the_profile_settings():
    from nfbench.pipeline import settings
    from nfbench.pipeline.params import load_params

    source = settings.for_method(load_params(), "csflow", "folder", "demo")
    assert source.borrowed_from == "demo" and source.paper == "csflow"
    assert source.shots is None and source.joint is False
    assert settings.for_method(load_params(), "csflow", "folder", "demo", borrow=False) == \
        settings.Source({})


def test_a_missing_role_is_one_error_when_params_are_read(tmp_path, monkeypatch):
    """A role a spec's variant runs on, missing from a profile's block, is refused when
    params.yaml is read (not an empty ``{}`` in one reader and an error in another)."""
    import yaml

    from nfbench.pipeline.params import load_params, typed

    params = copy.deepcopy(load_params())
    del params["csflow"]["smoke"]["datasets"]["mtd"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(UserError, match=r"csflow\.smoke\.datasets: no role 'mtd'"):
        load_params(path)
    with pytest.raises(UserError, match=r"csflow\.smoke\.datasets: no role 'mtd'"):
        typed(params)


def test_typed_params_are_frozen_and_name_the_key_path():
    from nfbench.pipeline.params import load_params, typed

    view = typed(load_params())
    block = view.block("csflow", "demo")
    assert block.seeds == (0,) and block.role("mtd").settings["input_size"] == 128
    assert block.role("mvtec_ad_ablation").categories == \
        load_params()["csflow"]["demo"]["datasets"]["mvtec_ad_ablation"]["categories"]
    with pytest.raises(TypeError):
        block.settings["epochs"] = 1  # read-only
    with pytest.raises(UserError, match=r"csflow\.demo\.datasets has no role 'nope'"):
        block.role("nope")
    with pytest.raises(UserError, match="no 'csflow: nope:' block"):
        view.block("csflow", "nope")
    assert view.reference == "paper"


# ------------------------------------------------------------------------------------------
# records


def test_format_metric_shows_null_as_n_a():
    from nfbench.pipeline.record import format_metric, metric_value

    assert format_metric(0.91234) == "0.9123" and format_metric(None) == "n/a"
    assert format_metric(float("nan")) == "n/a"
    record = {"category": "all", "metrics": {"aupro": None},
              "per_category": {"brick": {"aupro": 0.5}}}
    assert metric_value(record, "aupro", "brick") == 0.5
    assert metric_value(record, "aupro") != metric_value(record, "aupro")  # NaN


def test_peer_stage_summary_survives_a_null_metric(monkeypatch, tmp_path):
    from nfbench.peers import common

    record = {"status": "ok", "metrics": {"image_auroc": None},
              "timing": {"fit_and_score_seconds": 1.0}}
    monkeypatch.setattr(common, "run_peer", lambda *a, **k: dict(record))
    run = {"method": "csflow", "config": "shipped", "dataset": "demo", "root": None,
           "category": "brick", "seed": 0}
    path, line = common._stage_one(run, "demo", {}, str(tmp_path))
    assert "image AUROC n/a" in line
    assert json.loads(Path(path).read_text())["metrics"] == {"image_auroc": None}


def test_peer_command_survives_a_null_metric(monkeypatch, tmp_path, capsys):
    from nfbench.peers import cli, common
    from nfbench.pipeline import run_config

    record = {"status": "ok", "metrics": {"image_auroc": 0.75, "pixel_auroc": None},
              "timing": {"device": "cpu"}}
    monkeypatch.setattr(common, "run_peer", lambda *a, **k: record)
    monkeypatch.setattr(run_config, "resolve_run_args", lambda args: {})
    args = argparse.Namespace(out=tmp_path / "p.json", variant=None, config=None,
                              method="csflow", dataset="demo", category="brick", seed=0,
                              profile="demo", root=None, quiet=True, peer_config="shipped",
                              shots=None, joint=False)
    cli.cmd_peer(args)
    assert "image AUROC 0.7500, pixel AUROC n/a" in capsys.readouterr().out


def test_bench_summary_survives_a_null_metric(tmp_path):
    from nfbench.pipeline.execution import summary
    from nfbench.pipeline.record import write_record

    path = tmp_path / "r.json"
    write_record({"run_id": "p/v/c/seed0", "metrics": {"image_auroc": float("nan")},
                  "timing": {"wall_seconds": 2.0, "device": "cpu"}}, path)
    assert summary(path) == "p/v/c/seed0: image AUROC n/a (2.0 s, cpu)"


def test_one_record_version_for_bench_and_peer_records():
    from nfbench.peers import common
    from nfbench.pipeline import experiment, record

    assert common.RECORD_VERSION is record.RECORD_VERSION is experiment.RECORD_VERSION
    built = record.run_record(method="m", dataset="d", category="c", variant="v", seed=0,
                              profile="demo", shots=None, joint=False, config={},
                              metrics={}, timing={}, data={}, environment={}, created="t")
    assert list(built) == ["record_version", "method", "dataset", "category", "variant",
                           "seed", "profile", "shots", "joint", "config", "metrics", "timing",
                           "data", "environment", "created"]
    stamped = record.stamp(built, paper="p", run_id="p/v/c/seed0", identity={"digest": "x"},
                           wall_seconds=1.5)
    assert list(stamped)[-3:] == ["paper", "run_id", "identity"]
    assert stamped["timing"] == {"wall_seconds": 1.5}


def test_committed_records_still_read():
    """Every committed record reads through the one reader (and its metric reader)."""
    from nfbench.pipeline.record import metric_value, read_record, record_paths

    paths = record_paths(ROOT / "results", ["csflow"])
    if not paths:
        pytest.skip("no committed csflow records in this checkout")
    for path in paths[:20]:
        record = read_record(path)
        assert metric_value(record, "image_auroc") == record["metrics"]["image_auroc"]


def _write(results: Path, run_id: str, auroc: float) -> Path:
    paper, variant, category, seed = run_id.split("/")
    path = results / paper / "runs" / variant / category / f"{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"paper": paper, "method": "csflow", "variant": variant,
                                "category": category, "seed": 0, "run_id": run_id,
                                "config": {}, "metrics": {"image_auroc": auroc}}))
    return path


def test_a_removed_variants_record_is_stale_for_every_consumer(tmp_path):
    """results, check and the record finder leave out a record of a variant the spec no
    longer declares (the tables have no row for it either), and check names it."""
    from nfbench.pipeline import results
    from nfbench.pipeline.check import check, collect
    from nfbench.pipeline.record import record_paths, stale_record_paths

    kept = _write(tmp_path, "csflow/full/brick/seed0", 0.9)
    stale = _write(tmp_path, "csflow/removed_variant/brick/seed0", 0.8)
    own = _write(tmp_path, "run/csflow/brick/seed0", 0.7)  # `nfbench run`'s: no paper's
    assert record_paths(tmp_path) == [kept, own]
    assert stale_record_paths(tmp_path) == [stale]
    assert results.record_paths(tmp_path) == [kept, own]
    assert set(results.load(tmp_path)["run_id"]) == {"csflow/full/brick/seed0",
                                                     "run/csflow/brick/seed0"}
    assert set(collect(tmp_path)) == {"csflow/full/brick/seed0", "run/csflow/brick/seed0"}
    baseline = tmp_path / "b.json"
    baseline.write_text(json.dumps({"runs": {"csflow/full/brick/seed0": {"image_auroc": 0.9}}}))
    result = check(baseline, tmp_path)
    assert result.stale == [str(stale)] and result.unknown == ["run/csflow/brick/seed0"]
    assert not result.problems and not result.missing


def test_ray_and_local_executors_share_one_execution_path():
    from nfbench.pipeline import execution, ray_executor, runner

    assert runner.compute is execution.compute and runner.store is execution.store
    source = Path(ray_executor.__file__).read_text()
    assert "pipeline.runner import" not in source and "pipeline.execution import" in source


def test_the_bench_pool_runs_the_peers_tasks_too():
    """One worker pool (runner.map_in_workers) for bench runs and peer runs: any picklable
    task runs in the workers; one job runs in this process."""
    import functools
    import math
    import os

    from nfbench.pipeline.runner import in_worker, map_in_workers

    done = {}
    map_in_workers([(4.0,), (9.0,)], 2, math.sqrt, functools.partial(in_worker, math.sqrt),
                   lambda task, result: done.__setitem__(task[0], result))
    assert done == {4.0: 2.0, 9.0: 3.0}
    pids = []
    map_in_workers([()], 1, os.getpid, None, lambda task, pid: pids.append(pid))
    assert pids == [os.getpid()]
