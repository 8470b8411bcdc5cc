"""Result records → one tidy table per paper table (CSV), beside the published numbers.

A tidy row is one cell of a paper's table: ``table, variant, row, label, metric, n, mean,
std, published, delta, within_tolerance, profile``. Values are in % like the papers.
``mean ± std`` is over seeds; a group or average row first averages categories within each
seed. Nothing here trains: a missing record is an error naming the run.

A table may declare ``published_metric`` (one name, or ``{metric: name}``): the paper's own
metric code that made its published numbers (a variant of :data:`nfbench.metrics.METRIC_VARIANTS`,
e.g. ``pixel_aupr@clscnf``). ``mean``/``std`` stay the official metric; ``compared_metric``,
``compared_mean`` and ``compared_std`` hold the paper's variant, and ``delta`` is
``compared_mean - published``.

Every table also gets an *original protocol* companion (:func:`build_protocol_tables`):
honest (last epoch, no test labels) vs what the original code's evaluation protocol would
have reported, from ``record["original_protocol"]`` (:mod:`nfbench.protocols`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfbench.errors import UserError
from nfbench.plan import Run, expand_runs, load_spec, profile_params, role_categories

COLUMNS = ["table", "variant", "row", "label", "metric", "n", "mean", "std", "published", "delta",
           "within_tolerance", "profile", "compared_metric", "compared_mean", "compared_std"]
PROTOCOL_COLUMNS = ["table", "variant", "row", "label", "metric", "n", "honest", "original",
                    "difference", "reported_as", "profile"]


def load_records(runs: list[Run], results_dir: Path) -> dict[tuple[str, str, int], dict]:
    """Records of ``runs`` keyed by (variant, category, seed)."""
    records = {}
    for run in runs:
        path = Path(results_dir) / run.record_path
        if not path.is_file():
            raise UserError(f"missing result record {path} (run {run.run_id}); run "
                            f"'nfbench bench --paper {run.paper} --variant {run.variant}' first")
        records[(run.variant, run.category, run.seed)] = json.loads(path.read_text())
    return records


def _category_groups(spec_table: dict, dataset: str, categories: list[str]) -> dict[str, list[str]]:
    """Group rows (textures / objects) for the categories actually run."""
    if dataset == "demo":
        from nfbench.datasets.demo import CATEGORY_KIND

        groups = {"textures": [c for c in categories if CATEGORY_KIND.get(c) == "texture"],
                  "objects": [c for c in categories if CATEGORY_KIND.get(c) == "object"]}
    else:
        groups = {name: [c for c in members if c in categories]
                  for name, members in spec_table.get("groups", {}).items()}
    return {name: members for name, members in groups.items() if members}


def _cell(values_by_seed: dict[int, list[float]]) -> tuple[int, float, float]:
    """n, mean and std (over seeds) of per-seed averages, in %."""
    per_seed = [100.0 * float(np.mean(v)) for v in values_by_seed.values() if v]
    if not per_seed:
        return 0, float("nan"), float("nan")
    std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
    return len(per_seed), float(np.mean(per_seed)), std


def _metric(record: dict, metric: str, category: str | None) -> float:
    if record["category"] == "all" and category is not None:
        return record["per_category"][category].get(metric, float("nan"))
    return record["metrics"].get(metric, float("nan"))


def _original_protocol(record: dict, metric: str, category: str | None,
                       protocol: str | None = None) -> float:
    """What the original's evaluation protocol reports for ``metric`` (``protocol``: the
    variant's declared protocol where the paper scored another method its own way, e.g. the
    CLS-CNFs paper's FE_PRE-CNFs rows of method cflow). Joint runs: the mean over categories."""
    op = record.get("original_protocol")
    if not op:
        return float("nan")
    values = op.get("by_protocol", {}).get(protocol) if protocol else None
    return (values or op["reported"]).get(metric, float("nan"))


def _published_metric(table: dict, metric: str) -> str:
    declared = table.get("published_metric")
    if isinstance(declared, dict):
        return declared.get(metric, metric)
    return declared if isinstance(declared, str) and len(_metrics_of(table)) == 1 else metric


def _metrics_of(table: dict) -> list[str]:
    return table["metric"] if isinstance(table["metric"], list) else [table["metric"]]


def _published(entry: Any, metric: str) -> Any:
    """A variant's published numbers for ``metric``: the entry itself (one-metric table: a
    number, or {category: number}), or ``entry[metric]`` (multi-metric table)."""
    return entry[metric] if isinstance(entry, dict) and metric in entry else entry


