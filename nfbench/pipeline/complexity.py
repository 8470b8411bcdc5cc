"""The profiling stage: FLOPs, parameters and speed of a paper's method, as ``profile.json``.

For each paper it measures the paper configuration (the method's defaults: the paper's
backbone and input size; timed only on the reference profile (params.yaml, the papers' setup)
or with ``time_paper``, since it is slow on a CPU), the profile's configuration of the main variant, the spec's extra complexity
configurations, and the rows of every ``layout: complexity`` table (CLS-CNFs' Table 3). The
measuring itself is library code (:mod:`nfbench.profiling`).

Counting a paper configuration's FLOPs takes minutes on a CPU, so every measurement is kept in
``<cache>/profiling/<key>.json`` (:func:`nfbench.paths.cache_root`), keyed by what it measures
(method, settings, batch size, timed or not, device) and the code that computes it (the
method's code digest, as in run identity, and the import-following digest of
:mod:`nfbench.profiling` and :mod:`nfbench.pipeline.flops`) and the counters' versions: a rerun of the stage after an unrelated change reads them back.
The stage (``nfbench profile``, every paper) first counts the untimed measurements of every
paper in worker processes (:mod:`nfbench.pipeline.untimed_counts`), then times the rest one
at a time (:func:`profile_paper`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, NamedTuple

from nfbench.atomic import write_text_atomic
from nfbench.paths import cache_root
from nfbench.pipeline.params import reference_profile
from nfbench.pipeline.settings import config_settings, variant_settings
from nfbench.pipeline.spec import PaperSpec, load_spec
from nfbench.profiling import profile_components, profile_method


#: Where the code that counts and times starts (its imports are followed).
COUNTING_CODE = ("nfbench.profiling", "nfbench.pipeline.flops")


@functools.lru_cache(maxsize=None)
def _measuring_code(method: str) -> str:
    """Digest of the code a measurement of ``method`` runs: the method's code digest (run
    identity's: its networks), the import-following digest of the counting code (the
    profiling library and :mod:`nfbench.pipeline.flops`, whatever they import;
    :mod:`nfbench.code_digest`), and the counters' versions."""
    import fvcore
    import torch

    from nfbench.code_digest import code_digest
    from nfbench.pipeline.identity import code_version

    digest = hashlib.sha1(code_digest(*COUNTING_CODE).encode())
    digest.update(f"{code_version(method)} {torch.__version__} "
                  f"{getattr(fvcore, '__version__', '?')}".encode())
    return digest.hexdigest()[:16]


def _cache_entry(kind: str, method: str, what: dict[str, Any]) -> tuple[str, Path]:
    """The cache key of a measurement and the file that keeps its result."""
    key = json.dumps({"kind": kind, "method": method, "what": what,
                      "code": _measuring_code(method)}, sort_keys=True, default=str)
    return key, cache_root() / "profiling" / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.json"


def cached(kind: str, method: str, what: dict[str, Any], measure: Callable[[], Any]) -> Any:
    """``measure()``, or its result stored earlier for the same ``kind``, ``method``, ``what``
    (JSON-ready arguments) and measuring code (:func:`_measuring_code`)."""
    key, path = _cache_entry(kind, method, what)
    try:
        return json.loads(path.read_text())["result"]
    except (OSError, ValueError, KeyError):
        pass
    result = measure()
    write_text_atomic(path, json.dumps({"key": json.loads(key), "result": result}) + "\n")
    return json.loads(json.dumps(result))  # as a cached read returns it


def is_cached(m: "Measurement") -> bool:
    """Whether the result of ``m`` is in the cache."""
    return _cache_entry(m.kind, m.method, m.what)[1].is_file()


def _configurations(spec: PaperSpec, params: dict, profile: str,
                    slow: bool) -> list[dict[str, Any]]:
    configs = [dict(label="paper configuration", settings={}, batch_size=1, time_it=slow)]
    configs += [dict(label=f"{profile} configuration",
                     settings=_profile_settings(spec, params, profile, spec.main_variant),
                     batch_size=spec.complexity.batch_size, time_it=True)]
    for extra in spec.complexity.configs:  # variants of the paper's
        configs.append(dict(label=extra.label, settings=extra.settings,
                            batch_size=extra.batch_size, time_it=slow))
    return configs


def _profile_settings(spec: PaperSpec, params: dict, profile: str, variant: str) -> dict:
    """The settings a run of ``variant`` gets under ``profile``, as the one resolver gives
    them (:func:`nfbench.pipeline.settings.config_settings`: shared, block, role, variant)."""
    return config_settings(spec.method, profile,
                           variant_settings(params, spec.paper, profile, variant), params)


class Measurement(NamedTuple):
    """One entry group of ``profile.json``: what it is (``header``: label, table), the cache
    ``kind`` (``method``: one entry; ``components``: one per network), and what it measures."""

    header: dict[str, Any]
    kind: str
    method: str
    what: dict[str, Any]
    measure: Callable[[], Any]

    @property
    def timed(self) -> bool:
        return bool(self.what["time_it"])


def measurements(paper: str, profile: str, params: dict, device: str | None = None,
                 time_paper: bool = False) -> list[Measurement]:
    """Every measurement of ``paper``'s ``profile.json`` under ``profile``, in its order."""
    spec = load_spec(paper)
    on_device = {"device": device} if device else {}
    slow = profile == reference_profile(params) or time_paper  # the paper setup is slow on a CPU
    out = []
    for config in _configurations(spec, params, profile, slow):
        settings = {**config["settings"], **on_device}
        out.append(Measurement(
            {"label": config["label"]}, "method", spec.method,
            {"settings": settings, "batch_size": config["batch_size"],
             "time_it": config["time_it"]},
            functools.partial(profile_method, spec.method, settings, config["batch_size"],
                              time_it=config["time_it"])))
    for table_id, table in spec.tables.items():
        if table.layout != "complexity":
            continue
        paper_settings = spec.variant(table.variant).settings
        for label, settings, time_it in (
                ("paper configuration", paper_settings, slow),
                (f"{profile} configuration",
                 _profile_settings(spec, params, profile, table.variant), True)):
            what = {"settings": {**settings, **on_device}, "rows": list(table.labels),
                    "batch_size": table.batch_size, "time_it": time_it}
            out.append(Measurement(
                {"label": label, "table": table_id}, "components", spec.method, what,
                functools.partial(profile_components, spec.method, what["settings"],
                                  what["rows"], what["batch_size"], time_it=time_it)))
    return out


def profile_paper(paper: str, profile: str, params: dict, results: Path,
                  device: str | None = None, time_paper: bool = False,
                  log: Callable[[str], None] = print) -> Path:
    """Measure ``paper``'s method under ``profile``; write ``results/<paper>/profile.json``."""
    entries = []
    for m in measurements(paper, profile, params, device, time_paper):
        result = cached(m.kind, m.method, m.what, m.measure)
        if m.kind == "method":
            entries.append({**m.header, **result})
            log(f"{m.header['label']}: {result['gflops_torch']:.2f} GFLOPs, "
                f"{result['parameters'] / 1e6:.1f} M parameters")
            continue
        for entry in result:
            entries.append({**m.header, **entry})
            log(f"{m.header['table']} {m.header['label']} {entry['component']}: "
                f"{entry['size_mb']:.1f} MB")
    out = Path(results) / paper / "profile.json"
    write_text_atomic(out, json.dumps(entries, indent=2) + "\n")
    return out
