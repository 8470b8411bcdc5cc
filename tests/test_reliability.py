"""Issue 13: nothing lost, nothing silently wrong, every bad input one line.

Each test names the guarantee of docs/reliability.md it proves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nfbench.pipeline.check import check
from nfbench.cli import main
from nfbench.errors import UserError


# --------------------------------------------------------------------------------------------
# 1. the regression baseline


def _record(results: Path, run_id: str, **metrics) -> Path:
    paper, variant, category, seed = run_id.split("/")
    path = results / paper / "runs" / variant / category / f"{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"paper": paper, "run_id": run_id, "metrics": metrics}))
    return path


def _baseline(path: Path, runs: dict, tolerance: dict | None = None) -> Path:
    body = {"runs": runs}
    if tolerance is not None:
        body["tolerance"] = tolerance
    path.write_text(json.dumps(body))
    return path


def test_check_update_merges_and_keeps_other_papers_and_metrics(tmp_path, capsys):
    old = {"csflow/full/x/seed0": {"image_auroc": 0.5, "pixel_auroc": 0.6, "aupro": 0.4},
           "csflow/gone/x/seed0": {"image_auroc": 0.5},
           "patchflow/full/x/seed0": {"image_auroc": 0.7, "pixel_auroc": 0.8}}
    baseline = _baseline(tmp_path / "b.json", old, tolerance={"image_auroc": 0.02})
    results = tmp_path / "r"
    _record(results, "csflow/full/x/seed0", image_auroc=0.9, pixel_auroc=0.95, aupro=0.7)
    _record(results, "csflow/shots16/x/seed0", image_auroc=0.8, pixel_auroc=0.85, aupro=0.6)
    _record(results, "patchflow/full/x/seed0", image_auroc=0.1, pixel_auroc=0.1)
    assert main(["check", "--baseline", str(baseline), "--results", str(results),
                 "--paper", "csflow", "--update"]) == 0
    assert "1 added, 1 replaced, 2 kept" in capsys.readouterr().out
    runs = json.loads(baseline.read_text())["runs"]
    assert runs["csflow/full/x/seed0"] == {"image_auroc": 0.9, "pixel_auroc": 0.95, "aupro": 0.7}
    assert runs["csflow/shots16/x/seed0"]["aupro"] == 0.6  # every metric, not only the tolerance's
    assert runs["csflow/gone/x/seed0"] == {"image_auroc": 0.5}  # not in the results: kept
    assert runs["patchflow/full/x/seed0"] == old["patchflow/full/x/seed0"]  # other paper untouched
    assert json.loads(baseline.read_text())["tolerance"] == {"image_auroc": 0.02}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_check_update_prune_drops_the_runs_a_smaller_profile_no_longer_makes(tmp_path, capsys):
    old = {"csflow/full/x/seed0": {"image_auroc": 0.5}, "csflow/full/y/seed0": {"image_auroc": 0.5},
           "patchflow/full/y/seed0": {"image_auroc": 0.7}}
    baseline = _baseline(tmp_path / "b.json", old)
    results = tmp_path / "r"
    _record(results, "csflow/full/x/seed0", image_auroc=0.9)
    args = ["check", "--baseline", str(baseline), "--results", str(results)]
    assert main(args + ["--prune"]) == 2  # a baseline is only rewritten with --update
    assert "add --update" in capsys.readouterr().err
    assert main(args + ["--paper", "csflow", "--update", "--prune"]) == 0
    assert "1 kept, 1 without a record dropped" in capsys.readouterr().out
    runs = json.loads(baseline.read_text())["runs"]
    assert set(runs) == {"csflow/full/x/seed0", "patchflow/full/y/seed0"}  # other paper kept
    assert main(args + ["--update", "--prune"]) == 0
    assert set(json.loads(baseline.read_text())["runs"]) == {"csflow/full/x/seed0"}
    assert main(args) == 0  # nothing missing any more


def test_check_reports_runs_the_baseline_does_not_know(tmp_path, capsys):
    baseline = _baseline(tmp_path / "b.json", {"csflow/full/x/seed0": {"image_auroc": 0.5}})
    _record(tmp_path / "r", "csflow/full/x/seed0", image_auroc=0.6)
    _record(tmp_path / "r", "csflow/mtd/x/seed0", image_auroc=0.6)
    assert main(["check", "--baseline", str(baseline), "--results", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "1 run(s) not in the baseline" in err and "csflow/mtd/x/seed0" in err


@pytest.mark.parametrize("body, message", [
    ("{not json", "not valid JSON"),
    ('{"tolerance": {}}', "no 'runs'"),
    ("[1, 2]", "must be a JSON object"),
    ('{"runs": {"csflow/full/x/seed0": {"image_auroc": "high"}}}', "must be a number"),
])
def test_malformed_baseline_is_one_line(body, message, tmp_path, capsys):
    (tmp_path / "b.json").write_text(body)
    _record(tmp_path / "r", "csflow/full/x/seed0", image_auroc=0.6)
    for extra in ([], ["--update"]):
        assert main(["check", "--baseline", str(tmp_path / "b.json"),
                     "--results", str(tmp_path / "r")] + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert (tmp_path / "b.json").read_text() == body  # never overwritten


@pytest.mark.parametrize("record, message", [
    ("{oops", "not valid JSON"),
    ('{"paper": "csflow", "metrics": {}}', "no run_id"),
    ('["x"]', "must be a JSON object"),
    ('{"paper": "csflow", "run_id": "csflow/full/x/seed0", "metrics": {"image_auroc": "0.9"}}',
     "must be a number"),
])
def test_malformed_record_is_one_line(record, message, tmp_path, capsys):
    path = _record(tmp_path / "r", "csflow/full/x/seed0", image_auroc=0.6)
    path.write_text(record)
    assert main(["check", "--baseline", str(tmp_path / "b.json"), "--results",
                 str(tmp_path / "r"), "--update"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_undefined_fresh_metric_is_a_regression_not_a_crash(tmp_path):
    baseline = _baseline(tmp_path / "b.json", {"csflow/full/x/seed0": {"pixel_auroc": 0.5}})
    _record(tmp_path / "r", "csflow/full/x/seed0", image_auroc=0.6, pixel_auroc=None)
    problems = check(baseline, tmp_path / "r").problems
    assert problems == ["csflow/full/x/seed0: pixel_auroc is undefined, baseline 0.5000"]


# --------------------------------------------------------------------------------------------
# 5 and 7. wrong records and one-line errors


@pytest.fixture
def brick(tiny_demo, tmp_path) -> Path:
    """A private copy of the tiny demo's brick category (``--dataset folder``), to damage."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_demo / "brick", root / "brick")
    return root


