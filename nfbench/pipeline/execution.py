"""The one execution path of a planned run: fit and score it, stamp and store its record.

Both executors use it (the local one in :mod:`nfbench.pipeline.runner`, each Ray task in
:mod:`nfbench.pipeline.ray_executor`), and the peers stage stores its records with
:func:`write_run`; neither executor imports the other's internals.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from nfbench.pipeline.experiment import run_experiment, write_examples
from nfbench.pipeline.plan import Run
from nfbench.pipeline.record import format_metric, read_record, record_json, stamp, write_record


def with_device(run: Run, device: str | None) -> Run:
    """``run`` with its ``device`` setting replaced (None: unchanged)."""
    if device is None:
        return run
    return dataclasses.replace(run, settings={**run.settings, "device": device})


def run_device(run: Run) -> str:
    return str(run.settings.get("device", "auto"))


def compute(run: Run, models_dir: Path | None = None,
            identity: dict[str, Any] | None = None) -> tuple[dict, dict]:
    """Fit and score one run; returns its record (stamped: paper, run id, identity, wall
    time) and figure material. ``identity``: the run's identity as the caller computed it
    (the Ray driver's, whose device reading is the skip test's); default: computed here.
    With ``models_dir``, the fitted detector is saved to ``models_dir/<run_id>``
    (:mod:`nfbench.artifacts`)."""
    from nfbench.pipeline.devices import validate_device
    from nfbench.pipeline.identity import run_identity

    validate_device(run_device(run))
    identity = identity if identity is not None else run_identity(run)
    start = time.perf_counter()
    examples: dict = {}
    kept: list = []
    record = run_experiment(run.method, run.dataset, run.category,
                            root=Path(run.root) if run.root else None, profile=run.profile,
                            seed=run.seed, overrides=run.settings, shots=run.shots,
                            variant=run.variant, joint=run.joint,
                            joint_categories=list(run.joint_categories) or None,
                            examples=examples, fitted=kept if models_dir is not None else None)
    stamp(record, paper=run.paper, run_id=run.run_id, identity=identity,
          wall_seconds=time.perf_counter() - start)
    if models_dir is not None:  # imported only then: a plain bench does not depend on it
        from nfbench.artifacts import save_detector

        save_detector(kept[0], Path(models_dir) / run.run_id, record=record)
    return record, examples


def write_run(record: dict, examples: dict | None, path: Path) -> Path:
    """Write a run's figure material (if any), then its record (the record last: it marks
    the run done); a full disk rescues the record (:mod:`nfbench.pipeline.rescue`)."""
    path = Path(path)
    if examples is not None:
        try:
            write_examples(examples, path.with_suffix(".npz"))
        except OSError as exc:  # full disk: the record (the numbers) is rescued, not lost
            from nfbench.pipeline.rescue import unwritable

            raise unwritable("the figure material", path.with_suffix(".npz"), exc,
                             record_json(record), rescue_as=path) from None
    write_record(record, path)
    return path


def store(record: dict, examples: dict, results_dir: Path, run: Run) -> Path:
    """Write a run's figure material, then its record, at the run's record path."""
    return write_run(record, examples, Path(results_dir) / run.record_path)


def summary(path: Path) -> str:
    """The progress line of a stored run: its image AUROC (``n/a`` when undefined: see the
    record's reason), wall time and device."""
    record = read_record(path)
    return (f"{record['run_id']}: image AUROC {format_metric(record['metrics']['image_auroc'])} "
            f"({record['timing']['wall_seconds']:.1f} s, {record['timing']['device']})")
