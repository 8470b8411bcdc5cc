"""params.yaml by DVC's conventions: `dvc exp run -S` (DVC's own override code) changes exactly
the key it names, and the plan sees it there; no YAML anchors or aliases; stages read the
active profile's blocks only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from nfbench.pipeline.plan import expand_runs, load_params
from nfbench.pipeline.params import profile_names
from nfbench.pipeline.spec import papers

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def at_repo_top(monkeypatch):
    monkeypatch.chdir(ROOT)


def _overridden(tmp_path: Path, overrides: list[str]) -> dict:
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` calls (dvc's hydra-core)

    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    apply_overrides(path, overrides)
    return load_params(path)


def _by_variant(runs) -> dict[str, list]:
    out: dict[str, list] = {}
    for run in runs:
        out.setdefault(run.variant, []).append(run)
    return out


def test_an_override_reaches_exactly_the_runs_of_its_key(tmp_path):
    base = load_params()
    params = _overridden(tmp_path, ["clscnf.demo.datasets.mvtec_ad.settings.fe_lr=1e-4",
                                    "csflow.demo.settings.epochs=3",
                                    "+patchflow.paper.settings.hidden=64"])
    # CLS-CNFs: the mvtec_ad role changed, btad (which had the same settings) not
    before, after = (_by_variant(expand_runs("clscnf", "demo", p)) for p in (base, params))
    for variant, runs in after.items():
        role = next(r for r in runs).settings
        old = next(r for r in before[variant]).settings
        if variant in ("fe_reg", "fe_cls", "cls", "nsfe", "full", "full_inductive",
                       "full_w_synthetic"):  # role mvtec_ad
            assert role["fe_lr"] == 1e-4 and {**role, "fe_lr": old["fe_lr"]} == old
        else:  # btad, mvtec_ad_cnf, btad_cnf roles
            assert role == old, variant
    assert all(r.settings["fe_lr"] == 3.0e-3 for r in after["full_btad"])
    # CS-Flow: every demo run but the Gaussian baseline (backbone and input size only)
    for run in expand_runs("csflow", "demo", params):
        assert run.settings.get("epochs") == (None if run.method == "gaussian" else 3)
    assert all(r.settings.get("epochs") != 3 for r in expand_runs("csflow", "smoke", params))
    # PatchFlow: the paper profile only
    for run in expand_runs("patchflow", "paper", params):
        assert run.settings.get("hidden") == (None if run.method == "gaussian" else 64)
    assert [r.settings for r in expand_runs("patchflow", "demo", params)] == \
        [r.settings for r in expand_runs("patchflow", "demo", base)]


def test_params_yaml_has_no_anchors_or_aliases():
    events = yaml.parse((ROOT / "params.yaml").read_text())
    anchored = [e for e in events if getattr(e, "anchor", None)]
    aliases = [e for e in events if isinstance(e, yaml.AliasEvent)]
    assert not anchored and not aliases


def test_profiles_agree_across_papers_and_stages_read_only_the_active_one():
    params = load_params()
    names = profile_names(params)
    assert names == ("demo", "paper", "smoke")
    for paper in papers():
        assert set(params[paper]) == set(names)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        for key in stage.get("params", []):
            top = key.split(".")[0]
            if top in (*papers(), "peers", "profiles"):  # a block of one profile, not all
                assert "." in key and key.split(".")[1] in ("${profile}", "paper"), (name, key)
        for dep in stage.get("deps", []):
            assert "profiles.py" not in dep


def test_profile_names_refuses_blocks_that_disagree():
    from nfbench.errors import UserError

    params = load_params()
    del params["patchflow"]["smoke"]
    with pytest.raises(UserError, match="patchflow: its profiles must be those of `profiles:`"
                                        r".*missing smoke"):
        profile_names(params)


_TRACE = """
import atexit, pathlib, sys
def _dump():
    import nfbench
    top = pathlib.Path(nfbench.__file__).resolve().parent.parent
    files = {str(pathlib.Path(m.__file__).resolve().relative_to(top)) for m in list(sys.modules.values())
             if getattr(m, "__file__", None) and pathlib.Path(m.__file__).resolve().is_relative_to(top / "nfbench")}
    print("IMPORTED", *sorted(files))
atexit.register(_dump)
from nfbench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _stage_deps() -> dict[str, list[str]]:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {stage.addressing: [str(dep.def_path) for dep in stage.deps]
                for stage in repo.index.stages}


