"""Run identity and the trained-stage cache where users run them: independent of the machine,
of docstrings and of unrelated code; seeing every content change of the data; stages trained
once per (stage, category, seed) whatever the protocol hook, by one process at a time; shards
that keep a stage's runs together."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nfbench.pipeline.plan import Run

REPO = Path(__file__).resolve().parents[1]


def _run(root, **settings):
    return Run(paper="demo", method="gaussian", variant="v", dataset="demo", category="brick",
               seed=0, profile="demo", settings={"input_size": 64, **settings}, root=str(root))


# -- 1. the device is not part of a run's identity ---------------------------------------------
def test_identity_is_the_same_on_every_machine_and_device(tiny_demo, monkeypatch):
    """auto / cpu / cuda / cuda:3 give one identity, with or without CUDA on the machine that
    computes it (a GPU node's record is current to a CPU head node)."""
    from nfbench.pipeline.identity import run_identity

    cpu_side = run_identity(_run(tiny_demo, device="auto"))["digest"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    digests = {run_identity(_run(tiny_demo, device=d))["digest"]
               for d in ("auto", "cpu", "cuda", "cuda:3")}
    assert digests == {cpu_side}


# -- 2./3. the import-following code digest --------------------------------------------------
def _digests():
    from nfbench.methods.cnf.stage import stage_code
    from nfbench.pipeline.identity import code_version

    return {"csflow": code_version("csflow"), "patchflow": code_version("patchflow"),
            "cflow": code_version("cflow"),
            "cnf stage": stage_code("nfbench.methods.cnf.stage"),
            "fe stage": stage_code("nfbench.methods.clscnf.finetune")}


def test_docstring_and_comment_edits_keep_the_digest(edited_source):
    before = _digests()
    edited_source("methods/base.py", lambda s: s.replace('"""', '"""Edited. ', 1) + "\n# note\n")
    edited_source("backbones.py", lambda s: "\n\n" + s.replace("\n", "  # c\n", 3))
    assert _digests() == before


@pytest.mark.parametrize("module", ["methods/base.py", "methods/cnf/encoder.py", "backbones.py"])
def test_code_edit_in_an_imported_module_changes_identity_and_stage_keys(edited_source, module):
    before = _digests()
    edited_source(module, lambda s: s + "\nEDITED = 1\n")
    after = _digests()
    assert after["cnf stage"] != before["cnf stage"] and after["fe stage"] != before["fe stage"]
    assert after["cflow"] != before["cflow"]
    if module != "methods/cnf/encoder.py":  # CS-Flow and PatchFlow do not import the CNF code
        assert after["csflow"] != before["csflow"]


def test_edit_in_a_module_not_imported_keeps_the_digest(edited_source):
    before = _digests()
    edited_source("methods/csflow/detector.py", lambda s: s + "\nEDITED = 1\n")
    edited_source("pipeline/tables.py", lambda s: s + "\nEDITED = 1\n")
    after = _digests()
    assert after["csflow"] != before["csflow"]  # its own package
    assert {k: v for k, v in after.items() if k != "csflow"} == \
        {k: v for k, v in before.items() if k != "csflow"}


def test_the_pipelines_code_digests_ignore_docstrings_and_see_code_and_data(edited_source,
                                                                           tmp_path):
    """dvc.yaml's stages depend on the ``code`` stage's digest files, not on the source
    folders: a docstring edit must leave them byte-identical (nothing else reruns), a code
    edit must change exactly the files of the stage kinds that run it."""
    from nfbench.pipeline import stage_code

    def digests() -> dict[str, str]:
        stage_code.main([str(tmp_path)])
        return {p.stem: p.read_text() for p in sorted(tmp_path.glob("*.json"))}

    before = digests()
    assert set(before) == set(stage_code.CODE_SETS)
    edited_source("report/figures.py", lambda s: s.replace('"""', '"""Edited. ', 1) + "# c\n")
    assert digests() == before
    edited_source("report/figures.py", lambda s: s + "\nEDITED = 1\n")
    after = digests()
    assert {k for k in before if after[k] != before[k]} == {"reports"}
    edited_source("metrics/official.py", lambda s: s + "\nEDITED = 1\n")
    assert all(digests()[k] != after[k] for k in stage_code.CODE_SETS)  # every stage runs it
    runs = json.loads(before["runs"])
    assert "nfbench/peers/deviations.yaml" in json.loads(before["peers"])  # data files count
    assert not any(k.startswith("nfbench/defaults/") for k in runs)  # params.yaml: not code


def test_stage_key_follows_an_edit_of_what_the_stage_imports(tiny_demo, edited_source):
    """The FE stage's key (as fit_fe computes it) changes with methods/base.py."""
    from nfbench.datasets import image_sets
    from nfbench.methods.clscnf.config import CLSCNFConfig
    from nfbench.methods.clscnf.finetune import fe_stage_key
    from nfbench.pipeline.experiment import category_table

    train = image_sets(category_table("demo", tiny_demo, "brick"), "brick", 64)[0]
    key = fe_stage_key(CLSCNFConfig(), "brick", train, 0)
    edited_source("methods/base.py", lambda s: s + "\nEDITED = 1\n")
    assert fe_stage_key(CLSCNFConfig(), "brick", train, 0) != key


# -- 7. identity sees content changes of every file, without rereading unchanged ones -------
def test_mask_redrawn_with_the_same_size_and_mtime_changes_identity(tiny_demo, tmp_path,
                                                                    monkeypatch):
    import shutil

    import nfbench.datasets.content_hash as ch
    from nfbench.pipeline.identity import run_identity

    root = tmp_path / "demo"
    shutil.copytree(tiny_demo, root)
    before = run_identity(_run(root))["digest"]
    mask = sorted((root / "brick" / "ground_truth").rglob("*.png"))[0]
    data, stat = bytearray(mask.read_bytes()), mask.stat()
    data[len(data) // 2] ^= 0xFF  # redrawn: same byte size ...
    mask.write_bytes(bytes(data))
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the old mtime restored
    assert mask.stat().st_size == stat.st_size
    assert run_identity(_run(root))["digest"] != before

    reads = []
    monkeypatch.setattr(ch, "_hash_contents", lambda path: reads.append(path))
    ch._TABLES.clear()  # a fresh process: only the on-disk cache
    run_identity(_run(root))
    assert reads == []  # unchanged files: stat only, no content read


# -- 4. a stage trained once, whatever the protocol hook and the model's size -----------------
def _tiny_stage():
    from nfbench.methods.cflow.config import CFlowConfig

    settings = CFlowConfig(n_blocks=1, meta_epochs=2, sub_epochs=1, batch_size=4,
                           fiber_batch=16, condition_dim=4)
    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(4, 8, 3, 3, generator=generator)]
    train = SimpleNamespace(fingerprint="tiny-train-set")
    return features, settings, train


def test_stage_trained_without_the_hook_is_replayed_by_a_run_with_it(monkeypatch):
    import nfbench.methods.cnf.stage as stage

    features, settings, train = _tiny_stage()
    trained, seen = [], []
    real = stage.train_flows

    def counting(*args, **kwargs):
        trained.append(1)
        return real(*args, **kwargs)

    def hook(meta, flows):
        seen.append((meta, [p.detach().clone() for p in flows.parameters()]))

    monkeypatch.setattr(stage, "train_flows", counting)
    cache = stage.StageCache(True)
    source = {"test": "no hook first"}
    first, history = stage.fit_cnf_stage(features, source, settings, train, 0,
                                         torch.device("cpu"), cache, "t", keep_snapshots=True)
    with_hook, replayed_history = stage.fit_cnf_stage(features, source, settings, train, 0,
                                                      torch.device("cpu"), cache, "t",
                                                      on_meta_epoch=hook)
    assert replayed_history == history  # the loss curve travels with the stage
    assert len(trained) == 1  # reused, not trained again
    assert [m for m, _ in seen] == [1, 2]
    for a, b in zip(first.parameters(), with_hook.parameters()):
        assert torch.equal(a, b)

    # the replayed snapshots are the weights the hook sees while training
    live = []
    stage.fit_cnf_stage(features, {"test": "hook while training"}, settings, train, 0,
                        torch.device("cpu"), cache, "t",
                        on_meta_epoch=lambda m, f: live.append(
                            [p.detach().clone() for p in f.parameters()]))
    for (_, replayed), trained_weights in zip(seen, live):
        assert all(torch.equal(a, b) for a, b in zip(replayed, trained_weights))


def test_snapshots_are_files_beside_the_entry_whatever_their_size(monkeypatch):
    """No size limit: each snapshot is an entry of its own on disk, not held in memory."""
    import nfbench.methods.cnf.stage as stage

    features, settings, train = _tiny_stage()
    cache = stage.StageCache(True)
    stage.fit_cnf_stage(features, {"test": "size"}, settings, train, 0, torch.device("cpu"),
                        cache, "t", on_meta_epoch=lambda m, f: None)
    entries = sorted(stage.cache_root().glob("stages/cnf/*.snapshots/meta*.pt"))
    assert len(entries) >= settings.meta_epochs
    assert not hasattr(stage, "SNAPSHOT_LIMIT")


# -- 5. stages are claimed before training -----------------------------------------------------
def _holder(code: str) -> subprocess.Popen:
    script = ("import sys, time\nfrom nfbench.methods.cnf.stage import StageCache\n"
              "cache = StageCache(True)\nwith cache.claim('cnf', 'shared'):\n"
              "    print('held', flush=True)\n" + code)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               env=env, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_second_process_waits_for_the_first_then_loads_its_stage():
    from nfbench.methods.cnf.stage import StageCache

    holder = _holder("    time.sleep(1.5)\n"
                     "    cache.save('cnf', 'shared', {'w': __import__('torch').ones(2)})\n")
    cache = StageCache(True)
    with cache.claim("cnf", "shared"):  # waits until the holder has saved
        stored = cache.load("cnf", "shared")
    assert holder.wait(timeout=30) == 0
    assert stored is not None and torch.equal(stored["w"], torch.ones(2))


def test_a_killed_holder_does_not_block_the_stage():
    from nfbench.methods.cnf.stage import StageCache

    holder = _holder("    time.sleep(600)\n")
    acquired = threading.Event()

    def claim():
        with StageCache(True).claim("cnf", "shared"):
            acquired.set()

    thread = threading.Thread(target=claim, daemon=True)
    thread.start()
    assert not acquired.wait(0.5)  # held by the live holder
    holder.kill()
    holder.wait(timeout=30)
    assert acquired.wait(10)  # the OS released the dead holder's lock
    thread.join(5)


# -- 6. shards keep the runs that share a stage together -----------------------------------------
@pytest.mark.parametrize("count", [2, 3, 7, 16])
def test_shards_keep_stage_sharing_runs_together(count):
    from nfbench.pipeline.plan import expand_runs, load_params, select_runs, stage_group

    runs = expand_runs("clscnf", "paper", load_params())
    shards = [select_runs(runs, shard=(i, count)) for i in range(count)]
    ids = [r.run_id for shard in shards for r in shard]
    assert sorted(ids) == sorted(r.run_id for r in runs) and len(set(ids)) == len(ids)
    where = {r.run_id: i for i, shard in enumerate(shards) for r in shard}
    groups: dict = {}
    for run in runs:
        groups.setdefault(stage_group(run), []).append(where[run.run_id])
    assert all(len(set(s)) == 1 for s in groups.values())
    # e.g. CFlow-AD and its inductive variant share one trained flow: one shard
    pair = [r for r in runs if r.category == runs[0].category and r.seed == runs[0].seed
            and r.variant in ("cflow_ad", "cflow_ad_inductive")]
    assert len(pair) == 2 and where[pair[0].run_id] == where[pair[1].run_id]
    assert shards[1] == select_runs(list(reversed(runs)), shard=(1, count))  # stable
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= max(len(g) for g in groups.values())  # balanced


def test_identity_sees_the_dtd_textures_a_run_pastes(tiny_demo, tmp_path):
    from nfbench.pipeline.identity import run_identity

    texture = tmp_path / "dtd" / "images" / "banded" / "banded_0001.jpg"
    texture.parent.mkdir(parents=True)
    texture.write_bytes(b"texture one")
    run = dataclasses.replace(_run(tiny_demo, foreign_source="dtd", dtd_root=str(tmp_path / "dtd")),
                              method="clscnf")
    before = run_identity(run)["digest"]
    texture.write_bytes(b"texture two")  # same size, other content
    assert run_identity(run)["digest"] != before
