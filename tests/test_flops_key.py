"""The profiling cache key (FLOP counts, timings) follows the code that counts."""

from __future__ import annotations

import pytest

from nfbench.pipeline import complexity


@pytest.fixture
def edit(edited_source):
    """conftest's ``edited_source``, with the profiling key's own cache cleared too."""
    def add(relative: str, transform) -> None:
        edited_source(relative, transform)
        complexity._measuring_code.cache_clear()

    complexity._measuring_code.cache_clear()
    yield add
    complexity._measuring_code.cache_clear()


@pytest.mark.parametrize("module", ["pipeline/flops.py", "profiling.py", "methods/csflow/flow.py"])
def test_editing_the_counter_or_the_network_changes_the_key(edit, module):
    before = complexity._measuring_code("csflow")
    edit(module, lambda s: s + "\nEDITED = 1\n")
    assert complexity._measuring_code("csflow") != before


def test_a_docstring_edit_of_the_counter_keeps_the_key(edit):
    before = complexity._measuring_code("csflow")
    edit("pipeline/flops.py", lambda s: s.replace('"""', '"""Edited. ', 1) + "\n# note\n")
    assert complexity._measuring_code("csflow") == before
