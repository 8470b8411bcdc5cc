"""One status line per paper table: how many published numbers it reproduces, misses below
or above (95 % intervals, ``docs/uncertainty.md``), or that its profile cannot compare them."""

from __future__ import annotations

import pandas as pd

from nfbench.metrics.uncertainty import ABOVE, BELOW, REPRODUCES


def table_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Counts of the verdicts of ``frame``'s method rows that have a published number:
    ``reproduces``/``below``/``above``, ``not judged`` (comparable, but neither an interval
    nor a tolerance) and ``not comparable`` (stand-in data)."""
    kind = frame["kind"] if "kind" in frame else pd.Series("method", index=frame.index)
    rows = frame[(kind.fillna("method") == "method") & frame["published"].notna()]
    counts = {REPRODUCES: 0, BELOW: 0, ABOVE: 0, "not judged": 0, "not comparable": 0}
    for _, row in rows.iterrows():
        comparable = bool(row.get("comparable")) if not pd.isna(row.get("comparable")) else False
        verdict = row.get("verdict") if isinstance(row.get("verdict"), str) else None
        key = "not comparable" if not comparable else verdict or "not judged"
        counts[key] += 1
    return counts


def status_text(counts: dict[str, int]) -> str:
    """"2 reproduce, 1 below, 0 above" / "not comparable in this profile (12 published numbers)"."""
    judged = counts[REPRODUCES] + counts[BELOW] + counts[ABOVE] + counts["not judged"]
    if not judged and counts["not comparable"]:
        n = counts["not comparable"]
        return f"not comparable in this profile ({n} published number{'s' if n != 1 else ''})"
    if not judged:
        return "no published number"
    text = (f"{counts[REPRODUCES]} reproduce, {counts[BELOW]} below, {counts[ABOVE]} above")
    if counts["not judged"]:
        text += f", {counts['not judged']} not judged (no interval, no tolerance)"
    if counts["not comparable"]:
        text += f", {counts['not comparable']} not comparable in this profile"
    return text
