"""``reports/<paper>.md`` and its figures, from the spec, the tables and the records."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402

from nfbench.atomic import write_text_atomic  # noqa: E402
from nfbench.errors import UserError  # noqa: E402
from nfbench.pipeline.plan import expand_runs, load_spec  # noqa: E402
from nfbench.pipeline.record import read_record  # noqa: E402
from nfbench.report import figures  # noqa: E402
from nfbench.report.context import (DEMO_WARNING, REFERENCE_NOTE, dataset_label,  # noqa: E402
                                    profile_banner, provenance, setting_of, setting_text,
                                    table_heading)
from nfbench.report.markdown import (INTERVAL_NOTE, comparison_markdown,  # noqa: E402
                                     complexity_table_markdown, is_comparable, table_markdown)
from nfbench.report.verdicts import status_text, table_counts  # noqa: E402
from nfbench.report.sections import (complexity_section, oracle_threshold,  # noqa: E402
                                     protocol_section, questions_section)


def _require_inputs(paper: str, spec, runs, results_dir: Path) -> None:
    """One line, before any report file is written, when a record or table the report reads
    does not exist yet (the stages that make them have not run)."""
    missing = [r.run_id for r in runs if not (results_dir / r.record_path).is_file()]
    if missing:
        raise UserError(f"no result record for {len(missing)} of {len(runs)} {paper} run(s) "
                        f"under {results_dir} (first: {missing[0]}); run `nfbench bench "
                        f"--paper {paper}` (or dvc repro) first")
    tables = [results_dir / paper / "tables" / f"{table_id}.csv"
              for table_id, table in spec.tables.items()
              if table.reproducible and table.layout != "complexity"]
    absent = [path for path in tables if not path.is_file()]
    if absent:
        raise UserError(f"no table {absent[0]} yet; run `nfbench tables --paper {paper}` "
                        "(or dvc repro) first")


#: the rows a per-category table shows first; its per-category rows go in a <details> block
SUMMARY_ROWS = ("textures", "objects", "average")


def summary_and_details(frame: pd.DataFrame) -> list[str]:
    """A table's summary rows (per-category tables: group and average rows) with the interval
    note, then its per-category rows collapsed in a ``<details>`` block."""
    per_category = (frame["row"] != frame["variant"]).any() and frame["row"].isin(SUMMARY_ROWS).any()
    if not per_category:
        return [table_markdown(frame), "", INTERVAL_NOTE, ""]
    head, rest = frame[frame["row"].isin(SUMMARY_ROWS)], frame[~frame["row"].isin(SUMMARY_ROWS)]
    out = [table_markdown(head), "", INTERVAL_NOTE, ""]
    if len(rest):
        out += ["<details><summary>Per-category rows "
                f"({rest['row'].nunique()} categories, {len(rest)} rows)</summary>", "",
                table_markdown(rest), "", "</details>", ""]
    return out


def summary_section(spec, tables_dir: Path) -> list[str]:
    """"Summary": one status line per built table (verdict counts, or not comparable)."""
    lines = []
    for table_id, table in spec.tables.items():
        path = tables_dir / f"{table_id}.csv"
        if table.built and path.is_file():
            lines.append(f"- **{table.title}**: {status_text(table_counts(pd.read_csv(path)))}")
    return ["## Summary", "", *lines, ""] if lines else []


def _difference(paper: str, profile: str, params: dict, results_dir: Path):
    """``difference(question, metric)``: the interval of better − than on the question's row
    (its categories, every seed), paired over the same test images."""
    from nfbench.pipeline.intervals import cell_difference
    from nfbench.pipeline.params import typed
    from nfbench.pipeline.spec import category_groups
    from nfbench.pipeline.tables import load_records

    spec = load_spec(paper)
    runs = expand_runs(paper, profile, params)
    records = load_records(runs, results_dir)
    paths = {(r.variant, r.category, r.seed): Path(results_dir) / r.record_path.with_suffix(".npz")
             for r in runs}
    seeds = sorted({r.seed for r in runs})
    block = typed(params).block(paper, profile)

    def difference(q, metric: str):
        table = spec.tables[q.table]
        role = block.role(table.dataset)
        members = role.categories
        if q.row is not None and q.row != "average":
            members = category_groups(table, role.dataset, members).get(q.row, [q.row])
        return cell_difference(records, paths, q.better, q.than, members, metric, seeds)

    return difference


def _auroc_with_interval(record: dict) -> str:
    """A run's image AUROC with the record's test-set interval, where it has one."""
    value = record["metrics"].get("image_auroc")
    if value is None:
        return "—"
    lo, hi = (record.get("intervals") or {}).get("image_auroc", (None, None))
    return f"{value:.4f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")


def write_report(paper: str, profile: str, params: dict, results_dir: Path,
                 reports_dir: Path) -> Path:
    """Write ``reports/<paper>.md`` and its figures; returns the Markdown path."""
    spec = load_spec(paper)
    results_dir, reports_dir = Path(results_dir), Path(reports_dir)
    figures_dir = reports_dir / "figures"
    runs = expand_runs(paper, profile, params)
    _require_inputs(paper, spec, runs, results_dir)  # before anything is written
    figures_dir.mkdir(parents=True, exist_ok=True)
    records = [read_record(results_dir / r.record_path) for r in runs]
    main = spec.main_variant
    main_setting = setting_of(paper, profile, params, main, records)
    tables_dir = results_dir / paper / "tables"
    out = [f"# {spec.title}", "", profile_banner(profile, [main_setting]), "",
           f"Reproduction report for `{paper}` ({spec.source}). Generated by "
           "`nfbench report` from result records and `benchmarks/" + paper + ".yaml`; "
           "do not edit by hand.", ""]
    if main_setting["stand_in"]:
        out += [DEMO_WARNING, ""]
    out += summary_section(spec, tables_dir)
    out += ["## Provenance", ""] + provenance(records) + [""]
    for table_id, table in spec.tables.items():
        out += _table_section(paper, profile, params, spec, table_id, table, records,
                              main_setting, results_dir, figures_dir)
    out += _examples_section(paper, runs, main, main_setting, results_dir, figures_dir)

    from nfbench.peers.report import peers_section  # "Ours vs anomalib 2.7, same features"
    out += peers_section(paper, results_dir)
    out += questions_section(spec, tables_dir, _difference(paper, profile, params, results_dir))
    out += protocol_section(spec, tables_dir)
    out += complexity_section(spec, results_dir / paper / "profile.json",
                               [r for r in records if r["variant"] == main], records)
    out += _deviations_and_runs(spec, records)
    path = reports_dir / f"{paper}.md"
    write_text_atomic(path, "\n".join(out) + "\n")
    return path


def _table_section(paper: str, profile: str, params: dict, spec, table_id: str, table,
                   records: list[dict], main_setting: dict, results_dir: Path,
                   figures_dir: Path) -> list[str]:
    """One table's section: heading (what was run, on stand-in data), status, the table,
    notes, published comparisons and its figure; a line for a table not reproducible here."""
    main = spec.main_variant
    tables_dir = results_dir / paper / "tables"
    if not table.reproducible:
        return [f"## {table.title}", "", f"**Not reproducible here**: {table.reason}", ""]
    if table.layout == "complexity":
        return [f"## {table.title}", ""] + complexity_table_markdown(
            table, table_id, results_dir / paper / "profile.json")
    frame = pd.read_csv(tables_dir / f"{table_id}.csv")
    first = frame["variant"].iloc[0] if len(frame) else main
    # the categories the table averages: its own dataset role, not its first variant's
    setting = setting_of(paper, profile, params, first, records, role_name=table.dataset) \
        if first in spec.variants else None
    heading = table_heading(table_id, table, setting)
    out = list(heading)
    fig_title = heading[0][3:] + ("" if table.title in heading[0] else f" (paper: {table.title})")
    out += [f"**Status**: {status_text(table_counts(frame))}.", ""]
    out += summary_and_details(frame)
    if table.references:
        refs = [v for v in table.references if v != "chance"]
        out += [REFERENCE_NOTE.format(variant="`, `".join(refs) or "—"), ""]
    if table.note:
        out += [table.note, ""]
    if table.comparison:
        out += ["Published numbers of the methods the paper compares with (transcribed, "
                "not re-run):", "", comparison_markdown(table.comparison), ""]
    png = figures_dir / f"{paper}_{table_id}.png"
    stand_in = dataset_label((setting or main_setting)["dataset"])
    comparable = is_comparable(frame)
    if table.figure is not None and table.figure.kind == "ablation":
        drawn = figures.ablation(frame, fig_title, table.figure.x_label, png,
                                 comparable, stand_in)
    else:
        drawn = figures.published_vs_reproduced(frame, fig_title, png,
                                                spec.tolerance, stand_in)
    if drawn:
        caption = ("published vs reproduced" if comparable and frame["published"].notna().any()
                   else "reproduced per category or row; published for reference, not comparable"
                   if frame["published"].notna().any() else "reproduced")
        out += [f"![{table.title}: {caption}](figures/{png.name})", ""]
    return out


def _examples_section(paper: str, runs, main: str, main_setting: dict, results_dir: Path,
                      figures_dir: Path) -> list[str]:
    """Anomaly maps, ROC curves and pixel-score histograms of the main variant's first seed."""
    from nfbench.pipeline.experiment import read_examples

    out: list[str] = []
    examples = {r.category: read_examples(results_dir / r.record_path.with_suffix(".npz"))
                for r in runs if r.variant == main and r.seed == runs[0].seed}
    if examples:
        maps_png, roc_png = figures_dir / f"{paper}_maps.png", figures_dir / f"{paper}_roc.png"
        figures.anomaly_maps(examples, maps_png, {c: oracle_threshold(e) for c, e in examples.items()})
        figures.roc(examples, roc_png, f"image-level ROC, variant {main}, {setting_text(main_setting)}")
        out += ["## Anomaly maps, ROC curves and pixel-score histograms", "",
                f"Variant `{main}`: per category, test images titled with their defect type "
                "(ground truth outlined), the method's anomaly map overlaid on the image "
                "(magma colormap, one colour scale per category, its colour bar on the right) "
                "and the prediction at the pixel threshold with the best F1 over the test set "
                "(an oracle threshold, as the papers' prediction maps; found at the resolution "
                "of 60-bin score histograms). Every figure is also a PDF beside the PNG.", "",
                f"![anomaly maps](figures/{maps_png.name})", "",
                f"![ROC curves, AUROC per category in the legend](figures/{roc_png.name})", ""]
        if all("pixel_hist_edges" in e for e in examples.values()):
            hist_png = figures_dir / f"{paper}_pixel_histograms.png"
            figures.pixel_histograms(examples, hist_png)
            out += ["Scores of normal and defective pixels over every test image, each "
                    "histogram normalised to sum 1:", "",
                    f"![pixel-score histograms](figures/{hist_png.name})", ""]
    return out


def _deviations_and_runs(spec, records: list[dict]) -> list[str]:
    """The spec's deviations (diagnostics apart) and one line per run."""
    out = ["## Deviations from the paper", ""]
    out += [f"- **{d.what}**: {d.why}" for d in spec.deviations if not d.diagnostic] + [""]
    diagnostics = [d for d in spec.deviations if d.diagnostic]
    if diagnostics:  # explanations of what the runs show, not differences from the paper
        out += ["## Diagnostics", ""]
        out += [f"- **{d.what}**: {d.why}" for d in diagnostics] + [""]
    out += ["## Runs", "", "| run | image AUROC [95 % interval] | fit [s] | created | commit |",
            "|---|---|---|---|---|"]
    out += [f"| {r['run_id']} | {_auroc_with_interval(r)} | {r['timing']['fit_seconds']:.1f} | "
            f"{r['created']} | {str(r['environment'].get('git_commit'))[:12]} |" for r in records]
    return out
