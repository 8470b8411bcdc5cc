"""Report figures (a 200 dpi PNG with a PDF beside it; the maps figure's PNG: 150 dpi, 256
colours) from the tidy tables and the records' figure material (NPZ).

Statistical plots use seaborn on the tidy tables of :mod:`nfbench.pipeline.tables`:

- :func:`published_vs_reproduced`: where published and reproduced numbers are comparable (the
  paper profile, a user's real data), a scatter per metric with the y = x line and the
  tolerance band, one point per category (per-category tables) or per row; otherwise a dot
  plot of the reproduced values per category or row, the axis zoomed to the data (chance
  left off where it falls outside, and then out of the legend too, and its row where it is
  outside every panel), the published value as a hollow marker on every row
  that has one, labelled "not comparable", reference rows (Gaussian baseline, chance) in
  grey. One metric per panel, a value under the paper's metric code labelled with that
  code; no figure where every panel would hold a single dot (the table says it);
- :func:`ablation`: an ablation table (``figure: {kind: ablation}`` in the spec) as lines with
  markers, published and reproduced on the same axes.

Image figures: :func:`anomaly_maps` (per category, the first test image of each defect type:
the image with its ground truth outlined and its defect type named, the anomaly map overlaid on the image in a perceptual colormap
with a readable colour bar, the oracle prediction) and :func:`roc` (each curve's AUROC in its
legend entry), :func:`pixel_histograms`. Error bars (std over seeds) only where n > 1.

Every axis that does not start at 0 says so (a break mark on the axis and "axis from N" in its
label); legends sit outside the data; long labels are wrapped.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from nfbench.atomic import atomic_path  # noqa: E402

GROUP_ROWS = ("textures", "objects", "average")
METHOD_PALETTE = sns.color_palette("colorblind")
REFERENCE_COLOUR = "0.45"


#: resolution of every PNG; a PDF (vector) is written beside it
DPI = 200
#: perceptual colormap of anomaly maps
MAP_CMAP = "magma"


#: resolution of the PNG of an image figure (:func:`anomaly_maps`): its panels at about the
#: maps' own 128 px, the text still sharp
RASTER_DPI = 150


def _save(fig, path: Path, dpi: int = DPI, raster: bool = False) -> None:
    """Save ``fig`` as ``path`` (PNG at :data:`DPI`) and as a PDF beside it, each written
    whole or not at all, and close it. ``dpi`` is kept for callers; every PNG gets DPI.
    ``raster``: a figure of many image panels, whose lossless PNG at :data:`DPI` is several
    MB of photo texture: its PNG is drawn at :data:`RASTER_DPI` and stored as a 256-colour
    palette image (about a sixth of the size; the PDF beside it keeps every colour)."""
    for target in (Path(path), Path(path).with_suffix(".pdf")):
        with atomic_path(target, suffix=target.suffix) as tmp:
            if raster and target.suffix == ".png":
                _save_palette_png(fig, tmp)
            else:
                fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _save_palette_png(fig, path: Path) -> None:
    """``fig`` as a 256-colour (adaptive palette, no dithering) optimised PNG at
    :data:`RASTER_DPI`."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=RASTER_DPI, bbox_inches="tight", facecolor="white")
    image = Image.open(buffer).convert("RGB")
    image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE) \
        .save(path, format="PNG", optimize=True)


def _wrap(text: str, width: int = 38) -> str:
    return "\n".join(textwrap.wrap(str(text), width)) or str(text)


def _title(fig, text: str, width: int = 90) -> None:
    fig.suptitle(_wrap(text, width), fontsize=9)


def mark_truncated(ax, axis: str = "y") -> None:
    """A break mark (two short slanted lines) at the low end of an axis that does not start
    at 0, and "axis from N" in its label."""
    low = (ax.get_ylim() if axis == "y" else ax.get_xlim())[0]
    if low <= 0:
        return
    kw = dict(transform=ax.transAxes, color="k", clip_on=False, linewidth=0.9)
    d = 0.015
    for off in (0.0, 0.022):
        if axis == "y":
            ax.plot((-d, d), (off - d, off + d), **kw)
        else:
            ax.plot((off - d, off + d), (-d, d), **kw)
    label = ax.get_ylabel() if axis == "y" else ax.get_xlabel()
    text = f"{label} (axis from {low:g})"
    ax.set_ylabel(text) if axis == "y" else ax.set_xlabel(text)


