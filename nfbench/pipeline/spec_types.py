"""The benchmark specs' types: variants, tables, questions, complexity configs, as frozen data.

:mod:`nfbench.pipeline.spec` loads ``benchmarks/<paper>.yaml`` into these (validated by
:mod:`nfbench.pipeline.spec_validation`); both import them from here, so neither imports
the other's loader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from nfbench.errors import UserError
from nfbench.paths import project_root

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


def display_path(path: Path) -> str:
    """``path`` as error messages name it: relative to the project top where it lies below."""
    try:
        return str(path.resolve().relative_to(project_root().resolve()))
    except ValueError:
        return str(path)
