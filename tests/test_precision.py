"""Determinism and precision settings (nfbench.precision) and what a record says about the
machine (experiment.environment): flags applied both ways, bf16 confined to the coupling
subnets, the GPU of the run named, no import or process per run."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from nfbench import precision
from nfbench.errors import UserError
from nfbench.methods import list_methods, create_method, method_class


def test_every_method_has_both_settings_with_fp32_defaults():
    for name in list_methods():
        fields = {f.name: f for f in dataclasses.fields(method_class(name).Config)}
        assert fields["deterministic"].default is False, name
        assert fields["precision"].default == "fp32", name
        detector = create_method(name, precision="bf16", deterministic=True)
        assert (detector.config.precision, detector.config.deterministic) == ("bf16", True)
        with pytest.raises(UserError, match="precision must be one of fp32, tf32, bf16"):
            create_method(name, precision="fp16")


def test_settings_are_part_of_the_resolved_config():
    from types import SimpleNamespace

    from nfbench.pipeline.experiment import recorded_config
    from nfbench.pipeline.identity import resolved_config

    config = recorded_config(create_method("csflow"))
    assert config["precision"] == "fp32" and config["deterministic"] is False
    run = SimpleNamespace(method="patchflow", profile="smoke", settings={})
    default = resolved_config(run)
    run.settings = {"precision": "bf16"}
    assert resolved_config(run) == {**default, "precision": "bf16"}


@pytest.fixture
def restore_flags():
    saved = precision.current_settings()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    torch.use_deterministic_algorithms(saved["deterministic"])
    torch.backends.cudnn.deterministic = saved["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = saved["cudnn_benchmark"]
    torch.backends.cuda.matmul.allow_tf32 = saved["matmul_tf32"]
    torch.backends.cudnn.allow_tf32 = saved["cudnn_tf32"]
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def test_flags_are_applied_both_ways(restore_flags, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    applied = precision.apply_run_settings(create_method("gaussian", deterministic=True,
                                                         precision="tf32").config)
    assert applied["cublas_workspace_config"] == ":4096:8"
    assert precision.current_settings() == {
        "deterministic": True, "cudnn_deterministic": True, "cudnn_benchmark": False,
        "matmul_tf32": True, "cudnn_tf32": True}
    # the next run of the same worker, with the defaults, gets TF32 and determinism off again
    precision.apply_run_settings(create_method("gaussian").config)
    assert precision.current_settings() == {
        "deterministic": False, "cudnn_deterministic": False, "cudnn_benchmark": False,
        "matmul_tf32": False, "cudnn_tf32": False}


def test_run_experiment_applies_the_run_settings(monkeypatch, tiny_demo):
    from nfbench.pipeline import experiment

    seen = []

    def stop(config):
        seen.append((config.deterministic, config.precision))
        raise RuntimeError("stop here")

    monkeypatch.setattr(experiment, "apply_run_settings", stop)
    with pytest.raises(RuntimeError, match="stop here"):
        experiment.run_experiment("gaussian", "demo", "brick", root=tiny_demo, profile="smoke",
                                  overrides={"precision": "bf16", "deterministic": True})
    assert seen == [(True, "bf16")]


class _Dtypes:
    """Forward hooks recording the output dtype of every module of a class."""

    def __init__(self, model, kind):
        self.seen = []
        for module in model.modules():
            if isinstance(module, kind):
                module.register_forward_hook(self.record)

    def record(self, module, args, out):
        self.seen += [t.dtype for t in (out if isinstance(out, (list, tuple)) else [out])]


def test_bf16_autocasts_the_csflow_subnets_only():
    from nfbench.methods.csflow.config import CSFlowConfig
    from nfbench.methods.csflow.flow import nll_loss
    from nfbench.methods.csflow.torch_model import CSFlowModel

    shapes = [(8, 8, 8), (8, 4, 4), (8, 2, 2)]
    torch.manual_seed(0)
    maps = [torch.randn(2, *s) for s in shapes]
    cfg = dict(n_blocks=2, hidden_channels=8, precision="bf16")
    model = CSFlowModel(CSFlowConfig(**cfg), shapes)
    convs = _Dtypes(model, torch.nn.Conv2d)
    subnets = precision.subnets(model)
    assert len(subnets) == 4  # s1 and s2 of two coupling blocks
    outputs = _Dtypes(model, type(subnets[0]))
    z, log_jac = model.latents(maps)
    loss = nll_loss(z, log_jac)
    assert convs.seen and set(convs.seen) == {torch.bfloat16}  # inside the subnets
    assert outputs.seen and all(d == torch.float32 for d in outputs.seen)  # handed back fp32
    assert log_jac.dtype == loss.dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in z)
    assert not torch.is_autocast_enabled("cpu")  # autocast left after the forward
    # fp32: no hook, the same numbers as a model built without the precision module
    plain = CSFlowModel(CSFlowConfig(**{**cfg, "precision": "fp32"}), shapes)
    assert not any(m._forward_hooks for m in plain.modules())


def test_bf16_autocasts_the_cnf_subnets_and_keeps_the_likelihood_fp32():
    from nfbench.methods.cnf.config import CNFSettings
    from nfbench.methods.cnf.flows import build_flows, log_likelihood, nf_loss

    flows = build_flows([8], CNFSettings(n_blocks=2, condition_dim=4, precision="bf16"), seed=0)
    linears = _Dtypes(flows, torch.nn.Linear)
    x, cond = torch.randn(5, 8), torch.randn(5, 4)
    z, log_jac = flows[0](x, c=[cond])
    loss = nf_loss(log_likelihood(z, log_jac), 8)
    assert linears.seen and set(linears.seen) == {torch.bfloat16}
    assert z.dtype == log_jac.dtype == loss.dtype == torch.float32
    loss.backward()  # gradients flow through the casts
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in flows.parameters())


def test_autocast_is_left_when_a_subnet_raises():
    from nfbench.methods.cnf.config import CNFSettings
    from nfbench.methods.cnf.flows import build_flows

    flows = build_flows([8], CNFSettings(n_blocks=1, condition_dim=4, precision="bf16"), seed=0)
    with pytest.raises(RuntimeError):
        flows[0](torch.randn(5, 8), c=[torch.randn(5, 3)])  # wrong condition width
    assert not torch.is_autocast_enabled("cpu")


# --------------------------------------------------------------------------------------------
# environment(): the run's GPU, no import, no process per run


def test_environment_starts_no_process_after_the_first_call(monkeypatch):
    import subprocess

    from nfbench.pipeline import experiment

    experiment.git_commit.cache_clear()
    first = experiment.environment("cpu")

    def refuse(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    second = experiment.environment("cpu")
    assert second["git_commit"] == first["git_commit"] and second["gpu"] is None
    from importlib.metadata import version

    assert second["timm"] == version("timm")


def test_environment_names_the_gpu_of_the_run(monkeypatch):
    from nfbench.pipeline import experiment

    names = {0: "GPU zero", 3: "GPU three"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: names[index])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert experiment.environment("cuda:3")["gpu"] == "GPU three"
    assert experiment.environment(torch.device("cuda", 0))["gpu"] == "GPU zero"
    assert experiment.environment("cuda")["gpu"] == "GPU three"  # the current device
    assert experiment.environment("cpu")["gpu"] is None


def test_environment_does_not_import_timm():
    import subprocess
    import sys

    code = ("import sys; from nfbench.pipeline.experiment import environment; environment('cpu');"
            "print('timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ}, check=True).stdout.strip()
    assert out == "False"


def test_deterministic_bilinear_matches_interpolate():
    import torch.nn.functional as F

    torch.manual_seed(0)
    for (h, w), size in [((3, 4), (6, 8)), ((4, 5), (7, 9)), ((7, 6), (4, 3)), ((2, 2), (5, 5))]:
        x = torch.randn(2, 3, h, w, dtype=torch.float64)
        rows, cols = precision._bilinear_matrix(h, size[0], x), precision._bilinear_matrix(w, size[1], x)
        expected = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        assert torch.allclose(rows @ x @ cols.T, expected, atol=1e-12)
    # on the CPU (and without deterministic algorithms) it is F.interpolate itself
    x = torch.randn(1, 2, 3, 3, requires_grad=True)
    assert torch.equal(precision.resize_bilinear(x, (6, 6)),
                       F.interpolate(x, size=(6, 6), mode="bilinear", align_corners=False))
