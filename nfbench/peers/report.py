"""The report section "Ours vs anomalib 2.7, same features" (Markdown lines).

Per category: our pipeline's number (the paper's variant named in ``deviations.yaml``),
anomalib as shipped, anomalib matched to the paper, their differences to ours, each as the
mean over the seeds found (n), and the ways anomalib deviates from the paper beside each
anomalib column (numbered; the legend lists them, from ``deviations.yaml``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nfbench.peers import CONFIGS, ENABLE_HINT, PEER_VERSION, deviations

METRICS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC"}


def _records(folder: Path) -> dict[str, list[dict]]:
    """``{category: [record, ...]}`` of the seed records below ``folder``."""
    out: dict[str, list[dict]] = {}
    for path in sorted(Path(folder).glob("*/seed*.json")):
        out.setdefault(path.parent.name, []).append(json.loads(path.read_text()))
    return out


def _stat(records: list[dict], metric: str) -> tuple[float, float, int]:
    values = [r["metrics"][metric] for r in records  # an undefined metric is None in a record
              if r.get("status", "ok") == "ok" and r["metrics"].get(metric) is not None
              and np.isfinite(r["metrics"][metric])]
    if not values:
        return np.nan, np.nan, 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else np.nan, \
        len(values)


def _cell(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "—"
    spread = f" ± {std:.3f}" if np.isfinite(std) else ""
    return f"{mean:.3f}{spread} (n={n})"


def _diff(a: float, b: float) -> str:
    return f"{a - b:+.3f}" if np.isfinite(a) and np.isfinite(b) else "—"


def _verdict(ours: tuple, matched: tuple) -> str:
    """Ours within seed noise of or above matched: ours >= matched - 2 sigma, sigma the larger
    seed standard deviation of the two (needs 2+ seeds on one side). On the ``mean`` row the
    standard deviations are over categories too, so that row's verdict is lenient."""
    (mo, so, no), (mm, sm, nm) = ours, matched
    if not (no and nm):
        return "—"
    if mo >= mm:
        return "above"
    sigmas = [s for s in (so, sm) if np.isfinite(s)]
    if not sigmas:
        return "below (n=1, no noise estimate)"
    return "within noise" if mo >= mm - 2 * max(sigmas) else "**below noise**"


def peers_section(paper: str, results_dir: Path) -> list[str]:
    """The section for ``paper``'s report (empty if no peer method reproduces this paper)."""
    method = next((m for m, d in deviations().items() if d["paper"] == paper), None)
    if method is None:
        return []
    entry = deviations()[method]
    lines = ["## Ours vs anomalib 2.7, same features", "",
             f"anomalib {PEER_VERSION}'s `{method}` torch model (no Lightning) trained by "
             f"`nfbench peer` on our cached features of variant `{entry['variant']}`, with the "
             "same input size, passes, batch size and seeds, and scored on the same test set "
             "through anomalib's own scoring code. *shipped*: anomalib's defaults; *matched*: "
             "set to the paper's where anomalib deviates and its API allows. Mean over seeds "
             "± their standard deviation (n seeds); Δ = anomalib − ours.", ""]
    root = Path(results_dir) / "peers" / method
    peer = {c: _records(root / c) for c in CONFIGS}
    found = [r for recs in peer.values() for rs in recs.values() for r in rs]
    if not found:
        return lines + [f"*Not run in this profile* (params.yaml `peers:` has no `{method}` "
                        f"runs, or the `peers` stage has not run). To run it: `nfbench peers`; "
                        f"it needs the `peers` extra: `{ENABLE_HINT}`.", ""]
    skipped = [r for r in found if r.get("status") == "skipped"]
    if skipped:
        lines += [f"**Skipped**: {skipped[0]['note']}.", ""]
    devs = entry["deviations"]
    number = {d["id"]: i + 1 for i, d in enumerate(devs)}
    arises = {d["id"] for d in devs if d["matched"] != "n/a"}
    kept = lambda config: sorted({number[i] for rs in peer[config].values() for r in rs
                                  for i in r.get("deviations_kept", []) if i in arises})
    ours = _records(Path(results_dir) / paper / "runs" / entry["variant"])
    categories = sorted(set(ours) | {c for recs in peer.values() for c in recs})
    labels = {c: f"anomalib {c} (deviates: {', '.join(map(str, kept(c))) or 'none'})"
              for c in CONFIGS}
    for metric, title in METRICS.items():
        lines += [f"**{title}**", "",
                  f"| category | ours | {labels['shipped']} | Δ shipped | {labels['matched']} | "
                  "Δ matched | ours vs matched |", "|---|---|---|---|---|---|---|"]
        for category in categories + ["mean"]:
            if category == "mean":
                per = lambda recs: [r for c in categories for r in recs.get(c, [])]
                o, s, m = (_stat(per(x), metric) for x in (ours, peer["shipped"], peer["matched"]))
            else:
                o = _stat(ours.get(category, []), metric)
                s = _stat(peer["shipped"].get(category, []), metric)
                m = _stat(peer["matched"].get(category, []), metric)
            lines.append(f"| {category} | {_cell(*o)} | {_cell(*s)} | {_diff(s[0], o[0])} | "
                         f"{_cell(*m)} | {_diff(m[0], o[0])} | {_verdict(o, m if m[2] else s)} |")
        lines.append("")
    lines += ["Ways anomalib deviates from the paper (`nfbench/peers/deviations.yaml`; "
              "*matched*: applied = changed to the paper's value in the matched run, fixed = "
              "hard-coded in anomalib, n/a = does not arise on shared features):", ""]
    lines += [f"{number[d['id']]}. {d['what']} — anomalib: {d['shipped']}; paper: {d['paper']} "
              f"(matched: {d['matched']})" for d in devs]
    if entry.get("note"):
        lines += ["", f"Note: {entry['note']}."]
    if not peer["matched"] and peer["shipped"]:
        lines += ["", "No *matched* run: no listed deviation can be changed through anomalib's "
                  "API on shared features (each is n/a or hard-coded), so *matched* would "
                  "equal *shipped*; the last column compares ours with *shipped*."]
    return lines + [""]
