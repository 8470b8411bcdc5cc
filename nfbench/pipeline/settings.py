"""The one settings resolver: what config a run of a method gets, and where it came from.

Order (later wins), the same for ``bench``, ``run``, ``decide``, ``peer(s)``, profiling,
identity and the reports:

1. the method's paper defaults (its ``Config`` dataclass);
2. the profile's shared settings (params.yaml ``profiles.<profile>.settings``, only the
   fields the method's config has: :func:`nfbench.pipeline.params.profile_settings`);
3. the paper's block for the profile (``<paper>.<profile>.settings``), then its dataset
   role's ``settings``, then the variant's own settings in ``benchmarks/<paper>.yaml``
   (:func:`variant_settings`; a reference method with ``profile_settings`` takes only the
   named ones from 3's first two);
4. for ``nfbench run``/``peer``: a ``--config`` file (then it replaces 3), ``--set`` pairs,
   ``--device`` (:func:`nfbench.pipeline.run_config.resolve_run_args` parses them).

Steps 3-4 give a run's *settings* (what :class:`nfbench.pipeline.plan.Run` carries and a
run's identity covers); :func:`config_settings` adds step 2, :func:`build_detector` step 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from nfbench.pipeline.params import Params, profile_settings, project_params, typed
from nfbench.pipeline.spec import load_spec, papers


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a run's settings come from: the paper, variant and dataset role whose block
    gave them (``paper`` None: no paper runs the method on the data; only the profile's
    shared settings apply), with the variant's shots and joint training, and, for a dataset
    no block maps, the dataset whose settings were borrowed."""

    settings: Mapping[str, Any]
    paper: str | None = None
    variant: str | None = None
    role: str | None = None
    shots: int | None = None
    joint: bool = False
    borrowed_from: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The plain form ``nfbench run``/``decide`` record (``settings_source``)."""
        out = {"settings": dict(self.settings), "paper": self.paper, "variant": self.variant,
               "role": self.role, "shots": self.shots, "joint": self.joint}
        if self.borrowed_from is not None:
            out["borrowed_from"] = self.borrowed_from
        return out


def variant_settings(params: Mapping[str, Any] | Params, paper: str, profile: str,
                     variant: str) -> dict[str, Any]:
    """Step 3: the settings of ``variant`` of ``paper`` under ``profile``: the block's
    settings, then its dataset role's, then the variant's own (later ones win). ``params``:
    params.yaml's document, or its :func:`~nfbench.pipeline.params.typed` view."""
    declared = load_spec(paper).variant(variant)
    block = (params if isinstance(params, Params) else typed(params)).block(paper, profile)
    inherited = {**block.settings, **block.role(declared.dataset).settings}
    if declared.profile_settings is not None:  # a reference method (e.g. the Gaussian
        # baseline) takes only the named profile settings (backbone, input size), not the
        # paper method's budget
        inherited = {k: v for k, v in inherited.items() if k in declared.profile_settings}
    return {**inherited, **declared.settings}


def for_variant(params: Mapping[str, Any], paper: str, profile: str, variant: str) -> Source:
    """The settings and source of ``variant`` of ``paper`` as ``bench`` runs it."""
    declared = load_spec(paper).variant(variant)
    return Source(variant_settings(params, paper, profile, variant), paper, variant,
                  declared.dataset, declared.shots, declared.joint)


def _paper_source(params: Mapping[str, Any], method: str, dataset: str, profile: str,
                  variant: str | None) -> Source | None:
    """The first paper (``benchmarks/`` order) whose spec runs ``method`` on a role mapped to
    ``dataset`` under ``profile``: ``variant`` if it is such a variant, else the paper's main
    variant if it is, else its first such variant."""
    view = typed(params)
    for paper in papers():
        if (paper, profile) not in view.blocks:
            continue
        spec, block = load_spec(paper), view.block(paper, profile)
        candidates = [name for name, v in spec.variants.items() if v.method == method
                      and block.role(v.dataset).dataset == dataset]
        if not candidates:
            continue
        main = spec.main_variant
        name = variant if variant in candidates else main if main in candidates else candidates[0]
        return for_variant(params, paper, profile, name)
    return None


def for_method(params: Mapping[str, Any], method: str, dataset: str, profile: str,
               variant: str | None = None, borrow: bool = True) -> Source:
    """The settings ``bench`` would give ``method`` on ``dataset`` under ``profile`` (for
    ``nfbench run``, ``decide``, ``peer``): :func:`_paper_source`. For a dataset no paper's
    block maps under ``profile`` (``folder``, or ``mvtec_ad`` in the demo profile), with
    ``borrow``: the settings the profile gives ``method`` on the first dataset it does map
    (``borrowed_from`` names it; its shots and joint training are not carried over): the
    profile's budget, input size and backbone, not the paper's, unless the profile is
    ``paper``. Else no settings (only the profile's shared ones will apply)."""
    found = _paper_source(params, method, dataset, profile, variant)
    if found is not None or not borrow:
        return found or Source({})
    view = typed(params)
    for paper in view.papers():
        for role in view.block(paper, profile).roles.values():
            other = _paper_source(params, method, role.dataset, profile, variant)
            if other is not None:
                return dataclasses.replace(other, shots=None, joint=False,
                                           borrowed_from=role.dataset)
    return Source({})


def config_fields(method: str) -> set[str]:
    """The field names of ``method``'s config."""
    from nfbench.methods import method_class

    return {f.name for f in dataclasses.fields(method_class(method).Config)}


def config_settings(method: str, profile: str, settings: Mapping[str, Any],
                    params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Steps 2-4: the profile's shared settings (the fields ``method``'s config has), then
    ``settings``: every setting that differs from the paper defaults."""
    params = params if params is not None else project_params()
    return {**profile_settings(params, profile, config_fields(method)), **settings}


def build_detector(method: str, profile: str, settings: Mapping[str, Any],
                   params: Mapping[str, Any] | None = None):
    """Steps 1-4: an unfitted detector of ``method`` with its resolved config."""
    from nfbench.methods import create_method

    return create_method(method, **config_settings(method, profile, dict(settings), params))


def resolve_config(method: str, profile: str, settings: Mapping[str, Any],
                   params: Mapping[str, Any] | None = None):
    """Steps 1-4: ``method``'s resolved config (:func:`build_detector`'s ``config``)."""
    return build_detector(method, profile, settings, params).config
