"""params.yaml by DVC's conventions: `dvc exp run -S` (DVC's own override code) changes exactly
the key it names, and the plan sees it there; no YAML anchors or aliases; stages read the
active profile's blocks only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from nfbench.pipeline.plan import expand_runs, load_params
from nfbench.pipeline.spec import papers, profile_names

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
