"""The command line: one complete record per run; one-line errors and nothing written otherwise."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nfbench.cli import main


def test_run_writes_complete_record(tiny_demo, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["run", "--method", "gaussian", "--dataset", "demo", "--root", str(tiny_demo),
                 "--category", "brick", "--seed", "0", "--set", "input_size=96", "--out", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    for key in ("method", "dataset", "category", "variant", "seed", "profile", "config",
                "metrics", "timing", "environment", "data"):
        assert key in record
    assert set(record["metrics"]) == {"image_auroc", "pixel_auroc", "pixel_aupr", "aupro", "f1_max",
                                      # the papers' own metric code beside the official metrics
                                      "pixel_aupr@clscnf", "aupro@clscnf", "pixel_auroc@patchflow"}
    assert record["config"]["input_size"] == 96
    assert record["environment"]["torch"]
    assert record["data"]["train_fingerprint"] and record["timing"]["fit_seconds"] > 0
    assert 0.0 <= record["metrics"]["image_auroc"] <= 1.0


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "gaussian", "--set", "bogus=1"], "unknown setting"),
    (["--method", "gaussian", "--set", "n_features=lots"], "expects a number"),
    (["--method", "gaussian", "--set", "novalue"], "expects key=value"),
    (["--method", "gaussian", "--category", "nope"], "no images of category"),
])
def test_user_errors_are_one_line_and_write_nothing(args, message, tiny_demo, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["run", "--dataset", "demo", "--root", str(tiny_demo), "--category", "brick",
                 "--out", str(out)] + args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_missing_dataset_from_a_real_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "nfbench", "run", "--method", "gaussian",
                             "--dataset", "mvtec_ad", "--root", str(tmp_path / "none"),
                             "--category", "bottle", "--out", str(tmp_path / "r.json")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r.json").exists()


def test_data_verify_prints_counts(tiny_demo, capsys):
    assert main(["data", "verify", "demo", "--root", str(tiny_demo)]) == 0
    out = capsys.readouterr().out
    assert "brick" in out and "total" in out
