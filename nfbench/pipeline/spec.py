"""Benchmark specs (``benchmarks/<paper>.yaml``) as frozen dataclasses, validated once.

What a spec is (the dataclasses below) and how to get one: :func:`load_spec` reads a paper's
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

Profiles are parameters (``params.yaml``): :func:`profile_names`, :func:`shared_settings` and
:func:`reference_profile` (the papers' own setup).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from nfbench.datasets import DATASETS
from nfbench.errors import UserError
from nfbench.paths import config_root, project_root

#: the dataset role of a variant that names none
DEFAULT_ROLE = "mvtec_ad"
#: table layouts: a row per category (and group, and the average), one averaged row per
#: variant, or networks of one variant (the profiling stage's size and speed)
LAYOUTS = ("per_category", "average", "complexity")
#: group rows a per-category table may show, and the category kind each gathers
GROUPS = {"textures": "texture", "objects": "object"}
#: batch size of the profile's own configuration in the complexity profile (``nfbench profile``)
COMPLEXITY_BATCH_SIZE = 8
#: batch size of a complexity table's and of an extra complexity config's timing
TABLE_BATCH_SIZE = 1

EMPTY: Mapping = MappingProxyType({})


def _none() -> Any:
    """A field defaulting to the empty read-only mapping."""
    return field(default_factory=lambda: EMPTY)


@dataclass(frozen=True)
class VariantSpec:
    """One run definition: ``settings`` over the profile's, on dataset role ``dataset``."""

    name: str
    method: str
    dataset: str = DEFAULT_ROLE
    settings: Mapping[str, Any] = _none()
    shots: int | None = None
    joint: bool = False
    #: the paper whose evaluation protocol scored this method's rows (e.g. ``clscnf`` for
    #: CFlow-AD's FE_PRE-CNFs rows), None: the method's own
    protocol: str | None = None
    #: a reference method takes only these profile settings (None: every one)
    profile_settings: tuple[str, ...] | None = None


@dataclass(frozen=True)
class FigureSpec:
    kind: str
    x_label: str = ""


@dataclass(frozen=True)
class TableSpec:
    """One table of the paper. ``labels``: variant (or network, layout complexity) -> label."""

    id: str
    title: str
    layout: str | None = None
    metrics: tuple[str, ...] = ()
    labels: Mapping[str, str] = _none()
    #: ``{variant or "chance": label}``: reference rows measured in the same run
    references: Mapping[str, str] = _none()
    published: Mapping[str, Any] = _none()
    #: ``{metric: the paper's metric code}`` (a :data:`nfbench.metrics.METRIC_VARIANTS` name)
    published_metric: Mapping[str, str] = _none()
    reproducible: bool = True
    reason: str = ""
    note: str = ""
    comparison: Mapping[str, Any] = _none()
    #: the dataset role the table's rows run on (declared, else its first variant's)
    dataset: str | None = None
    #: group rows (:data:`GROUPS`) of a per-category table
    groups: tuple[str, ...] = ()
    figure: FigureSpec | None = None
    #: layout complexity: the variant whose fitted detector is measured, the reference row
    variant: str | None = None
    reference: str | None = None
    batch_size: int = TABLE_BATCH_SIZE
    #: declared variants the table is built from, in the table's order
    variants: tuple[str, ...] = ()

    @property
    def built(self) -> bool:
        """Whether ``nfbench tables`` builds it (reproducible, not from the profiling stage)."""
        return self.reproducible and self.layout != "complexity"

    def compared_metric(self, metric: str) -> str:
        """The metric code the published numbers of ``metric`` come from."""
        return self.published_metric.get(metric, metric)


@dataclass(frozen=True)
class QuestionSpec:
    question: str
    table: str
    better: str
    than: str
    row: str | None = None
    note: str = ""


@dataclass(frozen=True)
class DeviationSpec:
    """One entry of a spec's ``deviations``; ``diagnostic: true`` marks an explanation of an
    observation (not a difference from the paper), which reports list in their own section."""

    what: str
    why: str
    diagnostic: bool = False


@dataclass(frozen=True)
class ComplexityConfig:
    """An extra configuration of the complexity profile (besides paper and profile)."""

    label: str
    settings: Mapping[str, Any] = _none()
    batch_size: int = TABLE_BATCH_SIZE


@dataclass(frozen=True)
class ComplexitySpec:
    published: Mapping[str, Any] = _none()
    configs: tuple[ComplexityConfig, ...] = ()
    batch_size: int = COMPLEXITY_BATCH_SIZE


