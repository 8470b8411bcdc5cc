"""Markdown reports (``reports/<paper>.md``) from result records, tables and the spec only.

Nothing here trains or scores: a report reads the tidy tables written by
:mod:`nfbench.tables`, the records under ``results/<paper>/runs`` (for provenance, timing and
figure material), the profiling output and ``benchmarks/<paper>.yaml`` (published numbers,
deviations). Figures are PNGs next to the Markdown.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nfbench.backbones import BACKBONES  # noqa: E402
from nfbench.datasets import DATASETS  # noqa: E402
from nfbench.plan import expand_runs, load_spec, main_variant  # noqa: E402

DEMO_WARNING = ("> **Demo profile.** These numbers come from the offline demo set (scikit-image "
                "photographs with generated defects) and the bundled EfficientNet-Lite0, with "
                "CPU budgets. They check that the code runs end to end; they are **not "
                "comparable** to the published numbers, so Δ is shown for orientation only and "
                "no tolerance is judged.")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _cell(row: pd.Series) -> str:
    if row["n"] == 0 or math.isnan(row["mean"]):
        return "—"
    return f"{row['mean']:.1f} ± {row['std']:.1f} (n={int(row['n'])})"


def _within(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return "n/a"
    return "yes" if str(value) in ("True", "true", "1", "1.0") else "**no**"


def table_markdown(frame: pd.DataFrame) -> str:
    """A paper table: published | reproduced | Δ | within tolerance; where the table declares
    the paper's own metric code (``published_metric``), the reproduced value under that code
    is compared with the published one and the official value is shown beside it."""
    variants = "compared_metric" in frame and (frame["compared_metric"].fillna(frame["metric"])
                                               != frame["metric"]).any()
    if variants:
        lines = ["| row | metric | published | reproduced, paper's metric code (mean ± std) | Δ | "
                 "reproduced, official metric | within tolerance |", "|---|---|---|---|---|---|---|"]
    else:
        lines = ["| row | metric | published | reproduced (mean ± std) | Δ | within tolerance |",
                 "|---|---|---|---|---|---|"]
    for _, row in frame.iterrows():
        published = row["published"] if not pd.isna(row["published"]) else None
        delta = _fmt(row['delta']) if published is not None else '—'
        if variants and row["compared_metric"] != row["metric"]:
            compared = row.copy()
            compared["mean"], compared["std"] = row["compared_mean"], row["compared_std"]
            lines.append(f"| {row['label']} | {row['metric']} | {_fmt(published)} | "
                         f"{_cell(compared)} [`{row['compared_metric']}`] | {delta} | {_cell(row)} | "
                         f"{_within(row['within_tolerance'])} |")
        elif variants:
            lines.append(f"| {row['label']} | {row['metric']} | {_fmt(published)} | {_cell(row)} | "
                         f"{delta} | (same) | {_within(row['within_tolerance'])} |")
        else:
            lines.append(f"| {row['label']} | {row['metric']} | {_fmt(published)} | {_cell(row)} | "
                         f"{delta} | {_within(row['within_tolerance'])} |")
    return "\n".join(lines)


def comparison_markdown(comparison: dict[str, Any]) -> str:
    """Other methods' published numbers, as transcribed (not re-run)."""
    keys = sorted({k for v in comparison.values() if isinstance(v, dict) for k in v})
    if not keys:
        lines = ["| method | published |", "|---|---|"]
        lines += [f"| {name} | {_fmt(value)} |" for name, value in comparison.items()]
        return "\n".join(lines)
    lines = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, values in comparison.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(values.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def _bar_figure(frame: pd.DataFrame, title: str, path: Path) -> None:
    """Published vs reproduced, one pair of bars per row; one panel per metric."""
    metrics = list(dict.fromkeys(frame["metric"]))
    width = max(4.0, 0.45 * frame.groupby("metric").size().max() + 2)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(width, 4.0 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        rows = frame[frame["metric"] == metric]
        x = np.arange(len(rows))
        published = rows["published"].astype(float).values
        ax.bar(x - 0.2, published, 0.4, label="published")
        ax.bar(x + 0.2, rows["mean"], 0.4, yerr=rows["std"], label="reproduced")
        ax.set_xticks(x, [str(r) for r in rows["label"]], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(f"{metric} [%]", fontsize=8)
        low = np.nanmin(np.r_[rows["mean"].values, published, [100.0]])
        ax.set_ylim(max(0.0, low - 10), 101)
        ax.legend(fontsize=7)
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def _maps_figure(examples: dict[str, np.lib.npyio.NpzFile], path: Path) -> None:
    """Per category, a few test images with the ground truth outlined, their anomaly maps and,
    when the record has pixel histograms, the prediction maps at the oracle threshold."""
    count = max(len(e["example_index"]) for e in examples.values())
    thresholds = {c: oracle_threshold(e) for c, e in examples.items()}
    per = 3 if all(t is not None for t in thresholds.values()) else 2
    fig, axes = plt.subplots(per * len(examples), count,
                             figsize=(1.6 * count, 1.6 * per * len(examples)), squeeze=False)
    for r, (category, e) in enumerate(examples.items()):
        for c in range(count):
            cells = [axes[per * r + k, c] for k in range(per)]
            for ax in cells:
                ax.axis("off")
            if c >= len(e["example_index"]):
                continue
            mask = e["example_masks"][c]
            cells[0].imshow(np.transpose(e["example_images"][c].astype(np.float32), (1, 2, 0)))
            cells[1].imshow(e["example_maps"][c], cmap="jet")
            if per == 3:
                cells[2].imshow(e["example_maps"][c] >= thresholds[category], cmap="gray")
            for ax in cells[::2]:
                if mask.any():
                    ax.contour(mask, levels=[0.5], colors="red", linewidths=0.6)
            if c == 0:
                cells[0].set_title(category, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _histogram_figure(examples: dict[str, Any], path: Path) -> None:
    """Normal vs defective pixel scores over the whole test set (as CLS-CNFs' Fig. 7)."""
    fig, axes = plt.subplots(1, len(examples), figsize=(3.0 * len(examples), 2.6), squeeze=False)
    for ax, (category, e) in zip(axes[0], examples.items()):
        edges = e["pixel_hist_edges"]
        for key, label in (("pixel_hist_normal", "normal pixels"), ("pixel_hist_defect", "defect pixels")):
            counts = e[key].astype(float)
            ax.stairs(counts / max(counts.sum(), 1.0), edges, label=label, fill=True, alpha=0.5)
        ax.set_title(category, fontsize=8)
        ax.set_xlabel("pixel anomaly score", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0, 0].set_ylabel("share of pixels", fontsize=7)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _roc_figure(examples: dict[str, Any], path: Path) -> None:
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    for category, e in examples.items():
        fpr, tpr, _ = roc_curve(e["labels"], e["image_scores"])
        ax.plot(fpr, tpr, label=category)
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set_xlabel("false positive rate"), ax.set_ylabel("true positive rate")
    ax.set_title("image-level ROC", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _provenance(records: list[dict]) -> list[str]:
    env = records[0]["environment"]
    backbones = sorted({r["config"].get("backbone", "") for r in records} - {""})
    datasets = sorted({r["dataset"] for r in records})
    commits = sorted({str(r["environment"].get("git_commit")) for r in records})
    created = sorted(r["created"] for r in records)
    lines = [f"- **profile**: `{records[0]['profile']}`"]
    for name in datasets:
        spec = DATASETS.get(name)
        sources = ", ".join(f"{a.url} (sha256 `{a.sha256 or 'not published; file list checked'}`)"
                            for a in spec.archives) if spec and spec.archives else \
            "built locally by `nfbench data download demo` (seeded generator)"
        lines.append(f"- **dataset** `{name}`: {sources}")
    for name in backbones:
        spec = BACKBONES.get(name)
        lines.append(f"- **backbone** `{name}`: {spec.weights_tag if spec else '?'}; "
                     f"{spec.note if spec else ''}")
    lines += [f"- **hardware**: {env.get('gpu') or env.get('cpu')} ({env.get('cpu_threads')} torch thread(s) per run), "
              f"device `{records[0]['timing']['device']}`",
              f"- **software**: python {env['python']}, torch {env['torch']}, timm {env['timm']}, "
              f"numpy {env['numpy']}, nfbench {env['nfbench']}",
              f"- **git commit(s) of the runs**: {', '.join(commits)}",
              f"- **records created**: {created[0]} … {created[-1]} (UTC). DVC reruns a run "
              "only when its code, data or parameters change; a record older than this "
              "report's date was restored from DVC's cache, not recomputed.",
              f"- **report generated**: {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}"]
    return lines


def write_report(paper: str, profile: str, params: dict, results_dir: Path,
                 reports_dir: Path) -> Path:
    """Write ``reports/<paper>.md`` and its figures; returns the Markdown path."""
    spec = load_spec(paper)
    results_dir, reports_dir = Path(results_dir), Path(reports_dir)
    figures = reports_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    runs = expand_runs(paper, profile, params)
    records = [json.loads((results_dir / r.record_path).read_text()) for r in runs]
    out = [f"# {spec['title']}", "",
           f"Reproduction report for `{paper}` ({spec.get('source', '')}). Generated by "
           "`nfbench report` from result records and `benchmarks/" + paper + ".yaml`; "
           "do not edit by hand.", ""]
    if profile != "paper":
        out += [DEMO_WARNING, ""]
    out += ["## Provenance", ""] + _provenance(records) + [""]

    tables_dir = results_dir / paper / "tables"
    for table_id, table in spec["tables"].items():
        out += [f"## {table['title']}", ""]
        if table.get("reproducible", True) is False:
            out += [f"**Not reproducible here**: {table.get('reason', '')}", ""]
            continue
        if table.get("layout") == "complexity":
            out += complexity_table_markdown(table, table_id, results_dir / paper / "profile.json")
            continue
        frame = pd.read_csv(tables_dir / f"{table_id}.csv")
        out += [table_markdown(frame), ""]
        if table.get("note"):
            out += [table["note"], ""]
        if table.get("comparison"):
            out += ["Published numbers of the methods the paper compares with (transcribed, "
                    "not re-run):", "", comparison_markdown(table["comparison"]), ""]
        plotted = frame[frame["published"].notna() | (frame["n"] > 0)]
        if len(plotted) >= 2:
            png = figures / f"{paper}_{table_id}.png"
            _bar_figure(plotted, table["title"], png)
            out += [f"![{table['title']}](figures/{png.name})", ""]

    main = main_variant(spec)
    examples = {r.category: np.load(results_dir / r.record_path.with_suffix(".npz"))
                for r in runs if r.variant == main and r.seed == runs[0].seed}
    if examples:
        maps_png, roc_png = figures / f"{paper}_maps.png", figures / f"{paper}_roc.png"
        _maps_figure(examples, maps_png)
        _roc_figure(examples, roc_png)
        out += ["## Anomaly maps, ROC curves and pixel-score histograms", "",
                f"Variant `{main}`: per category, test images (ground truth outlined in "
                "red), the method's anomaly maps and, below them, the prediction maps at the "
                "pixel threshold with the best F1 over the test set (an oracle threshold, as "
                "the papers' prediction maps; found at the resolution of 60-bin score "
                "histograms).", "",
                f"![anomaly maps](figures/{maps_png.name})", "", f"![ROC](figures/{roc_png.name})", ""]
        if all("pixel_hist_edges" in e for e in examples.values()):
            hist_png = figures / f"{paper}_pixel_histograms.png"
            _histogram_figure(examples, hist_png)
            out += ["Scores of normal and defective pixels over every test image, each "
                    "histogram normalised to sum 1:", "",
                    f"![pixel-score histograms](figures/{hist_png.name})", ""]

    from nfbench.peers.report import peers_section  # "Ours vs anomalib 2.7, same features"
    out += peers_section(paper, results_dir)
    out += _questions_section(spec, tables_dir)
    out += protocol_section(spec, tables_dir)
    out += _complexity_section(spec, results_dir / paper / "profile.json",
                               [r for r in records if r["variant"] == main])
    out += ["## Deviations from the paper", ""]
    out += [f"- **{d['what']}**: {d['why']}" for d in spec.get("deviations", [])] + [""]
    out += ["## Runs", "", "| run | image AUROC | fit [s] | created | commit |", "|---|---|---|---|---|"]
    out += [f"| {r['run_id']} | {r['metrics']['image_auroc']:.4f} | {r['timing']['fit_seconds']:.1f} | "
            f"{r['created']} | {str(r['environment'].get('git_commit'))[:12]} |" for r in records]
    path = reports_dir / f"{paper}.md"
    path.write_text("\n".join(out) + "\n")
    return path


def complexity_table_markdown(table: dict, table_id: str, profile_path: Path) -> list[str]:
    """A size/speed table of named networks (``layout: complexity``) from the profiling stage:
    published | measured, with ratios to the table's ``reference`` row."""
    if not profile_path.is_file():
        return ["*Not profiled yet: run `nfbench profile`.*", ""]
    entries = [e for e in json.loads(profile_path.read_text()) if e.get("table") == table_id]
    published = table.get("published", {})
    reference = table.get("reference")
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
        for component, name in table["rows"].items():
            e, pub = rows.get(component, {}), published.get(component, {})
            size, fps = e.get("size_mb"), e.get("images_per_second")
            size_ratio = size / ref["size_mb"] if size and ref.get("size_mb") else None
            fps_ratio = fps / ref["images_per_second"] if fps and ref.get("images_per_second") else None
            out.append(f"| {name} | {_fmt(pub.get('size_mb'), 0)} | {_fmt(size)} | "
                       f"{_fmt(pub.get('size_ratio'), 2)} | {_fmt(size_ratio, 2)} | "
                       f"{_fmt(e.get('gmacs_fvcore'), 2)} | {_fmt(pub.get('fps'), 2)} | "
                       f"{_fmt(fps, 2)} | {_fmt(pub.get('fps_ratio'), 2)} | {_fmt(fps_ratio, 2)} |")
        out.append("")
    if table.get("note"):
        out += [table["note"], ""]
    return out


def _questions_section(spec: dict, tables_dir: Path) -> list[str]:
    """Answers, measured on this run's tables, to the questions a spec asks (``questions``:
    does variant ``better`` beat ``than`` in ``table`` (on its ``row``, for per-category
    tables), metric by metric?)."""
    questions = spec.get("questions", [])
    if not questions:
        return []
    out = ["## Questions answered by this run", ""]
    for q in questions:
        frame = pd.read_csv(tables_dir / f"{q['table']}.csv")
        if "row" in q:  # per-category tables: which row (e.g. average); else one row a variant
            frame = frame[frame["row"] == q["row"]]
        lines = []
        for metric in dict.fromkeys(frame["metric"]):
            by_variant = frame[frame["metric"] == metric].set_index("variant")["mean"]
            a, b = by_variant.get(q["better"]), by_variant.get(q["than"])
            if a is None or b is None or math.isnan(a) or math.isnan(b):
                continue
            verdict = "yes" if a > b else "no"
            lines.append(f"| {metric} | {b:.1f} | {a:.1f} | {a - b:+.1f} | {verdict} |")
        where = f"{q['row']} row of {q['table']}" if "row" in q else q["table"]
        out += [f"**{q['question']}** ({q['than']} → {q['better']}, {where})", "",
                f"| metric | {q['than']} | {q['better']} | Δ | helps? |", "|---|---|---|---|---|",
                *lines, ""]
        if q.get("note"):
            out += [q["note"], ""]
    return out


def protocol_section(spec: dict, tables_dir: Path) -> list[str]:
    """"How much the original protocol adds": per table, the honest number (last epoch, no
    test labels) beside what the original code's evaluation protocol would have reported in
    the same run (``<table>.protocol.csv``, :func:`nfbench.tables.build_protocol_tables`)."""
    from nfbench.metrics import METRIC_VARIANTS
    from nfbench.protocols import DESCRIPTIONS

    companions = {t: tables_dir / f"{t}.protocol.csv" for t in spec["tables"]}
    companions = {t: p for t, p in companions.items() if p.is_file()}
    if not companions:
        return []
    methods = {spec.get("method")} | {v.get("method", spec.get("method"))
                                      for v in spec["variants"].values()}
    protocols = methods | {v["protocol"] for v in spec["variants"].values() if v.get("protocol")}
    out = ["## How much the original protocol adds", "",
           "Our numbers are honest: the last epoch, scored without test labels. The original "
           "codes chose what they printed on the test set. Each run also measured, on the same "
           "model and test set, what the original's protocol would have reported:", ""]
    out += [f"- **{name}**: {DESCRIPTIONS[name]}" for name in sorted(protocols) if name in DESCRIPTIONS]
    variants = sorted({m for f in companions.values() for m in pd.read_csv(f)["metric"]
                       if m in METRIC_VARIANTS})
    out += [f"- `{m}`: {METRIC_VARIANTS[m]}" for m in variants]
    out += ["", "Difference = original protocol − honest, in points (%). Selection points, both "
            "normalisations and the chosen w of every run are in its record "
            "(`original_protocol`).", ""]
    for table_id, path in companions.items():
        frame = pd.read_csv(path)
        frame = frame[frame["n"] > 0]
        if frame.empty:
            continue
        out += [f"**{spec['tables'][table_id]['title']}**", "",
                "| row | metric | honest | original protocol | difference | as the original reported |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r.label} | {r.metric} | {_fmt(r.honest)} | {_fmt(r.original)} | "
                f"{'—' if pd.isna(r.difference) else f'{r.difference:+.1f}'} | {r.reported_as} |"
                for r in frame.itertuples()]
        out.append("")
    return out


def _complexity_section(spec: dict, profile_path: Path, main_records: list[dict]) -> list[str]:
    out = ["## Complexity and speed", ""]
    published = spec.get("complexity", {}).get("published", {})
    if published:
        out += ["Published: " + ", ".join(f"{k} = {v}" for k, v in published.items()), ""]
    if profile_path.is_file():
        entries = json.loads(profile_path.read_text())
        out += ["FLOPs per image: fvcore counts one multiply-add as one flop (so its column is "
                "GMACs); torch's FlopCounterMode counts two. Operators neither counts "
                "(element-wise: exp, atan, add, ...) are listed below the table.", "",
                "| configuration | input | GMACs (fvcore) | GFLOPs (torch) | parameters [M] | size [MB] | images/s | batch | device |",
                "|---|---|---|---|---|---|---|---|---|"]
        skipped = set()
        entries = [e for e in entries if "table" not in e]  # network tables are rendered above
        for e in entries:
            skipped.update(e.get("fvcore_skipped_ops", []))
            out.append(f"| {e['label']} | {e['input_size']} | {e['gmacs_fvcore']:.2f} | "
                       f"{e['gflops_torch']:.2f} | {e['parameters'] / 1e6:.1f} | {e['size_mb']:.1f} | "
                       f"{_fmt(e.get('images_per_second'), 2)} | {e['batch_size']} | "
                       f"{e.get('device_name', '—')} |")
        out += ["", f"Not counted by fvcore: {', '.join(sorted(skipped)) or 'none'}.", ""]
        paper_entry = next((e for e in entries if e["label"] == "paper configuration"), None)
        if published.get("flops_per_image") and paper_entry:
            flops = float(published["flops_per_image"]) / 1e9
            out += [f"Published {flops:.2f} G FLOPs per image vs the paper configuration here: "
                    f"{paper_entry['gmacs_fvcore']:.2f} GMACs ({paper_entry['gmacs_fvcore'] / flops:.2f}× "
                    f"if the paper counted multiply-adds once) or {paper_entry['gflops_torch']:.2f} "
                    f"GFLOPs ({paper_entry['gflops_torch'] / flops:.2f}× if twice). The deviations "
                    "below say what we know of the gap.", ""]
    if main_records:
        fits = [r["timing"]["fit_seconds"] for r in main_records]
        out += [f"Training time per category (this run, {main_records[0]['timing']['device']}): "
                f"median {np.median(fits):.1f} s over {len(fits)} runs.", ""]
    return out


def write_index(reports_dir: Path, results_dir: Path, papers: list[str]) -> Path:
    """``reports/README.md``: the headline numbers of every paper in one table."""
    lines = ["# nfbench reports", "",
             "Generated by `nfbench report`; one report per paper. Headline rows: the "
             "average rows of each paper's first table.", "",
             "| paper | table | row | metric | published | reproduced | Δ | profile |",
             "|---|---|---|---|---|---|---|---|"]
    for paper in papers:
        spec = load_spec(paper)
        first = next((t for t, v in spec["tables"].items() if v.get("reproducible", True)), None)
        table = Path(results_dir) / paper / "tables" / f"{first}.csv"
        if first is None or not table.is_file():
            continue
        frame = pd.read_csv(table)
        heads = frame[frame["row"] == "average"] if (frame["row"] == "average").any() else frame
        for _, row in heads.iterrows():
            lines.append(f"| [{paper}]({paper}.md) | {row['table']} | {row['label']} | "
                         f"{row['metric']} | {_fmt(row['published'])} | {_cell(row)} | "
                         f"{_fmt(row['delta'])} | {row['profile']} |")
    path = Path(reports_dir) / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path
