"""What a report's numbers were made on: profile banner, per-table headings on stand-in
data, provenance (datasets, backbones, hardware, software, commits) and the notes shown with
every demo table."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from nfbench.backbones import BACKBONES, backbone_label
from nfbench.datasets import DATASETS
from nfbench.pipeline.params import typed
from nfbench.pipeline.settings import resolve_config, variant_settings
from nfbench.pipeline.spec import load_spec
from nfbench.pipeline.spec import TableSpec
from nfbench.pipeline.tables import comparable_dataset


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

def provenance(records: list[dict]) -> list[str]:
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
    """A dataset's name as a reader knows it (its registered ``label``: ``demo`` → "demo
    set")."""
    spec = DATASETS.get(name)
    return spec.label if spec and spec.label else name

def setting_of(paper: str, profile: str, params: dict, variant: str, records: list[dict],
               role_name: str | None = None) -> dict[str, Any]:
    """What ``variant`` of ``paper`` ran on under ``profile``: dataset, categories, backbone and
    input size (from its records' config), and what the paper used instead (the reference
    profile's dataset for that role, and the variant's config resolved under the reference
    profile: :func:`nfbench.pipeline.settings.resolve_config`). ``role_name``: the dataset
    role whose categories a table averages (a table's ``dataset``), if not the variant's."""
    declared = load_spec(paper).variants[variant]
    role_name = role_name or declared.dataset
    view = typed(params)
    role = view.block(paper, profile).role(role_name)
    mine = [r for r in records if r["variant"] == variant] or records
    config = mine[0].get("config", {}) if mine else {}
    reference = view.reference
    paper_config = resolve_config(declared.method, reference,
                                  variant_settings(params, paper, reference, variant), params)
    return {"dataset": role.dataset, "categories": role.categories,
            "backbone": config.get("backbone"), "input_size": config.get("input_size"),
            "paper_dataset": view.block(paper, reference).role(role_name).dataset,
            "paper_backbone": getattr(paper_config, "backbone", None),
            "paper_input_size": getattr(paper_config, "input_size", None),
            "stand_in": not comparable_dataset(role.dataset)}

def setting_text(s: dict[str, Any]) -> str:
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

def table_heading(table_id: str, table: TableSpec, setting: dict[str, Any] | None
                  ) -> list[str]:
    """A table's heading: the paper's title, or, on stand-in data, what was actually run with
    the paper's title beside it."""
    title = table.title
    if not setting or not setting["stand_in"]:
        return [f"## {title}", ""]
    short = title.split(":")[0] if ":" in title and len(title.split(":")[0]) <= 40 else title
    lines = [f"## {short} — {setting_text(setting)}", "", f"Paper: *{title}*."]
    instead = _instead_text(setting)
    if instead:
        lines[-1] += f" Here: {instead}."
    return lines + [""]
