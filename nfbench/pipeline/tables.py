"""Result records → one tidy table per paper table (CSV), beside the published numbers.

A tidy row is one cell of a paper's table: ``table, variant, row, label, metric, n, mean,
std, published, delta, within_tolerance, profile``. Values are in % like the papers.
``mean ± std`` is over seeds; a group or average row first averages categories within each
seed. ``ci_lo``/``ci_hi`` (``compared_ci_*`` for the paper's metric code) are the 95 % interval
(test-set bootstrap and seed spread, :mod:`nfbench.pipeline.intervals`); ``verdict`` is
*reproduces* / *below* / *above* where the numbers are comparable with a published one.
Nothing here trains: a missing record is an error naming the run.

A table may declare ``published_metric`` (one name, or ``{metric: name}``): the paper's own
metric code that made its published numbers (a variant of :data:`nfbench.metrics.METRIC_VARIANTS`,
e.g. ``pixel_aupr@clscnf``). ``mean``/``std`` stay the official metric; ``compared_metric``,
``compared_mean`` and ``compared_std`` hold the paper's variant, and ``delta`` is
``compared_mean - published``.

Every table also gets an *original protocol* companion (:func:`build_protocol_tables`):
honest (last epoch, no test labels) vs what the original code's evaluation protocol would
have reported, from ``record["original_protocol"]`` (:mod:`nfbench.pipeline.protocols`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfbench.atomic import atomic_path, write_text_atomic
from nfbench.backbones import backbone_label
from nfbench.datasets import DATASETS
from nfbench.errors import UserError
from nfbench.pipeline.params import typed
from nfbench.pipeline.plan import Run, expand_runs
from nfbench.pipeline.record import metric_value, read_record
from nfbench.pipeline.spec import category_groups, load_spec

COLUMNS = ["table", "variant", "row", "label", "metric", "n", "mean", "std", "published", "delta",
           "within_tolerance", "profile", "compared_metric", "compared_mean", "compared_std",
           "kind", "comparable", "same_as", "same_reason", "ci_lo", "ci_hi", "compared_ci_lo",
           "compared_ci_hi", "verdict"]
#: ``kind`` of a tidy row: the paper's method, a reference measured in the same run (the
#: Gaussian baseline), or chance (what a random score gets)
KINDS = ("method", "reference", "chance")
#: chance level of a metric, in %, where it does not depend on the data (AUROC: 50; AUPRO:
#: a random map's PRO equals its FPR, so the area up to FPR 0.3 over 0.3 is 0.15); pixel AUPR's
#: chance is the defect-pixel fraction, read from the records' pixel histograms
CHANCE = {"image_auroc": 50.0, "pixel_auroc": 50.0, "aupro": 15.0}


def comparable_dataset(dataset: str) -> bool:
    """The one rule for comparing with a paper: numbers measured on ``dataset`` can stand
    beside the published ones (Δ, tolerance) unless it is an offline stand-in (its registry
    entry's ``stand_in``). Tables store the answer in their ``comparable`` column; reports and
    figures read that column."""
    spec = DATASETS.get(dataset)
    return not (spec is not None and spec.stand_in)
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
        records[(run.variant, run.category, run.seed)] = read_record(path)
    return records


def _cell(values_by_seed: dict[int, list[float]]) -> tuple[int, float, float]:
    """n, mean and std (over seeds) of per-seed averages, in %."""
    per_seed = [100.0 * float(np.mean([np.nan if x is None else x for x in v]))
                for v in values_by_seed.values() if v]
    if not per_seed:
        return 0, float("nan"), float("nan")
    std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
    return len(per_seed), float(np.mean(per_seed)), std


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


def _published(entry: Any, metric: str) -> Any:
    """A variant's published numbers for ``metric``: the entry itself (one-metric table: a
    number, or {category: number}), or ``entry[metric]`` (multi-metric table)."""
    return entry[metric] if isinstance(entry, Mapping) and metric in entry else entry


def render_label(label: str, config: dict) -> str:
    """A spec label with the settings actually run: ``{input_size}``, ``{input_size//2}``
    (any integer divisor) and ``{backbone}`` are replaced from the run's resolved config."""
    import re

    def size(match: "re.Match") -> str:
        value = config.get("input_size")
        if not isinstance(value, (int, float)):
            return "?"
        return str(int(value) // int(match.group(1) or 1))

    label = re.sub(r"\{input_size(?://(\d+))?\}", size, label)
    if "{backbone}" in label:
        label = label.replace("{backbone}", backbone_label(config.get("backbone")))
    return label


def defect_fraction(results_dir: Path, runs: list[Run], category: str) -> float:
    """Share of defective pixels in ``category``'s test set (chance level of pixel AUPR), from
    any record of that category (its ``data.defect_pixel_fraction``, else the pixel-score
    histograms of its figure material, which a fresh clone lacks); nan without one."""
    for run in runs:
        if run.category != category:
            continue
        path = Path(results_dir) / run.record_path
        if path.is_file():
            fraction = read_record(path).get("data", {}).get("defect_pixel_fraction", {})
            if category in fraction:
                return float(fraction[category])
        path = path.with_suffix(".npz")
        if path.is_file():
            from nfbench.pipeline.experiment import read_examples

            e = read_examples(path)
            if "pixel_hist_defect" in e:
                defect = float(np.sum(e["pixel_hist_defect"]))
                total = defect + float(np.sum(e["pixel_hist_normal"]))
                return defect / total if total else float("nan")
    return float("nan")


def _differing_config(a: dict, b: dict) -> tuple[list[str], list[str]]:
    """Keys whose values differ between two resolved configs, and outputs (``*_chosen``)
    that are equal."""
    keys = sorted(set(a) | set(b))
    differ = [k for k in keys if a.get(k) != b.get(k) and k not in ("device",)]
    same_out = [f"{k} = {a[k]}" for k in keys if k.endswith("_chosen") and a.get(k) == b.get(k)
                and k in a]
    return differ, same_out


def _identical_variants(records: dict, variants: list[str], metrics: list[str],
                        categories: list[str], seeds: list[int]) -> dict[str, tuple[str, str]]:
    """``{variant: (earlier variant, why)}`` for variants whose records equal an earlier
    variant's on every metric, category and seed of a table: rows identical in this run."""
    def values(variant: str) -> list[float] | None:
        out = []
        for seed in seeds:
            joint = records.get((variant, "all", seed))
            for category in categories:
                record = joint or records.get((variant, category, seed))
                if record is None:
                    return None
                out += [metric_value(record, m, category) for m in metrics]
        return out

    found: dict[str, tuple[str, str]] = {}
    seen: list[tuple[str, list[float]]] = []
    for variant in variants:
        mine = values(variant)
        if mine is None or not mine or all(np.isnan(mine)):
            continue
        for other, theirs in seen:
            if other not in found and np.allclose(mine, theirs, rtol=0, atol=1e-12, equal_nan=True):
                a = next(r for (v, _, _), r in records.items() if v == other).get("config", {})
                b = next(r for (v, _, _), r in records.items() if v == variant).get("config", {})
                differ, same_out = _differing_config(a, b)
                why = (f"the runs differ only in {', '.join(differ)}" if differ else
                       "the runs have the same resolved config")
                if same_out:
                    why += f", and both ended with {', '.join(same_out)} on every category"
                found[variant] = (other, why)
                break
        else:
            seen.append((variant, mine))
    return found


def build_tables(paper: str, profile: str, params: dict, results_dir: Path,
                 value=None, references: bool = True) -> dict[str, pd.DataFrame]:
    """Every table of ``paper`` as a tidy DataFrame, keyed by table id. ``value(record, metric,
    category, variant)``, if given, replaces the record's honest metric (companion tables).

    A table's ``references`` (``{variant or "chance": label}``) add reference rows measured
    in the same run (``kind`` reference, e.g. the Gaussian baseline) and chance rows (``kind``
    chance: :data:`CHANCE`, pixel AUPR the defect-pixel fraction); ``references=False`` leaves
    them out. ``comparable`` says whether published and reproduced numbers can be compared
    (the data is no stand-in: the paper profile, or a user's real data); tolerance is judged
    only then. ``same_as``/``same_reason`` name an earlier row whose records are identical on
    every metric, category and seed, and why (the configs' differences)."""
    spec = load_spec(paper)
    runs = expand_runs(paper, profile, params)
    records = load_records(runs, results_dir)
    block = typed(params).block(paper, profile)
    tolerance = spec.tolerance
    seeds = sorted({run.seed for run in runs})
    tables = {}
    for table_id, table in spec.tables.items():
        if not table.built:
            continue  # not reproducible, or built from the profiling stage (pipeline/complexity.py)
        role = block.role(table.dataset)
        categories = role.categories
        comparable = comparable_dataset(role.dataset)
        groups = category_groups(table, role.dataset, categories)
        rows = _table_rows(table_id, table, runs, records, seeds, categories, groups, comparable,
                           tolerance, profile, results_dir, value, references)
        tables[table_id] = pd.DataFrame(rows, columns=COLUMNS)
    return tables


def _chance(metric: str, members: list[str], fractions: dict[str, float]
            ) -> tuple[int, float, float]:
    """(n, level, 0) of a chance row: :data:`CHANCE`, pixel AUPR the categories' mean
    defect-pixel fraction; n = 0 where no level is known."""
    if metric == "pixel_aupr":
        level = 100.0 * float(np.mean([fractions.get(c, np.nan) for c in members]))
    else:
        level = CHANCE.get(metric, float("nan"))
    return (0, level, 0.0) if np.isnan(level) else (1, level, 0.0)


def _variant_cell(records: dict, seeds: list[int], value, metric: str, variant: str,
                  members: list[str]) -> tuple[int, float, float]:
    """(n, mean, std) over seeds of ``variant``'s ``metric`` averaged over ``members`` (a joint
    run's record holds every category); ``value`` replaces the record's honest metric."""
    by_seed = {seed: [] for seed in seeds}
    for seed in seeds:
        joint = records.get((variant, "all", seed))
        for category in members:
            record = joint or records.get((variant, category, seed))
            if record is not None:
                by_seed[seed].append(metric_value(record, metric, category) if value is None
                                     else value(record, metric, category, variant))
    return _cell(by_seed)


def _table_rows(table_id: str, table, runs: list[Run], records: dict, seeds: list[int],
                categories: list[str], groups: dict[str, list[str]], comparable: bool,
                tolerance: dict, profile: str, results_dir: Path, value,
                references: bool) -> list[dict[str, Any]]:
    """The tidy rows of one table (see :func:`build_tables`): per metric, variant (and
    reference) and row (category, group, average; or one averaged row)."""
    metrics = list(table.metrics)
    variants = dict(table.labels)
    rows: list[dict[str, Any]] = []
    kind_of = {v: "method" for v in variants}
    for ref, label in table.references.items() if references else ():
        variants[ref] = label  # validated: chance or a declared variant
        kind_of[ref] = "chance" if ref == "chance" else "reference"
    configs = {}
    for (variant, _, _), record in records.items():
        configs.setdefault(variant, record.get("config", {}))
    run_settings = {run.variant: run.settings for run in runs}
    paths = {(r.variant, r.category, r.seed): Path(results_dir) / r.record_path.with_suffix(".npz")
             for r in runs}
    identical = _identical_variants(records, [v for v in variants if kind_of[v] != "chance"],
                                    metrics, categories, seeds) if value is None else {}
    fractions = {c: defect_fraction(results_dir, runs, c) for c in categories} \
        if "chance" in variants and "pixel_aupr" in metrics else {}

    def cell(metric: str, variant: str, members: list[str]) -> tuple[int, float, float]:
        if variant == "chance":
            return _chance(metric, members, fractions)
        return _variant_cell(records, seeds, value, metric, variant, members)

    def interval(metric: str, variant: str, members: list[str]):
        from nfbench.pipeline.intervals import cell_interval

        return cell_interval(records, paths, variant, members, metric, seeds, value)

    def add(row: str, label: str, metric: str, variant: str, members: list[str],
            published: float | None) -> None:
        n, mean, std = cell(metric, variant, members)
        kind = kind_of[variant]
        if kind == "chance" and n == 0:
            return  # no chance level known for this metric
        compared = metric if kind == "chance" else table.compared_metric(metric)
        c_mean, c_std = (mean, std) if compared == metric else cell(compared, variant, members)[1:]
        delta = c_mean - published if published is not None else float("nan")
        within = (abs(delta) <= tolerance[metric]) if (
            published is not None and metric in tolerance and comparable) else None
        same, why = identical.get(variant, (None, None))
        nan = float("nan")
        iv = interval(metric, variant, members) if kind != "chance" else None
        c_iv = iv if compared == metric else interval(compared, variant, members)
        verdict = None
        if published is not None and comparable and kind == "method" and np.isfinite(c_mean) \
                and (c_iv.known or metric in tolerance):  # no interval, no tolerance: no verdict
            from nfbench.metrics.uncertainty import verdict as judge

            verdict = judge(published, c_iv, tolerance.get(metric))
        rows.append(dict(table=table_id, variant=variant, row=row, label=label, metric=metric,
                         n=n, mean=mean, std=std, published=published, delta=delta,
                         within_tolerance=within, profile=profile, compared_metric=compared,
                         compared_mean=c_mean, compared_std=c_std, kind=kind,
                         comparable=comparable,
                         same_as=render_label(variants[same], configs.get(same, {}))
                         if same else None, same_reason=why,
                         ci_lo=iv.lo if iv else nan, ci_hi=iv.hi if iv else nan,
                         compared_ci_lo=c_iv.lo if c_iv else nan,
                         compared_ci_hi=c_iv.hi if c_iv else nan, verdict=verdict))

    published = table.published
    for metric in metrics:
        for variant, label in variants.items():
            label = render_label(label, {**run_settings.get(variant, {}),
                                         **configs.get(variant, {})})
            pub = _published(published.get(variant, {}), metric)
            if table.layout == "per_category":
                for category in categories:
                    add(category, f"{label}, {category}", metric, variant, [category],
                        pub.get(category) if isinstance(pub, Mapping) else None)
                for group, members in groups.items():
                    add(group, f"{label}, {group}", metric, variant, members,
                        pub.get(group) if isinstance(pub, Mapping) else None)
                add("average", f"{label}, average", metric, variant, categories,
                    pub.get("average") if isinstance(pub, Mapping) else None)
            else:
                add(variant, label, metric, variant, categories,
                    pub if not isinstance(pub, Mapping) else pub.get("average"))
    return rows


def build_protocol_tables(paper: str, profile: str, params: dict, results_dir: Path
                          ) -> dict[str, pd.DataFrame]:
    """Per table, its *original protocol* companion: for every row and metric (and the
    paper's own metric variant where the table declares one), the honest value, what the
    original's evaluation protocol would have reported and their difference, in %."""
    spec = load_spec(paper)
    protocol_of = {name: v.protocol for name, v in spec.variants.items()}
    honest = build_tables(paper, profile, params, results_dir, references=False)
    original = build_tables(paper, profile, params, results_dir, references=False,
                            value=lambda r, m, c, v: _original_protocol(r, m, c, protocol_of.get(v)))
    from nfbench.pipeline.protocols import reported_as as protocol_reports

    reported_by_protocol = protocol_reports()
    runs = expand_runs(paper, profile, params)
    records = load_records(runs, results_dir)
    reported_as = {}
    for (variant, _, _), record in records.items():
        op = record.get("original_protocol") or {}
        declared = protocol_of.get(variant)
        reported_as.setdefault(variant, f"{declared}'s scoring of this method: last epoch" if declared
                               else reported_by_protocol.get(op.get("protocol"), "not measured"))
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


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """A tidy table as CSV (4 decimals), written whole or not at all."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.4f")


def write_protocol_tables(tables: dict[str, pd.DataFrame], paper_dir: Path) -> list[Path]:
    """``<paper_dir>/tables/<table>.protocol.csv``, one companion per table."""
    folder = Path(paper_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for table_id, frame in tables.items():
        path = folder / f"{table_id}.protocol.csv"
        _write_csv(frame, path)
        paths.append(path)
    return paths


def write_tables(tables: dict[str, pd.DataFrame], paper_dir: Path) -> list[Path]:
    """Write ``<paper_dir>/tables/<table>.csv`` (one per table), ``<paper_dir>/metrics.json``
    (the headline numbers only, for ``dvc metrics show``: per table, the average row of each of
    its method's variants as ``<variant>.<metric>`` → mean) and, for ``dvc plots show``,
    ``<paper_dir>/plots/<table>.csv`` (label, metric, kind, reproduced, published) and
    ``<paper_dir>/plots/published_vs_reproduced.csv`` (every cell with both numbers)."""
    paper_dir = Path(paper_dir)
    for sub in ("tables", "plots"):
        (paper_dir / sub).mkdir(parents=True, exist_ok=True)
    paths, summary, pairs = [], {}, []
    for table_id, frame in tables.items():
        path = paper_dir / "tables" / f"{table_id}.csv"
        _write_csv(frame, path)
        paths.append(path)
        heads = frame[frame["row"] == "average"] if (frame["row"] == "average").any() else frame
        heads = heads[heads["kind"] == "method"]  # the chance and reference rows are in the CSV
        summary[table_id] = {f"{r.variant}.{r.metric}": round(r.mean, 4)
                             for r in heads.itertuples() if np.isfinite(r.mean)}
        plot = frame[["label", "metric", "kind", "mean", "published"]].rename(
            columns={"mean": "reproduced"})
        if plot["metric"].nunique() > 1:  # one y label per bar
            plot["label"] = plot["label"] + " [" + plot["metric"] + "]"
        _write_csv(plot, paper_dir / "plots" / f"{table_id}.csv")
        both = frame[frame["published"].notna() & frame["mean"].notna()]
        pairs += [dict(table=table_id, label=r.label, metric=r.metric, published=r.published,
                       reproduced=r.compared_mean if r.compared_metric != r.metric else r.mean,
                       comparable=bool(r.comparable)) for r in both.itertuples()]
    _write_csv(pd.DataFrame(pairs, columns=["table", "label", "metric", "published", "reproduced",
                                            "comparable"]),
               paper_dir / "plots" / "published_vs_reproduced.csv")
    write_text_atomic(paper_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    return paths
