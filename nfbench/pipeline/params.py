"""``params.yaml`` as typed, validated data: the one way the pipeline reads its parameters.

The file is loaded and type-checked once (:func:`load_params`, key-path errors from
:mod:`nfbench.pipeline.params_validation`); :func:`typed` gives the same document as frozen
dataclasses, so that every reader gets the same answer for the same question:

* ``typed(params).block(paper, profile)``: a paper's block under a profile, or one error
  ``params.yaml has no '<paper>: <profile>:' block``;
* ``Block.role(name)``: a dataset role of that block, or one error naming the key path. A
  role some variant or table of the paper's spec uses must exist in every profile's block:
  that is checked when the document is read (:func:`typed`), so a missing role is never an
  empty ``{}`` in one reader and an error in another;
* ``Role.categories``: the role's category names (``all``: every category of its dataset);
* :func:`profile_settings`: ``profiles.<profile>.settings``, what a profile changes for every
  method.

The functions keep taking the document as the plain mapping :func:`load_params` returns (it
travels through the CLI and the pipeline stages unchanged); :func:`typed` reads it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from nfbench.errors import UserError
from nfbench.paths import config_root


def _frozen(mapping: Mapping | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Role:
    """One dataset role of a paper's block: the dataset it maps to and how it is run."""

    name: str
    dataset: str
    root: str | None
    declared_categories: tuple[str, ...] | None  # None: ``all``
    settings: Mapping[str, Any]

    @property
    def categories(self) -> list[str]:
        """The role's categories (``all``: every category of its dataset at ``root``)."""
        if self.declared_categories is None:
            from nfbench.datasets import categories_of

            return list(categories_of(self.dataset, self.root))
        return list(self.declared_categories)


@dataclass(frozen=True)
class Block:
    """``params.yaml``'s ``<paper>: <profile>:`` block."""

    paper: str
    profile: str
    seeds: tuple[int, ...]
    settings: Mapping[str, Any]
    roles: Mapping[str, Role]

    def role(self, name: str) -> Role:
        """The role ``name``, or one clear error naming the key path."""
        try:
            return self.roles[name]
        except KeyError:
            raise UserError(f"params.yaml {self.paper}.{self.profile}.datasets has no role "
                            f"{name!r}") from None


@dataclass(frozen=True)
class Profile:
    """``profiles.<name>``: the settings the profile gives every method, and whether it is
    the reference profile (the papers' own setup)."""

    name: str
    settings: Mapping[str, Any]
    reference: bool


@dataclass(frozen=True)
class Params:
    """The whole of ``params.yaml``, validated."""

    profile: str | None
    profiles: Mapping[str, Profile]
    blocks: Mapping[tuple[str, str], Block]
    peers: Mapping[str, Any]

    def block(self, paper: str, profile: str) -> Block:
        try:
            return self.blocks[(paper, profile)]
        except KeyError:
            raise UserError(f"params.yaml has no '{paper}: {profile}:' block") from None

    def papers(self) -> list[str]:
        """The papers that have blocks, in ``benchmarks/`` order."""
        return list(dict.fromkeys(paper for paper, _ in self.blocks))

    @property
    def reference(self) -> str:
        marked = [name for name, p in self.profiles.items() if p.reference]
        if len(marked) != 1:
            raise UserError("params.yaml: profiles: exactly one profile must say "
                            f"`reference: true` (the papers' own setup); found {len(marked)}")
        return marked[0]


def profile_names(params: Mapping[str, Any]) -> tuple[str, ...]:
    """The profiles of ``params`` (params.yaml), sorted: the keys of its ``profiles`` block,
    which every paper's block and the ``peers`` block must have exactly (peers: at most)."""
    from nfbench.pipeline.spec import papers

    declared = params.get("profiles")
    if not isinstance(declared, Mapping) or not declared:
        raise UserError("params.yaml: profiles: expected a mapping of profile name -> "
                        "{settings: ...}")
    names = set(declared)
    for paper in papers():
        if paper not in params:
            continue
        block = params[paper]
        have = set(block) if isinstance(block, Mapping) else set()
        if have != names:
            missing, extra = sorted(names - have), sorted(have - names)
            raise UserError(f"params.yaml: {paper}: its profiles must be those of `profiles:` "
                            f"({', '.join(sorted(names))})"
                            + (f"; missing {', '.join(missing)}" if missing else "")
                            + (f"; unknown {', '.join(extra)}" if extra else ""))
    extra = sorted(set(params.get("peers") or {}) - names)
    if extra:
        raise UserError(f"params.yaml: peers: unknown profile(s) {', '.join(extra)}")
    if params.get("profile") is not None and params["profile"] not in names:
        raise UserError(f"params.yaml: profile: unknown profile {params['profile']!r}; "
                        f"available: {', '.join(sorted(names))}")
    return tuple(sorted(names))


