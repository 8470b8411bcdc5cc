"""The code digest skips a package ``__init__``'s lazy (PEP 562 ``__getattr__``) imports, and
the model / predict folders are written whole through one helper (nfbench.atomic)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import nfbench.code_digest as cd
from nfbench.atomic import atomic_folder
from nfbench.pipeline.identity import code_version


@pytest.fixture
def edit(monkeypatch):
    """``edit(relative_path)``: the digest code reads that module with one line of code added."""
    edits: set[Path] = set()
    real = cd._read_source
    monkeypatch.setattr(cd, "_read_source",
                        lambda path: real(path) + ("\nEDITED = 1\n" if Path(path) in edits else ""))
    cd.code_digest.cache_clear()

    def add(relative: str) -> None:
        edits.add(cd.PACKAGE / relative)
        cd.code_digest.cache_clear()

    yield add
    cd.code_digest.cache_clear()


@pytest.mark.parametrize("module", ["artifacts.py", "predict.py", "export.py"])
def test_model_io_edits_keep_every_run_code_version(edit, module):
    """nfbench/__init__.py imports artifacts only inside __getattr__ (nfbench.load_detector):
    that must not put artifacts (or predict, export) into every run's code version."""
    before = {m: code_version(m) for m in ("csflow", "patchflow", "cflow", "clscnf")}
    edit(module)
    assert {m: code_version(m) for m in before} == before


def test_an_edit_of_the_run_code_still_changes_it(edit):
    before = code_version("csflow")
    edit("methods/csflow/flow.py")
    assert code_version("csflow") != before


def test_lazy_hook_imports_are_skipped_but_other_function_imports_followed():
    import ast

    tree = ast.parse("def __getattr__(name):\n    from nfbench import artifacts\n"
                     "def load():\n    from nfbench import predict\n")
    assert cd._imports("nfbench", tree) == {"nfbench", "nfbench.predict"}


def test_atomic_folder_is_whole_or_absent(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("x")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []          # no target, no temporary folder
    target.mkdir()
    (target / "old.txt").write_text("old")
    old = os.umask(0o027)
    try:
        with atomic_folder(target) as tmp:
            (tmp / "new.txt").write_text("new")
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]  # replaced whole
    assert target.stat().st_mode & 0o777 == 0o750
