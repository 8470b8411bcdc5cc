"""Execute planned runs: each writes its result record (JSON) and figure material (NPZ)."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from nfbench.experiment import run_experiment, write_examples, write_record
from nfbench.plan import Run


def execute(runs: list[Run], results_dir: Path, progress: bool = True) -> list[Path]:
    """Run every run in order; returns the record paths. A failing run stops the batch with
    its error (DVC then reruns the stage), and finished runs keep their records."""
    written = []
    bar = tqdm(runs, desc="runs", unit="run", disable=not progress)
    for run in bar:
        bar.set_postfix_str(run.run_id)
        start = time.perf_counter()
        examples: dict = {}
        record = run_experiment(run.method, run.dataset, run.category,
                                root=Path(run.root) if run.root else None, profile=run.profile,
                                seed=run.seed, overrides=run.settings, shots=run.shots,
                                variant=run.variant, joint=run.joint,
                                joint_categories=list(run.joint_categories) or None,
                                examples=examples)
        record["paper"] = run.paper
        record["run_id"] = run.run_id
        record["timing"]["wall_seconds"] = time.perf_counter() - start
        path = Path(results_dir) / run.record_path
        write_examples(examples, path.with_suffix(".npz"))
        write_record(record, path)
        written.append(path)
        tqdm.write(f"{run.run_id}: image AUROC {record['metrics']['image_auroc']:.4f} "
                   f"({record['timing']['wall_seconds']:.1f} s)")
    return written
