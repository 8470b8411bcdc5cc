"""The profiling cache key (FLOP counts, timings) follows the code that counts."""

from __future__ import annotations

from pathlib import Path

import pytest

import nfbench.code_digest as cd
from nfbench.pipeline import complexity


@pytest.fixture
def edit(monkeypatch):
    """``edit(relative_path, transform)``: the digest code reads that module as transformed."""
    edits: dict[Path, callable] = {}
    real = cd._read_source
    monkeypatch.setattr(cd, "_read_source",
                        lambda path: edits.get(Path(path), lambda s: s)(real(path)))

    def clear():
        cd.code_digest.cache_clear()
        complexity._measuring_code.cache_clear()

    def add(relative: str, transform) -> None:
        edits[cd.PACKAGE / relative] = transform
        clear()

    clear()
    yield add
    clear()


@pytest.mark.parametrize("module", ["pipeline/flops.py", "profiling.py", "methods/csflow/flow.py"])
def test_editing_the_counter_or_the_network_changes_the_key(edit, module):
    before = complexity._measuring_code("csflow")
    edit(module, lambda s: s + "\nEDITED = 1\n")
    assert complexity._measuring_code("csflow") != before


def test_a_docstring_edit_of_the_counter_keeps_the_key(edit):
    before = complexity._measuring_code("csflow")
    edit("pipeline/flops.py", lambda s: s.replace('"""', '"""Edited. ', 1) + "\n# note\n")
    assert complexity._measuring_code("csflow") == before
