"""``nfbench run``'s settings: the same path as ``bench``, and a config file to save and repeat.

Order (later wins): the method's paper defaults, the profile's shared settings
(params.yaml ``profiles.<profile>.settings``), the profile's block in ``params.yaml`` for the paper and dataset
role that run this method on this dataset (:func:`nfbench.pipeline.settings.for_method`), then
``--config FILE.yaml`` (a file from ``--print-config``: every setting explicit), then
``--set`` pairs, then ``--device``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import yaml

from nfbench.errors import UserError

#: The run arguments a config file carries besides the settings (CLI values win).
RUN_FIELDS = ("method", "dataset", "category", "profile", "seed", "shots", "joint", "variant")


def parse_sets(pairs: Sequence) -> dict[str, str]:
    """``--set a=1 b=2 --set c=3`` (argparse gives a list of lists) -> ``{a: 1, b: 2, c: 3}``."""
    settings = {}
    flat = [p for group in pairs for p in ([group] if isinstance(group, str) else group)]
    for pair in flat:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {pair!r}")
        settings[key.strip()] = value.strip()
    return settings


def profile_source(method: str, dataset: str, profile: str, variant: str | None,
                   params: dict[str, Any]) -> dict[str, Any]:
    """Where ``method``'s settings on ``dataset`` come from, as a plain dict:
    :func:`nfbench.pipeline.settings.for_method` (with borrowing)."""
    from nfbench.pipeline.settings import for_method

    return for_method(params, method, dataset, profile, variant).as_dict()


def resolve_run_args(args: argparse.Namespace) -> dict[str, Any]:
    """Fill ``args`` from ``--config``/defaults; return the settings overrides of the run."""
    from nfbench.pipeline.devices import validate_device
    from nfbench.methods import method_class
    from nfbench.pipeline.params import active_profile, load_params

    loaded: dict[str, Any] = {}
    if args.config is not None:
        if not Path(args.config).is_file():
            raise UserError(f"no config file {args.config}")
        from nfbench.pipeline.params_validation import read_yaml, validate_run_config

        loaded = validate_run_config(read_yaml(args.config, "config file"), args.config)
    for name in RUN_FIELDS:
        given = getattr(args, name, None)  # `is`, not `in`: --seed 0 is a value (0 == False)
        if (given is None or given is False) and loaded.get(name) is not None:
            setattr(args, name, loaded[name])
    if args.root is None and loaded.get("root"):
        args.root = Path(loaded["root"])
    for name in ("method", "dataset"):
        if not getattr(args, name):
            raise UserError(f"--{name} is required (or a --config file naming it)")
    method_class(args.method)  # fail fast on an unknown method, before any data work
    params = load_params()  # the profiles live there
    args.profile = active_profile(params, args.profile)
    args.seed = 0 if args.seed is None else int(args.seed)
    if args.config is not None:
        base = dict(loaded.get("settings") or {})
        source = {"paper": None, "variant": loaded.get("variant")}  # the file's own variant
    else:
        source = profile_source(args.method, args.dataset, args.profile, args.variant, params)
        base = dict(source["settings"])
        if args.shots is None and source["shots"] is not None:
            args.shots = source["shots"]
        if not args.joint and source["joint"]:
            args.joint = True
    args.settings_source = source
    args.variant = args.variant or source.get("variant") or "default"
    overrides = {**base, **parse_sets(args.set)}
    if args.device:
        overrides["device"] = validate_device(args.device)
    elif "device" in overrides:
        validate_device(str(overrides["device"]))
    return overrides


def print_config(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    """The fully resolved run as YAML (``--config`` reads it back)."""
    from nfbench.methods.base import config_to_dict
    from nfbench.pipeline.settings import resolve_config

    config = config_to_dict(resolve_config(args.method, args.profile, overrides))
    source = getattr(args, "settings_source", {}) or {}
    document = {"method": args.method, "dataset": args.dataset, "category": args.category,
                "root": str(Path(args.root).resolve()) if args.root else None,
                "profile": args.profile,
                "seed": args.seed, "shots": args.shots, "joint": bool(args.joint),
                "variant": args.variant, "settings": config}
    header = "# nfbench run --config FILE.yaml repeats this run exactly"
    if source.get("paper"):
        header += (f"\n# settings: params.yaml {source['paper']}.{args.profile} "
                   f"(variant {source['variant']}, role {source['role']}), then --set")
        if source.get("borrowed_from"):
            header += (f"\n# ({args.dataset} has no block in profile {args.profile}: the "
                       f"settings of its {source['borrowed_from']} runs)")
    print(header)
    print(yaml.safe_dump(document, sort_keys=False, default_flow_style=None).rstrip())