def _run(root: Path, out: Path, *sets: str, method: str = "gaussian") -> list[str]:
    args = ["run", "--method", method, "--dataset", "folder", "--root", str(root),
            "--category", "brick", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    return args


def _one_line_error(capsys, message: str) -> str:
    err = capsys.readouterr().err
    lines = err.split("\r")[-1].strip().splitlines()  # after the (cleared) progress bars
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0] and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("method, setting, message", [
    ("csflow", "epochs=0", "epochs must be >= 1, got 0"),
    ("csflow", "epochs=-3", "epochs must be >= 1, got -3"),
    ("gaussian", "input_size=96.5", "input_size must be an integer, got 96.5"),
    ("gaussian", "batch_size=0", "batch_size must be >= 1"),
    ("gaussian", "input_size=-5", "input_size must be in [32, 2048]"),
    ("csflow", "lr=.nan", "lr must be a finite number"),
    ("csflow", "lr=-1e-3", "lr must be > 0"),
    ("patchflow", "validation_fraction=1.5", "validation_fraction must be in (0, 1)"),
    ("csflow", "kernel_sizes=[3, 0]", "kernel_sizes must be >= 1"),
])
def test_bad_setting_is_one_line_and_writes_nothing(method, setting, message, brick, tmp_path,
                                                    capsys):
    out = tmp_path / "r.json"
    assert main(_run(brick, out, setting, method=method)) == 2
    _one_line_error(capsys, message)
    assert not out.exists()


