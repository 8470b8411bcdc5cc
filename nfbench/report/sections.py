"""Report sections measured on this run's tables and records: the questions a spec asks,
how much the original evaluation protocols add, complexity and speed, and the oracle
threshold of the prediction maps."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfbench.pipeline.spec import PaperSpec
from nfbench.report.markdown import fmt


def oracle_threshold(e: Any) -> float | None:
    """The pixel threshold with the best F1 over the whole test set, at the resolution of the
    record's pixel-score histograms (None without them). An ORACLE: it uses the test masks,
    as the papers' prediction maps do (CLS-CNFs Fig. 5-9)."""
    if "pixel_hist_edges" not in e:
        return None
    normal, defect = np.asarray(e["pixel_hist_normal"]), np.asarray(e["pixel_hist_defect"])
    tp = np.cumsum(defect[::-1])[::-1]  # defective pixels scoring >= edges[k]
    fp = np.cumsum(normal[::-1])[::-1]
    f1 = 2 * tp / np.maximum(2 * tp + fp + (defect.sum() - tp), 1)
    return float(np.asarray(e["pixel_hist_edges"])[int(np.argmax(f1))])

def questions_section(spec: PaperSpec, tables_dir: Path, difference=None) -> list[str]:
    """Answers, measured on this run's tables, to the questions a spec asks (``questions``:
    does variant ``better`` beat ``than`` in ``table`` (on its ``row``, for per-category
    tables), metric by metric?). ``difference(question, metric)`` gives the 95 % interval of
    better − than (:func:`nfbench.pipeline.intervals.cell_difference`, in points): the answer
    is *yes*/*no* only where it excludes zero, else *not resolved*; without it, every answer
    is *not resolved*."""
    from nfbench.metrics.uncertainty import resolved
    from nfbench.report.markdown import interval_text

    if not spec.questions:
        return []
    out = ["## Questions answered by this run", "",
           "*helps?* is *yes* or *no* only where the 95 % interval of the difference (paired "
           "bootstrap of the same test images, with the seed spread where n > 1; "
           "`docs/uncertainty.md`) excludes zero; otherwise *not resolved*.", ""]
    for q in spec.questions:
        frame = pd.read_csv(tables_dir / f"{q.table}.csv")
        if q.row is not None:  # per-category tables: which row (e.g. average); else one row a variant
            frame = frame[frame["row"] == q.row]
        lines = []
        for metric in dict.fromkeys(frame["metric"]):
            by_variant = frame[frame["metric"] == metric].set_index("variant")["mean"]
            a, b = by_variant.get(q.better), by_variant.get(q.than)
            if a is None or b is None or math.isnan(a) or math.isnan(b):
                continue
            diff = difference(q, metric) if difference is not None else None
            verdict = ("yes" if a > b else "no") if diff is not None and resolved(diff) \
                else "not resolved"
            ci = interval_text(diff.lo, diff.hi) if diff is not None else ""
            lines.append(f"| {metric} | {b:.1f} | {a:.1f} | {a - b:+.1f}{ci or ' [—]'} | {verdict} |")
        where = f"{q.row} row of {q.table}" if q.row is not None else q.table
        out += [f"**{q.question}** ({q.than} → {q.better}, {where})", "",
                f"| metric | {q.than} | {q.better} | Δ [95 % interval] | helps? |",
                "|---|---|---|---|---|", *lines, ""]
        if q.note:
            out += [q.note, ""]
    return out

