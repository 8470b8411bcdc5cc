"""A run's identity: what determines its result, as one digest stored in its record.

``nfbench bench`` skips a run whose record already carries the same identity, so that an
interrupted bench (or ``dvc repro``, whose run folders are ``persist: true``) resumes where it
stopped and a changed parameter reruns exactly the runs it changes. The identity covers:

* the run id (paper/variant/category/seed) and the seed, shots and joint training;
* the resolved config (paper defaults, profile, params.yaml, ``--set``), without the device
  index: only the device *type* (cpu / cuda) counts, so a run moved from GPU 0 to GPU 3 is
  the same run;
* a dataset fingerprint: the relative paths and byte sizes of the files the run reads (cheap:
  ``stat`` only; the record's ``data`` section keeps the full content fingerprints);
* the code version: sha1 of the source files of the method's package, of the method packages
  it imports, and of the shared modules every run uses (:data:`SHARED_CODE`). The runner,
  tables, reports and CLI are not part of it: they do not change a result.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import nfbench

PACKAGE = Path(nfbench.__file__).resolve().parent

#: Modules (relative to the package) whose code every run executes. The code that resolves a
#: run's settings (pipeline/plan.py, pipeline/spec.py: params.yaml's profile, paper and role blocks) is not in
#: it: the resolved config those settings give is part of the identity itself.
SHARED_CODE = ("pipeline/experiment.py", "metrics", "pipeline/protocols.py", "backbones.py", "feature_cache.py",
               "methods/base.py", "methods/__init__.py", "datasets")

IDENTITY_VERSION = 1


def _sources(relative: str) -> list[Path]:
    path = PACKAGE / relative
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


@functools.lru_cache(maxsize=None)
def method_packages(method: str) -> tuple[str, ...]:
    """The method packages ``method`` runs: its own and those its sources import."""
    seen, todo = [], [method]
    while todo:
        name = todo.pop()
        if name in seen or not (PACKAGE / "methods" / name).is_dir():
            continue
        seen.append(name)
        for source in _sources(f"methods/{name}"):
            todo += re.findall(r"nfbench\.methods\.(\w+)", source.read_text())
            todo += re.findall(r"from \.\.(\w+)", source.read_text())
    return tuple(sorted(seen))


@functools.lru_cache(maxsize=None)
def code_version(method: str) -> str:
    """sha1 (16 hex digits) of the source of ``method``'s packages and the shared code."""
    digest = hashlib.sha1()
    files = [f for rel in SHARED_CODE for f in _sources(rel)]
    files += [f for name in method_packages(method) for f in _sources(f"methods/{name}")]
    for path in sorted(set(files)):
        digest.update(str(path.relative_to(PACKAGE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def dataset_fingerprint(dataset: str, root: str | None, category: str,
                        joint_categories: tuple[str, ...] = ()) -> str:
    """sha1 of the relative paths and sizes of every file of the run's table (images, masks)."""
    from nfbench.datasets import load_table
    from nfbench.pipeline.experiment import category_table

    if category == "all":
        table = load_table(dataset, Path(root) if root else None, list(joint_categories) or None)
    else:
        table = category_table(dataset, Path(root) if root else None, category)
    files = [str(p) for column in ("path", "mask_path") for p in table[column]
             if isinstance(p, (str, Path))]
    base = os.path.commonpath(files) if files else ""
    digest = hashlib.sha1()
    for name in files:
        digest.update(f"{os.path.relpath(name, base)}:{os.path.getsize(name)};".encode())
    digest.update(f"{table['split'].tolist()}{table['label'].tolist()}".encode())
    return digest.hexdigest()[:16]


def resolved_config(run) -> dict[str, Any]:
    """The config ``run`` trains with (as JSON-ready dict)."""
    from nfbench.pipeline.experiment import resolve_config
    from nfbench.methods.base import config_to_dict

    return config_to_dict(resolve_config(run.method, run.profile, dict(run.settings)).config)


def run_identity(run) -> dict[str, Any]:
    """The identity of ``run``: its parts and their ``digest``."""
    from nfbench.pipeline.devices import device_type

    config = resolved_config(run)
    config["device"] = device_type(str(config.get("device", "auto")))
    parts = {"version": IDENTITY_VERSION, "run_id": run.run_id, "method": run.method,
             "seed": run.seed, "shots": run.shots, "joint": run.joint, "config": config,
             "dataset": run.dataset,
             "dataset_fingerprint": dataset_fingerprint(run.dataset, run.root, run.category,
                                                        tuple(run.joint_categories)),
             "code_version": code_version(run.method)}
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return {"digest": hashlib.sha1(blob).hexdigest()[:20], "code_version": parts["code_version"],
            "dataset_fingerprint": parts["dataset_fingerprint"]}


def stored_identity(record_path: Path) -> str | None:
    """The identity digest of the record at ``record_path`` (None: missing, unreadable, or
    its figure material is missing)."""
    record_path = Path(record_path)
    if not record_path.is_file() or not record_path.with_suffix(".npz").is_file():
        return None
    try:
        return json.loads(record_path.read_text()).get("identity", {}).get("digest")
    except (OSError, ValueError, AttributeError):
        return None
