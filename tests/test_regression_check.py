"""The regression check on the demo profile is not blind: a method broken on one demo
category fails it against the committed demo baseline, and the failure names the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nfbench.pipeline.check import DEFAULT_TOLERANCE, check
from nfbench.datasets.demo.categories import DEMO_CATEGORIES
from nfbench.datasets.demo.generator import generate_demo
from nfbench.methods.base import Scores
from nfbench.pipeline.plan import expand_runs, load_params
from nfbench.pipeline.runner import run_one

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "benchmarks" / "baselines" / "demo.json"


def _baseline() -> dict:
    return json.loads(BASELINE.read_text())


def test_every_headline_demo_run_sits_clearly_above_chance():
    """A noise method scores about 0.5: every main-variant run of the demo baseline must sit
    far enough above chance that baseline - tolerance still excludes it."""
    baseline = _baseline()
    tolerance = baseline.get("tolerance", DEFAULT_TOLERANCE)["image_auroc"]
    headline = {run_id: m for run_id, m in baseline["runs"].items()
                if run_id.split("/")[1] in ("full", "cflow_ad")}
    planned = {run.run_id for paper in ("csflow", "patchflow", "clscnf")
               for run in expand_runs(paper, "demo", load_params(ROOT / "params.yaml"))
               if run.variant in ("full", "cflow_ad")}
    assert set(headline) == planned  # the baseline covers every headline run of the demo
    low = {run_id: m["image_auroc"] for run_id, m in headline.items()
           if m["image_auroc"] - tolerance < 0.70}
    assert not low, f"demo runs too close to chance for the check to see a broken method: {low}"


def test_check_names_a_method_broken_on_one_demo_category(tmp_path, monkeypatch, one_thread):
    from nfbench.methods.patchflow import PatchFlowDetector

    category = DEMO_CATEGORIES[-1]
    root = generate_demo(tmp_path / "demo", categories=[category], progress=False)
    params = load_params(ROOT / "params.yaml")
    params["patchflow"]["demo"]["datasets"]["mvtec_ad"]["root"] = str(root)  # the demo's role
    run = next(r for r in expand_runs("patchflow", "demo", params)
               if r.variant == "full" and r.category == category)

    def noise(self, images):  # broken: scores carry no information
        rng = np.random.default_rng(0)
        return Scores(image=rng.random(len(images)),
                      pixel=rng.random((len(images), images.size, images.size)))

    monkeypatch.setattr(PatchFlowDetector, "fit", lambda self, train, **kwargs: self)
    monkeypatch.setattr(PatchFlowDetector, "score", noise)
    run_one(run, tmp_path / "results")
    baseline = _baseline()
    assert run.run_id in baseline["runs"], "the demo baseline covers the run"
    only = tmp_path / "baseline.json"
    only.write_text(json.dumps({**baseline, "runs": {run.run_id: baseline["runs"][run.run_id]}}))
    result = check(only, tmp_path / "results")
    assert any(p.startswith(f"{run.run_id}: image_auroc") for p in result.problems), result.problems
