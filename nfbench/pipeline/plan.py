"""From benchmark specs (``benchmarks/<paper>.yaml``) and parameters (``params.yaml``) to runs.

A spec declares a paper's *variants* (one run definition each: settings, shots, joint
training, a dataset role) and its *tables* (which variants, which metric, the published
numbers). ``params.yaml`` maps each dataset role onto a real dataset and categories for the
chosen profile and adds the profile's budget. Expanding both gives the list of :class:`Run`
s, one per variant × category × seed; each writes one result record, whose path is fixed by
the run so that tables can find it without training anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfbench.errors import UserError
# re-exported: params.yaml's readers (nfbench.pipeline.params) were first written here
from nfbench.pipeline.params import (active_profile, load_params, profile_params,  # noqa: F401
                                     project_params, role_categories, typed)
from nfbench.pipeline.settings import for_method, resolve_config, variant_settings
from nfbench.pipeline.spec import load_spec, papers


def pipeline_papers(params: dict[str, Any], paper: str | None = None) -> list[str]:
    """The papers of ``benchmarks/`` (in their order) that ``params`` runs, or just ``paper``."""
    if paper is not None:
        load_spec(paper)  # an unknown paper is one clear error
        return [paper]
    return [p for p in papers() if p in params]


@dataclass(frozen=True)
class Run:
    """One fit + score: everything :func:`nfbench.pipeline.experiment.run_experiment` needs."""

    paper: str
    method: str
    variant: str
    dataset: str
    category: str
    seed: int
    profile: str
    settings: dict = field(default_factory=dict, hash=False, compare=False)
    shots: int | None = None
    joint: bool = False
    root: str | None = None
    joint_categories: tuple[str, ...] = ()

    @property
    def record_path(self) -> Path:
        """Where this run's record lives, relative to the results folder."""
        return Path(self.paper) / "runs" / self.variant / self.category / f"seed{self.seed}.json"

    @property
    def run_id(self) -> str:
        return f"{self.paper}/{self.variant}/{self.category}/seed{self.seed}"


def expand_runs(paper: str, profile: str, params: dict[str, Any] | None = None,
                variants: list[str] | None = None) -> list[Run]:
    """Every run of ``paper`` under ``profile`` (optionally only some ``variants``)."""
    spec = load_spec(paper)
    params = params if params is not None else load_params()
    view = typed(params)
    block = view.block(paper, profile)
    chosen = variants or list(spec.variants)
    unknown = [v for v in chosen if v not in spec.variants]
    if unknown:
        raise UserError(f"{paper} has no variant(s) {unknown}; declared: {', '.join(spec.variants)}")
    runs = []
    for name in chosen:
        variant = spec.variants[name]
        role = block.role(variant.dataset)
        settings = variant_settings(view, paper, profile, name)
        role_cats = role.categories
        categories = ["all"] if variant.joint else role_cats
        for category in categories:
            for seed in block.seeds:
                runs.append(Run(paper=paper, method=variant.method, variant=name,
                                dataset=role.dataset, category=category, seed=int(seed),
                                profile=profile, settings=settings, shots=variant.shots,
                                joint=variant.joint, root=role.root,
                                joint_categories=tuple(role_cats) if variant.joint else ()))
    return runs


