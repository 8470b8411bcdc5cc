"""The README's commands work as written in the default profile: every one parses, every
bench line selects runs, and those that finish in seconds run (the long ones, training and
downloads, are covered by their own tests: test_use_cli, test_artifacts, test_download)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from nfbench.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """Every ``nfbench ...`` line of the README's bash blocks (continuations joined, comments
    dropped); inline mentions in the prose name commands or flags, they are not commands."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("nfbench "):
                commands.append(line)
    return list(dict.fromkeys(commands))


def _argv(command: str) -> tuple[list[str], str | None]:
    """(arguments after ``nfbench``, the file of a ``> FILE`` redirection)."""
    words = shlex.split(command)[1:]
    if ">" in words:
        at = words.index(">")
        return words[:at], words[at + 1]
    return words, None


def test_readme_has_commands():
    assert len(readme_commands()) >= 20


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses_and_every_bench_line_selects_runs(command, monkeypatch):
    monkeypatch.chdir(REPO)
    argv, _ = _argv(command)
    args = build_parser().parse_args(argv)  # an unknown flag exits here
    if args.command == "bench":
        from nfbench.pipeline.plan import active_profile, bench_runs, load_params

        params = load_params()
        runs = bench_runs(args.paper, active_profile(params, args.profile), params,
                          variants=args.variant, tables=args.table, categories=args.category,
                          seeds=args.seed, shard=args.shard)
        assert runs, command


# `nfbench plan --profile paper` counts every network's FLOPs on first use (minutes on a CPU,
# cached afterwards): tests/test_estimate.py runs it with counted-once stand-ins instead
FAST = ["nfbench methods", "nfbench methods --settings csflow",
        "nfbench run --method csflow --dataset demo --category brick --print-config > run.yaml"]


@pytest.mark.parametrize("command", FAST)
def test_readme_commands_that_finish_in_seconds_run(command, monkeypatch, capsys, tmp_path):
    assert command in readme_commands()
    monkeypatch.chdir(REPO)
    argv, redirect = _argv(command)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.strip()
    if redirect:  # and the file it writes is read back by the next README line
        (tmp_path / redirect).write_text(out)
        assert main(["run", "--config", str(tmp_path / redirect), "--set", "epochs=60",
                     "hidden_channels=256", "--print-config"]) == 0
        settings = yaml.safe_load(capsys.readouterr().out)["settings"]
        assert settings["epochs"] == 60 and settings["hidden_channels"] == 256
