"""Benchmark specs (``benchmarks/<paper>.yaml``) as frozen dataclasses, validated once.

:func:`load_spec` reads a paper's spec into a :class:`PaperSpec` and checks every key the suite
reads; a mistake is one :class:`~nfbench.errors.UserError` naming the file and the key path,
e.g. ``benchmarks/csflow.yaml: tables.table1.metric: unknown metric 'x'``. Every default that
consumers used to re-derive lives here, once:

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
dataset, defined once in its module (:data:`nfbench.datasets.mvtec_ad.TEXTURES` /
``OBJECTS``, :data:`nfbench.datasets.demo.categories.CATEGORY_KIND`); a table only names the group rows
it shows (``groups: [textures, objects]``), :func:`category_groups` fills them.

Profiles are parameters (``params.yaml``): :func:`profile_names` and :func:`shared_settings`.

Transitional: :class:`PaperSpec` still answers dict-style access (``spec["tables"]``,
``spec.get("source")``) with the spec file's raw data, for the consumers not yet switched to
the attributes (cli.py, report.py, protocols.py, peers/common.py). New code uses attributes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

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
PAPER_KEYS = ("paper", "title", "method", "source", "order", "variants", "tables", "questions",
              "complexity", "tolerance", "deviations")
VARIANT_KEYS = ("dataset", "method", "settings", "shots", "joint", "protocol", "profile_settings")
TABLE_KEYS = ("title", "metric", "layout", "columns", "rows", "references", "published",
              "published_metric", "reproducible", "reason", "note", "comparison", "dataset",
              "groups", "figure", "variant", "batch_size", "reference")


def _freeze(value: Any) -> Any:
    """Read-only copy: mappings become mapping proxies, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


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
    what: str
    why: str


@dataclass(frozen=True)
class ComplexityConfig:
    """An extra configuration of the complexity profile (besides paper and profile)."""

    label: str
    settings: Mapping[str, Any] = _none()
    batch_size: int = TABLE_BATCH_SIZE


@dataclass(frozen=True)
class ComplexitySpec:
    published: Mapping[str, Any] = _none()
    input_sizes: tuple[int, ...] = ()
    configs: tuple[ComplexityConfig, ...] = ()
    batch_size: int = COMPLEXITY_BATCH_SIZE


@dataclass(frozen=True)
class PaperSpec(Mapping):
    """A paper's spec. Dict-style access (transitional) reads the file's raw data."""

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
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

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

    # -- transitional dict-style access (raw spec data) for consumers not yet switched -------
    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    __hash__ = object.__hash__


# ------------------------------------------------------------------------------------------
# loading and validation


def benchmarks_dir() -> Path:
    return project_root() / "benchmarks"


def _where(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(project_root().resolve()))
    except ValueError:
        return str(path)


class _Checker:
    """Reads keys of one spec file; every error names the file and the key path."""

    def __init__(self, path: Path):
        self.file = _where(path)

    def fail(self, where: str, message: str) -> None:
        raise UserError(f"{self.file}: {where}: {message}" if where else f"{self.file}: {message}")

    def mapping(self, value: Any, where: str) -> Mapping:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(where, f"expected a mapping, got {type(value).__name__}")
        return value

    def keys(self, value: Mapping, allowed: tuple[str, ...], where: str) -> None:
        unknown = [k for k in value if k not in allowed]
        if unknown:
            self.fail(f"{where}.{unknown[0]}" if where else str(unknown[0]),
                      f"unknown key; allowed: {', '.join(allowed)}")

    def text(self, value: Any, where: str, required: bool = False) -> str:
        if value is None and not required:
            return ""
        if not isinstance(value, str) or (required and not value):
            self.fail(where, "expected a non-empty string" if required
                      else f"expected a string, got {value!r}")
        return value

    def integer(self, value: Any, where: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(where, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, f"expected true or false, got {value!r}")
        return value

    def names(self, value: Any, where: str) -> tuple[str, ...]:
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, str) and v for v in items):
            self.fail(where, f"expected a name or a list of names, got {value!r}")
        return tuple(items)