def test_run_stages_depend_on_every_module_a_run_imports(tiny_demo, tmp_path):
    """A real bench run (the Gaussian baseline on the tiny demo set: it loads the method
    registry, the datasets, the pipeline) imports only code its stage depends on, so a change
    to any of it reruns the stage."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NFBENCH_DATA": str(tiny_demo.parent), "NFBENCH_QUIET": "1"}
    done = subprocess.run([sys.executable, "-c", _TRACE, "bench", "--paper", "csflow",
                           "--variant", "baseline_gaussian", "--profile", "smoke", "--results",
                           str(tmp_path / "results"), "--quiet"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = next(line for line in done.stdout.splitlines()
                    if line.startswith("IMPORTED")).split()[1:]
    from nfbench.pipeline.stage_code import in_set

    assert "nfbench/methods/csflow/detector.py" in imported  # the registry loads every method
    stages = {name: deps for name, deps in _stage_deps().items() if name == "runs"}
    assert sorted(stages) == ["runs"]
    for name, deps in stages.items():
        # code deps are the `code` stage's digest files, one per stage kind
        kinds = [Path(d).stem for d in deps if d.startswith("results/code/")]
        assert kinds == ["runs"], name
        missing = [f for f in imported if not in_set(f, "runs")]
        assert not missing, f"{name} does not depend on {missing}"


def test_exactly_one_profile_is_the_papers_setup():
    from nfbench.errors import UserError
    from nfbench.pipeline.params import reference_profile

    params = load_params()
    assert reference_profile(params) == "paper"
    params["profiles"]["demo"]["reference"] = True
    with pytest.raises(UserError, match="exactly one profile must say `reference: true`"):
        reference_profile(params)
    del params["profiles"]["demo"]["reference"], params["profiles"]["paper"]["reference"]
    with pytest.raises(UserError, match="found 0"):
        reference_profile(params)


def _resolved_stages() -> dict:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {stage.addressing: stage for stage in repo.index.stages}


def test_one_runs_stage_for_every_paper_reading_only_their_blocks():
    """One bench process runs every paper (one pool packs all their runs onto the cores), its
    records in git (cache: false) and kept across reruns (persist); it reads the papers'
    blocks of the active profile only, and so do the one tables and one profile stage."""
    stages = _resolved_stages()
    params = load_params()
    profile = params["profile"]
    stage = stages["runs"]
    assert stage.cmd == "nfbench bench --quiet"
    assert [str(out.def_path) for out in stage.outs] == [f"results/{p}/runs" for p in papers()]
    assert all(out.persist and not out.use_cache for out in stage.outs)
    keys = [k for dep in stage.params for k in dep.params]
    assert keys == ["profile", f"profiles.{profile}", *(f"{p}.{profile}" for p in papers())]
    for kind in ("tables", "profile"):
        assert stages[kind].cmd == f"nfbench {kind}"
        keys = [k for dep in stages[kind].params for k in dep.params]
        assert {k.split(".")[0] for k in keys if "." in k and not k.startswith("profiles")} \
            == set(papers()) and all(k.endswith(profile) or k.startswith("profiles")
                                     for k in keys if "." in k)
    assert not any("@" in name for name in stages)
    assert all(not out.use_cache for stage in stages.values() for out in stage.outs
               if str(out.def_path) != "datasets")


def test_run_records_are_tracked_by_git_and_their_figure_material_is_not():
    import subprocess

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", "--no-index", path],
                              cwd=ROOT).returncode == 0

    for paper in papers():
        assert not ignored(f"results/{paper}/runs/full/brick/seed0.json")
        assert ignored(f"results/{paper}/runs/full/brick/seed0.npz")
    assert not ignored("results/peers/csflow/shipped/brick/seed0.json")


def test_params_yaml_is_in_the_formatting_dvc_writes(tmp_path):
    """`dvc exp run -S` re-dumps params.yaml (ruamel, round-trip): the committed file is already
    in that formatting, so an experiment's diff is the one key it sets (comments kept)."""
    from dvc.utils.hydra import apply_overrides

    committed = (ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(committed)
    apply_overrides(path, ["profile=demo"])  # a no-op override: only DVC's dump
    assert path.read_text() == committed
    apply_overrides(path, ["csflow.demo.settings.epochs=3"])
    changed = [(a, b) for a, b in zip(committed.splitlines(), path.read_text().splitlines())
               if a != b]
    assert len(changed) == 1 and len(path.read_text().splitlines()) == len(committed.splitlines())
    assert changed[0][0].replace("epochs: 6", "epochs: 3") == changed[0][1]
