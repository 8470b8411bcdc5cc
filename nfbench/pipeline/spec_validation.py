"""Raw YAML of a benchmark spec -> the frozen dataclasses of :mod:`nfbench.pipeline.spec`.

:func:`parse_spec` checks every key the suite reads, once, when a spec is loaded, so that no
consumer meets a malformed spec later: an unknown key, a wrong type, a table naming an
undeclared variant or an unknown metric, a question about a row its table lacks. A mistake is
one :class:`~nfbench.errors.UserError` naming the file and the key path, e.g.
``benchmarks/csflow.yaml: tables.table1.metric: unknown metric 'x'``. The defaults a key takes
when a spec omits it are the constants and dataclass defaults of :mod:`nfbench.pipeline.spec`;
this module only applies them. Callers load specs with :func:`nfbench.pipeline.spec.load_spec`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from nfbench.errors import UserError
from nfbench.pipeline.spec_types import (COMPLEXITY_BATCH_SIZE, DEFAULT_ROLE, GROUPS, LAYOUTS,
                                         TABLE_BATCH_SIZE, ComplexityConfig, ComplexitySpec,
                                         DeviationSpec, FigureSpec, PaperSpec, QuestionSpec,
                                         TableSpec, VariantSpec, display_path)

#: the keys a spec file, a variant and a table may have (anything else is a typo)
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


class _Checker:
    """Reads keys of one spec file; every error names the file and the key path."""

    def __init__(self, path: Path):
        self.file = display_path(path)

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
    """One entry of ``tables:``: the keys every table has, then those of its layout."""
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
        return _complexity_table(c, where, data, common, labels, variants)
    return _result_table(c, where, data, common, layout, key, labels, variants)


def _complexity_table(c: _Checker, where: str, data: Mapping, common: dict, labels: Mapping,
                      variants: Mapping[str, VariantSpec]) -> TableSpec:
    """A ``layout: complexity`` table: one variant's FLOPs, parameters and speed per row."""
    variant = c.text(data.get("variant"), f"{where}.variant", required=True)
    if variant not in variants:
        c.fail(f"{where}.variant", f"undeclared variant {variant!r}")
    reference = data.get("reference")
    if reference is not None and reference not in labels:
        c.fail(f"{where}.reference", f"{reference!r} is not one of the table's rows")
    return TableSpec(**common, layout="complexity", labels=MappingProxyType(dict(labels)),
                     variant=variant, reference=reference, dataset=variants[variant].dataset,
                     batch_size=c.integer(data.get("batch_size", TABLE_BATCH_SIZE),
                                          f"{where}.batch_size", minimum=1),
                     variants=(variant,))


def _result_table(c: _Checker, where: str, data: Mapping, common: dict, layout: str, key: str,
                  labels: Mapping, variants: Mapping[str, VariantSpec]) -> TableSpec:
    """A table of run results: its rows or columns are variants, with metrics, published
    numbers, references, group rows, a dataset role and an optional figure."""
    for name in ("variant", "reference", "batch_size"):
        if name in data:
            c.fail(f"{where}.{name}", "only a table with layout complexity has it")
    for name in labels:
        if name not in variants:
            c.fail(f"{where}.{key}.{name}", f"undeclared variant {name!r}")
    metrics, published_metric = _table_metrics(c, where, data)
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
    return TableSpec(**common, layout=layout, metrics=metrics,
                     labels=MappingProxyType(dict(labels)),
                     references=MappingProxyType(dict(references)),
                     published_metric=MappingProxyType(published_metric), dataset=dataset,
                     groups=tuple(groups), figure=_figure(c, where, data.get("figure")),
                     variants=tuple(labels))


def _table_metrics(c: _Checker, where: str, data: Mapping) -> tuple[tuple[str, ...], dict]:
    """A table's ``metric`` names and ``published_metric`` (the paper's metric code per
    official metric; one name stands for the only metric's)."""
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
    return metrics, published_metric


def _figure(c: _Checker, where: str, figure: Any) -> FigureSpec | None:
    if figure is None:
        return None
    figure = c.mapping(figure, f"{where}.figure")
    c.keys(figure, ("kind", "x_label"), f"{where}.figure")
    return FigureSpec(kind=c.text(figure.get("kind"), f"{where}.figure.kind", required=True),
                      x_label=c.text(figure.get("x_label"), f"{where}.figure.x_label"))


def _complexity(c: _Checker, data: Any) -> ComplexitySpec:
    data = c.mapping(data, "complexity")
    c.keys(data, ("published", "configs", "batch_size"), "complexity")
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
    return ComplexitySpec(
        published=_freeze(c.mapping(data.get("published"), "complexity.published")),
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
        c.keys(d, ("what", "why", "diagnostic"), f"deviations[{i}]")
        deviations.append(DeviationSpec(
            what=c.text(d.get("what"), f"deviations[{i}].what", required=True),
            why=c.text(d.get("why"), f"deviations[{i}].why", required=True),
            diagnostic=c.flag(d.get("diagnostic", False), f"deviations[{i}].diagnostic")))
    return PaperSpec(
        paper=paper, title=c.text(data.get("title"), "title", required=True), method=method,
        order=c.integer(data.get("order"), "order"), path=path,
        source=c.text(data.get("source"), "source"),
        variants=MappingProxyType(variants), tables=MappingProxyType(tables),
        questions=tuple(questions), complexity=_complexity(c, data.get("complexity")),
        tolerance=MappingProxyType(tolerance), deviations=tuple(deviations))