def _known_metrics() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from nfbench.metrics import METRIC_KEYS, METRIC_VARIANTS

    return tuple(METRIC_KEYS), tuple(METRIC_VARIANTS)


def _variant(c: _Checker, name: str, data: Any, method: str) -> VariantSpec:
    where = f"variants.{name}"
    data = c.mapping(data, where)
    c.keys(data, VARIANT_KEYS, where)
    shots = data.get("shots")
    profile_settings = data.get("profile_settings")
    return VariantSpec(
        name=name, method=c.text(data.get("method", method), f"{where}.method", required=True),
        dataset=c.text(data.get("dataset", DEFAULT_ROLE), f"{where}.dataset", required=True),
        settings=MappingProxyType(dict(c.mapping(data.get("settings"), f"{where}.settings"))),
        shots=None if shots is None else c.integer(shots, f"{where}.shots", minimum=1),
        joint=c.flag(data.get("joint", False), f"{where}.joint"),
        protocol=c.text(data.get("protocol"), f"{where}.protocol") or None,
        profile_settings=None if profile_settings is None
        else c.names(profile_settings, f"{where}.profile_settings"))


def _table(c: _Checker, table_id: str, data: Any, variants: Mapping[str, VariantSpec]) -> TableSpec:
    where = f"tables.{table_id}"
    data = c.mapping(data, where)
    c.keys(data, TABLE_KEYS, where)
    title = c.text(data.get("title"), f"{where}.title", required=True)
    reproducible = c.flag(data.get("reproducible", True), f"{where}.reproducible")
    common = dict(id=table_id, title=title, reproducible=reproducible,
                  reason=c.text(data.get("reason"), f"{where}.reason"),
                  note=c.text(data.get("note"), f"{where}.note"),
                  published=_freeze(c.mapping(data.get("published"), f"{where}.published")),
                  comparison=_freeze(c.mapping(data.get("comparison"), f"{where}.comparison")))
    if not reproducible:
        if not common["reason"]:
            c.fail(f"{where}.reason", "a table with reproducible: false says why (reason)")
        return TableSpec(**common)
    layout = data.get("layout")
    if layout not in LAYOUTS:
        c.fail(f"{where}.layout", f"expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if data.get("columns") and data.get("rows"):
        c.fail(where, "give columns or rows, not both")
    key = "columns" if data.get("columns") else "rows"
    labels = c.mapping(data.get(key), f"{where}.{key}")
    if not labels:
        c.fail(f"{where}.rows", "a table needs rows (or columns)")
    for name, label in labels.items():
        c.text(label, f"{where}.{key}.{name}", required=True)
    if layout == "complexity":
        variant = c.text(data.get("variant"), f"{where}.variant", required=True)
        if variant not in variants:
            c.fail(f"{where}.variant", f"undeclared variant {variant!r}")
        reference = data.get("reference")
        if reference is not None and reference not in labels:
            c.fail(f"{where}.reference", f"{reference!r} is not one of the table's rows")
        return TableSpec(**common, layout=layout, labels=MappingProxyType(dict(labels)),
                         variant=variant, reference=reference, dataset=variants[variant].dataset,
                         batch_size=c.integer(data.get("batch_size", TABLE_BATCH_SIZE),
                                              f"{where}.batch_size", minimum=1),
                         variants=(variant,))
    for name in ("variant", "reference", "batch_size"):
        if name in data:
            c.fail(f"{where}.{name}", "only a table with layout complexity has it")
    for name in labels:
        if name not in variants:
            c.fail(f"{where}.{key}.{name}", f"undeclared variant {name!r}")
    official, codes = _known_metrics()
    metrics = c.names(data.get("metric"), f"{where}.metric")
    for metric in metrics:
        if metric not in official:
            c.fail(f"{where}.metric", f"unknown metric {metric!r}; known: {', '.join(official)}")
    declared = data.get("published_metric")
    if isinstance(declared, str):
        if len(metrics) != 1:
            c.fail(f"{where}.published_metric", "one name needs a one-metric table; give "
                   "{metric: code} instead")
        declared = {metrics[0]: declared}
    published_metric = dict(c.mapping(declared, f"{where}.published_metric"))
    for metric, code in published_metric.items():
        if metric not in metrics:
            c.fail(f"{where}.published_metric.{metric}", "not a metric of the table")
        if code not in official + codes:
            c.fail(f"{where}.published_metric.{metric}", f"unknown metric {code!r}; known: "
                   f"{', '.join(official + codes)}")
    references = c.mapping(data.get("references"), f"{where}.references")
    for name in references:
        if name != "chance" and name not in variants:
            c.fail(f"{where}.references.{name}", f"undeclared variant {name!r} (or chance)")
    for name in common["published"]:
        if name not in labels:
            c.fail(f"{where}.published.{name}", "not a row/column of the table")
    groups = data.get("groups", [])
    if not isinstance(groups, list) or any(g not in GROUPS for g in groups):
        c.fail(f"{where}.groups", f"expected a list of {', '.join(GROUPS)}, got {groups!r}")
    if groups and layout != "per_category":
        c.fail(f"{where}.groups", "only a per_category table has group rows")
    dataset = data.get("dataset", variants[next(iter(labels))].dataset)
    roles = {v.dataset for v in variants.values()}
    if dataset not in roles:
        c.fail(f"{where}.dataset", f"{dataset!r} is no variant's dataset role; roles: "
               f"{', '.join(sorted(roles))}")
    figure = data.get("figure")
    if figure is not None:
        figure = c.mapping(figure, f"{where}.figure")
        c.keys(figure, ("kind", "x_label"), f"{where}.figure")
        figure = FigureSpec(kind=c.text(figure.get("kind"), f"{where}.figure.kind", required=True),
                            x_label=c.text(figure.get("x_label"), f"{where}.figure.x_label"))
    return TableSpec(**common, layout=layout, metrics=metrics,
                     labels=MappingProxyType(dict(labels)),
                     references=MappingProxyType(dict(references)),
                     published_metric=MappingProxyType(published_metric), dataset=dataset,
                     groups=tuple(groups), figure=figure, variants=tuple(labels))


def _complexity(c: _Checker, data: Any) -> ComplexitySpec:
    data = c.mapping(data, "complexity")
    c.keys(data, ("published", "input_sizes", "configs", "batch_size"), "complexity")
    configs = []
    for i, entry in enumerate(data.get("configs") or []):
        where = f"complexity.configs[{i}]"
        entry = c.mapping(entry, where)
        c.keys(entry, ("label", "settings", "batch_size"), where)
        configs.append(ComplexityConfig(
            label=c.text(entry.get("label"), f"{where}.label", required=True),
            settings=MappingProxyType(dict(c.mapping(entry.get("settings"), f"{where}.settings"))),
            batch_size=c.integer(entry.get("batch_size", TABLE_BATCH_SIZE),
                                 f"{where}.batch_size", minimum=1)))
    sizes = data.get("input_sizes") or []
    return ComplexitySpec(
        published=_freeze(c.mapping(data.get("published"), "complexity.published")),
        input_sizes=tuple(c.integer(s, f"complexity.input_sizes[{i}]", minimum=1)
                          for i, s in enumerate(sizes)),
        configs=tuple(configs),
        batch_size=c.integer(data.get("batch_size", COMPLEXITY_BATCH_SIZE),
                             "complexity.batch_size", minimum=1))


def parse_spec(data: Any, path: Path) -> PaperSpec:
    """Validate ``data`` (the YAML of ``path``) into a :class:`PaperSpec`."""
    c = _Checker(path)
    data = c.mapping(data, "")
    c.keys(data, PAPER_KEYS, "")
    paper = c.text(data.get("paper"), "paper", required=True)
    if paper != path.stem:
        c.fail("paper", f"{paper!r} differs from the file name {path.stem!r}")
    method = c.text(data.get("method"), "method", required=True)
    variants_raw = c.mapping(data.get("variants"), "variants")
    if not variants_raw:
        c.fail("variants", "a paper declares at least one variant")
    variants = {name: _variant(c, str(name), v, method) for name, v in variants_raw.items()}
    tables = {str(t): _table(c, str(t), v, variants)
              for t, v in c.mapping(data.get("tables"), "tables").items()}
    official, _ = _known_metrics()
    tolerance = dict(c.mapping(data.get("tolerance"), "tolerance"))
    for metric, value in tolerance.items():
        if metric not in official:
            c.fail(f"tolerance.{metric}", f"unknown metric {metric!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            c.fail(f"tolerance.{metric}", f"expected a number >= 0, got {value!r}")
    questions = []
    for i, q in enumerate(data.get("questions") or []):
        where = f"questions[{i}]"
        q = c.mapping(q, where)
        c.keys(q, ("question", "table", "row", "better", "than", "note"), where)
        table = c.text(q.get("table"), f"{where}.table", required=True)
        if table not in tables:
            c.fail(f"{where}.table", f"no table {table!r}")
        for key in ("better", "than"):
            if q.get(key) not in tables[table].labels:
                c.fail(f"{where}.{key}", f"{q.get(key)!r} is not a row of {table}")
        questions.append(QuestionSpec(
            question=c.text(q.get("question"), f"{where}.question", required=True), table=table,
            better=q["better"], than=q["than"], row=c.text(q.get("row"), f"{where}.row") or None,
            note=c.text(q.get("note"), f"{where}.note")))
    deviations = []
    for i, d in enumerate(data.get("deviations") or []):
        d = c.mapping(d, f"deviations[{i}]")
        c.keys(d, ("what", "why"), f"deviations[{i}]")
        deviations.append(DeviationSpec(
            what=c.text(d.get("what"), f"deviations[{i}].what", required=True),
            why=c.text(d.get("why"), f"deviations[{i}].why", required=True)))
    return PaperSpec(
        paper=paper, title=c.text(data.get("title"), "title", required=True), method=method,
        order=c.integer(data.get("order"), "order"), path=path,
        source=c.text(data.get("source"), "source"),
        variants=MappingProxyType(variants), tables=MappingProxyType(tables),
        questions=tuple(questions), complexity=_complexity(c, data.get("complexity")),
        tolerance=MappingProxyType(tolerance), deviations=tuple(deviations), raw=data)


@functools.lru_cache(maxsize=32)
def _load(path: Path, mtime_ns: int) -> PaperSpec:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{_where(path)}: not valid YAML: {e}") from None
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
            raise UserError(f"{_where(path)}: not valid YAML: {e}") from None
        if isinstance(head, Mapping) and "paper" in head:
            found.append(_load(path, mtime_ns))
    orders: dict[int, str] = {}
    for spec in found:
        if spec.order in orders:
            raise UserError(f"{_where(spec.path)}: order: {spec.order} is also "
                            f"{orders[spec.order]}'s; every paper needs its own")
        orders[spec.order] = spec.paper
    return tuple(s.paper for s in sorted(found, key=lambda s: (s.order, s.paper)))


# ------------------------------------------------------------------------------------------
# category groups (a property of the dataset)


def category_kinds(dataset: str) -> Mapping[str, str]:
    """``{category: "texture" | "object"}`` of a dataset that has the split (else empty)."""
    if dataset == "mvtec_ad":
        from nfbench.datasets.mvtec_ad import OBJECTS, TEXTURES

        return {**{c: "texture" for c in TEXTURES}, **{c: "object" for c in OBJECTS}}
    if dataset == "demo":
        from nfbench.datasets.demo.categories import CATEGORY_KIND

        return CATEGORY_KIND
    return {}


def category_groups(table: TableSpec, dataset: str, categories: list[str]
                    ) -> dict[str, list[str]]:
    """Group rows of ``table`` for the ``categories`` run on ``dataset``: the table's groups
    (on the demo set, a stand-in, every group), each with its categories in run order;
    empty groups left out."""
    names = tuple(GROUPS) if dataset == "demo" else table.groups
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