def parse_shard(text: str) -> tuple[int, int]:
    """``i/N`` (0 <= i < N) -> (i, N)."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise UserError(f"--shard expects i/N with 0 <= i < N (e.g. 0/4), got {text!r}")
    return i, n


def stage_group(run: Run) -> tuple:
    """A key that runs which may share a trained stage have in common: for a method whose
    runs share trained stages (its ``shares_stages``) the training data (dataset, root,
    category or joint categories, shots) and the seed, which every stage's key contains; any
    other run is a group of its own. Coarser than the stage keys (those need the code and
    trained features), never finer."""
    from nfbench.methods import method_class
    from nfbench.methods.base import shares_stages

    if not shares_stages(method_class(run.method)):
        return ("run", run.run_id)
    return ("stage", run.dataset, run.root or "", run.category, run.joint_categories,
            run.shots or 0, run.seed)


def shared_stages(run: Run) -> frozenset[str]:
    """The keys of the trained stages ``run`` may share with other runs: the cost model's
    ``train`` items (:func:`nfbench.pipeline.flops.run_items`, keyed like the stages the
    method trains, e.g. CLS-CNFs' FE stage and CNF stage); empty for a method whose runs
    share no stage. Two runs with a key in common would wait on each other's stage lock if
    they trained it at once; once one of them has trained it, the others only read it."""
    from nfbench.methods import method_class
    from nfbench.methods.base import shares_stages
    from nfbench.pipeline.flops import _category_config, run_items
    from nfbench.pipeline.identity import resolved_config

    if not shares_stages(method_class(run.method)):
        return frozenset()
    config = _category_config(resolved_config(run), run.category)
    data = (run.dataset, run.root or "", run.category, run.joint_categories, run.shots or 0)
    no_flops = {"extractor": 0.0, "trained": 0.0}  # keys only: nothing is counted
    return frozenset(key for kind, key, _ in run_items(run.method, config, data, 0, 0, run.seed,
                                                       forward=no_flops) if kind == "train")


def shard_runs(runs: list[Run], index: int, count: int) -> list[Run]:
    """Shard ``index`` of ``count`` of ``runs`` (sorted by run id): the runs that may share a
    trained stage (:func:`stage_group`) stay in one shard, so that N shards never train one
    stage twice; groups are dealt out largest first, each to the shard with the fewest runs so
    far (the lowest index on a tie). The split depends only on the selection, so the same
    command in every array job gives disjoint shards covering it."""
    groups: dict[tuple, list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.run_id):
        groups.setdefault(stage_group(run), []).append(run)
    loads, chosen = [0] * count, []
    for members in sorted(groups.values(), key=lambda g: (-len(g), g[0].run_id)):
        target = loads.index(min(loads))
        loads[target] += len(members)
        if target == index:
            chosen += members
    return sorted(chosen, key=lambda r: r.run_id)


def select_runs(runs: list[Run], categories: list[str] | None = None,
                seeds: list[int] | None = None, shard: tuple[int, int] | None = None) -> list[Run]:
    """The runs of the given categories and seeds; then shard ``(i, N)`` of the selection
    (:func:`shard_runs`: runs sharing a trained stage in one shard)."""
    chosen = [r for r in runs if (not categories or r.category in categories)
              and (not seeds or r.seed in seeds)]
    if categories and not chosen:
        known = sorted({r.category for r in runs})
        raise UserError(f"no run of category {', '.join(categories)}; planned: {', '.join(known)}")
    unplanned = sorted(set(seeds or []) - {r.seed for r in runs})
    if unplanned:  # `--seed 7` outside the plan would run nothing and say nothing
        raise UserError(f"no run of seed {', '.join(map(str, unplanned))}; planned: "
                        f"{', '.join(map(str, sorted({r.seed for r in runs})))}")
    if shard is not None:
        chosen = shard_runs(chosen, *shard)
    return chosen


def run_settings(method: str, dataset: str, profile: str, variant: str | None = None,
                 params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings ``bench`` would give ``method`` on ``dataset`` under ``profile``
    (:func:`nfbench.pipeline.settings.for_method`, without borrowing) as a plain dict
    ``{"settings", "paper", "variant", "role", "shots", "joint"}``."""
    params = params if params is not None else load_params()
    return for_method(params, method, dataset, profile, variant, borrow=False).as_dict()


def describe_plan(papers: list[str], profile: str, params: dict[str, Any],
                  verbose: bool = False) -> str:
    """``nfbench plan``'s listing: per paper its run count and each table's variants (every
    run with ``verbose``), then the total."""
    lines, total = [], 0
    for paper in papers:
        spec = load_spec(paper)
        runs = expand_runs(paper, profile, params)
        total += len(runs)
        lines.append(f"# {paper} ({profile}): {len(runs)} runs")
        for table_id, table in spec.tables.items():
            state = f"variants {', '.join(table.labels)}" if table.reproducible \
                else "not reproducible"
            lines.append(f"  {table_id}: {state}")
        if verbose:
            lines += [f"    {run.run_id}  dataset={run.dataset} settings={run.settings}"
                      + (f" shots={run.shots}" if run.shots else "") + (" joint" if run.joint else "")
                      for run in runs]
    lines.append(f"total: {total} runs")
    return "\n".join(lines)


def bench_runs(paper: str, profile: str, params: dict[str, Any], variants: list[str] | None = None,
               tables: list[str] | None = None, categories: list[str] | None = None,
               seeds: list[int] | None = None, shard: str | None = None) -> list[Run]:
    """The runs ``nfbench bench`` executes: the named variants plus those the named tables
    need (all when neither is given), restricted to categories, seeds and shard ``i/N``."""
    chosen = list(variants or [])
    for table_id in tables or []:
        chosen += [v for v in load_spec(paper).table(table_id).variants if v not in chosen]
    runs = expand_runs(paper, profile, params, variants=chosen or None)
    return select_runs(runs, categories=categories, seeds=seeds,
                       shard=parse_shard(shard) if shard else None)


def profile_datasets(profile: str, params: dict[str, Any]) -> list[str]:
    """The datasets the runs of ``profile`` read (``nfbench data prepare``): every dataset a
    paper's role maps to, and those a run's method needs besides (its ``needed_datasets``,
    e.g. the textures its synthetic defects paste)."""
    from nfbench.methods import method_class
    from nfbench.methods.base import needed_datasets

    names: list[str] = []
    view = typed(params)
    for paper in pipeline_papers(params):
        spec = load_spec(paper)
        block = view.block(paper, profile)
        for name, variant in spec.variants.items():
            names.append(block.role(variant.dataset).dataset)
            # the run's resolved config (defaults, profile, role, variant), as the run sees it
            config = resolve_config(variant.method, profile,
                                    variant_settings(view, paper, profile, name), params)
            names.extend(needed_datasets(method_class(variant.method), config))
    return list(dict.fromkeys(names))
