"""A run's identity: what determines its result, as one digest stored in its record.

``nfbench bench`` skips a run whose record already carries the same identity, so that an
interrupted bench (or ``dvc repro``, whose run folders are ``persist: true``) resumes where it
stopped and a changed parameter reruns exactly the runs it changes. The identity covers:

* the run id (paper/variant/category/seed) and the seed, shots and joint training;
* the resolved config (paper defaults, profile, params.yaml, ``--set``) without the device:
  the device is where a run ran (its record's ``timing.device`` keeps it), not what it
  computes, so a run recorded on ``cuda:3`` of a GPU node (``device: auto`` included) is the
  same run to a CPU head node and to another GPU; what a device changes in the numbers is set
  by the config's precision and determinism settings, which are part of it;
* a dataset fingerprint: the relative paths and content hashes of the files the run reads
  (images and masks; hashes cached by file ``stat`` in :mod:`nfbench.datasets.content_hash`,
  so an unchanged dataset is not read again), and those of the DTD textures a run pastes
  into synthetic defects (``foreign_source: dtd``);
* the code version: :func:`nfbench.code_digest.code_digest` of the method's package
  and the one-run driver, following their nfbench imports (docstrings and comments do not
  count).
  The runner, plan, tables, reports and CLI are not part of it: they do not change a result.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from nfbench.code_digest import PACKAGE, code_digest, module_closure, module_path

IDENTITY_VERSION = 2

#: Where every run's code starts besides its method's package: the one-run driver (which
#: reaches the protocols, metrics, datasets, feature cache, backbones and the method registry).
RUN_CODE = ("nfbench.pipeline.experiment",)


def method_packages(method: str) -> tuple[str, ...]:
    """The method packages ``method`` runs: its own and those its code imports."""
    prefix = "nfbench.methods."
    names = {m[len(prefix):].split(".")[0] for m in module_closure(prefix + method)
             if m.startswith(prefix)}
    return tuple(sorted(n for n in names if (PACKAGE / "methods" / n).is_dir()))


def code_version(method: str) -> str:
    """The code digest (16 hex digits) of what a run of ``method`` executes: its package and
    :data:`RUN_CODE`, with every nfbench module they import
    (:mod:`nfbench.code_digest`)."""
    package = f"nfbench.methods.{method}"
    # a method registered from outside the nfbench package: only the shared code is known
    return code_digest(*([package] if module_path(package) else []), *RUN_CODE)


def dataset_fingerprint(dataset: str, root: str | None, category: str,
                        joint_categories: tuple[str, ...] = ()) -> str:
    """sha1 of the relative paths and contents of every file of the run's table (images,
    masks), with its splits and labels. Contents come from :mod:`nfbench.datasets.content_hash`
    (read only when a file changed since it was last hashed), so a mask redrawn with the same
    byte size changes the fingerprint and an unchanged dataset costs one ``stat`` per file."""
    from nfbench.datasets import load_table
    from nfbench.datasets.content_hash import files_sha1
    from nfbench.pipeline.experiment import category_table

    if category == "all":
        table = load_table(dataset, Path(root) if root else None, list(joint_categories) or None)
    else:
        table = category_table(dataset, Path(root) if root else None, category)
    files = [str(p) for column in ("path", "mask_path") for p in table[column]
             if isinstance(p, (str, Path))]
    base = os.path.commonpath(files) if files else ""
    digest = hashlib.sha1()
    for name, content in zip(files, files_sha1(files)):
        digest.update(f"{os.path.relpath(name, base)}:{content};".encode())
    digest.update(f"{table['split'].tolist()}{table['label'].tolist()}".encode())
    return digest.hexdigest()[:16]


def textures_fingerprint(config: dict[str, Any]) -> str | None:
    """For a run pasting DTD textures into synthetic defects (``foreign_source: dtd``), sha1
    of the relative paths and contents of the texture images it draws from (``"missing"``
    without DTD: the run then says so); None for any other run."""
    if config.get("foreign_source") != "dtd":
        return None
    from nfbench.datasets.content_hash import files_sha1
    from nfbench.errors import UserError
    from nfbench.methods.synthetic.textures import DTDTextures
    from nfbench.paths import datasets_root

    try:
        paths = DTDTextures(config.get("dtd_root") or datasets_root() / "dtd").paths
    except UserError:
        return "missing"
    base = os.path.commonpath(paths) if paths else ""
    digest = hashlib.sha1()
    for name, content in zip(paths, files_sha1(paths)):
        digest.update(f"{os.path.relpath(name, base)}:{content};".encode())
    return digest.hexdigest()[:16]


def resolved_config(run) -> dict[str, Any]:
    """The config ``run`` trains with (as JSON-ready dict)."""
    from nfbench.methods.base import config_to_dict
    from nfbench.pipeline.settings import resolve_config

    return config_to_dict(resolve_config(run.method, run.profile, dict(run.settings)))


def run_identity(run) -> dict[str, Any]:
    """The identity of ``run``: its parts and their ``digest``."""
    config = resolved_config(run)
    config.pop("device", None)  # where it runs, not what it computes (the record keeps it)
    parts = {"version": IDENTITY_VERSION, "run_id": run.run_id, "method": run.method,
             "seed": run.seed, "shots": run.shots, "joint": run.joint, "config": config,
             "dataset": run.dataset,
             "dataset_fingerprint": dataset_fingerprint(run.dataset, run.root, run.category,
                                                        tuple(run.joint_categories)),
             "code_version": code_version(run.method)}
    textures = textures_fingerprint(config)
    if textures is not None:  # the DTD images its synthetic defects paste
        parts["textures_fingerprint"] = textures
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
