"""The code each pipeline stage runs, as digests: what ``dvc.yaml``'s stages depend on.

A stage that listed its source folders as DVC deps reran on any edit, a docstring or comment
included; the one ``code`` stage (``python -m nfbench.pipeline.stage_code results/code``)
depends on the whole package instead and writes, per stage kind, the digest of every file
that kind runs (:func:`nfbench.code_digest.package_digests`: syntax trees without docstrings,
YAML by content). The other stages depend on those small files, which change only when code
does, so after an edit that changes no code ``dvc repro`` reruns the ``code`` stage alone.
``tests/test_dvc_params.py`` traces a bench run's imports against its set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: The code a CLI command imports whatever it runs: the CLI imports the pipeline package and
#: the method registry imports every method package, so those are folder deps.
CORE = ("nfbench/__init__.py", "nfbench/version.py", "nfbench/cli.py", "nfbench/pipeline",
        "nfbench/methods", "nfbench/datasets")
#: The command-line modules the CLI loads for its peer / predict / export commands.
CLI_MODULES = ("nfbench/peers/__init__.py", "nfbench/peers/cli.py", "nfbench/use_cli.py")
#: The rest of the shared code (the metrics, caches, paths, progress lines).
SHARED = ("nfbench/atomic.py", "nfbench/backbones.py", "nfbench/errors.py",
          "nfbench/feature_cache.py", "nfbench/metrics", "nfbench/code_digest.py",
          "nfbench/paths.py", "nfbench/precision.py", "nfbench/progress.py")
#: Every code file a bench, tables or check stage runs.
CODE = (*CORE, *CLI_MODULES, *SHARED)
#: The peers and reports stages: their own packages instead of the CLI modules.
PEER_CODE = (*CORE, *SHARED)

#: Per stage kind, the files and folders (repository paths) whose code it runs.
CODE_SETS: dict[str, tuple[str, ...]] = {
    "runs": CODE,
    "profile": (*CODE, "nfbench/profiling.py"),
    "peers": (*PEER_CODE, "nfbench/peers"),
    "reports": (*PEER_CODE, "nfbench/report", "nfbench/peers"),
}


#: where the ``code`` stage writes the digest files (a dvc.yaml output)
FOLDER = "results/code"


def digest_file(kind: str) -> str:
    """The repository path of stage kind ``kind``'s digest file (a dvc.yaml dep)."""
    return f"{FOLDER}/{kind}.json"


def in_set(path: str, kind: str) -> bool:
    """Whether repository path ``path`` (a file) is part of :data:`CODE_SETS` ``[kind]``."""
    return any(path == entry or path.startswith(entry.rstrip("/") + "/")
               for entry in CODE_SETS[kind])


def set_digests(kind: str, digests: dict[str, str] | None = None) -> dict[str, str]:
    """``{repository path: digest}`` of every package file in stage kind ``kind``'s set
    (from ``digests``, :func:`~nfbench.code_digest.package_digests` when not given)."""
    from nfbench.code_digest import package_digests

    digests = package_digests() if digests is None else digests
    return {f"nfbench/{name}": digest for name, digest in digests.items()
            if in_set(f"nfbench/{name}", kind)}


def main(argv: list[str] | None = None) -> None:
    """Write each stage kind's digests to ``<folder>/<kind>.json``, touching a file only when
    its content changes."""
    from nfbench.atomic import write_text_atomic
    from nfbench.code_digest import package_digests

    parser = argparse.ArgumentParser(prog="python -m nfbench.pipeline.stage_code",
                                     description=main.__doc__)
    parser.add_argument("folder", type=Path, help="where the digest files go (results/code)")
    folder = parser.parse_args(argv).folder
    digests = package_digests()
    for kind in CODE_SETS:
        text = json.dumps(set_digests(kind, digests), indent=1, sort_keys=True) + "\n"
        path = folder / f"{kind}.json"
        if not path.is_file() or path.read_text() != text:
            write_text_atomic(path, text)


if __name__ == "__main__":
    main()