def test_every_planned_run_passes_the_config_validator():
    from nfbench.pipeline.experiment import resolve_config
    from nfbench.pipeline.plan import expand_runs, load_params
    from nfbench.pipeline.params import profile_names
    from nfbench.pipeline.spec import papers

    params = load_params()
    for profile in profile_names(params):
        for paper in (p for p in papers() if p in params):
            runs = expand_runs(paper, profile, params)
            distinct = {(r.method, r.profile, repr(sorted(r.settings.items()))): r for r in runs}
            assert runs and len(distinct) <= len(runs)
            for run in distinct.values():  # every distinct config, not only the first runs'
                resolve_config(run.method, run.profile, dict(run.settings))


def test_diverged_training_is_one_line(brick, tmp_path, capsys, monkeypatch):
    from nfbench.pipeline import experiment
    from nfbench.errors import TrainingDivergedError

    def diverge(*args, **kwargs):
        raise TrainingDivergedError("flow loss became nan at epoch 1, step 1")

    monkeypatch.setattr(experiment, "run_experiment", diverge)
    out = tmp_path / "r.json"
    assert main(_run(brick, out, "lr=1e6")) == 2
    _one_line_error(capsys, "training diverged: flow loss became nan")
    assert not out.exists()


def test_unwritable_out_is_refused_before_any_work(brick, tmp_path, capsys, monkeypatch):
    from nfbench.pipeline import experiment

    monkeypatch.setattr(experiment, "run_experiment", lambda *a, **k: pytest.fail("trained"))
    (tmp_path / "afile").write_text("x")
    for out, message in [(tmp_path, "is a directory"),
                         (tmp_path / "afile" / "r.json", "afile is a file"),
                         (Path("/proc/nfbench-r.json"), "cannot be written")]:
        assert main(_run(brick, out)) == 2
        _one_line_error(capsys, message)


def test_mask_of_another_size_is_refused(brick, tmp_path, capsys, monkeypatch):
    from PIL import Image

    mask = next((brick / "brick" / "ground_truth").rglob("*_mask.png"))
    Image.new("L", (64, 32), 255).save(mask)
    assert main(["data", "verify", "folder", "--root", str(brick)]) == 2
    assert f"mask {mask} is 64x32 but its image" in capsys.readouterr().err
    from nfbench.methods.gaussian.detector import GaussianDetector

    monkeypatch.setattr(GaussianDetector, "fit", lambda *a, **k: pytest.fail("trained"))
    out = tmp_path / "r.json"
    assert main(_run(brick, out, "input_size=64")) == 2
    _one_line_error(capsys, "is 64x32 but its image")
    assert not out.exists()


def test_undefined_metrics_are_null_with_a_reason(brick, tmp_path, one_thread):
    from PIL import Image

    for mask in (brick / "brick" / "ground_truth").rglob("*_mask.png"):
        with Image.open(mask) as img:
            size = img.size
        Image.new("L", size, 0).save(mask)
    out = tmp_path / "r.json"
    assert main(_run(brick, out, "input_size=64")) == 0
    text = out.read_text()
    assert "NaN" not in text
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert record["metrics"]["pixel_auroc"] is None and record["metrics"]["aupro"] is None
    assert record["metrics"]["image_auroc"] is not None
    assert "no defective pixel" in record["undefined_metrics"]["pixel_auroc"]


