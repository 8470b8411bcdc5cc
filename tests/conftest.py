"""Shared fixtures: a tiny demo dataset built once per test session, an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NFBENCH_QUIET", "1")


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A small demo set (3+ categories, 128 px) in MVTec layout."""
    from nfbench.datasets.demo.generator import generate_demo

    root = tmp_path_factory.mktemp("demo") / "demo"
    generate_demo(root, seed=0, image_size=128, n_train=12, n_test_good=6,
                  n_test_defect_per_type=3, progress=False)
    return root


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine, 2 threads spin and run ~10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test session writes features to its own cache folder, never the repository's."""
    cache = tmp_path_factory.getbasetemp() / "feature-cache"
    monkeypatch.setenv("NFBENCH_CACHE", str(cache))
    return cache


@pytest.fixture
def edited_source(monkeypatch):
    """``edit(relative_path, transform)``: the digest code reads that module as transformed."""
    import nfbench.code_digest as cd

    edits: dict[Path, callable] = {}
    real = cd._read_source
    monkeypatch.setattr(cd, "_read_source",
                        lambda path: edits.get(Path(path), lambda s: s)(real(path)))
    cd.code_digest.cache_clear()

    def edit(relative: str, transform) -> None:
        edits[cd.PACKAGE / relative] = transform
        cd.code_digest.cache_clear()

    yield edit
    cd.code_digest.cache_clear()
