"""The CLI outside the checkout, the folder dataset's settings, help with defaults and examples
(nfbench.use_cli, nfbench.paths.config_root, nfbench.pipeline.run_config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nfbench.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent


def _nfbench(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "nfbench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_run_and_run_config_work_outside_the_checkout(tiny_demo, tmp_path, isolated_cache):
    """From a folder with no params.yaml above it, the packaged default profile resolves the
    run; --print-config's file repeats it (same metrics), and the record has an identity."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "NFBENCH_DATA": str(tiny_demo.parent),
           "NFBENCH_CACHE": str(isolated_cache), "NFBENCH_QUIET": "1",
           "NFBENCH_ORIGINAL_PROTOCOL": "0", "OMP_NUM_THREADS": "1"}
    done = _nfbench(["run", "--method", "gaussian", "--dataset", "demo", "--category", "brick",
                     "--out", "r.json"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["profile"] == "demo" and record["config"]["backbone"] == "efficientnet_lite0"
    assert record["identity"]["digest"] and record["run_id"] == "run/gaussian/brick/seed0"
    config = _nfbench(["run", "--method", "gaussian", "--dataset", "demo", "--category",
                       "brick", "--print-config"], tmp_path, env)
    assert config.returncode == 0, config.stderr
    (tmp_path / "r.yaml").write_text(config.stdout)
    again = _nfbench(["run", "--config", "r.yaml", "--out", "r2.json"], tmp_path, env)
    assert again.returncode == 0, again.stderr
    repeated = json.loads((tmp_path / "r2.json").read_text())
    assert repeated["metrics"] == record["metrics"]
    assert repeated["identity"]["digest"] == record["identity"]["digest"]


def test_run_without_out_writes_where_results_reads(monkeypatch, tmp_path):
    """The default --out is RESULTS/run/runs/<method>/<category>/seed<k>.json."""
    from nfbench.pipeline import results
    from nfbench.use_cli import run_of

    args = build_parser().parse_args(["run", "--method", "gaussian", "--dataset", "demo",
                                      "--category", "brick"])
    args.profile, args.seed = "demo", 0
    run = run_of(args, "brick", {})
    path = tmp_path / run.record_path
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"method": "gaussian", "paper": "run", "variant": "default",
                                "category": "brick", "seed": 0, "run_id": run.run_id,
                                "metrics": {"image_auroc": 1.0}, "config": {}}))
    assert results.record_paths(tmp_path) == [path]
    assert results.load(tmp_path)["run_id"].tolist() == ["run/gaussian/brick/seed0"]


def _printed_config(capsys, *args) -> dict:
    assert main(["run", *args, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_folder_dataset_takes_the_profile_settings_not_the_papers(capsys, tiny_demo):
    demo = _printed_config(capsys, "--method", "csflow", "--dataset", "demo",
                           "--category", "brick")
    folder = _printed_config(capsys, "--method", "csflow", "--dataset", "folder", "--root",
                             str(tiny_demo), "--category", "brick")
    assert folder["settings"] == demo["settings"]  # the demo profile's CS-Flow, not 768 px
    assert folder["settings"]["input_size"] != 768
    assert Path(folder["root"]).is_absolute()  # the file works from any folder
    paper = _printed_config(capsys, "--method", "csflow", "--dataset", "folder", "--root",
                            str(tiny_demo), "--category", "brick", "--profile", "paper")
    assert paper["settings"]["input_size"] == 768  # asked for: the paper's settings


def test_print_config_names_one_variant(capsys):
    assert main(["run", "--method", "csflow", "--dataset", "demo", "--category", "brick",
                 "--print-config"]) == 0
    text = capsys.readouterr().out
    body = yaml.safe_load(text)
    assert f"(variant {body['variant']}," in text.splitlines()[1]


def _subcommands(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from _subcommands(child, (*path, name))


def test_every_subcommand_help_shows_defaults_and_examples():
    parser = build_parser()
    for path, child in _subcommands(parser):
        text = child.format_help()
        assert "examples:" in text, " ".join(path)
    helps = {" ".join(p): c.format_help() for p, c in _subcommands(parser)}
    assert "(default: results)" in helps["bench"] and "(default: results)" in helps["results"]
    assert "random seed" in helps["decide"] and "(default: 0)" in helps["decide"]
    assert "baseline file" in helps["check"]


def test_version(capsys):
    import nfbench

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == \
        f"nfbench {nfbench.__version__}"


def test_data_download_help_lists_every_downloadable_dataset():
    from nfbench.datasets import DATASETS

    text = dict((" ".join(p), c) for p, c in _subcommands(build_parser()))[
        "data download"].format_help()
    for name in DATASETS:
        if name != "folder":
            assert name in text, name


def test_a_missing_dataset_error_fits_a_command_without_root():
    from types import SimpleNamespace

    from nfbench.use_cli import for_command

    message = ("no MVTec AD at datasets/mvtec_ad: run 'nfbench data download mvtec_ad' or "
               "pass --root")
    assert for_command(message, SimpleNamespace(root=None)) == message
    assert "NFBENCH_DATA" in for_command(message, SimpleNamespace())
    assert "--root" not in for_command(message, SimpleNamespace())


def test_export_defaults_in_the_parser_are_the_exporters():
    from nfbench import export, use_cli

    assert (use_cli.FORMATS, use_cli.ATOL, use_cli.RTOL) == \
        (export.FORMATS, export.ATOL, export.RTOL)
