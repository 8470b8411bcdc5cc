"""Markdown building blocks of the reports: number formatting, table cells, the reproduced
vs published table, transcribed comparisons and the network-size (complexity) tables.

Whether a table's numbers can be compared with the paper's is decided once, when the tables
are built (:func:`nfbench.pipeline.tables.comparable`), and read here from the table's
``comparable`` column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from nfbench.pipeline.spec import TableSpec
from nfbench.pipeline.tables import render_label


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"

def interval_text(lo: Any, hi: Any) -> str:
    """`` [lo, hi]`` (a 95 % interval, in points), or nothing where none is known."""
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return ""
    return f" [{lo:.1f}, {hi:.1f}]"

def cell(row: pd.Series, lo: str = "ci_lo", hi: str = "ci_hi") -> str:
    """``mean ± std [lo, hi] (n=k)`` over seeds, [lo, hi] the 95 % interval (test-set
    bootstrap and seeds, where known; ``docs/uncertainty.md``); one seed: ``mean [lo, hi]
    (n=1)``; chance: the level alone."""
    if row["n"] == 0 or math.isnan(row["mean"]):
        return "—"
    if row.get("kind") == "chance":
        return f"{row['mean']:.1f}"
    ci = interval_text(row.get(lo), row.get(hi))
    if int(row["n"]) == 1 or pd.isna(row["std"]):
        return f"{row['mean']:.1f}{ci} (n={int(row['n'])})"
    return f"{row['mean']:.1f} ± {row['std']:.1f}{ci} (n={int(row['n'])})"

#: the sentence every table with intervals carries
INTERVAL_NOTE = ("[lo, hi]: 95 % interval of the reproduced number (stratified bootstrap of the "
                 "test images, per category, all categories jointly for averages; with the "
                 "seed spread where n > 1; `docs/uncertainty.md`); ± is the standard deviation "
                 "over seeds.")

def _verdict(value: Any) -> str:
    return value if isinstance(value, str) and value else "—"

def _within(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return "n/a"
    return "yes" if str(value) in ("True", "true", "1", "1.0") else "**no**"

def is_comparable(frame: pd.DataFrame) -> bool:
    """Published and reproduced numbers of ``frame`` can be compared (no stand-in data)."""
    return "comparable" in frame and bool(frame["comparable"].fillna(False).astype(bool).any())

def table_markdown(frame: pd.DataFrame) -> str:
    """A paper table: published | reproduced | Δ | within tolerance; where the table declares
    the paper's own metric code (``published_metric``), the reproduced value under that code
    is compared with the published one and the official value is shown beside it.

    Where published and reproduced numbers are not comparable (stand-in data: the demo and
    smoke profiles), Δ and tolerance are left out and the published column is for reference.
    Reference rows (``kind`` reference/chance) are set in italics; a row whose records equal an
    earlier row's (``same_as``) says so in a note below the table."""
    comparable = is_comparable(frame)
    variants = "compared_metric" in frame and (frame["compared_metric"].fillna(frame["metric"])
                                               != frame["metric"]).any()
    pub = "published" if comparable else "published (for reference; not comparable)"
    head = ["row", "metric", pub]
    if variants:
        head += ["reproduced, paper's metric code (mean ± std [95 % interval])"] + (["Δ"] if comparable else []) \
            + ["reproduced, official metric"]
    else:
        head += ["reproduced (mean ± std [95 % interval])"] + (["Δ"] if comparable else [])
    head += ["within tolerance", "verdict"] if comparable else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: dict[tuple[str, str], int] = {}
    for _, row in frame.iterrows():
        published = row["published"] if not pd.isna(row["published"]) else None
        delta = fmt(row['delta']) if published is not None else '—'
        kind = row.get("kind") if isinstance(row.get("kind"), str) else "method"
        label = str(row["label"])
        if kind != "method":
            label = f"*{label}*"
        same = row.get("same_as")
        if isinstance(same, str) and same:
            key = (same, str(row.get("same_reason") or ""))
            notes.setdefault(key, len(notes) + 1)
            label += f" [= ({notes[key]})]"
        cells = [label, row["metric"], fmt(published)]
        if variants and row["compared_metric"] != row["metric"]:
            compared = row.copy()
            compared["mean"], compared["std"] = row["compared_mean"], row["compared_std"]
            cells += [f"{cell(compared, 'compared_ci_lo', 'compared_ci_hi')} [`{row['compared_metric']}`]"] + \
                ([delta] if comparable else []) + [cell(row)]
        elif variants:
            cells += [cell(row)] + ([delta] if comparable else []) + ["(same)"]
        else:
            cells += [cell(row)] + ([delta] if comparable else [])
        cells += [_within(row["within_tolerance"]), _verdict(row.get("verdict"))] if comparable else []
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if notes:
        lines.append("")
        for (same, why), k in notes.items():
            lines.append(f"({k}) Identical to \"{same}\" on every metric, category and seed of "
                         f"this run{': ' + why if why else ''}.")
    return "\n".join(lines)

