"""dvc.yaml is generated from the paper specs (``nfbench dvc-yaml``): the committed file is the
generated one, every paper of ``benchmarks/`` gets its stages, and ``--check`` says when the
file is stale."""
from pathlib import Path

import yaml

from nfbench.cli import main
from nfbench.pipeline import dvc_yaml
from nfbench.pipeline.spec import papers

ROOT = Path(__file__).resolve().parents[1]


def test_committed_dvc_yaml_is_the_generated_one(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert (ROOT / "dvc.yaml").read_text(encoding="utf-8") == dvc_yaml.render(), \
        "dvc.yaml is stale: run `nfbench dvc-yaml`"


def test_the_papers_come_from_the_specs():
    one = yaml.safe_load(dvc_yaml.render(("csflow",)))
    assert list(one["stages"]["runs"]["outs"][0]) == ["results/csflow/runs"]
    assert "benchmarks/patchflow.yaml" not in one["stages"]["reports"]["deps"]
    every = yaml.safe_load(dvc_yaml.render())
    for paper in papers():
        assert f"benchmarks/{paper}.yaml" in every["stages"]["runs"]["deps"]
        assert {f"results/{paper}/runs"} in [set(out) for out in every["stages"]["runs"]["outs"]]
        assert {f"results/{paper}/profile.json"} in [set(out) for out in
                                                     every["stages"]["profile"]["outs"]]
        assert {f"results/{paper}/tables"} in [set(out) for out in
                                               every["stages"]["tables"]["outs"]]
        assert f"results/{paper}/runs" in every["stages"]["check"]["deps"]
        assert f"benchmarks/{paper}.yaml" in every["stages"]["peers"]["deps"]
        assert f"{paper}.${{profile}}" in every["stages"]["reports"]["params"]
        assert any(f"results/{paper}/plots/loss" in entry for entry in every["plots"])


def test_every_stage_depends_on_its_code_digest_file_not_on_source_folders():
    from nfbench.pipeline.stage_code import CODE_SETS, digest_file

    stages = yaml.safe_load(dvc_yaml.render())["stages"]
    assert stages["code"]["deps"] == ["nfbench"]
    kinds = {"data": "runs", "runs": "runs", "tables": "runs", "check": "runs",
             "profile": "profile", "peers": "peers", "reports": "reports"}
    assert set(kinds.values()) == set(CODE_SETS)
    for name, kind in kinds.items():
        deps = stages[name].get("do", stages[name])["deps"]
        assert digest_file(kind) in deps, name
        assert not [d for d in deps if d.startswith("nfbench")], name  # no source deps


def test_check_flags_a_stale_file_and_the_command_rewrites_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert main(["dvc-yaml", "--check"]) == 1
    assert "run `nfbench dvc-yaml`" in capsys.readouterr().err
    assert main(["dvc-yaml"]) == 0
    assert (tmp_path / "dvc.yaml").read_text() == dvc_yaml.render()
    assert main(["dvc-yaml", "--check"]) == 0
