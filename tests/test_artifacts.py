"""Model folders: every method saved, reloaded in a new process with identical scores; predict
and export on a saved model (nfbench.artifacts, nfbench.predict, nfbench.export)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nfbench.artifacts import (flatten_state, load_detector, read_manifest, save_detector,
                               unflatten_state)
from nfbench.datasets import image_sets, load_table
from nfbench.errors import UserError
from nfbench.methods import create_method, list_methods, method_class
from nfbench.methods.base import seed_everything

REPO = Path(__file__).resolve().parent.parent
METHODS = list_methods()


def _test_set(root, size):
    table = load_table("demo", root)
    train, test = image_sets(table, sorted(table["category"].unique())[0], size)
    return train.subset(range(8)), test


@pytest.fixture(scope="module")
def saved(tiny_demo, tmp_path_factory):
    """Every method fitted at its smoke budget and saved: {name: (folder, image scores)}."""
    out, models = tmp_path_factory.mktemp("models"), {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in METHODS:
            seed_everything(0)
            detector = create_method(name, **method_class(name).smoke_settings, device="cpu")
            train, test = _test_set(tiny_demo, detector.config.input_size)
            seed_everything(0)
            detector.fit(train)
            scores = detector.score(test)
            models[name] = (save_detector(detector, out / name), scores)
    finally:
        torch.set_num_threads(threads)
    return models


def test_state_flattening_round_trips():
    state = {"flows": {"0.w": torch.ones(2), "1.b": torch.zeros(1)}, "channels": torch.arange(3)}
    back = unflatten_state(flatten_state(state))
    assert back.keys() == state.keys() and torch.equal(back["flows"]["0.w"], torch.ones(2))


def test_every_method_reloads_in_a_new_process_with_identical_scores(saved, tiny_demo, tmp_path):
    """The Done-when check: scores of the reloaded detector, in a fresh interpreter, equal
    (bit for bit) those of the detector that was saved."""
    script = (
        "import sys, json, numpy as np, torch\n"
        "torch.set_num_threads(1)\n"
        "import nfbench\n"
        "from nfbench.datasets import image_sets, load_table\n"
        "root, out = sys.argv[1], sys.argv[2]\n"
        "result = {}\n"
        "for name, folder in json.loads(sys.argv[3]).items():\n"
        "    detector = nfbench.load_detector(folder)\n"
        "    table = load_table('demo', root)\n"
        "    category = sorted(table['category'].unique())[0]\n"
        "    size = detector.artifact_['config']['input_size']\n"
        "    _, test = image_sets(table, category, size)\n"
        "    s = detector.score(test)\n"
        "    np.savez(f'{out}/{name}.npz', image=s.image, pixel=s.pixel)\n")
    folders = {name: str(folder) for name, (folder, _) in saved.items()}
    subprocess.run([sys.executable, "-c", script, str(tiny_demo), str(tmp_path),
                    json.dumps(folders)], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    for name, (folder, scores) in saved.items():
        again = np.load(tmp_path / f"{name}.npz")
        np.testing.assert_array_equal(again["image"], scores.image, err_msg=name)
        np.testing.assert_array_equal(again["pixel"], scores.pixel, err_msg=name)
        manifest = read_manifest(folder)
        assert manifest["method"] == name and manifest["state"]["format"] == "safetensors"
        assert manifest["backbone"]["name"] == manifest["config"]["backbone"]
        assert (Path(folder) / "config.yaml").is_file()


def test_a_clscnf_model_keeps_its_chosen_w_and_category(saved):
    folder, _ = saved["clscnf"]
    reloaded, manifest = load_detector(folder), read_manifest(folder)
    assert reloaded.category_ == manifest["category"] and manifest["category"]
    from safetensors.torch import load_file

    saved_w = float(load_file(str(Path(folder) / "state.safetensors"))["w_used"])
    assert reloaded.w_ == saved_w or (np.isnan(saved_w) and np.isnan(reloaded.w_))


def test_not_a_model_folder_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="not an nfbench model folder"):
        load_detector(tmp_path)
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(UserError, match="not an nfbench model folder"):
        save_detector(create_method("gaussian"), tmp_path)


def _images(tiny_demo, folder: Path, n: int = 3) -> Path:
    """A folder of demo test images, one resized to another (non-square) size."""
    from PIL import Image

    folder.mkdir()
    files = sorted((tiny_demo / "brick" / "test").rglob("*.png"))[:n]
    for i, path in enumerate(files):
        with Image.open(path) as img:
            (img.resize((160, 120)) if i == 0 else img).save(folder / f"img{i}.png")
    return folder


def test_predict_writes_scores_maps_overlays_and_predictions(saved, tiny_demo, tmp_path):
    from nfbench.cli import main

    images = _images(tiny_demo, tmp_path / "images")
    normal = tmp_path / "normal"
    normal.mkdir()
    for path in sorted((tiny_demo / "brick" / "train" / "good").glob("*.png"))[:3]:
        (normal / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "scored"
    folder, _ = saved["gaussian"]
    assert main(["predict", "--model", str(folder), "--images", str(images), "--normal",
                 str(normal), "--out", str(out), "--quiet"]) == 0
    import pandas as pd

    table = pd.read_csv(out / "scores.csv")
    assert list(table.columns) == ["file", "image_score", "threshold", "prediction"]
    assert len(table) == 3 and set(table["prediction"]) <= {0, 1}
    for i in range(3):
        assert np.load(out / "maps" / f"img{i}.npy").shape == (96, 96)  # gaussian smoke size
        assert (out / "maps" / f"img{i}.png").is_file()
    from PIL import Image

    with Image.open(out / "overlays" / "img0.png") as overlay:
        assert overlay.size == (160, 120)  # drawn over the image at its own size
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["threshold"]["source"] == "--normal" and summary["environment"]["torch"]


def test_predict_refuses_an_empty_folder_and_a_foreign_out(saved, tmp_path):
    from nfbench.predict import predict

    folder, _ = saved["gaussian"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        predict(folder, tmp_path / "empty", tmp_path / "out")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(UserError, match="not an earlier predict output"):
        predict(folder, tmp_path / "empty", tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "x"


@pytest.mark.parametrize("name", ["gaussian", "csflow", "patchflow", "cflow", "clscnf"])
def test_torchscript_export_matches_the_original(saved, name, tmp_path):
    from nfbench.export import export_model

    folder, _ = saved[name]
    report = export_model(folder, "torchscript", tmp_path / f"{name}.pt")
    assert report["ok"] and report["tolerance"] == {"atol": 1e-4, "rtol": 1e-4}
    assert json.loads(Path(str(tmp_path / f"{name}.pt") + ".json").read_text())["ok"]


def test_onnx_export_matches_the_original_where_the_ops_allow(saved, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from nfbench.export import export_model

    folder, _ = saved["gaussian"]
    assert export_model(folder, "onnx", tmp_path / "g.onnx")["ok"]


def test_onnx_that_onnxruntime_cannot_run_is_one_clear_error(saved, tmp_path):
    """CFlow-AD upsamples its float64 maps bilinearly: onnxruntime's CPU Resize has no float64
    kernel, so the file cannot be checked; it is removed and the error says why."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from nfbench.export import export_model

    folder, _ = saved["cflow"]
    with pytest.raises(UserError, match="onnxruntime cannot run it"):
        export_model(folder, "onnx", tmp_path / "c.onnx")
    assert not (tmp_path / "c.onnx").exists()


def test_bench_save_models_writes_one_model_folder_per_run(tiny_demo, tmp_path, one_thread):
    """``bench --save-models DIR``: the runner saves each run's fitted detector with its
    record (identity included) under DIR/<run_id>."""
    from nfbench.pipeline.plan import Run
    from nfbench.pipeline.runner import execute

    run = Run(paper="csflow", method="gaussian", variant="baseline_gaussian", dataset="demo",
              category="brick", seed=0, profile="demo", root=str(tiny_demo),
              settings={"input_size": 96, "n_features": 20, "device": "cpu"})
    (record_path,) = execute([run], tmp_path / "results", progress=False, jobs=1,
                             models_dir=tmp_path / "models")
    folder = tmp_path / "models" / run.run_id
    manifest = read_manifest(folder)
    record = json.loads(record_path.read_text())
    assert manifest["run"]["identity"] == record["identity"]
    assert json.loads((folder / "record.json").read_text())["metrics"] == record["metrics"]
    assert load_detector(folder).config.n_features == 20