def comparison_markdown(comparison: Mapping[str, Any]) -> str:
    """Other methods' published numbers, as transcribed (not re-run): ``{method: number}`` or
    ``{method: {column: number}}`` (a table's read-only ``comparison``)."""
    keys = sorted({k for v in comparison.values() if isinstance(v, Mapping) for k in v})
    if not keys:
        lines = ["| method | published |", "|---|---|"]
        lines += [f"| {name} | {fmt(value)} |" for name, value in comparison.items()]
        return "\n".join(lines)
    lines = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, values in comparison.items():
        lines.append(f"| {name} | " + " | ".join(fmt(values.get(k)) for k in keys) + " |")
    return "\n".join(lines)

def complexity_table_markdown(table: TableSpec, table_id: str, profile_path: Path
                              ) -> list[str]:
    """A size/speed table of named networks (``layout: complexity``) from the profiling stage:
    published | measured, with ratios to the table's ``reference`` row."""
    if not profile_path.is_file():
        return ["*Not profiled yet: run `nfbench profile`.*", ""]
    entries = [e for e in json.loads(profile_path.read_text()) if e.get("table") == table_id]
    published, reference = table.published, table.reference
    out = []
    for label in dict.fromkeys(e["label"] for e in entries):
        rows = {e["component"]: e for e in entries if e["label"] == label}
        ref = rows.get(reference, {})
        first = next(iter(rows.values()))
        device = next((e["device_name"] for e in rows.values() if "device_name" in e), "not timed")
        out += [f"**{label}** (backbone `{first.get('backbone', '?')}`, {first['input_size']} px, "
                f"batch {first['batch_size']}, {device}; ratios relative to {reference}):", "",
                "| network | size [MB] published | size [MB] | size ratio published | size ratio "
                "| GMACs/image (fvcore) | fps published | fps | fps ratio published | fps ratio |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for component, name in table.labels.items():
            name = render_label(name, {"backbone": first.get("backbone")})
            e, pub = rows.get(component, {}), published.get(component, {})
            size, fps = e.get("size_mb"), e.get("images_per_second")
            size_ratio = size / ref["size_mb"] if size and ref.get("size_mb") else None
            fps_ratio = fps / ref["images_per_second"] if fps and ref.get("images_per_second") else None
            out.append(f"| {name} | {fmt(pub.get('size_mb'), 0)} | {fmt(size)} | "
                       f"{fmt(pub.get('size_ratio'), 2)} | {fmt(size_ratio, 2)} | "
                       f"{fmt(e.get('gmacs_fvcore'), 2)} | {fmt(pub.get('fps'), 2)} | "
                       f"{fmt(fps, 2)} | {fmt(pub.get('fps_ratio'), 2)} | {fmt(fps_ratio, 2)} |")
        out.append("")
    if table.note:
        out += [table.note, ""]
    return out