def _points(frame: pd.DataFrame) -> pd.DataFrame:
    """One point per category (per-category tables: group and average rows left out) or per
    row (average tables), with ``series`` (the column/variant label) and ``item`` (y label)."""
    per_category = (frame["row"] != frame["variant"]).any()
    out = frame.copy()
    if per_category:  # categories, then the average row (where a paper publishes its mean)
        out = out[~out["row"].isin(GROUP_ROWS[:-1])]
        out = pd.concat([out[out["row"] != "average"], out[out["row"] == "average"]])
        # series: the column label, i.e. the label without its ", <category>" suffix
        out["series"] = [lbl[: -len(f", {row}")] if str(lbl).endswith(f", {row}") else lbl
                         for lbl, row in zip(out["label"], out["row"])]
        out["item"] = out["row"].astype(str)
    else:
        out["series"] = np.where(out["kind"] == "method", "reproduced", out["label"])
        out["item"] = out["label"].astype(str)
    paper_code = out["compared_metric"].notna() & (out["compared_metric"] != out["metric"])
    out["value"] = np.where(paper_code, out["compared_mean"], out["mean"])
    # a value under the paper's metric code is labelled with that code, not the official name
    out["metric"] = np.where(paper_code, out["compared_metric"], out["metric"])
    return out


def published_vs_reproduced(frame: pd.DataFrame, title: str, path: Path,
                            tolerance: dict[str, float] | None = None,
                            stand_in: str = "") -> bool:
    """Write the table's published-vs-reproduced figure; False if there is nothing to draw."""
    frame = frame[frame["n"] > 0].copy()
    if "kind" not in frame:
        frame["kind"] = "method"
    if frame.empty:
        return False
    comparable = bool(frame.get("comparable", pd.Series([False])).fillna(False).astype(bool).any())
    has_published = frame["published"].notna().any()
    points = _points(frame)
    per_panel = points[points["kind"] == "method"].groupby("metric").size()
    if per_panel.empty or per_panel.max() <= 1:
        return False  # one dot per panel adds nothing to the table cell: the table alone
    # a panel per metric a method was measured in: where the methods' values are under the
    # paper's metric code (pixel_aupr@clscnf), the official name's panel would hold only the
    # reference rows (chance)
    metrics = [m for m in dict.fromkeys(points["metric"]) if m in per_panel.index]
    points = points[points["metric"].isin(metrics)]
    if comparable and has_published:
        _scatter(points, metrics, title, path, tolerance or {})
    else:
        _dots(points, metrics, title, path, note=None if not has_published else
              f"published: for reference, not comparable ({stand_in})")
    return True