def build_tables(paper: str, profile: str, params: dict, results_dir: Path,
                 value=None) -> dict[str, pd.DataFrame]:
    """Every table of ``paper`` as a tidy DataFrame, keyed by table id. ``value(record, metric,
    category, variant)``, if given, replaces the record's honest metric (companion tables)."""
    spec = load_spec(paper)
    runs = expand_runs(paper, profile, params)
    records = load_records(runs, results_dir)
    block = profile_params(params, paper, profile)
    tolerance = spec.get("tolerance", {})
    seeds = sorted({run.seed for run in runs})
    tables = {}
    for table_id, table in spec["tables"].items():
        if table.get("reproducible", True) is False or table.get("layout") == "complexity":
            continue  # not reproducible, or built from the profiling stage (report.py)
        metrics = _metrics_of(table)
        variants = table.get("columns") or table.get("rows") or {}
        role = block["datasets"][table.get("dataset", spec["variants"][next(iter(variants))].get("dataset", "mvtec_ad"))]
        categories = role_categories(role)
        rows: list[dict[str, Any]] = []

        def cell(metric: str, variant: str, members: list[str]) -> tuple[int, float, float]:
            by_seed = {seed: [] for seed in seeds}
            for seed in seeds:
                joint = records.get((variant, "all", seed))
                for category in members:
                    record = joint or records.get((variant, category, seed))
                    if record is not None:
                        by_seed[seed].append(_metric(record, metric, category) if value is None
                                             else value(record, metric, category, variant))
            return _cell(by_seed)

        def add(row: str, label: str, metric: str, variant: str, members: list[str],
                published: float | None) -> None:
            n, mean, std = cell(metric, variant, members)
            compared = _published_metric(table, metric)
            c_mean, c_std = (mean, std) if compared == metric else cell(compared, variant, members)[1:]
            delta = c_mean - published if published is not None else float("nan")
            within = (abs(delta) <= tolerance[metric]) if (
                published is not None and metric in tolerance and profile == "paper") else None
            rows.append(dict(table=table_id, variant=variant, row=row, label=label, metric=metric,
                             n=n, mean=mean, std=std, published=published, delta=delta,
                             within_tolerance=within, profile=profile, compared_metric=compared,
                             compared_mean=c_mean, compared_std=c_std))

        published = table.get("published", {})
        for metric in metrics:
            for variant, label in variants.items():
                pub = _published(published.get(variant, {}), metric)
                if table.get("layout") == "per_category":
                    for category in categories:
                        add(category, f"{label}, {category}", metric, variant, [category],
                            pub.get(category) if isinstance(pub, dict) else None)
                    for group, members in _category_groups(table, role["dataset"], categories).items():
                        add(group, f"{label}, {group}", metric, variant, members,
                            pub.get(group) if isinstance(pub, dict) else None)
                    add("average", f"{label}, average", metric, variant, categories,
                        pub.get("average") if isinstance(pub, dict) else None)
                else:
                    add(variant, label, metric, variant, categories,
                        pub if not isinstance(pub, dict) else pub.get("average"))
        tables[table_id] = pd.DataFrame(rows, columns=COLUMNS)
    return tables


def build_protocol_tables(paper: str, profile: str, params: dict, results_dir: Path
                          ) -> dict[str, pd.DataFrame]:
    """Per table, its *original protocol* companion: for every row and metric (and the
    paper's own metric variant where the table declares one), the honest value, what the
    original's evaluation protocol would have reported and their difference, in %."""
    spec = load_spec(paper)
    protocol_of = {v: d.get("protocol") for v, d in spec["variants"].items()}
    honest = build_tables(paper, profile, params, results_dir)
    original = build_tables(paper, profile, params, results_dir, value=lambda r, m, c, v:
                            _original_protocol(r, m, c, protocol_of.get(v)))
    from nfbench.protocols import REPORTED_AS

    runs = expand_runs(paper, profile, params)
    records = load_records(runs, results_dir)
    reported_as = {}
    for (variant, _, _), record in records.items():
        op = record.get("original_protocol") or {}
        declared = protocol_of.get(variant)
        reported_as.setdefault(variant, f"{declared}'s scoring of this method: last epoch" if declared
                               else REPORTED_AS.get(op.get("protocol"), "not measured"))
    out = {}
    for table_id, frame in honest.items():
        other = original[table_id]
        rows = []
        for kind in ("mean", "compared"):
            for h, o in zip(frame.itertuples(), other.itertuples()):
                metric = h.metric if kind == "mean" else h.compared_metric
                if kind == "compared" and metric == h.metric:
                    continue
                a = h.mean if kind == "mean" else h.compared_mean
                b = o.mean if kind == "mean" else o.compared_mean
                rows.append(dict(table=table_id, variant=h.variant, row=h.row, label=h.label,
                                 metric=metric, n=h.n, honest=a, original=b, difference=b - a,
                                 reported_as=reported_as.get(h.variant, "—"), profile=profile))
        out[table_id] = pd.DataFrame(rows, columns=PROTOCOL_COLUMNS)
    return out


def write_protocol_tables(tables: dict[str, pd.DataFrame], paper_dir: Path) -> list[Path]:
    """``<paper_dir>/tables/<table>.protocol.csv``, one companion per table."""
    folder = Path(paper_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for table_id, frame in tables.items():
        path = folder / f"{table_id}.protocol.csv"
        frame.to_csv(path, index=False, float_format="%.4f")
        paths.append(path)
    return paths


def write_tables(tables: dict[str, pd.DataFrame], paper_dir: Path) -> list[Path]:
    """Write ``<paper_dir>/tables/<table>.csv`` (one per table), ``<paper_dir>/metrics.json``
    (table → row.metric → mean, for ``dvc metrics show``) and ``<paper_dir>/plots/<table>.csv``
    (label, reproduced, published; for ``dvc plots show``)."""
    paper_dir = Path(paper_dir)
    for sub in ("tables", "plots"):
        (paper_dir / sub).mkdir(parents=True, exist_ok=True)
    paths, summary = [], {}
    for table_id, frame in tables.items():
        path = paper_dir / "tables" / f"{table_id}.csv"
        frame.to_csv(path, index=False, float_format="%.4f")
        paths.append(path)
        # keys: <row>.<metric>, with the variant in front where a row is a category or group
        summary[table_id] = {
            f"{r.row if r.row == r.variant else f'{r.variant}.{r.row}'}.{r.metric}": round(r.mean, 4)
            for r in frame.itertuples() if np.isfinite(r.mean)}
        plot = frame[["label", "metric", "mean", "published"]].rename(columns={"mean": "reproduced"})
        if plot["metric"].nunique() > 1:  # one x label per bar
            plot["label"] = plot["label"] + " [" + plot["metric"] + "]"
        plot.to_csv(paper_dir / "plots" / f"{table_id}.csv", index=False, float_format="%.4f")
    (paper_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return paths
