"""Issue 21: checks that pass on typos, full disks, hostile params and config files, odd
records and datasets: each is one line (or its own exit status), before any work.

Each test names the guarantee of docs/reliability.md ("Round two") it proves.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest

from nfbench.cli import main
from nfbench.errors import UserError


def _record(results: Path, run_id: str, name: str | None = None, **metrics) -> Path:
    paper, variant, category, seed = run_id.split("/")
    path = results / paper / "runs" / variant / category / f"{name or seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"paper": paper, "run_id": run_id, "metrics": metrics}))
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------------------------
# item 4 (and issue 20 item 4): nfbench check


def test_check_refuses_an_unknown_paper(tmp_path, capsys):
    _record(tmp_path / "r", "csflow/full/brick/seed0", image_auroc=0.9)
    baseline = tmp_path / "b.json"
    baseline.write_text(json.dumps({"runs": {"csflow/full/brick/seed0": {"image_auroc": 0.9}}}))
    assert main(["check", "--baseline", str(baseline), "--results", str(tmp_path / "r"),
                 "--paper", "csflwo"]) == 2
    assert "unknown paper(s) 'csflwo'" in _one_error_line(capsys)


def test_check_refuses_two_records_with_one_run_id(tmp_path, capsys):
    _record(tmp_path / "r", "csflow/full/brick/seed0", image_auroc=0.9)
    _record(tmp_path / "r", "csflow/full/brick/seed0", name="seed1", image_auroc=0.5)
    baseline = tmp_path / "b.json"
    for extra in ([], ["--exact"], ["--update"]):
        assert main(["check", "--baseline", str(baseline), "--results", str(tmp_path / "r"),
                     *extra]) == 2
        assert "two result records carry run_id" in _one_error_line(capsys)
    assert not baseline.exists()


@pytest.mark.parametrize("tolerance", ["NaN", "-0.1", "1e300", "Infinity"])
def test_check_refuses_a_bad_tolerance(tolerance, tmp_path, capsys):
    _record(tmp_path / "r", "csflow/full/brick/seed0", image_auroc=0.9)
    baseline = tmp_path / "b.json"
    baseline.write_text('{"runs": {"csflow/full/brick/seed0": {"image_auroc": 0.9}}, '
                        f'"tolerance": {{"image_auroc": {tolerance}}}}}')
    assert main(["check", "--baseline", str(baseline), "--results", str(tmp_path / "r")]) == 2
    assert "tolerance of 'image_auroc' must be a finite number in [0, 1]" in \
        _one_error_line(capsys)


@pytest.mark.parametrize("value", ["Infinity", "NaN", "-0.5", "7"])
def test_check_refuses_a_non_finite_or_out_of_range_metric(value, tmp_path, capsys):
    record = _record(tmp_path / "r", "csflow/full/brick/seed0", image_auroc=0.9)
    record.write_text(record.read_text().replace("0.9", value))
    baseline = tmp_path / "b.json"
    assert main(["check", "--baseline", str(baseline), "--results", str(tmp_path / "r"),
                 "--update"]) == 2
    assert "must be a finite number in [0, 1]" in _one_error_line(capsys)
    assert not baseline.exists()  # --update wrote no Infinity


def test_check_reports_missing_records_apart_with_exit_3(tmp_path, capsys):
    results = tmp_path / "r"
    _record(results, "csflow/full/brick/seed0", image_auroc=0.9)
    baseline = tmp_path / "b.json"
    baseline.write_text(json.dumps({"runs": {"csflow/full/brick/seed0": {"image_auroc": 0.9},
                                             "csflow/full/logo/seed0": {"image_auroc": 0.8}}}))
    assert main(["check", "--baseline", str(baseline), "--results", str(results)]) == 3
    err = capsys.readouterr().err
    assert "MISSING csflow/full/logo/seed0" in err and "REGRESSION" not in err
    _record(results, "csflow/full/brick/seed0", image_auroc=0.5)  # now a regression too
    assert main(["check", "--baseline", str(baseline), "--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert "REGRESSION csflow/full/brick/seed0" in err and "MISSING csflow/full/logo" in err


def test_check_update_baseline_that_is_a_folder_or_under_a_file(tmp_path, capsys):
    _record(tmp_path / "r", "csflow/full/brick/seed0", image_auroc=0.9)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "folder", tmp_path / "file" / "b.json"):
        assert main(["check", "--baseline", str(target), "--results", str(tmp_path / "r"),
                     "--update"]) == 2
        assert "--baseline" in _one_error_line(capsys)


def test_deeply_nested_baseline_is_one_line(tmp_path, capsys):
    _record(tmp_path / "r", "csflow/full/brick/seed0", image_auroc=0.9)
    baseline = tmp_path / "b.json"
    baseline.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["check", "--baseline", str(baseline), "--results", str(tmp_path / "r")]) == 2
    assert "nested too deeply" in _one_error_line(capsys)


# --------------------------------------------------------------------------------------------
# items 5 and 9: params.yaml and --config files, type-checked before any work

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder (its own params.yaml; the repository's benchmarks/) as the CWD."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _edit_params(project: Path, edit) -> None:
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    edit(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["csflow"]["demo"].update(seeds="abc"), "csflow.demo.seeds: expected a non-empty list"),
    (lambda p: p["csflow"]["demo"].update(seeds=[0, "x"]), "csflow.demo.seeds[1]: expected an integer"),
    (lambda p: p["csflow"]["demo"].update(datasets=5), "csflow.demo.datasets: expected a mapping"),
    (lambda p: p["csflow"]["demo"]["datasets"]["mvtec_ad"].update(categories=5),
     "csflow.demo.datasets.mvtec_ad.categories: expected 'all' or a list"),
    (lambda p: p.update(profile=[1]), "profile: expected a non-empty string"),
])
def test_params_of_a_wrong_type_are_one_line_naming_file_and_key(edit, message, project, capsys):
    _edit_params(project, edit)
    assert main(["plan"]) == 2
    line = _one_error_line(capsys)
    assert "params.yaml" in line and message in line


@pytest.mark.parametrize("text, message", [
    ("csflow: [\n", "not valid YAML"),
    ("", "is empty"),
    ("profile: !!python/object/apply:os.system ['echo hi']\n", "python/object/apply"),
])
def test_broken_params_file_is_one_line(text, message, project, capsys):
    (project / "params.yaml").write_text(text)
    assert main(["plan"]) == 2
    line = _one_error_line(capsys)
    assert "params.yaml" in line and message in line


@pytest.mark.parametrize("text, message", [
    ("method: gaussian\ndataset: demo\nsettings: [\n", "not valid YAML"),
    ("method: gaussian\ndataset: demo\nsettings: 5\n", "settings: expected a mapping"),
    ("method: gaussian\ndataset: demo\nseed: abc\n", "seed: expected an integer"),
    ("method: gaussian\ndataset: demo\nshots: abc\n", "shots: expected an integer"),
    ("method: gaussian\ndataset: demo\nroot: [1]\n", "root: expected a non-empty string"),
    ("method: gaussian\ndataset: demo\njoint: 'no'\n", "joint: expected true or false"),
    ("method: !!python/object/apply:os.system ['echo hi']\n", "python/object/apply"),
])
def test_config_file_fields_are_type_checked(text, message, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    assert main(["run", "--config", str(config), "--print-config"]) == 2
    line = _one_error_line(capsys)
    assert str(config) in line and message in line


@pytest.mark.parametrize("method, pair, message", [
    ("csflow", "input_size=60000", "input_size must be in [32, 2048]"),
    ("cflow", "category_settings=5", "category_settings must be a mapping"),
    ("cflow", "category_settings={brick: 5}", "category_settings['brick'] must be a mapping"),
    ("cflow", "category_settings={brick: {lrr: 1}}", "invalid key(s) lrr"),
])
def test_bad_settings_are_refused_at_resolve_time(method, pair, message, capsys):
    assert main(["run", "--method", method, "--dataset", "demo", "--set", pair,
                 "--print-config"]) == 2
    assert message in _one_error_line(capsys)


# --------------------------------------------------------------------------------------------
# item 6: a full disk is one line, and a finished result is kept elsewhere


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def rescue_dir(tmp_path, monkeypatch):
    import tempfile

    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(folder))
    return folder / "nfbench-rescued"


def test_full_disk_at_out_keeps_the_finished_record(tmp_path, rescue_dir, monkeypatch, capsys,
                                                    tiny_demo):
    from nfbench.pipeline import experiment, record as records

    record = {"method": "gaussian", "category": "brick", "metrics": {
        "image_auroc": 0.75, "pixel_auroc": 0.5, "aupro": 0.25}}
    monkeypatch.setattr(experiment, "run_experiment", lambda *a, **k: dict(record))
    monkeypatch.setattr(records, "write_text_atomic", _enospc)  # the one record writer
    out = tmp_path / "out" / "r.json"
    assert main(["run", "--method", "gaussian", "--dataset", "demo", "--category", "brick",
                 "--root", str(tiny_demo), "--out", str(out)]) == 2  # the record's identity
    line = _one_error_line(capsys)  # reads the data set's files: a fresh clone has no demo set
    assert "No space left on device" in line and "the finished result was saved to" in line
    rescued = list(rescue_dir.glob("*-r.json"))
    assert len(rescued) == 1 and str(rescued[0]) in line
    assert json.loads(rescued[0].read_text())["metrics"]["image_auroc"] == 0.75
    assert not out.exists()


def test_full_disk_at_results_keeps_the_record_and_leaves_nothing(tmp_path, rescue_dir,
                                                                  monkeypatch):
    from nfbench.pipeline import execution, runner
    from nfbench.pipeline.plan import Run

    def full(examples, path):
        from nfbench.atomic import atomic_path

        with atomic_path(path, suffix=".npz") as tmp:
            tmp.write_bytes(b"half")
            _enospc()

    monkeypatch.setattr(execution, "write_examples", full)
    run = Run(paper="csflow", method="csflow", variant="full", dataset="demo",
              category="brick", seed=0, profile="demo")
    with pytest.raises(UserError, match="No space left on device; the finished result was "
                                        "saved to .*nfbench-rescued"):
        runner.store({"run_id": run.run_id, "metrics": {"image_auroc": 0.5}}, {},
                     tmp_path / "results", run)
    assert [p for p in (tmp_path / "results").rglob("*") if p.is_file()] == []
    assert len(list(rescue_dir.glob("*seed0.json"))) == 1


def test_full_feature_cache_is_one_line(tmp_path, monkeypatch):
    import torch

    from nfbench import feature_cache

    def full(obj, path):
        Path(path).write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter "
                           "failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match="cannot write to the cache folder .*file write failed "
                                        r"\(is the disk full\?\)"):
        feature_cache.save_atomic({"x": torch.zeros(2)}, tmp_path / "cache" / "e.pt")
    assert list((tmp_path / "cache").iterdir()) == []


# --------------------------------------------------------------------------------------------
# item 3: a truncated .npz beside a record is remade, and never breaks a report


def _stored_run(results: Path, monkeypatch):
    from nfbench.pipeline import identity
    from nfbench.pipeline.experiment import write_examples, write_record
    from nfbench.pipeline.plan import Run

    monkeypatch.setattr(identity, "run_identity", lambda run: {"digest": "same"})
    run = Run(paper="csflow", method="csflow", variant="full", dataset="demo",
              category="brick", seed=0, profile="demo")
    path = results / run.record_path
    write_examples({"labels": np.arange(4), "image_scores": np.linspace(0, 1, 4000)},
                   path.with_suffix(".npz"))
    write_record({"run_id": run.run_id, "identity": {"digest": "same"}}, path)
    return run, path.with_suffix(".npz")


def test_truncated_npz_beside_a_record_is_remade(tmp_path, monkeypatch):
    from nfbench.pipeline.runner import pending

    run, npz = _stored_run(tmp_path, monkeypatch)
    assert pending([run], tmp_path) == []  # whole: skipped
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    assert pending([run], tmp_path) == [run]


def test_damaged_or_pickled_npz_is_one_line(tmp_path, monkeypatch):
    from nfbench.pipeline.experiment import read_examples

    run, npz = _stored_run(tmp_path, monkeypatch)
    assert set(read_examples(npz)) == {"labels", "image_scores"}
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(UserError, match="damaged or truncated"):
        read_examples(npz)
    np.savez(npz, objects=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(UserError, match="pickled object array"):
        read_examples(npz)


# --------------------------------------------------------------------------------------------
# item 10: records, baselines, results folders


def test_random_bytes_as_a_record_are_one_line(tmp_path, capsys):
    path = tmp_path / "r" / "csflow" / "runs" / "full" / "brick" / "seed0.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    assert main(["results", "--results", str(tmp_path / "r")]) == 2
    assert f"{path}: not a run record" in _one_error_line(capsys)


def test_report_before_any_record_or_table_is_one_line(tmp_path, capsys):
    reports = tmp_path / "reports"
    assert main(["report", "--paper", "csflow", "--profile", "smoke", "--results",
                 str(tmp_path / "empty"), "--reports", str(reports)]) == 2
    assert "no result record for" in _one_error_line(capsys)
    assert not reports.exists()


def test_results_folder_that_is_a_file_is_refused_before_the_first_run(tmp_path, capsys,
                                                                       monkeypatch):
    from nfbench.pipeline import runner

    monkeypatch.setattr(runner, "run_one", lambda *a: pytest.fail("ran"))
    (tmp_path / "afile").write_text("x")
    for results in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        assert main(["bench", "--paper", "csflow", "--profile", "smoke", "--variant",
                     "baseline_gaussian", "--results", str(results)]) == 2
        assert "is a file" in _one_error_line(capsys)


def test_peers_folder_that_is_a_symlink_is_one_line_and_kept(tmp_path, capsys):
    results = tmp_path / "r"
    results.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    (results / "peers").symlink_to(target)
    assert main(["peers", "--results", str(results), "--profile", "smoke"]) == 2
    assert "is a symbolic link" in _one_error_line(capsys)
    assert (target / "keep.txt").exists()


# --------------------------------------------------------------------------------------------
# item 11: a folder dataset's odd files are one line before any digest


@pytest.mark.parametrize("how", ["loop", "folder"])
def test_odd_training_image_of_a_folder_dataset_is_one_line(how, tiny_demo, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_demo / "brick", root / "brick")
    image = sorted((root / "brick" / "train" / "good").iterdir())[0]
    image.unlink()
    if how == "loop":
        image.symlink_to(image)
    else:
        image.symlink_to(tmp_path)
    out = tmp_path / "r.json"
    assert main(["run", "--method", "gaussian", "--dataset", "folder", "--root", str(root),
                 "--category", "brick", "--out", str(out)]) == 2
    assert f"cannot read image {image}" in _one_error_line(capsys)
    from nfbench.datasets import load_table
    from nfbench.pipeline.identity import dataset_fingerprint

    with pytest.raises(UserError, match="cannot read image"):
        dataset_fingerprint("folder", str(root), "brick")
    assert len(load_table("folder", root, check_files=False))  # verify still lists them all


# --------------------------------------------------------------------------------------------
# item 12: the small ones


def test_bench_seed_outside_the_plan_is_an_error(capsys):
    assert main(["bench", "--paper", "csflow", "--profile", "smoke", "--seed", "7"]) == 2
    assert "no run of seed 7; planned: 0" in _one_error_line(capsys)


def test_results_of_an_unknown_paper_is_an_error(tmp_path, capsys):
    out = tmp_path / "runs.csv"
    assert main(["results", "--paper", "nope", "--csv", str(out)]) == 2
    assert "unknown paper(s) 'nope'" in _one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("gpus", ["0", "-1"])
def test_plan_with_no_gpus_is_an_error(gpus, capsys):
    assert main(["plan", "--gpus", gpus]) == 2
    assert "--gpus must be at least 1" in _one_error_line(capsys)


def test_one_line_error_leaves_no_empty_parent_folders(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "r.json"
    assert main(["run", "--method", "nope", "--dataset", "demo", "--out", str(out)]) == 2
    _one_error_line(capsys)
    assert main(["run", "--method", "gaussian", "--dataset", "demo", "--set", "lr=1",
                 "--out", str(out)]) == 2
    _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []
