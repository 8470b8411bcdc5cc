"""Markdown reports (``reports/<paper>.md``) from result records, tables and the spec only.

Nothing here trains or scores: a report reads the tidy tables written by
:mod:`nfbench.pipeline.tables`, the records under ``results/<paper>/runs`` (for provenance, timing and
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
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nfbench.report import figures  # noqa: E402
from nfbench.backbones import BACKBONES  # noqa: E402
from nfbench.datasets import DATASETS  # noqa: E402
from nfbench.pipeline.plan import expand_runs, load_spec, main_variant, profile_params, role_categories  # noqa: E402
from nfbench.pipeline.tables import STAND_IN_DATASETS, backbone_label, render_label  # noqa: E402

DEMO_WARNING = ("> **Demo profile.** Stand-in data, backbone and CPU budgets (the line above and "
                "the provenance say which): the numbers check that the code runs end to end "
                "and are **not comparable** to the published ones, so tables show the "
                "published value for reference only, without Δ or tolerance; the reference rows "
                "(the Gaussian baseline measured in the same run, and chance) say what a "
                "number means here.")

REFERENCE_NOTE = ("*Reference rows (not in the paper)*: *Gaussian baseline* is the suite's "
                  "PaDiM-style Gaussian (`nfbench/methods/gaussian`, variant `{variant}`), run "
                  "in the same pipeline on the same data, backbone and input size; *chance* is "
                  "what a random score gets: AUROC 50, AUPRO 15 (a random map's PRO equals its "
                  "FPR), pixel AUPR the share of defective pixels in the test set.")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _cell(row: pd.Series) -> str:
    """``mean ± std (n=k)`` over seeds; one seed: ``mean (n=1)``; chance: the level alone."""
    if row["n"] == 0 or math.isnan(row["mean"]):
        return "—"
    if row.get("kind") == "chance":
        return f"{row['mean']:.1f}"
    if int(row["n"]) == 1 or pd.isna(row["std"]):
        return f"{row['mean']:.1f} (n={int(row['n'])})"
    return f"{row['mean']:.1f} ± {row['std']:.1f} (n={int(row['n'])})"


def _within(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return "n/a"
    return "yes" if str(value) in ("True", "true", "1", "1.0") else "**no**"


def _comparable(frame: pd.DataFrame) -> bool:
    """Published and reproduced numbers of ``frame`` can be compared (no stand-in data)."""
    if "comparable" in frame and frame["comparable"].notna().any():
        return bool(frame["comparable"].fillna(False).astype(bool).any())
    return bool((frame["profile"] == "paper").any())


def table_markdown(frame: pd.DataFrame) -> str:
    """A paper table: published | reproduced | Δ | within tolerance; where the table declares
    the paper's own metric code (``published_metric``), the reproduced value under that code
    is compared with the published one and the official value is shown beside it.

    Where published and reproduced numbers are not comparable (stand-in data: the demo and
    smoke profiles), Δ and tolerance are left out and the published column is for reference.
    Reference rows (``kind`` reference/chance) are set in italics; a row whose records equal an
    earlier row's (``same_as``) says so in a note below the table."""
    comparable = _comparable(frame)
    variants = "compared_metric" in frame and (frame["compared_metric"].fillna(frame["metric"])
                                               != frame["metric"]).any()
    pub = "published" if comparable else "published (for reference; not comparable)"
    head = ["row", "metric", pub]
    if variants:
        head += ["reproduced, paper's metric code (mean ± std)"] + (["Δ"] if comparable else []) \
            + ["reproduced, official metric"]
    else:
        head += ["reproduced (mean ± std)"] + (["Δ"] if comparable else [])
    head += ["within tolerance"] if comparable else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: dict[tuple[str, str], int] = {}
    for _, row in frame.iterrows():
        published = row["published"] if not pd.isna(row["published"]) else None
        delta = _fmt(row['delta']) if published is not None else '—'
        kind = row.get("kind") if isinstance(row.get("kind"), str) else "method"
        label = str(row["label"])
        if kind != "method":
            label = f"*{label}*"
        same = row.get("same_as")
        if isinstance(same, str) and same:
            key = (same, str(row.get("same_reason") or ""))
            notes.setdefault(key, len(notes) + 1)
            label += f" [= ({notes[key]})]"
        cells = [label, row["metric"], _fmt(published)]
        if variants and row["compared_metric"] != row["metric"]:
            compared = row.copy()
            compared["mean"], compared["std"] = row["compared_mean"], row["compared_std"]
            cells += [f"{_cell(compared)} [`{row['compared_metric']}`]"] + \
                ([delta] if comparable else []) + [_cell(row)]
        elif variants:
            cells += [_cell(row)] + ([delta] if comparable else []) + ["(same)"]
        else:
            cells += [_cell(row)] + ([delta] if comparable else [])
        cells += [_within(row["within_tolerance"])] if comparable else []
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if notes:
        lines.append("")
        for (same, why), k in notes.items():
            lines.append(f"({k}) Identical to \"{same}\" on every metric, category and seed of "
                         f"this run{': ' + why if why else ''}.")
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


def dataset_label(name: str) -> str:
    """A dataset's name as a reader knows it (``demo`` → "demo set")."""
    if name == "demo":
        return "demo set"
    spec = DATASETS.get(name)
    return spec.description.split(",")[0] if spec and spec.description else name


def _paper_defaults(method: str) -> dict[str, Any]:
    """The method's paper-default config (backbone, input size), for "X stands in for Y"."""
    import dataclasses

    from nfbench.methods import method_class

    return {f.name: f.default for f in dataclasses.fields(method_class(method).Config)
            if f.default is not dataclasses.MISSING}


def setting_of(paper: str, profile: str, params: dict, variant: str, records: list[dict]
               ) -> dict[str, Any]:
    """What ``variant`` of ``paper`` ran on under ``profile``: dataset, categories, backbone and
    input size (from its records' config), and what the paper used instead (the paper
    profile's dataset for that role, the method's paper defaults)."""
    spec = load_spec(paper)
    declared = spec["variants"][variant]
    role_name = declared.get("dataset", "mvtec_ad")
    role = profile_params(params, paper, profile)["datasets"][role_name]
    mine = [r for r in records if r["variant"] == variant] or records
    config = mine[0].get("config", {}) if mine else {}
    paper_role = (params.get(paper, {}).get("paper", {}).get("datasets", {}) or {}).get(role_name, {})
    method = declared.get("method", spec["method"])
    defaults = _paper_defaults(method)
    paper_settings = {**defaults, **(paper_role.get("settings") or {})}
    return {"dataset": role["dataset"], "categories": role_categories(role),
            "backbone": config.get("backbone"), "input_size": config.get("input_size"),
            "paper_dataset": paper_role.get("dataset"), "paper_backbone": paper_settings.get("backbone"),
            "paper_input_size": paper_settings.get("input_size"),
            "stand_in": role["dataset"] in STAND_IN_DATASETS}


def _setting_text(s: dict[str, Any]) -> str:
    """"demo set (brick, coin), EfficientNet-Lite0, 256 px"."""
    parts = [f"{dataset_label(s['dataset'])} ({', '.join(s['categories'])})"]
    if s.get("backbone"):
        parts.append(backbone_label(s["backbone"]))
    if s.get("input_size"):
        parts.append(f"{s['input_size']} px")
    return ", ".join(parts)


def _instead_text(s: dict[str, Any]) -> str:
    """"demo set for MVTec AD, EfficientNet-Lite0 for EfficientNet-B5, 256 px for 768 px"."""
    pairs = [(dataset_label(s["dataset"]), dataset_label(s["paper_dataset"]) if s.get("paper_dataset") else None),
             (backbone_label(s["backbone"]) if s.get("backbone") else None,
              backbone_label(s["paper_backbone"]) if s.get("paper_backbone") else None),
             (f"{s['input_size']} px" if s.get("input_size") else None,
              f"{s['paper_input_size']} px" if s.get("paper_input_size") else None)]
    return ", ".join(f"{a} for {b}" for a, b in pairs if a and b and a != b)


def profile_banner(profile: str, settings: list[dict[str, Any]]) -> str:
    """The one line a report (or the index) opens with: which profile made the numbers, on
    what, and whether they can be compared with the papers'."""
    stand_in = any(s["stand_in"] for s in settings)
    datasets = sorted({dataset_label(s["dataset"]) for s in settings})
    categories = list(dict.fromkeys(c for s in settings for c in s["categories"]))
    backbones = sorted({backbone_label(s["backbone"]) for s in settings if s.get("backbone")})
    sizes = sorted({int(s["input_size"]) for s in settings if s.get("input_size")})
    what = (f"{' and '.join(datasets)} ({', '.join(categories)}), {' / '.join(backbones) or '?'}, "
            f"{' / '.join(map(str, sizes)) or '?'} px")
    if stand_in:
        return (f"> **Profile `{profile}`: these numbers are NOT the papers' experiment.** They "
                f"come from {what}, with the profile's reduced budgets; they check that the code "
                "works and are **not comparable** with the published numbers (shown for "
                "reference only: no Δ, no tolerance).")
    return (f"> **Profile `{profile}`**: {what}; published and reproduced numbers are compared "
            "(Δ, and the spec's tolerance in the paper profile).")