def typed(params: Mapping[str, Any]) -> Params:
    """``params`` (params.yaml's document, as :func:`load_params` returns it) as frozen
    dataclasses, checked: the profiles every paper's block has (:func:`profile_names`), the
    reference profile, and every dataset role the paper's variants and tables use."""
    from nfbench.pipeline.spec import load_spec, papers

    names = profile_names(params)
    profiles = {}
    for name in names:
        entry = params["profiles"][name] or {}
        if not isinstance(entry, Mapping) or not isinstance(entry.get("settings") or {}, Mapping):
            raise UserError(f"params.yaml: profiles.{name}: expected {{settings: {{...}}}}")
        profiles[name] = Profile(name, _frozen(entry.get("settings")),
                                 entry.get("reference") is True)
    blocks = {}
    for paper in papers():
        if paper not in params:
            continue
        spec = load_spec(paper)
        used = {v.dataset for v in spec.variants.values()} | \
            {t.dataset for t in spec.tables.values() if t.dataset is not None}
        for profile in names:
            raw = params[paper][profile] or {}
            roles = {}
            for role, entry in (raw.get("datasets") or {}).items():
                categories = entry.get("categories", "all")
                roles[role] = Role(role, entry["dataset"], entry.get("root"),
                                   None if categories == "all" else
                                   tuple(str(c) for c in categories),
                                   _frozen(entry.get("settings")))
            missing = sorted(used - set(roles))
            if missing:
                raise UserError(f"params.yaml: {paper}.{profile}.datasets: no role "
                                f"{', '.join(map(repr, missing))} (benchmarks/{paper}.yaml "
                                "runs or tabulates it)")
            blocks[(paper, profile)] = Block(paper, profile,
                                             tuple(int(s) for s in raw.get("seeds", [0])),
                                             _frozen(raw.get("settings")), _frozen(roles))
    return Params(params.get("profile"), _frozen(profiles), _frozen(blocks),
                  _frozen(params.get("peers")))


def reference_profile(params: Mapping[str, Any]) -> str:
    """The profile marked ``reference: true`` in params.yaml's ``profiles:`` (exactly one):
    the one that runs the papers' own setup, which reports cite as "what the paper used" and
    profiling times in full."""
    return typed(params).reference


def profile_settings(params: Mapping[str, Any], profile: str,
                     fields: set[str] | None = None) -> dict[str, Any]:
    """``params.profiles.<profile>.settings``: what the profile changes for every method
    (below a paper's block; the only settings where no paper runs the method on the data),
    restricted to a config's ``fields`` if given."""
    names = profile_names(params)
    if profile not in names:
        raise UserError(f"unknown profile {profile!r}; available: {', '.join(names)}")
    block = params["profiles"][profile] or {}
    if not isinstance(block, Mapping) or not isinstance(block.get("settings") or {}, Mapping):
        raise UserError(f"params.yaml: profiles.{profile}: expected {{settings: {{...}}}}")
    settings = dict(block.get("settings") or {})
    return {k: v for k, v in settings.items() if fields is None or k in fields}


#: the former name (:mod:`nfbench.pipeline.spec` held it)
shared_settings = profile_settings


def active_profile(params: Mapping[str, Any], requested: str | None = None) -> str:
    """``requested`` (``--profile``), else params.yaml's ``profile``; one of the profiles
    params.yaml declares (:func:`profile_names`), else one clear error."""
    names = profile_names(params)
    profile = requested or params.get("profile")
    if profile not in names:
        raise UserError(f"unknown profile {profile!r}; params.yaml declares: {', '.join(names)}")
    return profile


def load_params(path: Path | None = None) -> dict[str, Any]:
    """``params.yaml`` at the project top (or ``path``; outside a checkout the packaged
    defaults), type-checked before any work (:mod:`nfbench.pipeline.params_validation`)."""
    from nfbench.pipeline.params_validation import read_yaml, validate_params

    path = Path(path) if path is not None else config_root() / "params.yaml"
    if not path.is_file():
        raise UserError(f"no parameters file {path}")
    params = validate_params(read_yaml(path, "parameters file"), path)
    typed(params)  # profiles and roles checked now, before any work
    return params


def project_params() -> dict[str, Any]:
    """``params.yaml`` at the project top, parsed once per version of the file: read it, do not
    change it (:func:`load_params` gives a fresh copy)."""
    path = config_root() / "params.yaml"
    if not path.is_file():
        raise UserError(f"no parameters file {path}")
    return _cached_params(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _cached_params(path: Path, mtime_ns: int) -> dict[str, Any]:
    return load_params(path)


def profile_params(params: Mapping[str, Any], paper: str, profile: str) -> dict[str, Any]:
    """The raw block ``params[paper][profile]``, with a clear error when it is missing
    (readers of a block's fields use :func:`typed`)."""
    try:
        return params[paper][profile]
    except (KeyError, TypeError):
        raise UserError(f"params.yaml has no '{paper}: {profile}:' block") from None


def role_categories(role: Mapping[str, Any] | Role) -> list[str]:
    """The categories a dataset role names (``all`` = every category of the dataset)."""
    if isinstance(role, Role):
        return role.categories
    categories = role.get("categories", "all")
    return Role("", role["dataset"], role.get("root"),
                None if categories == "all" else tuple(str(c) for c in categories),
                _frozen(None)).categories