def protocol_section(spec: PaperSpec, tables_dir: Path) -> list[str]:
    """"How much the original protocol adds": per table, the honest number (last epoch, no
    test labels) beside what the original code's evaluation protocol would have reported in
    the same run (``<table>.protocol.csv``, :func:`nfbench.pipeline.tables.build_protocol_tables`)."""
    from nfbench.metrics import METRIC_VARIANTS
    from nfbench.pipeline.protocols import descriptions

    described = descriptions()
    companions = {t: tables_dir / f"{t}.protocol.csv" for t in spec.tables}
    companions = {t: p for t, p in companions.items() if p.is_file()}
    if not companions:
        return []
    protocols = {spec.method} | spec.methods | {v.protocol for v in spec.variants.values()
                                                 if v.protocol}
    out = ["## How much the original protocol adds", "",
           "Our numbers are honest: the last epoch, scored without test labels. The original "
           "codes chose what they printed on the test set. Each run also measured, on the same "
           "model and test set, what the original's protocol would have reported:", ""]
    out += [f"- **{name}**: {described[name]}" for name in sorted(protocols) if name in described]
    variants = sorted({m for f in companions.values() for m in pd.read_csv(f)["metric"]
                       if m in METRIC_VARIANTS})
    out += [f"- `{m}`: {METRIC_VARIANTS[m]}" for m in variants]
    out += ["", "Difference = original protocol − honest, in points (%). Selection points, both "
            "normalisations and the chosen w of every run are in its record "
            "(`original_protocol`). Metrics an original never reported (CS-Flow: everything "
            "but image AUROC) have no row. Where a variant's w was chosen by the authors on "
            "the test set, its honest side is the run whose w was chosen on synthetic "
            "validation defects (`*_w_synthetic`), and the authors' w is one more protocol "
            "row.", ""]
    for table_id, path in companions.items():
        frame = pd.read_csv(path)
        frame = frame[frame["n"] > 0]
        frame = _honest_w(_reported_only(frame))
        if frame.empty:
            continue
        # the paper's title names the paper's data; the rows are this profile's categories
        out += [f"**{table_id}** (paper: *{spec.tables[table_id].title}*)", "",
                "| row | metric | honest | original protocol | difference | as the original reported |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r.label} | {r.metric} | {fmt(r.honest)} | {fmt(r.original)} | "
                f"{'—' if pd.isna(r.difference) else f'{r.difference:+.1f}'} | {r.reported_as} |"
                for r in frame.itertuples()]
        out.append("")
    return out

#: the metrics each original code printed (a protocol row of another metric would report
#: something the original never reported); protocols not listed printed every metric here
ORIGINAL_METRICS = {"csflow": ("image_auroc",)}


