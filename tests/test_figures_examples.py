"""Report figures: one example per defect type in the maps figure, no legend entry for an
off-axis series, and a maps PNG of about a sixth of its lossless size (rebuilt from tiny
synthetic records)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nfbench.pipeline.experiment import example_order
from nfbench.pipeline.plan import expand_runs, load_params
from nfbench.report import figures

from test_pipeline import ROOT, _fake_results


def test_maps_examples_are_one_per_defect_type_first():
    labels = [0, 1, 1, 1, 1, 1, 0, 1]
    types = ("good", "cont", "cont", "crack", "crack", "hole", "good", "scratch")
    assert example_order(labels, types, 4) == [1, 3, 5, 7]   # not the first four: 1, 2, 3, 4
    assert example_order(labels, types, 2) == [1, 3]          # the first types, in order
    assert example_order([0, 1, 1, 1], ("good",) + ("ko",) * 3, 4) == [1, 2, 3]  # one type
    assert example_order([1, 0, 1], (), 4) == [0, 2]          # no defect types known


def test_table_figure_legend_has_no_off_axis_chance(tmp_path, monkeypatch):
    """Table 1 (csflow, demo) plots chance at 50 beside values of about 90: the axis is zoomed
    to the data, so chance is off the axis and must not be in the legend."""
    from nfbench.pipeline.tables import build_tables

    monkeypatch.chdir(ROOT)
    params = load_params()
    runs = expand_runs("csflow", "demo", params)
    _fake_results(tmp_path, runs, lambda run: 0.9 + 0.001 * len(run.variant))
    frame = build_tables("csflow", "demo", params, tmp_path)["table1"]
    assert (frame["kind"] == "chance").any()
    kept = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path, **kw: kept.setdefault("fig", fig))
    assert figures.published_vs_reproduced(frame, "t", tmp_path / "t1.png", 1.0, "demo")
    legend = [t.get_text() for lg in kept["fig"].legends for t in lg.get_texts()]
    assert legend and not any("chance" in t.lower() for t in legend)
    low = min(ax.get_xlim()[0] for ax in kept["fig"].axes if ax.get_visible())
    assert low > 50


def _smooth_examples(rng, categories=4, count=6, side=128):
    """Figure material like a run's (.npz) with smooth images and maps."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    out = {}
    for c in range(categories):
        images = np.stack([np.stack([np.sin(6 * xx + k + c) * 0.3 + 0.5 + 0.05 * rng.random((side, side)),
                                     yy * 0.8, np.cos(5 * yy + k) * 0.3 + 0.5])
                           for k in range(count)])
        maps = np.stack([np.exp(-((xx - 0.2 - 0.1 * k) ** 2 + (yy - 0.5) ** 2) * 20)
                         for k in range(count)]).astype(np.float32)
        out[f"cat{c}"] = {"labels": np.array([1] * 4 + [0] * 2), "example_index": np.arange(count),
                          "example_images": images.astype(np.float16), "example_maps": maps,
                          "example_masks": maps > 0.5,
                          "example_defects": np.array(["a", "b", "c", "d", "good", "good"])}
    return out


def test_maps_png_is_a_palette_image_under_a_megabyte(tmp_path):
    from PIL import Image

    examples = _smooth_examples(np.random.default_rng(0))
    path = tmp_path / "maps.png"
    figures.anomaly_maps(examples, path, {c: 0.5 for c in examples})
    assert path.with_suffix(".pdf").is_file()
    with Image.open(path) as image:
        assert image.mode == "P"                            # 256-colour palette
        width = image.size[0]
    assert path.stat().st_size < 1_000_000
    # drawn at RASTER_DPI: about 150/200 of the 200 dpi width
    import matplotlib.pyplot as plt

    kept = {}
    original = figures._save
    try:
        figures._save = lambda fig, p, **kw: kept.setdefault("fig", fig)
        figures.anomaly_maps(examples, tmp_path / "x.png", {c: 0.5 for c in examples})
    finally:
        figures._save = original
    full = tmp_path / "full.png"
    kept["fig"].savefig(full, dpi=figures.DPI, bbox_inches="tight")
    plt.close(kept["fig"])
    with Image.open(full) as image:
        assert width == pytest.approx(image.size[0] * figures.RASTER_DPI / figures.DPI, rel=0.05)
