"""Trained detectors as self-describing folders: save one, reload it, score with it again.

A model folder (``nfbench run --save-model DIR``, ``bench --save-models``, ``decide
--save-model DIR``) holds::

    nfbench-model.json   the manifest: format version, method, the resolved config the
                         detector was built from (category settings applied), the category,
                         the backbone's identity (name, weight file tag), the state file and
                         format, the threshold data (when a threshold was set) and nfbench's
                         version
    config.yaml          the same resolved config, for a person to read
    state.safetensors    every tensor of ``Detector.state_dict()`` (nested dicts flattened
                         with "/"); ``state.pt`` (``torch.save``, loaded with
                         ``weights_only=True``) where safetensors is not installed
    record.json          the run record that fitted it, when there is one

:func:`load_detector` rebuilds the detector from the manifest's config and loads the state:
its scores are identical to those of the detector that was saved (tested in a new process).
The folder is written beside its target and renamed into place: never half-written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nfbench.atomic import atomic_folder
from nfbench.errors import UserError

FORMAT = "nfbench-model"
FORMAT_VERSION = 1
MANIFEST = "nfbench-model.json"
SEPARATOR = "/"  # nests state dicts in flat keys; state_dict keys themselves use "."


# -- state (nested dicts of tensors) <-> flat tensor files ---------------------------------

def flatten_state(state: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """``{"flows": {"0.w": t}, "channels": c}`` -> ``{"flows/0.w": t, "channels": c}``."""
    flat: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if SEPARATOR in str(key):
            raise ValueError(f"state key {key!r} contains {SEPARATOR!r}")
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_state(value, name + SEPARATOR))
        elif isinstance(value, torch.Tensor):
            flat[name] = value
        else:
            raise TypeError(f"state entry {name!r} is a {type(value).__name__}, not a tensor")
    return flat


def unflatten_state(flat: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The inverse of :func:`flatten_state`."""
    state: dict[str, Any] = {}
    for name, tensor in flat.items():
        *parents, leaf = name.split(SEPARATOR)
        node = state
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = tensor
    return state


def _has_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def _write_state(state: dict[str, Any], folder: Path) -> dict[str, str]:
    # clone: safetensors refuses tensors sharing memory (e.g. tied or expanded weights)
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in flatten_state(state).items()}
    if _has_safetensors():
        from safetensors.torch import save_file

        save_file(flat, str(folder / "state.safetensors"))
        return {"file": "state.safetensors", "format": "safetensors"}
    torch.save(flat, folder / "state.pt")
    return {"file": "state.pt", "format": "torch"}


def _read_state(folder: Path, entry: dict[str, str]) -> dict[str, Any]:
    path = folder / entry["file"]
    if not path.is_file():
        raise UserError(f"model folder {folder}: missing {entry['file']}")
    if entry["format"] == "safetensors":
        if not _has_safetensors():
            raise UserError(f"{path} needs safetensors: pip install safetensors")
        from safetensors.torch import load_file

        flat = load_file(str(path))
    else:
        flat = torch.load(path, map_location="cpu", weights_only=True)
    return unflatten_state(flat)


# -- what a detector is built from ------------------------------------------------------------

def fitted_settings(detector: Any) -> dict[str, Any]:
    """The config a fitted detector scores with: ``settings_`` (its category settings applied,
    CFlow-AD and CLS-CNFs) or its ``config``. Rebuilding a detector from it and loading the
    state gives the same detector (no category settings to apply again)."""
    from nfbench.methods.base import config_to_dict, effective_config

    return config_to_dict(effective_config(detector))


def backbone_identity(backbone: str | None) -> dict[str, Any] | None:
    """Name, family and weight-file tag of a registered backbone (None without one)."""
    if not backbone:
        return None
    from nfbench.backbones import get_backbone_spec

    try:
        spec = get_backbone_spec(backbone)
    except UserError:
        return {"name": backbone}
    return {"name": spec.name, "family": spec.family, "weights_tag": spec.weights_tag}


def save_detector(detector: Any, folder: Path | str, *, record: dict | None = None,
                  threshold: dict | None = None, category: str | None = None,
                  overwrite: bool = True) -> Path:
    """Write ``detector`` (fitted) into ``folder`` (see the module docstring). ``threshold``:
    ``{"value": float, "rule": str, ...}`` when one was set (``decide``); ``record``: the run
    record that fitted it. Returns the folder."""
    import yaml

    from nfbench.version import __version__

    folder = Path(folder)
    if folder.exists() and not (folder / MANIFEST).is_file() and any(folder.iterdir()):
        raise UserError(f"{folder} exists and is not an nfbench model folder; choose another")
    if folder.exists() and not overwrite:
        raise UserError(f"{folder} exists")
    settings = fitted_settings(detector)
    category = category or getattr(detector, "category_", None) or (record or {}).get("category")
    with atomic_folder(folder) as tmp:
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "nfbench": __version__,
            "method": detector.name, "category": category, "config": settings,
            "backbone": backbone_identity(settings.get("backbone")),
            "state": _write_state(detector.state_dict(), tmp),
            "threshold": threshold, "record": "record.json" if record is not None else None,
        }
        if record is not None:
            from nfbench.pipeline.record import write_record

            write_record(record, tmp / "record.json")
            manifest["run"] = {k: record.get(k) for k in
                               ("run_id", "paper", "variant", "dataset", "category", "seed",
                                "profile", "identity") if record.get(k) is not None}
        (tmp / "config.yaml").write_text(
            f"# {detector.name}: the resolved config of this model (nfbench-model.json has it "
            f"too)\n" + yaml.safe_dump(settings, sort_keys=False, default_flow_style=None))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=True) + "\n")
    return folder


def read_manifest(folder: Path | str) -> dict[str, Any]:
    """The manifest of a model folder; one clear error when ``folder`` is not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not an nfbench model folder (no {MANIFEST}); make one "
                        "with nfbench run ... --save-model DIR")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path}: unsupported model format {manifest.get('format')!r} "
                        f"version {manifest.get('format_version')!r}")
    return manifest


def load_detector(folder: Path | str, device: str | None = None) -> Any:
    """The detector saved in ``folder``, ready to score. ``device`` replaces the saved
    device setting (default: the saved one, or the CPU when it names CUDA and none is
    here). The manifest is kept as ``detector.artifact_``."""
    from nfbench.methods import create_method, method_class

    folder = Path(folder)
    manifest = read_manifest(folder)
    settings = dict(manifest["config"])
    if device is not None:
        settings["device"] = device
    elif str(settings.get("device", "auto")).startswith("cuda") and not torch.cuda.is_available():
        settings["device"] = "cpu"
    method_class(manifest["method"])
    detector = create_method(manifest["method"], **settings)
    if hasattr(detector, "category_"):
        detector.category_ = manifest.get("category")
    detector.load_state_dict(_read_state(folder, manifest["state"]))
    detector.artifact_ = {**manifest, "folder": str(folder)}
    return detector