def _scatter(points: pd.DataFrame, metrics: list[str], title: str, path: Path,
             tolerance: dict[str, float]) -> None:
    both = points[points["published"].notna() & (points["kind"] == "method")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.6),
                             squeeze=False)
    series = list(dict.fromkeys(both["series"]))
    palette = dict(zip(series, METHOD_PALETTE))
    for ax, metric in zip(axes[0], metrics):
        data = both[both["metric"] == metric]
        if data.empty:
            ax.set_visible(False)
            continue
        values = np.r_[data["published"].astype(float), data["value"].astype(float)]
        low = max(0.0, math.floor((np.nanmin(values) - 1.0) / 5.0) * 5.0)
        grid = np.array([low, 100.0])
        tol = tolerance.get(metric)
        if tol:
            ax.fill_between(grid, grid - tol, grid + tol, color="0.88", zorder=0,
                            label=f"tolerance ±{tol:g}")
        ax.plot(grid, grid, color="0.3", linewidth=0.8, linestyle="--", label="y = x", zorder=1)
        sns.scatterplot(data=data, x="published", y="value", hue="series", style="series",
                        palette=palette, ax=ax, s=36, zorder=3, legend=ax is axes[0, -1])
        ax.set_xlim(low, 100.5), ax.set_ylim(low, 100.5)
        ax.set_aspect("equal")
        ax.set_xlabel(f"published {metric} [%]", fontsize=8)
        ax.set_ylabel(f"reproduced {metric} [%]", fontsize=8)
        ax.tick_params(labelsize=7)
        mark_truncated(ax, "x"), mark_truncated(ax, "y")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes[0]:
        if ax.get_legend():
            ax.get_legend().remove()
    extra_h, extra_l = axes[0, -1].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    seen.update(zip(extra_l, extra_h))
    fig.legend([seen[k] for k in seen], [_wrap(k, 30) for k in seen], loc="center left",
               bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    _title(fig, title + " — one point per category", 70 + 20 * len(metrics))
    fig.tight_layout()
    _save(fig, path)


def _axis_limits(data: pd.DataFrame) -> tuple[float, float]:
    """A dot plot panel's x range: zoomed to the values and published numbers, chance left
    out (it would stretch an axis of 85-100 down to 50), in steps of 5 within [0, 101]."""
    shown = np.r_[data.loc[data["kind"] != "chance", "value"].astype(float),
                  data["published"].dropna().astype(float)]
    shown = shown[np.isfinite(shown)]
    if not shown.size:
        return 0.0, 101.0
    return (max(0.0, math.floor((shown.min() - 2.0) / 5.0) * 5.0),
            min(101.0, math.ceil((shown.max() + 1.0) / 5.0) * 5.0 + 1.0))


def _dots(points: pd.DataFrame, metrics: list[str], title: str, path: Path,
          note: str | None) -> None:
    limits = {metric: _axis_limits(points[points["metric"] == metric]) for metric in metrics}
    low = points["metric"].map(lambda m: limits[m][0])
    high = points["metric"].map(lambda m: limits[m][1])
    visible = (points["value"].astype(float).between(low, high)
               | points["published"].astype(float).between(low, high))
    # a row with no point inside any panel (chance off every zoomed axis) gets no empty label
    items = list(dict.fromkeys(points.loc[visible, "item"])) or list(dict.fromkeys(points["item"]))
    points = points[points["item"].isin(items)]
    wrapped = {i: _wrap(i, 42) for i in items}
    lines = sum(wrapped[i].count("\n") + 1 for i in items)
    height = max(2.2, 0.24 * lines + 0.35 * len(items) * (points["series"].nunique() > 3) + 1.4)
    ncols = min(2, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 3.4, height * nrows),
                             squeeze=False, sharey=True)
    axes = grid.reshape(1, -1)
    for ax in axes[0, len(metrics):]:
        ax.set_visible(False)
    methods = list(dict.fromkeys(points.loc[points["kind"] == "method", "series"]))
    palette = {s: METHOD_PALETTE[i % len(METHOD_PALETTE)] for i, s in enumerate(methods)}
    refs = list(dict.fromkeys(points.loc[points["kind"] != "method", "series"]))
    palette.update({s: REFERENCE_COLOUR for s in refs})
    markers = {**{s: "o" for s in methods}, **{s: ("s" if k == "reference" else "|")
               for s, k in zip(points["series"], points["kind"]) if s in refs}}
    order = methods + refs
    y_of = {item: k for k, item in enumerate(items)}
    shift = {s: (k - (len(order) - 1) / 2) * min(0.6 / max(len(order), 1), 0.18)
             for k, s in enumerate(order)}
    for ax, metric in zip(axes[0], metrics):
        data = points[points["metric"] == metric]
        for s in order:
            part = data[data["series"] == s]
            if part.empty:
                continue
            y = np.array([y_of[i] for i in part["item"]]) + shift[s]
            ax.scatter(part["value"], y, color=palette[s], marker=markers[s], s=30 if
                       markers[s] != "|" else 90, label=_wrap(s, 36), zorder=3,
                       linewidths=1.6 if markers[s] == "|" else 0.5)
            if (part["n"] > 1).any():
                ax.errorbar(part["value"], y, xerr=part["std"].fillna(0), fmt="none",
                            ecolor=palette[s], elinewidth=0.8, zorder=2)
            pub = part[part["published"].notna()]
            if not pub.empty:
                ax.scatter(pub["published"].astype(float), np.array([y_of[i] for i in pub["item"]])
                           + shift[s], facecolors="none", edgecolors=palette[s], marker="D",
                           s=34, linewidths=1.0, zorder=3,
                           label="published" + (" (not comparable)" if note else ""))
        ax.set_xlim(*limits[metric])
        if limits[metric][0] > 0:
            mark_truncated(ax, "x")
        if "average" in y_of and len(y_of) > 1:  # the average row below the categories
            ax.axhline(y_of["average"] - 0.5, color="0.6", linewidth=0.6)
        ax.set_xlabel(f"{metric} [%]", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", color="0.92", zorder=0)
    for ax in grid[:, 0]:
        ax.set_yticks(range(len(items)), [wrapped[i] for i in items])
        ax.set_ylim(len(items) - 0.5, -0.5)
    seen: dict[str, Any] = {}
    for ax in axes[0, :len(metrics)]:
        for h, lbl in _shown_handles(ax):
            if lbl.startswith("published"):
                h = plt.Line2D([], [], marker="D", linestyle="none", markerfacecolor="none",
                               markeredgecolor="0.2")
            seen.setdefault(lbl, h)
    fig.legend(list(seen.values()), list(seen), loc="center left", bbox_to_anchor=(1.0, 0.5),
               fontsize=7, frameon=False, title=note, title_fontsize=7)
    _title(fig, title, 60 + 25 * ncols)
    fig.tight_layout()
    _save(fig, path)


def _shown_handles(ax) -> list[tuple[Any, str]]:
    """``ax``'s legend (handle, label) pairs without the scatter series that have no point
    inside the axis limits (e.g. chance at 50 on an axis zoomed to 85-100): a legend entry for
    a marker nobody can see would only confuse."""
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    shown = []
    for handle, label in zip(*ax.get_legend_handles_labels()):
        if hasattr(handle, "get_offsets"):
            points = np.asarray(handle.get_offsets(), dtype=float).reshape(-1, 2)
            inside = ((points[:, 0] >= x0) & (points[:, 0] <= x1)
                      & (points[:, 1] >= y0) & (points[:, 1] <= y1))
            if points.size and not inside.any():
                continue
        shown.append((handle, label))
    return shown


def ablation(frame: pd.DataFrame, title: str, x_label: str, path: Path,
             comparable: bool, stand_in: str = "") -> bool:
    """An ablation table as lines with markers, published and reproduced on the same axes
    (x: the table's rows in the spec's order)."""
    frame = frame[(frame["kind"] == "method") if "kind" in frame else frame.index == frame.index]
    if frame.empty or (frame["n"] == 0).all():
        return False
    frame = frame.assign(label=frame["label"].astype(str))
    rows = list(dict.fromkeys(frame["row"]))  # one point per row: two rows may share a label
    rep = frame.set_index("row").loc[rows]
    order = list(rep["label"])
    x = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(max(3.6, 0.9 * len(order) + 1.6), 3.3))
    seeds = int(rep["n"].max())
    label = f"reproduced (this run, n={seeds})"
    if (rep["n"] > 1).any():  # error bars (seed std) only where there are several seeds
        ax.errorbar(x, rep["mean"], yerr=rep["std"].where(rep["n"] > 1), marker="o", capsize=2,
                    label=label + ", ± std over seeds", color=METHOD_PALETTE[0])
    else:
        ax.plot(x, rep["mean"], marker="o", label=label, color=METHOD_PALETTE[0])
    if rep["published"].notna().any():
        ax.plot(x, rep["published"].astype(float), marker="D", linestyle="--", color="0.25",
                markerfacecolor="white",
                label="published" + ("" if comparable else f" (not comparable: {stand_in})"))
    values = np.r_[rep["mean"].values, rep["published"].astype(float).values]
    low = max(0.0, math.floor((np.nanmin(values) - 3.0) / 10.0) * 10.0)
    high = min(100.5, math.ceil((np.nanmax(values) + 1.0) / 5.0) * 5.0 + 0.5)
    ax.set_ylim(low, high)
    ax.set_xticks(x, [_wrap(o, 14) for o in order], fontsize=7,
                  rotation=0 if max(len(o) for o in order) <= 14 else 20, ha="center" if
                  max(len(o) for o in order) <= 14 else "right")
    ax.set_xlabel(x_label, fontsize=8)
    ax.set_ylabel("mean image AUROC [%]" if frame["metric"].iloc[0] == "image_auroc"
                  else f"{frame['metric'].iloc[0]} [%]", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", color="0.92")
    mark_truncated(ax, "y")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(_wrap(title, 60), fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


def anomaly_maps(examples: dict[str, Any], path: Path, thresholds: dict[str, float | None]) -> None:
    """Per category three labelled rows over its example test images (columns titled with
    their defect type): the image with the ground truth outlined, the anomaly map overlaid on
    the image (perceptual colormap :data:`MAP_CMAP`, one colour scale per category with its
    colour bar) and the prediction at the oracle threshold."""
    count = max(len(e["example_index"]) for e in examples.values())
    with_prediction = all(t is not None for t in thresholds.values())
    kinds = ["image, ground truth", "anomaly map on image"] + (["prediction (oracle)"] if with_prediction else [])
    per = len(kinds)
    fig, axes = plt.subplots(per * len(examples), count + 1, squeeze=False,
                             figsize=(1.35 * count + 1.4, 1.35 * per * len(examples) + 0.6),
                             gridspec_kw={"width_ratios": [1] * count + [0.08]})
    for r, (category, e) in enumerate(examples.items()):
        maps = np.asarray(e["example_maps"], dtype=np.float32)
        vmin, vmax = float(np.min(maps)), float(np.max(maps))
        labels = np.asarray(e["labels"])[np.asarray(e["example_index"])]
        defects = [str(d) for d in e["example_defects"]] if "example_defects" in e else \
            ["defective" if x else "good" for x in labels]
        images = {}
        for c in range(count):
            cells = [axes[per * r + k, c] for k in range(per)]
            for ax in cells:
                ax.set_xticks([]), ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
            if c >= len(e["example_index"]):
                continue
            mask = np.asarray(e["example_masks"][c])
            image = np.clip(np.transpose(np.asarray(e["example_images"][c], np.float32), (1, 2, 0)), 0, 1)
            cells[0].set_title(_wrap(defects[c].replace("_", " "), 14), fontsize=7)
            cells[0].imshow(image)
            cells[1].imshow(image.mean(axis=2), cmap="gray", vmin=0, vmax=1)
            images["map"] = cells[1].imshow(maps[c], cmap=MAP_CMAP, vmin=vmin, vmax=vmax, alpha=0.65)
            if with_prediction:
                cells[2].imshow(image)
                pred = np.ma.masked_where(maps[c] < thresholds[category], np.ones_like(maps[c]))
                cells[2].imshow(pred, cmap="cool", vmin=0, vmax=1, alpha=0.55)
            for ax in cells[:1] + cells[1:]:
                if mask.any():
                    ax.contour(mask, levels=[0.5], colors="#00e5ff" if ax is not cells[0] else "red",
                               linewidths=0.7)
        for k, kind in enumerate(kinds):
            axes[per * r + k, 0].set_ylabel(f"{category}\n{kind}" if k == 0 else _wrap(kind, 14),
                                            fontsize=7)
        for k in range(per):
            axes[per * r + k, count].axis("off")
        cax = axes[per * r + 1, count]
        cax.axis("on")
        bar = fig.colorbar(images["map"], cax=cax)
        bar.ax.tick_params(labelsize=7)
        bar.set_label("anomaly score", fontsize=7)
    fig.suptitle(_wrap("Anomaly maps over the test images (defect type above each column; ground "
                       "truth outlined); prediction: pixels at or above the oracle threshold "
                       "(best F1 over the test set), in pink", 80), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    _save(fig, path, raster=True)


def roc(examples: dict[str, Any], path: Path, title: str = "image-level ROC") -> None:
    """One ROC curve per category, its AUROC in the legend entry."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5.0, 4.6))
    palette = sns.color_palette("colorblind", len(examples))
    for colour, (category, e) in zip(palette, examples.items()):
        labels, scores = np.asarray(e["labels"]), np.asarray(e["image_scores"])
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, color=colour, label=f"{category} (AUROC {100 * roc_auc_score(labels, scores):.1f})")
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8, label="chance (AUROC 50)")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate", fontsize=8), ax.set_ylabel("true positive rate", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(_wrap(title, 45), fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    _save(fig, path)


def pixel_histograms(examples: dict[str, Any], path: Path) -> None:
    """Normal vs defective pixel scores over the whole test set (as CLS-CNFs' Fig. 7)."""
    fig, axes = plt.subplots(1, len(examples), figsize=(2.8 * len(examples) + 1.4, 2.6),
                             squeeze=False)
    for ax, (category, e) in zip(axes[0], examples.items()):
        edges = e["pixel_hist_edges"]
        for key, label in (("pixel_hist_normal", "normal pixels"), ("pixel_hist_defect", "defect pixels")):
            counts = e[key].astype(float)
            ax.stairs(counts / max(counts.sum(), 1.0), edges, label=label, fill=True, alpha=0.5)
        ax.set_title(category, fontsize=8)
        ax.set_xlabel("pixel anomaly score", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0, 0].set_ylabel("share of pixels", fontsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7,
               frameon=False)
    fig.tight_layout()
    _save(fig, path)
