"""The pipeline's wiring: specs → runs → tables → reports → regression check, without training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from nfbench.pipeline.check import run_check
from nfbench.pipeline.experiment import write_examples, write_record
from nfbench.pipeline.plan import expand_runs, load_params
from nfbench.pipeline.spec import load_spec, papers

ROOT = Path(__file__).resolve().parents[1]
PAPERS_IN_PIPELINE = [p for p in papers()
                      if p in yaml.safe_load((ROOT / "params.yaml").read_text())]


@pytest.fixture(autouse=True)
def at_repo_top(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("paper", PAPERS_IN_PIPELINE)
def test_every_table_is_declared_and_wired_into_dvc(paper):
    spec = load_spec(paper)
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for table_id, table in spec.tables.items():
        if table.layout == "complexity":  # rows are networks of one declared variant
            assert table.variant in spec.variants and table.reference in table.labels
            continue
        for variant in table.variants:
            assert variant in spec.variants, f"{table_id} uses undeclared variant {variant}"
    for stage in ("runs", "tables", "profile"):  # one stage for every paper, all its variants
        assert f"benchmarks/{paper}.yaml" in dvc[stage]["deps"]
    assert dvc["runs"]["cmd"] == "nfbench bench --quiet"  # no --paper, no --variant
    assert f"results/{paper}/runs" in dvc["tables"]["deps"]
    assert spec.deviations, "every paper lists its deviations"


def test_paper_profile_plan_covers_every_csflow_table():
    runs = expand_runs("csflow", "paper", load_params())
    by_variant = {}
    for run in runs:
        by_variant.setdefault(run.variant, set()).add((run.dataset, run.category, run.seed))
    assert len(by_variant["full"]) == 15 * 3 and len(by_variant["blocks6"]) == 15 * 3
    assert {d for d, _, _ in by_variant["mtd"]} == {"mtd"}
    assert by_variant["joint"] == {("mvtec_ad", "all", s) for s in (0, 1, 2)}
    mtd_run = next(r for r in runs if r.variant == "mtd")
    assert mtd_run.settings["input_size"] == 384 and mtd_run.settings["epochs"] == 60
    shots = next(r for r in runs if r.variant == "shots16")
    assert shots.shots == 16 and shots.settings == {}
    assert len(runs) == 15 * 3 * 14 + 3 + 3  # 13 per-category variants + Gaussian baseline, MTD, joint
    gaussian = next(r for r in runs if r.variant == "baseline_gaussian")
    assert gaussian.method == "gaussian" and gaussian.settings == {}  # no CS-Flow budget


def _fake_results(results: Path, runs, value) -> None:
    """Records as the runner writes them, with image AUROC = value(run)."""
    for run in runs:
        metrics = {k: value(run) for k in ("image_auroc", "pixel_auroc", "pixel_aupr", "aupro", "f1_max")}
        record = {"paper": run.paper, "run_id": run.run_id, "method": run.method,
                  "dataset": run.dataset, "category": run.category, "variant": run.variant,
                  "seed": run.seed, "profile": run.profile, "config": {"backbone": "efficientnet_lite0"},
                  "metrics": metrics, "timing": {"fit_seconds": 1.0, "device": "cpu"},
                  "environment": {"python": "3", "torch": "2", "timm": "1", "numpy": "2",
                                  "nfbench": "0", "cpu": "x", "cpu_threads": 2, "git_commit": "abc"},
                  "created": "2026-01-01T00:00:00+00:00"}
        if run.category == "all":
            record["per_category"] = {c: metrics for c in run.joint_categories}
        spread = np.random.default_rng(1).normal(0, 0.01, 200)  # the same test-set resamples
        record["bootstrap"] = {"n": 200, "replicates": {k: (v + spread).tolist()
                                                        for k, v in metrics.items()}}
        path = results / run.record_path
        write_record(record, path)
        rng = np.random.default_rng(0)
        write_examples({"labels": np.array([0, 1, 0, 1]), "image_scores": rng.random(4),
                        "example_index": np.arange(2), "example_images": rng.random((2, 3, 8, 8)),
                        "example_maps": rng.random((2, 8, 8)),
                        "example_masks": rng.random((2, 8, 8)) > 0.5,
                        "pixel_hist_edges": np.linspace(0, 1, 11),
                        "pixel_hist_normal": rng.integers(0, 9, 10),
                        "pixel_hist_defect": rng.integers(0, 9, 10)}, path.with_suffix(".npz"))


def test_tables_and_report_from_records_only(tmp_path):
    from nfbench.report.index import write_index
    from nfbench.report.paper import write_report
    from nfbench.pipeline.tables import build_tables, write_tables

    params = load_params()
    runs = expand_runs("csflow", "smoke", params)
    _fake_results(tmp_path, runs, lambda run: 0.5 + 0.01 * len(run.variant))
    tables = build_tables("csflow", "smoke", params, tmp_path)
    write_tables(tables, tmp_path / "csflow")
    table3 = tables["table3"].set_index("row")
    assert table3.loc["separate", "mean"] == pytest.approx(100 * (0.5 + 0.08))
    assert table3.loc["separate", "published"] == 98.2
    assert table3.loc["separate", "delta"] == pytest.approx(58.0 - 98.2)
    assert table3["within_tolerance"].isna().all(), "no tolerance is judged outside the paper profile"
    joint = tables["joint"].iloc[0]
    assert joint["n"] == 1 and joint["mean"] == pytest.approx(55.0)
    metrics = json.loads((tmp_path / "csflow" / "metrics.json").read_text())
    assert "table4" in metrics
    (tmp_path / "csflow" / "profile.json").write_text(json.dumps([{
        "label": "paper configuration", "input_size": 768, "gmacs_fvcore": 96.2,
        "gflops_torch": 190.8, "parameters": 2.9e8, "size_mb": 1100.0, "batch_size": 1}]))
    report = write_report("csflow", "smoke", params, tmp_path, tmp_path / "reports").read_text()
    for needle in ("Table 1", "Table 4", "| published |", "Deviations from the paper",
                   "Adam betas", "96.20", "Demo profile", "figures/csflow_maps.png"):
        assert needle in report
    assert (tmp_path / "reports/figures/csflow_roc.png").stat().st_size > 1000
    index = write_index(tmp_path / "reports", tmp_path, ["csflow"], params, "smoke").read_text()
    assert "[csflow](csflow.md)" in index
    # issue 15 §2: the profile first, reference rows, no Δ/tolerance on stand-in data, n=1
    assert index.split("\n")[2].startswith("> **Profile `smoke`")
    assert "| vs chance |" in index and "| vs Gaussian |" in index and "Δ published" not in index
    assert report.split("\n")[2].startswith("> **Profile `smoke`")
    table1 = tables["table1"].set_index(["variant", "row"])
    assert table1.loc[("chance", "average"), "mean"] == 50.0
    assert table1.loc[("baseline_gaussian", "average"), "kind"] == "reference"
    assert "(n=1)" in report and "± 0.0 (n=1)" not in report and "| Δ |" not in report
    assert "768 px" not in report.split("## Anomaly maps")[0].split("Here:")[0]
    assert "single scale NF (256 px)" in report and "demo set (brick)" in report
    # rows identical by construction say so (here every variant of table 3 differs in value)
    # headline numbers only: the method's average rows (chance and the baseline: the CSV)
    assert set(metrics["table1"]) == {"full.image_auroc", "shots16.image_auroc"}


def test_paper_profile_plans_of_patchflow_and_clscnf():
    from nfbench.methods import create_method
    from nfbench.methods.cnf import apply_category_settings

    params = load_params()
    patchflow = expand_runs("patchflow", "paper", params)
    assert len(patchflow) == 8 * 15 * 3  # full + 4 flow-step + 2 scale variants + Gaussian
    runs = expand_runs("clscnf", "paper", params)
    assert len(runs) == 11 * 15 * 3 + 7 * 3 * 3  # 10 + 6 variants, a Gaussian baseline each
    assert {r.method for r in runs} == {"clscnf", "cflow", "gaussian"}
    for run in runs:  # every per-category override is a valid field of the run's method
        if run.method == "gaussian":
            continue
        config = apply_category_settings(create_method(run.method, **run.settings).config,
                                         run.category)
        if run.dataset == "btad":
            assert (config.meta_epochs, config.sub_epochs) == (8, 6)
            assert config.lr == {"01": 5e-5, "02": 2e-5, "03": 1e-4}[run.category]
        elif run.method == "clscnf" and run.category == "screw":
            assert (config.fe_freeze_epochs, config.fe_meta_epochs, config.fe_lr) == (35, 5, 5e-4)


@pytest.mark.parametrize("paper", PAPERS_IN_PIPELINE)
def test_paper_profile_reports_render_from_records(paper, tmp_path):
    """The paper profile's tables, figures and report build from its records (written here
    without training): every table, Δ and tolerance columns, no stand-in warning. Records
    without an input size in their config give two Table 3 rows the same label; each row
    still gets its own point."""
    from nfbench.pipeline.tables import build_tables, write_tables
    from nfbench.report.paper import write_report

    params = load_params()
    runs = expand_runs(paper, "paper", params)
    _fake_results(tmp_path, runs, lambda run: 0.9 + 0.01 * (len(run.variant) % 5))
    write_tables(build_tables(paper, "paper", params, tmp_path), tmp_path / paper)
    report = write_report(paper, "paper", params, tmp_path, tmp_path / "reports").read_text()
    assert "Δ" in report and "within tolerance" in report and "> **Demo profile.**" not in report
    assert "NOT the papers' experiment" not in report


def test_multi_metric_and_complexity_tables_reach_the_report(tmp_path):
    from nfbench.report.paper import write_report
    from nfbench.pipeline.tables import build_tables, write_tables

    params = load_params()
    runs = expand_runs("clscnf", "smoke", params)
    _fake_results(tmp_path, runs, lambda run: 0.9 if run.variant == "fe_cls" else 0.6)
    tables = build_tables("clscnf", "smoke", params, tmp_path)
    assert "table3" not in tables  # a complexity table comes from the profiling stage
    write_tables(tables, tmp_path / "clscnf")
    metrics = json.loads((tmp_path / "clscnf" / "metrics.json").read_text())
    assert metrics["table1"]["fe_cls.aupro"] == pytest.approx(90.0)  # one key a variant
    assert metrics["table1"]["fe_pre.aupro"] == pytest.approx(60.0)
    # headline only, one key form: <table>.<variant>.<metric>, no chance or baseline rows
    keys = [f"{t}.{k}" for t, row in metrics.items() for k in row]
    assert all(len(k.split(".")) == 3 for k in keys)
    assert not any(".chance." in k or ".baseline_gaussian." in k for k in keys)
    assert metrics["table2"]["cls.pixel_aupr"] == pytest.approx(60.0)
    table1 = tables["table1"].set_index(["variant", "row", "metric"])
    assert table1.loc[("fe_pre", "average", "image_auroc"), "published"] == 96.71
    assert table1.loc[("fe_cls", "average", "pixel_aupr"), "published"] == 58.41
    assert table1.loc[("fe_cls", "average", "aupro"), "mean"] == pytest.approx(90.0)
    table2 = tables["table2"].set_index(["variant", "metric"])
    assert table2.loc[("cls", "pixel_aupr"), "published"] == 55.27
    assert np.isnan(table2.loc[("full_w_synthetic", "image_auroc"), "published"])
    profile = [{"label": "paper configuration", "table": "table3", "component": name,
                "input_size": 256, "batch_size": 32, "size_mb": size,
                **({"images_per_second": 10.0, "gmacs_fvcore": 1.0} if name != "FE" else {})}
               for name, size in (("FE", 100.0), ("CLS", 110.0), ("FE_CLS-CNFs", 200.0),
                                  ("CLS-CNFs-sFE", 210.0), ("CLS-CNFs-nsFE", 310.0))]
    (tmp_path / "clscnf" / "profile.json").write_text(json.dumps(profile))
    report = write_report("clscnf", "smoke", params, tmp_path, tmp_path / "reports").read_text()
    assert "| CLS-CNFs-nsFE | 1026 | 310.0 | 1.38 | 1.55 |" in report
    # FE_CLS vs FE_PRE, measured: the interval of the difference excludes zero (issue 20)
    assert "| image_auroc | 60.0 | 90.0 | +30.0 [30.0, 30.0] | yes |" in report
    # rows identical in this run say why (every variant but fe_cls scores 0.6 here)
    assert tables["table2"].set_index("variant").loc["full_w_synthetic", "same_as"].iloc[0] == \
        "A_p (CLS)"  # the first row with the same records
    assert "Identical to \"A_p (CLS)\" on every metric" in report
    assert (tmp_path / "reports/figures/clscnf_pixel_histograms.png").stat().st_size > 1000


def test_missing_record_is_a_clear_error(tmp_path):
    from nfbench.errors import UserError
    from nfbench.pipeline.tables import build_tables

    with pytest.raises(UserError, match="missing result record"):
        build_tables("csflow", "smoke", load_params(), tmp_path)


def test_check_fails_on_regression_and_names_the_run(tmp_path):
    runs = expand_runs("csflow", "smoke", load_params())[:3]
    _fake_results(tmp_path / "good", runs, lambda run: 0.8)
    baseline = tmp_path / "baseline.json"
    assert run_check(baseline, tmp_path / "good", update=True) == []
    assert run_check(baseline, tmp_path / "good") == []
    _fake_results(tmp_path / "slightly", runs, lambda run: 0.79)  # within the 0.02 tolerance
    assert run_check(baseline, tmp_path / "slightly") == []
    worse = runs[1].run_id
    _fake_results(tmp_path / "bad", runs, lambda run: 0.7 if run.run_id == worse else 0.8)
    problems = run_check(baseline, tmp_path / "bad")
    assert len(problems) == 3 and all(p.startswith(worse) for p in problems)  # 3 checked metrics
    (tmp_path / "bad" / runs[0].record_path).unlink()
    assert any("no fresh result" in p for p in run_check(baseline, tmp_path / "bad"))


def test_exact_check_finds_a_last_digit_change_the_tolerance_lets_through(tmp_path):
    from nfbench.pipeline.check import check

    runs = expand_runs("csflow", "smoke", load_params())[:2]
    _fake_results(tmp_path / "a", runs, lambda run: 0.8)
    baseline = tmp_path / "baseline.json"
    run_check(baseline, tmp_path / "a", update=True)
    assert check(baseline, tmp_path / "a", exact=True).problems == []
    _fake_results(tmp_path / "b", runs, lambda run: 0.8 + 1e-12)  # higher: no regression
    assert check(baseline, tmp_path / "b").problems == []
    problems = check(baseline, tmp_path / "b", exact=True).problems
    assert problems and all("!= baseline 0.8" in p for p in problems)


def test_check_cli_exit_code(tmp_path, capsys):
    from nfbench.cli import main

    runs = expand_runs("csflow", "smoke", load_params())[:2]
    _fake_results(tmp_path / "r", runs, lambda run: 0.9)
    baseline = tmp_path / "b.json"
    assert main(["check", "--baseline", str(baseline), "--results", str(tmp_path / "r"),
                 "--update"]) == 0
    _fake_results(tmp_path / "r", runs, lambda run: 0.5)
    assert main(["check", "--baseline", str(baseline), "--results", str(tmp_path / "r")]) == 1
    assert "REGRESSION csflow/" in capsys.readouterr().err


def test_oracle_threshold_separates_histograms():
    from nfbench.report.sections import oracle_threshold

    edges = np.linspace(0.0, 1.0, 11)
    normal = np.r_[np.full(5, 100), np.zeros(5)]
    defect = np.r_[np.zeros(5), np.full(5, 10)]
    e = {"pixel_hist_edges": edges, "pixel_hist_normal": normal, "pixel_hist_defect": defect}
    assert oracle_threshold(e) == pytest.approx(0.5)
    defect[4] = 1000  # most defect pixels now score in [0.4, 0.5): the threshold moves down
    assert oracle_threshold(e) == pytest.approx(0.4)
    assert oracle_threshold({"labels": np.zeros(2)}) is None


def test_parallel_workers_write_the_same_records(tiny_demo, tmp_path):
    from nfbench.pipeline.plan import Run
    from nfbench.pipeline.runner import execute

    runs = [Run(paper="demo", method="gaussian", variant="v", dataset="demo", category=c,
                seed=0, profile="demo", settings={"input_size": 64}, root=str(tiny_demo))
            for c in ("brick", "coin", "gravel")]
    serial = execute(runs, tmp_path / "serial", progress=False, jobs=1)
    parallel = execute(runs, tmp_path / "parallel", progress=False, jobs=2)
    assert [p.relative_to(tmp_path / "serial") for p in serial] == \
        [p.relative_to(tmp_path / "parallel") for p in parallel]
    for a, b in zip(serial, parallel):
        assert json.loads(a.read_text())["metrics"] == json.loads(b.read_text())["metrics"]


def test_commit_marker_ignores_files_the_pipeline_rewrites(monkeypatch):
    import subprocess

    from nfbench.pipeline import experiment

    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="abc\n" if "rev-parse" in cmd else "")

    monkeypatch.setattr(experiment.subprocess, "run", fake_run)
    experiment.git_commit.cache_clear()  # read once per process: start from a fresh read
    assert experiment.git_commit() == "abc"
    experiment.git_commit.cache_clear()
    status = next(c for c in calls if "status" in c)
    assert status[status.index("--") + 1:] == list(experiment.CODE_PATHS)
    assert "dvc.lock" not in status and "results" not in status and "reports" not in status


def test_spec_errors_name_the_file_and_the_key_path(tmp_path):
    from nfbench.errors import UserError
    from nfbench.pipeline.spec_validation import parse_spec

    data = yaml.safe_load((ROOT / "benchmarks" / "csflow.yaml").read_text())
    data["tables"]["table1"]["metric"] = "x"
    with pytest.raises(UserError, match=r"^benchmarks/csflow.yaml: tables.table1.metric: "
                                        r"unknown metric 'x'"):
        parse_spec(data, ROOT / "benchmarks" / "csflow.yaml")
    data = yaml.safe_load((ROOT / "benchmarks" / "csflow.yaml").read_text())
    data["tables"]["table2"]["rows"]["nope"] = "?"
    with pytest.raises(UserError, match=r"tables.table2.rows.nope: undeclared variant 'nope'"):
        parse_spec(data, ROOT / "benchmarks" / "csflow.yaml")


def test_spec_defaults_live_in_the_dataclasses():
    from nfbench.pipeline.spec import papers

    assert papers() == ("csflow", "patchflow", "clscnf")  # by each spec's `order:`
    spec = load_spec("csflow")
    assert spec.variants["full"].dataset == "mvtec_ad" and spec.variants["full"].method == "csflow"
    assert spec.variants["baseline_gaussian"].method == "gaussian"
    assert spec.tables["table3"].dataset == "mvtec_ad_ablation"
    assert spec.tables["table2"].dataset == "mtd" and spec.tables["table1"].reproducible
    assert spec.complexity.batch_size == 8 and spec.main_variant == "full"
    patchflow = load_spec("patchflow")
    assert not patchflow.tables["table2"].reproducible
    assert patchflow.complexity.configs[0].batch_size == 1
    clscnf = load_spec("clscnf")
    assert clscnf.tables["table3"].batch_size == 32 and clscnf.tables["table3"].variants == ("full",)
    assert clscnf.tables["table1"].compared_metric("aupro") == "aupro@clscnf"
    assert clscnf.tables["table1"].compared_metric("image_auroc") == "image_auroc"
    # attributes only: no dict-style access to the raw YAML
    assert not hasattr(spec, "raw") and not hasattr(spec, "get")
    with pytest.raises(TypeError):
        spec["tables"]


def test_data_prepare_fetches_what_the_profiles_runs_read():
    """``nfbench data prepare`` derives its datasets from the runs' resolved configs: the
    roles' datasets, and DTD only while a CLS-CNFs run pastes DTD textures."""
    from nfbench.pipeline.plan import profile_datasets

    params = load_params()
    assert profile_datasets("demo", params) == ["demo"]
    assert set(profile_datasets("paper", params)) == {"mvtec_ad", "mtd", "btad", "dtd"}
    for name in ("mvtec_ad", "btad"):  # the roles of the CLS-CNFs variants (the *_cnf: CFlow)
        params["clscnf"]["paper"]["datasets"][name]["settings"]["foreign_source"] = "procedural"
    assert "dtd" not in profile_datasets("paper", params)