def _reported_only(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the rows of metrics the row's original protocol never reported."""
    from nfbench.pipeline.protocols import reported_as

    protocol_of = {text: name for name, text in reported_as().items()}
    keep = [m in ORIGINAL_METRICS.get(protocol_of.get(r, ""), (m,))
            for m, r in zip(frame["metric"], frame["reported_as"])]
    return frame[keep]


def _synthetic_partner(variant: str, variants: set[str]) -> str | None:
    """``full`` → ``full_w_synthetic`` (``full_btad`` → ``full_w_synthetic_btad``), if run."""
    for partner in (variant.replace("full", "full_w_synthetic", 1),):
        if partner != variant and partner in variants:
            return partner
    return None


def _honest_w(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of a variant whose w the authors chose on the test set (one with a
    ``*_w_synthetic`` partner in the table) take the partner's honest value (w without test
    labels) and get one more protocol row: the authors' w, against that honest value."""
    variants = set(frame["variant"])
    rows = []
    for r in frame.to_dict("records"):
        partner = _synthetic_partner(r["variant"], variants)
        if partner is None:
            rows.append(r)
            continue
        match = frame[(frame["variant"] == partner) & (frame["row"] == r["row"].replace(
            r["variant"], partner)) & (frame["metric"] == r["metric"])] if r["row"] == r["variant"] \
            else frame[(frame["variant"] == partner) & (frame["row"] == r["row"]) &
                       (frame["metric"] == r["metric"])]
        if match.empty:
            rows.append(r)
            continue
        honest = float(match["honest"].iloc[0])
        rows.append({**r, "label": f"{r['label']} (honest: w from synthetic validation)",
                     "honest": honest, "difference": r["original"] - honest})
        rows.append({**r, "label": f"{r['label']}, the authors' per-category w",
                     "honest": honest, "original": r["honest"],
                     "difference": r["honest"] - honest,
                     "reported_as": "the authors' w (chosen on the test set), last epoch"})
    return pd.DataFrame(rows, columns=frame.columns)


def complexity_section(spec: PaperSpec, profile_path: Path, main_records: list[dict],
                       all_records: list[dict] | None = None) -> list[str]:
    out = ["## Complexity and speed", ""]
    published = spec.complexity.published
    if published:
        out += ["Published: " + ", ".join(f"{k} = {v}" for k, v in published.items()), ""]
    if profile_path.is_file():
        entries = json.loads(profile_path.read_text())
        out += ["FLOPs per image: fvcore counts one multiply-add as one flop (so its column is "
                "GMACs); torch's FlopCounterMode counts two. Operators neither counts "
                "(element-wise: exp, atan, add, ...) are listed below the table. fvcore traces "
                "the network by running it (minutes at the paper's size on a CPU), so rows "
                "that are counted but not timed have torch's count only (—).", "",
                "| configuration | input | GMACs (fvcore) | GFLOPs (torch) | parameters [M] | size [MB] | images/s | batch | device |",
                "|---|---|---|---|---|---|---|---|---|"]
        skipped = set()
        entries = [e for e in entries if "table" not in e]  # network tables are rendered above
        for e in entries:
            skipped.update(e.get("fvcore_skipped_ops", []))
            out.append(f"| {e['label']} | {e['input_size']} | {fmt(e['gmacs_fvcore'], 2)} | "
                       f"{e['gflops_torch']:.2f} | {e['parameters'] / 1e6:.1f} | {e['size_mb']:.1f} | "
                       f"{fmt(e.get('images_per_second'), 2)} | {e['batch_size']} | "
                       f"{e.get('device_name', '—')} |")
        out += ["", f"Not counted by fvcore: {', '.join(sorted(skipped)) or 'none'}.", ""]
        paper_entry = next((e for e in entries if e["label"] == "paper configuration"), None)
        if published.get("flops_per_image") and paper_entry:
            flops = float(published["flops_per_image"]) / 1e9
            macs, by = paper_entry["gmacs_fvcore"], "fvcore"
            if macs is None:  # count-only row: torch's multiply-adds (its FLOPs / 2)
                macs, by = paper_entry["gflops_torch"] / 2, "torch's count / 2"
            out += [f"Published {flops:.2f} G FLOPs per image vs the paper configuration here: "
                    f"{macs:.2f} GMACs ({by}; {macs / flops:.2f}× "
                    f"if the paper counted multiply-adds once) or {paper_entry['gflops_torch']:.2f} "
                    f"GFLOPs ({paper_entry['gflops_torch'] / flops:.2f}× if twice). The deviations "
                    "below say what we know of the gap.", ""]
    if main_records:
        fits = [r["timing"]["fit_seconds"] for r in main_records]
        device = main_records[0]["timing"]["device"]
        if any(r.get("config", {}).get("reuse_stages") for r in main_records):
            # a run that found its trained stages in the stage cache records loading time
            method = main_records[0]["method"]
            longest = {}
            for r in all_records or main_records:
                if r["method"] == method:
                    c = r["category"]
                    longest[c] = max(longest.get(c, 0.0), r["timing"]["fit_seconds"])
            out += [f"Fit time of the main variant's runs (this run, {device}): median "
                    f"{np.median(fits):.1f} s over {len(fits)} runs. **Not training time**: "
                    "with stage reuse (`reuse_stages`), a run whose trained stages were already "
                    "in the stage cache records the time to load them. The longest recorded "
                    f"fit of any `{method}` run per category (the run that trained the shared "
                    f"stages, or one training more): median {np.median(list(longest.values())):.1f} s "
                    f"over {len(longest)} categories.", ""]
        else:
            out += [f"Training time per category (this run, {device}): "
                    f"median {np.median(fits):.1f} s over {len(fits)} runs.", ""]
    return out
