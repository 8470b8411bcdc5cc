"""A new method from one module and one registration call, run through plan, bench, tables
and report (README "Adding a method, a table, a dataset").

The method below is everything a method needs: a config dataclass whose fields declare their
own rules (nfbench.methods.base.setting) and a class following the Detector protocol,
registered with ``register_method``. Its paper is one spec file and one params block, written
into a temporary project (the folder nfbench reads ``params.yaml`` and ``benchmarks/`` from).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from nfbench.cli import main
from nfbench.methods import _REGISTRY, register_method
from nfbench.methods.base import (IMAGE_SIDE, NON_NEGATIVE, Detector, ProfilingNotSupported,
                                  Scores, setting, validate_config)
from nfbench.methods.protocol import OriginalProtocol


@dataclass(frozen=True)
class ToyConfig:
    """Distance to the mean training image, blurred by nothing."""

    input_size: int = setting(64, range=IMAGE_SIDE)
    device: str = "cpu"
    backbone: str = "none"
    shift: float = setting(0.0, range=NON_NEGATIVE)  # added to every score

    def __post_init__(self) -> None:
        validate_config(self)


class ToyProtocol(OriginalProtocol):
    """An original that printed the last model's test numbers (the default hooks)."""

    name = "toy"
    description = "The toy original printed its test numbers after its only epoch."
    reported_as = "last epoch"


class ToyDetector:
    """Anomaly map: squared distance of each pixel to the mean training image."""

    Config = ToyConfig
    smoke_settings = {"input_size": 64}
    profiling_components: tuple[str, ...] = ()
    original_protocol = ToyProtocol

    def __init__(self, config: ToyConfig = ToyConfig()):
        self.config = config
        self.mean_: torch.Tensor | None = None

    def fit(self, train, evaluate=None) -> "ToyDetector":
        self.mean_ = train.load_images().mean(dim=0)
        if evaluate is not None:
            evaluate("epoch 1/1")
        return self

    def score(self, images) -> Scores:
        pixel = ((images.load_images() - self.mean_) ** 2).sum(dim=1) + self.config.shift
        return Scores(image=pixel.flatten(1).max(dim=1).values.numpy(), pixel=pixel.numpy())

    def state_dict(self) -> dict:
        return {"mean": self.mean_}

    def load_state_dict(self, state: dict) -> None:
        self.mean_ = state["mean"]

    def inference_module(self, component=None, pretrained=True) -> torch.nn.Module:
        raise ProfilingNotSupported("the toy method has no network")


PARAMS = """\
profile: demo
profiles:
  demo: {settings: {}}
  paper: {settings: {}, reference: true}
toy:
  demo:
    seeds: [0]
    datasets:
      mvtec_ad: {dataset: demo, categories: [brick]}
    settings: {shift: 0.5}
  paper:
    seeds: [0]
    datasets:
      mvtec_ad: {dataset: mvtec_ad, categories: all}
    settings: {}
"""

SPEC = """\
paper: toy
title: "A toy paper"
order: 1
method: toy
source: "this test"
variants:
  full: {dataset: mvtec_ad}
tables:
  table1:
    title: "Table 1: image AUROC"
    metric: image_auroc
    layout: per_category
    columns: {full: "Toy"}
    published:
      full: {brick: 90.0, average: 90.0}
"""


@pytest.fixture
def toy_project(tiny_demo, tmp_path, monkeypatch):
    """A project folder holding only the toy paper, the tiny demo set as its data, and the
    toy method registered (removed again afterwards)."""
    register_method("toy")(ToyDetector)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "toy.yaml").write_text(SPEC)
    (tmp_path / "params.yaml").write_text(PARAMS)
    (tmp_path / "pyproject.toml").write_text("")  # marks the project top
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NFBENCH_DATA", str(tiny_demo.parent))
    yield tmp_path
    _REGISTRY.pop("toy", None)


def test_toy_method_runs_through_plan_bench_tables_and_report(toy_project, capsys):
    assert isinstance(ToyDetector(), Detector)
    assert main(["plan", "--paper", "toy"]) == 0
    assert "toy" in capsys.readouterr().out
    assert main(["bench", "--paper", "toy", "--quiet"]) == 0
    record = json.loads(next((toy_project / "results").rglob("seed0.json")).read_text())
    assert record["method"] == "toy" and record["config"]["shift"] == 0.5
    assert 0.0 <= record["metrics"]["image_auroc"] <= 1.0
    op = record["original_protocol"]
    assert op["protocol"] == "toy" and [p["label"] for p in op["points"]] == ["epoch 1/1"]
    assert op["points"][0]["metrics"]["image_auroc"] == pytest.approx(
        record["metrics"]["image_auroc"])  # the same model, scored in the same way
    assert main(["tables", "--paper", "toy"]) == 0
    table = next((toy_project / "results" / "toy").rglob("table1.csv"))
    assert "Toy" in table.read_text() or "full" in table.read_text()
    assert main(["report", "--paper", "toy"]) == 0
    report = (toy_project / "reports" / "toy.md").read_text()
    assert "A toy paper" in report and "The toy original printed" in report


def test_a_field_rule_is_declared_not_guessed_from_the_name():
    """A field named like a learning rate gets no rule from its name; its own rule counts."""
    from nfbench.errors import UserError

    @dataclass(frozen=True)
    class Named:
        lr: float = -1.0  # no declared rule: any finite float

    @dataclass(frozen=True)
    class Declared:
        lr: float = setting(-1.0, range=(0, float("inf"), "()"))
        mode: str = setting("a", choices=("a", "b"))

    validate_config(Named())
    with pytest.raises(UserError, match="lr must be > 0, got -1.0"):
        validate_config(Declared())
    with pytest.raises(UserError, match="mode must be one of a, b, got 'c'"):
        validate_config(Declared(lr=1.0, mode="c"))


def test_pipeline_names_no_method_and_no_private_member():
    """The protocol recorder, the planner and the cost model reach methods only through the
    Detector protocol: no method's name and no ``det._x`` in them."""
    import re
    from pathlib import Path

    import nfbench.pipeline as pipeline
    from nfbench.methods import list_methods

    folder = Path(pipeline.__file__).parent
    for name in ("protocols.py", "experiment.py", "plan.py", "flops.py"):
        code = "\n".join(line.split("#")[0] for line in
                         (folder / name).read_text().splitlines())
        code = re.sub(r'"""[\s\S]*?"""', "", code)  # docstrings may cite the papers
        for method in list_methods():
            assert not re.search(rf"['\"]{method}['\"]", code), (name, method)
        assert not re.search(r"\b(det|detector|self\.detector)\._[a-z]", code), name
