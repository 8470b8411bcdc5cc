"""Training curves reach `dvc plots show` (nfbench.curves, dvc.yaml's top-level plots)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from nfbench.curves import write_loss_curves

REPO = Path(__file__).resolve().parent.parent


def _record(results: Path, paper: str, variant: str, category: str, curve):
    path = results / paper / "runs" / variant / category / "seed0.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"method": paper, "fit_info": {"loss_per_epoch": curve}}))


def test_loss_curves_are_written_per_run_and_stale_ones_removed(tmp_path):
    _record(tmp_path, "csflow", "full", "brick", [3.5, 2.25])
    _record(tmp_path, "csflow", "full", "gravel", None)  # a record without a curve
    stale = tmp_path / "csflow" / "plots" / "loss" / "old.csv"
    stale.parent.mkdir(parents=True)
    stale.write_text("x")
    (path,) = write_loss_curves("csflow", tmp_path)
    assert path.name == "full.brick.seed0.csv" and not stale.exists()
    assert write_loss_curves("patchflow", tmp_path) == []  # no records: an empty folder, which
    assert (tmp_path / "patchflow" / "plots" / "loss").is_dir()  # dvc plots show accepts
    assert path.read_text() == "epoch,loss\n1,3.5\n2,2.25\n"


@pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc not installed")
def test_dvc_plots_show_includes_the_training_curves(tmp_path):
    plots = [entry for entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
             if isinstance(entry, dict) and any("plots/loss" in key for key in entry)]
    assert {next(iter(e)) for e in plots} == {f"results/{p}/plots/loss"
                                               for p in ("csflow", "patchflow", "clscnf")}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    _record(tmp_path / "results", "patchflow", "full", "brick", [1.0, 0.5, 0.25])
    write_loss_curves("patchflow", tmp_path / "results")
    shown = subprocess.run(["dvc", "plots", "show", "--json"], cwd=tmp_path, check=True,
                           capture_output=True, text=True).stdout
    data = json.loads(shown)["data"]
    (key,) = [k for k in data if k.endswith("full.brick.seed0.csv")]
    values = data[key][0]["content"]["data"]["values"]
    assert [float(v["loss"]) for v in values] == [1.0, 0.5, 0.25]