def _heading(table_id: str, table: dict, setting: dict[str, Any] | None) -> list[str]:
    """A table's heading: the paper's title, or, on stand-in data, what was actually run with
    the paper's title beside it."""
    title = table["title"]
    if not setting or not setting["stand_in"]:
        return [f"## {title}", ""]
    short = title.split(":")[0] if ":" in title and len(title.split(":")[0]) <= 40 else title
    lines = [f"## {short} — {_setting_text(setting)}", "", f"Paper: *{title}*."]
    instead = _instead_text(setting)
    if instead:
        lines[-1] += f" Here: {instead}."
    return lines + [""]


def write_report(paper: str, profile: str, params: dict, results_dir: Path,
                 reports_dir: Path) -> Path:
    """Write ``reports/<paper>.md`` and its figures; returns the Markdown path."""
    spec = load_spec(paper)
    results_dir, reports_dir = Path(results_dir), Path(reports_dir)
    figures_dir = reports_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    runs = expand_runs(paper, profile, params)
    records = [json.loads((results_dir / r.record_path).read_text()) for r in runs]
    main = main_variant(spec)
    main_setting = setting_of(paper, profile, params, main, records)
    out = [f"# {spec['title']}", "", profile_banner(profile, [main_setting]), "",
           f"Reproduction report for `{paper}` ({spec.get('source', '')}). Generated by "
           "`nfbench report` from result records and `benchmarks/" + paper + ".yaml`; "
           "do not edit by hand.", ""]
    if profile != "paper":
        out += [DEMO_WARNING, ""]
    out += ["## Provenance", ""] + _provenance(records) + [""]

    tables_dir = results_dir / paper / "tables"
    for table_id, table in spec["tables"].items():
        if table.get("reproducible", True) is False:
            out += [f"## {table['title']}", "", f"**Not reproducible here**: {table.get('reason', '')}", ""]
            continue
        if table.get("layout") == "complexity":
            out += [f"## {table['title']}", ""]
            out += complexity_table_markdown(table, table_id, results_dir / paper / "profile.json")
            continue
        frame = pd.read_csv(tables_dir / f"{table_id}.csv")
        first = frame["variant"].iloc[0] if len(frame) else main
        setting = setting_of(paper, profile, params, table.get("variant", first), records) \
            if first in spec["variants"] else None
        heading = _heading(table_id, table, setting)
        out += heading
        fig_title = heading[0][3:] + ("" if table["title"] in heading[0] else f" (paper: {table['title']})")
        out += [table_markdown(frame), ""]
        if table.get("references"):
            refs = [v for v in table["references"] if v != "chance"]
            out += [REFERENCE_NOTE.format(variant="`, `".join(refs) or "—"), ""]
        if table.get("note"):
            out += [table["note"], ""]
        if table.get("comparison"):
            out += ["Published numbers of the methods the paper compares with (transcribed, "
                    "not re-run):", "", comparison_markdown(table["comparison"]), ""]
        png = figures_dir / f"{paper}_{table_id}.png"
        stand_in = dataset_label(setting["dataset"]) if setting else "demo"
        figure = table.get("figure") or {}
        comparable = _comparable(frame)
        if figure.get("kind") == "ablation":
            drawn = figures.ablation(frame, fig_title, figure.get("x_label", ""), png,
                                     comparable, stand_in)
        else:
            drawn = figures.published_vs_reproduced(frame, fig_title, png,
                                                    spec.get("tolerance", {}), stand_in)
        if drawn:
            caption = ("published vs reproduced" if comparable and frame["published"].notna().any()
                       else "reproduced per category or row; published for reference, not comparable"
                       if frame["published"].notna().any() else "reproduced")
            out += [f"![{table['title']}: {caption}](figures/{png.name})", ""]

    examples = {r.category: np.load(results_dir / r.record_path.with_suffix(".npz"))
                for r in runs if r.variant == main and r.seed == runs[0].seed}
    if examples:
        maps_png, roc_png = figures_dir / f"{paper}_maps.png", figures_dir / f"{paper}_roc.png"
        figures.anomaly_maps(examples, maps_png, {c: oracle_threshold(e) for c, e in examples.items()})
        figures.roc(examples, roc_png, f"image-level ROC, variant {main}, {_setting_text(main_setting)}")
        out += ["## Anomaly maps, ROC curves and pixel-score histograms", "",
                f"Variant `{main}`: per category, rows of test images (ground truth outlined in "
                "red), their ground truth, the method's anomaly maps (one colour scale per "
                "category, its colour bar on the right) and the prediction maps at the "
                "pixel threshold with the best F1 over the test set (an oracle threshold, as "
                "the papers' prediction maps; found at the resolution of 60-bin score "
                "histograms).", "",
                f"![anomaly maps](figures/{maps_png.name})", "",
                f"![ROC curves, AUROC per category in the legend](figures/{roc_png.name})", ""]
        if all("pixel_hist_edges" in e for e in examples.values()):
            hist_png = figures_dir / f"{paper}_pixel_histograms.png"
            figures.pixel_histograms(examples, hist_png)
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
            name = render_label(name, {"backbone": first.get("backbone")})
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
    the same run (``<table>.protocol.csv``, :func:`nfbench.pipeline.tables.build_protocol_tables`)."""
    from nfbench.metrics import METRIC_VARIANTS
    from nfbench.pipeline.protocols import DESCRIPTIONS

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
        # the paper's title names the paper's data; the rows are this profile's categories
        out += [f"**{table_id}** (paper: *{spec['tables'][table_id]['title']}*)", "",
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


def write_index(reports_dir: Path, results_dir: Path, papers: list[str],
                params: dict | None = None, profile: str | None = None) -> Path:
    """``reports/README.md``: which profile made the numbers (first line), then the headline
    numbers of every paper (the average rows of its first table) with how far each sits from
    chance and from the Gaussian baseline measured in the same run; Δ to the published number
    only where they are comparable."""
    heads, settings, profiles, comparable = [], [], set(), False
    for paper in papers:
        spec = load_spec(paper)
        first = next((t for t, v in spec["tables"].items() if v.get("reproducible", True)
                      and v.get("layout") != "complexity"), None)
        table = Path(results_dir) / paper / "tables" / f"{first}.csv"
        if first is None or not table.is_file():
            continue
        frame = pd.read_csv(table)
        if "kind" not in frame:
            frame["kind"] = "method"
        comparable |= _comparable(frame)
        profiles |= set(frame["profile"].astype(str))
        heads.append((paper, spec, frame))
        if params is not None:
            prof = profile or str(frame["profile"].iloc[0])
            try:
                runs = expand_runs(paper, prof, params)
                main = main_variant(spec)
                records = [json.loads((Path(results_dir) / r.record_path).read_text())
                           for r in runs if r.variant == main][:1]
                settings.append(setting_of(paper, prof, params, main, records))
            except Exception:  # noqa: BLE001 - the index still renders without settings
                pass
    profile_text = ", ".join(f"`{p}`" for p in sorted(profiles)) or "?"
    if settings:
        banner = profile_banner(profile_text.strip("`"), settings)
    elif comparable:
        banner = f"> **Profile {profile_text}**: published and reproduced numbers are compared."
    else:
        banner = (f"> **Profile {profile_text}: these numbers are NOT the papers' experiment** "
                  "(stand-in data and reduced budgets); they are not comparable with the "
                  "published numbers.")
    lines = ["# nfbench reports", "", banner, "",
             "Generated by `nfbench report`; one report per paper. Headline rows: the average "
             "rows of each paper's first table. *vs chance* and *vs Gaussian* are the "
             "differences, in points, to chance (AUROC 50) and to the PaDiM-style Gaussian "
             "baseline measured in the same run on the same data, backbone and input size.", ""]
    head = ["paper", "table", "row", "metric", "reproduced", "chance", "vs chance",
            "Gaussian baseline", "vs Gaussian", "published"] + (["Δ published"] if comparable else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for paper, spec, frame in heads:
        average = frame[frame["row"] == "average"] if (frame["row"] == "average").any() else frame
        refs = {kind: average[average["kind"] == kind].set_index("metric")["mean"]
                for kind in ("chance", "reference")}
        for _, row in average[average["kind"] == "method"].iterrows():
            chance = refs["chance"].get(row["metric"], float("nan"))
            gauss = refs["reference"].get(row["metric"], float("nan"))
            diff = lambda ref: "—" if pd.isna(ref) or pd.isna(row["mean"]) else f"{row['mean'] - ref:+.1f}"
            cells = [f"[{paper}]({paper}.md)", row["table"], row["label"], row["metric"], _cell(row),
                     _fmt(chance), diff(chance), _fmt(gauss), diff(gauss),
                     _fmt(row["published"]) + ("" if comparable else " (not comparable)")]
            cells += [_fmt(row["delta"])] if comparable else []
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    path = Path(reports_dir) / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path
