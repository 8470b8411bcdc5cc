"""Training curves for ``dvc plots``: every run's loss per epoch as a plots-ready CSV.

Each method records its mean training loss per epoch in its run record
(``record["fit_info"]["loss_per_epoch"]``). ``nfbench tables`` (the pipeline's tables stage)
writes one CSV per run, ``results/<paper>/plots/loss/<variant>.<category>.seed<k>.csv`` with
columns ``epoch`` (1-based) and ``loss``, inside the stage's ``plots`` output; dvc.yaml's
top-level ``plots:`` draws that folder (one line plot per run, x = epoch), the way DVCLive's
``plots/metrics`` folder is drawn. Plain CSV rather than DVCLive itself: the records already
hold the curves, and the runs execute in worker processes (or Ray tasks) that a live logger
would have to be threaded through; CSV needs no extra dependency.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nfbench.atomic import write_text_atomic

LOSS_FOLDER = Path("plots") / "loss"


def loss_curve(record: dict) -> list[float] | None:
    """The run's loss per epoch (None when the record has none)."""
    curve = (record.get("fit_info") or {}).get("loss_per_epoch")
    return [float("nan") if v is None else float(v) for v in curve] if curve else None


def write_loss_curves(paper: str, results_dir: Path | str) -> list[Path]:
    """One ``epoch,loss`` CSV per run record of ``paper`` that has a loss curve, in
    ``<results>/<paper>/plots/loss/`` (rewritten whole: no stale curves). Returns the paths."""
    from nfbench.pipeline.record import read_record, record_paths

    folder = Path(results_dir) / paper / LOSS_FOLDER
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)  # even empty: dvc plots show reports a missing folder as an error
    written = []
    for path in record_paths(results_dir, [paper]):
        record = read_record(path)
        curve = loss_curve(record)
        if not curve:
            continue
        variant, category, seed = path.relative_to(Path(results_dir) / paper / "runs").parts
        out = folder / f"{variant}.{category}.{Path(seed).stem}.csv"
        write_text_atomic(out, "epoch,loss\n" + "".join(
            f"{epoch},{loss!r}\n" for epoch, loss in enumerate(curve, start=1)))
        written.append(out)
    return written
