"""Result records → one tidy table per paper table (CSV), beside the published numbers.

A tidy row is one cell of a paper's table: ``table, variant, row, label, metric, n, mean,
std, published, delta, within_tolerance, profile``. Values are in % like the papers.
``mean ± std`` is over seeds; a group or average row first averages categories within each
seed. Nothing here trains: a missing record is an error naming the run.
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
           "within_tolerance", "profile"]


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
        return record["per_category"][category][metric]
    return record["metrics"][metric]


def _published(entry: Any, metric: str) -> Any:
    """A variant's published numbers for ``metric``: the entry itself (one-metric table: a
    number, or {category: number}), or ``entry[metric]`` (multi-metric table)."""
    return entry[metric] if isinstance(entry, dict) and metric in entry else entry


def build_tables(paper: str, profile: str, params: dict, results_dir: Path) -> dict[str, pd.DataFrame]:
    """Every table of ``paper`` as a tidy DataFrame, keyed by table id."""
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
        metrics = table["metric"] if isinstance(table["metric"], list) else [table["metric"]]
        variants = table.get("columns") or table.get("rows") or {}
        role = block["datasets"][table.get("dataset", spec["variants"][next(iter(variants))].get("dataset", "mvtec_ad"))]
        categories = role_categories(role)
        rows: list[dict[str, Any]] = []

        def add(row: str, label: str, metric: str, variant: str, members: list[str],
                published: float | None) -> None:
            by_seed = {seed: [] for seed in seeds}
            for seed in seeds:
                joint = records.get((variant, "all", seed))
                for category in members:
                    record = joint or records.get((variant, category, seed))
                    if record is not None:
                        by_seed[seed].append(_metric(record, metric, category))
            n, mean, std = _cell(by_seed)
            delta = mean - published if published is not None else float("nan")
            within = (abs(delta) <= tolerance[metric]) if (
                published is not None and metric in tolerance and profile == "paper") else None
            rows.append(dict(table=table_id, variant=variant, row=row, label=label, metric=metric,
                             n=n, mean=mean, std=std, published=published, delta=delta,
                             within_tolerance=within, profile=profile))

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
