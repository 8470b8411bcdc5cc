"""Benchmark specs (``benchmarks/<paper>.yaml``) as frozen dataclasses, validated once.

What a spec is (the dataclasses of :mod:`nfbench.pipeline.spec_types`) and how to get one: :func:`load_spec` reads a paper's
spec into a :class:`PaperSpec`, validated by :mod:`nfbench.pipeline.spec_validation` (every
key the suite reads, errors naming the file and the key path), cached per file version.
Consumers read the attributes only; every default lives here, once:

* a variant's dataset role is ``mvtec_ad`` and its method the paper's ``method`` unless it says
  otherwise; no shots, no joint training, no protocol, every profile setting inherited;
* a table is reproducible unless it says ``reproducible: false``; its ``labels`` are its
  ``columns`` (per-category layout) or ``rows``; its dataset role is its ``dataset`` or its
  first variant's role; ``published_metric`` is a ``{metric: metric code}`` map (one name for
  a one-metric table is that metric's); a complexity table's batch size is 1;
* the paper's complexity profile (``complexity.batch_size``) times a batch of 8 images, its
  extra ``configs`` a batch of 1;
* the main variant (figures, profiling) is ``full`` if declared, else the first.

:func:`papers` lists the paper specs in ``benchmarks/`` (the YAML files with a ``paper:`` key),
ordered by their ``order:`` key. Category groups (textures / objects) are a property of the
dataset, declared once in its registry entry (``category_kinds`` of
:data:`nfbench.datasets.DATASETS`); a table only names the group rows it shows (``groups: [textures, objects]``), :func:`category_groups` fills them.

Profiles are parameters (``params.yaml``), read by :mod:`nfbench.pipeline.params`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import yaml

from nfbench.datasets import DATASETS
from nfbench.errors import UserError
from nfbench.paths import config_root
# the spec's types, re-exported (spec_validation builds them without importing this module)
from nfbench.pipeline.spec_types import (  # noqa: F401
    COMPLEXITY_BATCH_SIZE, DEFAULT_ROLE, EMPTY, GROUPS, LAYOUTS, TABLE_BATCH_SIZE,
    ComplexityConfig, ComplexitySpec, DeviationSpec, FigureSpec, PaperSpec, QuestionSpec,
    TableSpec, VariantSpec, display_path)

# ------------------------------------------------------------------------------------------
# loading (validation: nfbench.pipeline.spec_validation)


def benchmarks_dir() -> Path:
    return config_root() / "benchmarks"


@functools.lru_cache(maxsize=32)
def _load(path: Path, mtime_ns: int) -> PaperSpec:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{display_path(path)}: not valid YAML: {e}") from None
    # imported here: validation (and pandas-free spec_types) only when a spec is read
    from nfbench.pipeline.spec_validation import parse_spec

    return parse_spec(data, path)


def spec_path(paper: str) -> Path:
    return benchmarks_dir() / f"{paper}.yaml"


def load_spec(paper: str) -> PaperSpec:
    """The validated benchmark spec of ``paper`` (``benchmarks/<paper>.yaml``)."""
    path = spec_path(paper)
    if not path.is_file():
        raise UserError(f"no benchmark spec {path}; available: {', '.join(papers()) or 'none'}")
    return _load(path, path.stat().st_mtime_ns)


def papers() -> tuple[str, ...]:
    """The papers of ``benchmarks/``: every YAML file there with a ``paper:`` key (not the
    cost model), ordered by the spec's ``order:`` (two papers with one order are an error)."""
    files = tuple((p, p.stat().st_mtime_ns) for p in sorted(benchmarks_dir().glob("*.yaml")))
    return _papers(files)


@functools.lru_cache(maxsize=8)
def _papers(files: tuple[tuple[Path, int], ...]) -> tuple[str, ...]:
    found = []
    for path, mtime_ns in files:
        try:
            head = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise UserError(f"{display_path(path)}: not valid YAML: {e}") from None
        if isinstance(head, Mapping) and "paper" in head:
            found.append(_load(path, mtime_ns))
    orders: dict[int, str] = {}
    for spec in found:
        if spec.order in orders:
            raise UserError(f"{display_path(spec.path)}: order: {spec.order} is also "
                            f"{orders[spec.order]}'s; every paper needs its own")
        orders[spec.order] = spec.paper
    return tuple(s.paper for s in sorted(found, key=lambda s: (s.order, s.paper)))


# ------------------------------------------------------------------------------------------
# category groups (a property of the dataset)


def category_kinds(dataset: str) -> Mapping[str, str]:
    """``{category: "texture" | "object"}`` of a dataset that has the split (else empty): its
    registry entry's ``category_kinds``."""
    spec = DATASETS.get(dataset)
    return spec.category_kinds if spec is not None else {}


def category_groups(table: TableSpec, dataset: str, categories: list[str]
                    ) -> dict[str, list[str]]:
    """Group rows of ``table`` for the ``categories`` run on ``dataset``: the table's groups
    (on the demo set, a stand-in, every group), each with its categories in run order;
    empty groups left out."""
    stand_in = dataset in DATASETS and DATASETS[dataset].stand_in
    names = tuple(GROUPS) if stand_in else table.groups
    kinds = category_kinds(dataset)
    groups = {name: [c for c in categories if kinds.get(c) == GROUPS[name]] for name in names}
    return {name: members for name, members in groups.items() if members}