def _damage(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif how == "not an image":
        path.write_text("<html>not a png</html>")
    else:  # a symlink to a non-image
        target = path.parent.parent / "notes.txt"
        target.write_text("hello")
        path.unlink()
        path.symlink_to(target)


@pytest.mark.parametrize("how", ["empty", "truncated", "not an image", "symlink"])
def test_unreadable_image_is_named_by_verify_and_run(how, brick, tmp_path, capsys, one_thread):
    image = brick / "brick" / "test" / "good" / "001.png"
    _damage(image, how)
    assert main(["data", "verify", "folder", "--root", str(brick)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read image {image}" in err and "Traceback" not in err
    out = tmp_path / "r.json"
    assert main(_run(brick, out, "input_size=64")) == 2
    _one_line_error(capsys, f"cannot read image {image}")
    assert not out.exists()


def test_empty_folder_message_names_the_expected_layout(tmp_path, capsys):
    assert main(["data", "verify", "folder", "--root", str(tmp_path)]) == 2
    _one_line_error(capsys, "expected MVTec AD layout <category>/train/good")


def test_records_follow_the_umask(tmp_path):
    from nfbench.pipeline.experiment import write_record

    old = os.umask(0o002)
    try:
        write_record({"metrics": {"x": float("nan")}}, tmp_path / "r.json")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o664
    assert json.loads((tmp_path / "r.json").read_text()) == {"metrics": {"x": None}}


# --------------------------------------------------------------------------------------------
# 4. the self-healing feature cache


@pytest.fixture(scope="module")
def small_sets(tiny_demo):
    from nfbench.datasets import image_sets, load_table

    train, test = image_sets(load_table("folder", tiny_demo, ["brick"]), "brick", 64)
    return train.subset(range(4)), test.subset(range(3))


def _features(images, root):
    from nfbench.feature_cache import cached_features

    return cached_features("efficientnet_lite0", ["stride8"], images, progress=False,
                           root=root)[0][0]


def _entry_path(images, root) -> Path:
    from nfbench.feature_cache import cache_key

    return root / "efficientnet_lite0" / f"{cache_key('efficientnet_lite0', 'stride8', 0, images)}.pt"


def _damage_entry(how: str, path: Path, other: Path, images) -> None:
    import torch

    from nfbench.feature_cache import _digest

    if how == "flipped bytes":
        data = bytearray(path.read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 400):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "swapped with another entry":
        path.write_bytes(other.read_bytes())
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        entry = torch.load(path, weights_only=True)
        tensor = entry["payload"]
        if how == "NaN":
            tensor = tensor.clone()
            tensor[0, 0, 0, 0] = float("nan")
        elif how == "wrong shape":
            tensor = tensor[:-1].clone()
        else:  # an old plain-tensor entry
            torch.save(tensor, path)
            return
        entry.update(payload=tensor, shape=list(tensor.shape), sha256=_digest(tensor).hexdigest())
        torch.save(entry, path)


@pytest.mark.parametrize("how", ["flipped bytes", "swapped with another entry", "truncated",
                                 "empty", "NaN", "wrong shape", "old format"])
def test_damaged_cache_entry_is_recomputed_with_one_warning(how, small_sets, tmp_path, capsys,
                                                            one_thread):
    import torch

    train, test = small_sets
    root = tmp_path / "cache"
    reference = _features(test, root)
    _features(train, root)
    _damage_entry(how, _entry_path(test, root), _entry_path(train, root), test)
    capsys.readouterr()
    again = _features(test, root)
    err = capsys.readouterr().err
    assert torch.equal(again, reference)  # bit-identical features, not the damaged ones
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "recomputing it" in warnings[0], err
    assert torch.equal(_features(test, root), reference)  # healed: read back, no warning
    assert "warning" not in capsys.readouterr().err


def test_read_only_cache_folder_is_one_clear_error(small_sets):
    with pytest.raises(UserError, match="cannot write to the cache folder .*NFBENCH_CACHE"):
        _features(small_sets[1], Path("/proc/nfbench-cache"))


def test_cache_entries_follow_the_umask(small_sets, tmp_path, one_thread):
    old = os.umask(0o002)
    try:
        _features(small_sets[1], tmp_path / "cache")
    finally:
        os.umask(old)
    modes = {p.stat().st_mode & 0o777 for p in (tmp_path / "cache").rglob("*.pt")}
    assert modes == {0o664}


def test_stage_cache_entry_is_verified(tmp_path, monkeypatch, capsys):
    import torch

    from nfbench.methods.cnf import StageCache

    monkeypatch.setenv("NFBENCH_CACHE", str(tmp_path))
    cache = StageCache(True)
    state = {"flows": {"w": torch.arange(6.0)}}
    cache.save("cnf", "k1", state)
    assert torch.equal(cache.load("cnf", "k1")["flows"]["w"], state["flows"]["w"])
    cache.path("cnf", "k2").write_bytes(cache.path("cnf", "k1").read_bytes())  # swapped
    assert cache.load("cnf", "k2") is None
    assert "another key" in capsys.readouterr().err