@dataclass(frozen=True)
class PaperSpec:
    """A paper's spec: its variants and tables, what it asks, how close counts as reproduced."""

    paper: str
    title: str
    method: str
    order: int
    path: Path
    source: str = ""
    variants: Mapping[str, VariantSpec] = _none()
    tables: Mapping[str, TableSpec] = _none()
    questions: tuple[QuestionSpec, ...] = ()
    complexity: ComplexitySpec = ComplexitySpec()
    #: |reproduced - published| within which a paper-profile number counts as reproduced
    tolerance: Mapping[str, float] = _none()
    deviations: tuple[DeviationSpec, ...] = ()

    @property
    def main_variant(self) -> str:
        """The variant that stands for the paper's method: ``full`` if declared, else the first."""
        return "full" if "full" in self.variants else next(iter(self.variants))

    @property
    def methods(self) -> set[str]:
        """Every method the paper's variants run."""
        return {v.method for v in self.variants.values()}

    def variant(self, name: str) -> VariantSpec:
        if name not in self.variants:
            raise UserError(f"{self.paper} has no variant {name!r}; declared: "
                            f"{', '.join(self.variants)}")
        return self.variants[name]

    def table(self, table_id: str) -> TableSpec:
        if table_id not in self.tables:
            raise UserError(f"no table {table_id!r}; declared: {', '.join(self.tables)}")
        return self.tables[table_id]


# ------------------------------------------------------------------------------------------
# loading (validation: nfbench.pipeline.spec_validation)


def benchmarks_dir() -> Path:
    return config_root() / "benchmarks"


def display_path(path: Path) -> str:
    """``path`` as error messages name it: relative to the project top where it lies below."""
    try:
        return str(path.resolve().relative_to(project_root().resolve()))
    except ValueError:
        return str(path)


@functools.lru_cache(maxsize=32)
def _load(path: Path, mtime_ns: int) -> PaperSpec:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{display_path(path)}: not valid YAML: {e}") from None
    # imported here: the validation module builds this module's dataclasses
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


# ------------------------------------------------------------------------------------------
# profiles (params.yaml)


def profile_names(params: Mapping[str, Any]) -> tuple[str, ...]:
    """The profiles of ``params`` (params.yaml), sorted: the keys of its ``profiles`` block,
    which every paper's block and the ``peers`` block must have exactly (peers: at most)."""
    declared = params.get("profiles")
    if not isinstance(declared, Mapping) or not declared:
        raise UserError("params.yaml: profiles: expected a mapping of profile name -> "
                        "{settings: ...}")
    names = set(declared)
    for paper in papers():
        if paper not in params:
            continue
        block = params[paper]
        have = set(block) if isinstance(block, Mapping) else set()
        if have != names:
            missing, extra = sorted(names - have), sorted(have - names)
            raise UserError(f"params.yaml: {paper}: its profiles must be those of `profiles:` "
                            f"({', '.join(sorted(names))})"
                            + (f"; missing {', '.join(missing)}" if missing else "")
                            + (f"; unknown {', '.join(extra)}" if extra else ""))
    extra = sorted(set(params.get("peers") or {}) - names)
    if extra:
        raise UserError(f"params.yaml: peers: unknown profile(s) {', '.join(extra)}")
    if params.get("profile") is not None and params["profile"] not in names:
        raise UserError(f"params.yaml: profile: unknown profile {params['profile']!r}; "
                        f"available: {', '.join(sorted(names))}")
    return tuple(sorted(names))


def reference_profile(params: Mapping[str, Any]) -> str:
    """The profile marked ``reference: true`` in params.yaml's ``profiles:`` (exactly one):
    the one that runs the papers' own setup, which reports cite as "what the paper used" and
    profiling times in full."""
    names = profile_names(params)
    marked = [n for n in names if (params["profiles"][n] or {}).get("reference") is True]
    if len(marked) != 1:
        raise UserError("params.yaml: profiles: exactly one profile must say `reference: true`"
                        f" (the papers' own setup); found {len(marked)}")
    return marked[0]


def shared_settings(params: Mapping[str, Any], profile: str,
                    fields: set[str] | None = None) -> dict[str, Any]:
    """``params.profiles.<profile>.settings``: what the profile changes for every method
    (below a paper's block; the only settings where no paper runs the method on the data),
    restricted to a config's ``fields`` if given."""
    names = profile_names(params)
    if profile not in names:
        raise UserError(f"unknown profile {profile!r}; available: {', '.join(names)}")
    block = params["profiles"][profile] or {}
    if not isinstance(block, Mapping) or not isinstance(block.get("settings") or {}, Mapping):
        raise UserError(f"params.yaml: profiles.{profile}: expected {{settings: {{...}}}}")
    settings = dict(block.get("settings") or {})
    return {k: v for k, v in settings.items() if fields is None or k in fields}
