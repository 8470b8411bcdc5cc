"""The fast paths keep the numbers (issue 19 §2): training steps without host synchronisation,
permutations drawn up front from the same stream, loss curves in every record, no redundant
protocol work, and a diverging CS-Flow ending in one line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nfbench.datasets import image_sets, load_table
from nfbench.errors import TrainingDivergedError
from nfbench.methods import create_method, list_methods, method_class
from nfbench.methods.base import EpochLosses, adam, compiled_step, seed_everything
from nfbench.methods.cnf.config import CNFSettings
from nfbench.methods.cnf.training import _sub_epoch_permutations


# --------------------------------------------------------------------------- training steps

def test_epoch_losses_read_once_per_epoch_and_equal_the_per_step_mean(monkeypatch):
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    losses, expected = EpochLosses("toy"), []
    real_item = torch.Tensor.item

    def no_item(self):  # a host synchronisation inside a step would call this
        raise AssertionError("loss read inside an optimizer step")

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    for step in range(5):
        loss = (weight ** 2).sum() * (step + 1) / 3
        expected.append(real_item(loss))
        losses.step(optimizer, loss, f"step {step + 1}")
    monkeypatch.setattr(torch.Tensor, "item", real_item)
    assert losses.end_epoch() == float(np.mean(expected))
    assert math.isnan(losses.end_epoch())  # a new epoch starts empty


def test_epoch_losses_name_the_first_non_finite_step():
    weight = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    losses = EpochLosses("toy")
    for step, scale in enumerate([1.0, float("inf"), float("nan")]):
        losses.step(optimizer, (weight * scale).sum(), f"epoch 1, step {step + 1}")
    with pytest.raises(TrainingDivergedError, match=r"toy loss became inf at epoch 1, step 2"):
        losses.end_epoch()


def test_fused_adam_only_on_cuda(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.optim, "Adam", lambda params, **kw: seen.append(kw))
    adam([], torch.device("cpu"), lr=1e-3)
    adam([], torch.device("cuda", 1), lr=1e-3)
    assert seen == [{"lr": 1e-3}, {"lr": 1e-3, "fused": True}]


def test_compile_is_opt_in(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda f: ("compiled", f))
    step = lambda: None  # noqa: E731
    assert compiled_step(step, False) is step
    assert compiled_step(step, True) == ("compiled", step)
    assert CNFSettings().compile is False


@pytest.mark.parametrize("n, fraction", [(10, 1.0), (7, 0.25)])
def test_cnf_permutations_drawn_up_front_are_the_sequential_stream(n, fraction):
    """The stream the training loop drew one permutation at a time (order, then per batch
    and map) is the one drawn up front."""
    settings = CNFSettings(batch_size=4, fiber_fraction=fraction)
    features = [torch.zeros(n, 2, 3, 3), torch.zeros(n, 2, 2, 1)]
    order, perms = _sub_epoch_permutations(n, features, settings, torch.Generator().manual_seed(5),
                                           torch.device("cpu"))
    generator = torch.Generator().manual_seed(5)  # the loop before issue 19
    assert torch.equal(order, torch.randperm(n, generator=generator))
    for b, start in enumerate(range(0, n, settings.batch_size)):
        batch = len(range(start, min(start + settings.batch_size, n)))
        for layer, fmap in enumerate(features):
            perm = torch.randperm(batch * fmap.shape[2] * fmap.shape[3], generator=generator)
            if fraction < 1.0:
                perm = perm[:max(1, int(round(perm.numel() * fraction)))]
            assert torch.equal(perms[b][layer], perm)


# --------------------------------------------------------------------------- loss curves

def _smoke_fit(name, root, **extra):
    cls = method_class(name)
    seed_everything(0)
    detector = create_method(name, **{**getattr(cls, "smoke_settings", {}), **extra})
    table = load_table("demo", root)
    train, _ = image_sets(table, sorted(table["category"].unique())[0],
                          detector.config.input_size)
    seed_everything(0)
    return detector.fit(train.subset(range(8)))


def _epochs(detector) -> int:
    cfg = getattr(detector, "settings_", detector.config)
    if detector.name == "gaussian":
        return 0
    if detector.name in ("cflow", "clscnf") and getattr(cfg, "needs_nf", True):
        return cfg.meta_epochs
    return cfg.epochs


@pytest.mark.parametrize("name", list_methods())
def test_each_method_records_one_finite_loss_per_epoch(name, tiny_demo):
    detector = _smoke_fit(name, tiny_demo)
    info = detector.fit_info_
    losses = info["loss_per_epoch"]
    assert len(losses) == _epochs(detector) and all(math.isfinite(v) for v in losses)
    assert all(isinstance(v, float) for v in losses)
    if name == "gaussian":
        assert "none" in info["loss_epoch"]  # recorded as having no training loss


def test_cflow_calibrates_once_per_meta_epoch(tiny_demo, monkeypatch):
    from nfbench.methods.cnf.scoring import NFMap

    calls = []
    real = NFMap.calibrate
    monkeypatch.setattr(NFMap, "calibrate", lambda self, *a: calls.append(1) or real(self, *a))
    cls = method_class("cflow")
    seed_everything(0)
    detector = create_method("cflow", **cls.smoke_settings)
    table = load_table("demo", tiny_demo)
    train, _ = image_sets(table, "brick", detector.config.input_size)
    detector.fit(train.subset(range(8)), evaluate=lambda label: None)
    assert len(calls) == detector.config.meta_epochs  # not once more after the last one
    maxima = list(detector.nf_.maxima)
    calls.clear()
    seed_everything(0)
    detector.fit(train.subset(range(8)))
    assert len(calls) == 1 and detector.nf_.maxima == maxima


# --------------------------------------------------------------------------- CS-Flow

def test_csflow_protocol_selects_on_image_scores_without_pixel_maps():
    from nfbench.methods.csflow.protocol import CSFlowProtocol

    class Test:
        labels = [0, 1, 1]

    class Detector:
        def image_scores(self, test):
            return np.array([0.1, 0.5, 0.7])

        def score(self, test):
            raise AssertionError("pixel maps built for a selection on image AUROC")

    protocol = CSFlowProtocol(Detector(), None, {"brick": Test()}, 0)
    protocol._truth["brick"] = (np.array(Test.labels), np.zeros((3, 2, 2), bool))
    protocol.module = lambda: torch.nn.Linear(1, 1)
    point = protocol.point("epoch 1/4")
    assert point["image_auroc"] == 1.0


def test_csflow_divergence_is_one_line_naming_lr(tiny_demo, tmp_path, capsys):
    """The real path (no stubbed run): lr=1e6 makes the flow's scores non-finite; the run
    stops with one line naming lr, in the protocol's evaluation and in scoring alike."""
    from nfbench.cli import main

    out = tmp_path / "r.json"
    args = ["run", "--method", "csflow", "--dataset", "demo", "--root", str(tiny_demo),
            "--category", "brick", "--out", str(out), "--set", "lr=1e6"]
    for key, value in method_class("csflow").smoke_settings.items():
        args += ["--set", f"{key}={value}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.split("\r")[-1].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "lr" in lines[0] and "Traceback" not in err, err
    assert not out.exists()


# --------------------------------------------------------------------------- CLS-CNFs defects

def test_defects_from_the_worker_pool_equal_the_sequential_ones(tiny_demo):
    """Per-sample seeds make every batch independent: two worker processes with prefetch
    deliver exactly the batches the loop made one by one, in order."""
    from nfbench.methods import synthetic as S
    from nfbench.methods.clscnf.defect_batches import batch_seeds, defect_batches

    table = load_table("demo", tiny_demo)
    train, _ = image_sets(table, "brick", 64)
    images = train.load_images(range(4)).permute(0, 2, 3, 1).numpy().astype(np.float32)
    synth = S.DefectSynthesizer.for_images(images, "brick")
    order = np.random.default_rng([0, 1]).permutation(8)
    plan = [(0, order[:3]), (0, order[3:6]), (1, order[6:])]
    sequential = []  # what the fine-tuning loop made before the pool
    for regen_round, chosen in plan:
        x, target, _ = synth.batch(chosen % 4, [np.random.default_rng([9, 2, regen_round, int(s)])
                                                for s in chosen])
        sequential.append((x, target))
    assert [type(g) for g in batch_seeds(9, 0, [1])] == [np.random.Generator]
    pooled = list(defect_batches(synth, 4, 9, plan, workers=2))
    inline = list(defect_batches(synth, 4, 9, plan, workers=0))
    assert len(pooled) == len(inline) == len(sequential)
    for (x, t), (px, pt), (ix, it) in zip(sequential, pooled, inline):
        assert np.array_equal(x, px) and np.array_equal(t, pt)
        assert np.array_equal(x, ix) and np.array_equal(t, it)


def test_patchflow_validation_set_is_built_once_and_shared_by_variants(tiny_demo, monkeypatch):
    from nfbench.methods.patchflow import detector as module

    built = []
    real = module.PatchFlowDetector._make_validation_set
    monkeypatch.setattr(module, "_VALIDATION_SETS", {})
    monkeypatch.setattr(module.PatchFlowDetector, "_make_validation_set",
                        staticmethod(lambda *a: built.append(a) or real(*a)))
    table = load_table("demo", tiny_demo)
    train, _ = image_sets(table, "brick", 64)
    sets = []
    for settings in ({"hidden": 16}, {"hidden": 32, "adapter_training": "frozen"}):
        torch.manual_seed(4)
        sets.append(create_method("patchflow", **settings)._validation_set(train, [1, 3]))
    assert len(built) == 1 and sets[0] is sets[1]
    torch.manual_seed(5)  # another seed: another set
    other = create_method("patchflow")._validation_set(train, [1, 3])
    assert len(built) == 2 and not np.array_equal(other[1], sets[0][1])


def _train_flows_before_issue_19(flows, features, settings, generator):
    """The CNF loop as it was (a loss.item() per step, permutations drawn in the loop): the
    reference the fast loop must reproduce to the last bit on the CPU."""
    from nfbench.methods.cnf import training as T

    n = features[0].shape[0]
    encodings = [T.positional_encoding_2d(settings.condition_dim, f.shape[2], f.shape[3])
                 for f in features]
    optimizer = torch.optim.Adam(flows.parameters(), lr=settings.lr)
    n_batches = math.ceil(n / settings.batch_size)
    history = []
    flows.train()
    for meta in range(settings.meta_epochs):
        losses = []
        for sub in range(settings.sub_epochs):
            order = torch.randperm(n, generator=generator)
            for b in range(n_batches):
                for group in optimizer.param_groups:
                    group["lr"] = T.learning_rate(settings, meta,
                                                  (sub * n_batches + b) / (settings.sub_epochs * n_batches))
                index = order[b * settings.batch_size:(b + 1) * settings.batch_size]
                for layer, (flow, fmap) in enumerate(zip(flows, features)):
                    y, cond = T.fibers(fmap[index], encodings[layer])
                    perm = torch.randperm(y.shape[0], generator=generator)
                    if settings.fiber_fraction < 1.0:
                        perm = perm[:max(1, int(round(y.shape[0] * settings.fiber_fraction)))]
                    for start in range(0, perm.numel(), settings.fiber_batch):
                        idx = perm[start:start + settings.fiber_batch]
                        z, log_jac = flow(y[idx], c=[cond[idx]])
                        loss = T.nf_loss(T.log_likelihood(z, log_jac), y.shape[1])
                        losses.append(loss.item())
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
        history.append(float(np.mean(losses)))
    flows.eval()
    return history


def test_cnf_training_is_bit_identical_to_the_loop_before():
    from nfbench.methods.cnf import training as T
    from nfbench.methods.cnf.flows import build_flows

    settings = CNFSettings(n_blocks=2, condition_dim=4, meta_epochs=2, sub_epochs=2,
                           warm_epochs=1, lr=2e-3, batch_size=5, fiber_batch=24,
                           fiber_fraction=0.75)
    torch.manual_seed(0)
    features = [torch.randn(7, 6, 4, 4) + 1.0, torch.randn(7, 3, 2, 2)]
    old, new = (build_flows([6, 3], settings, seed=0) for _ in range(2))
    expected = _train_flows_before_issue_19(old, features, settings,
                                            torch.Generator().manual_seed(1))
    history = T.train_flows(new, features, settings, torch.Generator().manual_seed(1),
                            torch.device("cpu"), progress=False)
    assert history == expected
    for a, b in zip(old.state_dict().values(), new.state_dict().values()):
        assert torch.equal(a, b)
