"""Confusion matrices at a threshold chosen without test labels (PatchFlow Table 2 kind)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from nfbench.cli import main
from nfbench.pipeline.decision import confusion, holdout_split, threshold_from_normals
from nfbench.errors import UserError


def test_confusion_counts_and_both_f1_conventions():
    # PatchFlow's Table 2: 34 normal and 36 defective test images, 3 defects missed
    labels = np.r_[np.zeros(34), np.ones(36)]
    scores = np.r_[np.zeros(34), np.zeros(3), np.ones(33)]
    result = confusion(labels, scores, threshold=0.5)
    assert result["predicted_normal"] == {"actual_normal": 34, "actual_abnormal": 3}
    assert result["predicted_abnormal"] == {"actual_normal": 0, "actual_abnormal": 33}
    assert 100 * result["accuracy"] == pytest.approx(95.71, abs=0.01)
    # the paper's 95.77 % F1 takes the normal class as positive
    assert 100 * result["f1_normal_positive"] == pytest.approx(95.77, abs=0.01)
    assert 100 * result["f1_anomalous_positive"] == pytest.approx(95.65, abs=0.01)


def test_holdout_and_threshold_rules():
    fit, held = holdout_split(10, 0.2, seed=0)
    assert len(held) == 2 and sorted(fit + held) == list(range(10))
    assert holdout_split(10, 0.2, seed=0) == (fit, held)  # seeded
    with pytest.raises(UserError, match="cannot hold out"):
        holdout_split(1, 0.5, seed=0)
    with pytest.raises(UserError, match="--holdout"):
        holdout_split(10, 1.5, seed=0)
    assert threshold_from_normals(np.array([0.1, 0.4, 0.3]), 1.0) == pytest.approx(0.4)
    with pytest.raises(UserError, match="--quantile"):
        threshold_from_normals(np.array([0.1]), 0.0)


def test_decide_on_a_user_folder(tiny_demo, tmp_path, capsys):
    folder = tmp_path / "valves"
    shutil.copytree(tiny_demo / "coin", folder / "coin")  # a user folder: one category
    out = tmp_path / "table2.md"
    code = main(["decide", "--method", "gaussian", "--dataset", "folder", "--root", str(folder),
                 "--set", "input_size=96", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.with_suffix(".json").read_text())
    matrix = [result["predicted_normal"], result["predicted_abnormal"]]
    assert sum(sum(row.values()) for row in matrix) == result["n_test"]
    assert result["accuracy"] > 0.5
    assert "held-out normal training images" in result["threshold_rule"]
    assert "| predicted abnormal |" in out.read_text()


def test_decide_errors_write_nothing(tiny_demo, tmp_path, capsys):
    out = tmp_path / "t.md"
    code = main(["decide", "--method", "gaussian", "--dataset", "demo", "--root", str(tiny_demo),
                 "--category", "coin", "--holdout", "2", "--out", str(out)])
    assert code == 2 and "--holdout" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_decide_saves_and_reuses_a_model_and_records_everything(tiny_demo, tmp_path, capsys):
    """decide --save-model keeps the detector and its threshold; decide --model reuses it
    without fitting (same threshold, same predictions); predict takes the saved threshold."""
    model, first, second = tmp_path / "model", tmp_path / "a.md", tmp_path / "b.md"
    common = ["decide", "--method", "gaussian", "--dataset", "demo", "--root", str(tiny_demo),
              "--category", "coin", "--quiet"]
    assert main([*common, "--set", "input_size=96", "--out", str(first), "--save-model",
                 str(model)]) == 0, capsys.readouterr().err
    assert main([*common, "--model", str(model), "--out", str(second)]) == 0, \
        capsys.readouterr().err
    a, b = (json.loads(p.with_suffix(".json").read_text()) for p in (first, second))
    assert b["model"]["reused"] and not a["model"]["reused"] and b["fit_seconds"] == 0.0
    assert a["threshold"] == b["threshold"] and a["predictions"] == b["predictions"]
    assert len(a["predictions"]) == a["n_test"] and a["config"]["input_size"] == 96
    assert a["environment"]["torch"] and a["timing"]["score_seconds"] > 0
    assert json.loads((model / "nfbench-model.json").read_text())["threshold"]["value"] == \
        a["threshold"]
    from nfbench.predict import predict

    images = tmp_path / "images"
    shutil.copytree(tiny_demo / "coin" / "test", images)
    summary = predict(model, images, tmp_path / "scored", progress=False)
    assert summary["threshold"]["source"] == "saved with the model"
    assert all("prediction" in row for row in summary["predictions"])
