"""The ``nfbench`` command: obtain datasets, list methods, run one experiment.

Every user error ends in one line ``error: ...`` on stderr and exit status 2, with no
traceback and no partial output file.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from nfbench.errors import TrainingDivergedError, UserError


def cmd_data_download(args: argparse.Namespace) -> None:
    from nfbench.datasets import obtain

    root = obtain(args.name, args.root, progress=not args.quiet)
    print(f"{args.name} ready at {root}")


def cmd_data_list(args: argparse.Namespace) -> None:
    from nfbench.datasets import DATASETS
    from nfbench.paths import default_dataset_root

    for name, spec in DATASETS.items():
        root = default_dataset_root(name)
        state = "present" if root.is_dir() and any(root.iterdir()) else "absent"
        where = "(--root required)" if spec.needs_root else f"{root} [{state}]"
        print(f"{name:10s} {spec.description}  {where}")


def cmd_data_verify(args: argparse.Namespace) -> None:
    from nfbench.datasets import count_table, load_table
    from nfbench.datasets.base import verify_files
    from nfbench.errors import DatasetLayoutError

    table = load_table(args.name, args.root, args.category and [args.category],
                       check_files=False)  # verify_files lists every unreadable file
    problems = verify_files(table)
    for problem in problems:
        print(f"unreadable: {problem}", file=sys.stderr)
    if problems:
        raise DatasetLayoutError(f"{len(problems)} unreadable or mismatched file(s) of "
                                 f"{len(table)} images (listed above)")
    print(count_table(table))


def cmd_methods(args: argparse.Namespace) -> None:
    from nfbench.methods import list_methods, method_class

    if args.settings:
        from nfbench.report.settings_doc import settings_table

        print(settings_table(args.settings))
        return
    for name in list_methods():
        doc = (method_class(name).__doc__ or "").strip().splitlines()[0]
        print(f"{name:12s} {doc}")


def _category(args: argparse.Namespace) -> str:
    """``--category``, or the dataset's only category; a one-line error when it is ambiguous."""
    from nfbench.datasets import categories_of

    if args.category is not None:
        return args.category
    categories = categories_of(args.dataset, args.root)
    if len(categories) != 1:
        raise UserError(f"--category is required for {args.dataset}; one of: "
                        f"{', '.join(categories)}")
    return categories[0]


def cmd_run(args: argparse.Namespace) -> None:
    from nfbench.atomic import check_output_file
    from nfbench.pipeline.experiment import run_experiment
    from nfbench.pipeline.record import format_metric, stamp, write_record
    from nfbench.pipeline.run_config import print_config, resolve_run_args

    overrides = resolve_run_args(args)  # --config, params.yaml's block, --set, --device
    if args.print_config:
        print_config(args, overrides)
        return
    from nfbench.artifacts import save_detector
    from nfbench.use_cli import check_model_folder, run_of

    category = "all" if args.joint else _category(args)
    run = run_of(args, category, overrides)  # the record's identity and default --out
    if args.out is None:  # where `nfbench results` reads
        args.out = args.results / run.record_path
    check_output_file(args.out)  # before any work: a bad --out is found now, not after training
    if args.save_model:
        check_model_folder(args.save_model)
    from nfbench.pipeline.identity import run_identity

    kept: list = []
    record = run_experiment(args.method, args.dataset, category, root=args.root,
                            profile=args.profile, seed=args.seed, overrides=overrides,
                            shots=args.shots, variant=args.variant, joint=args.joint,
                            fitted=kept)
    stamp(record, paper=run.paper, run_id=run.run_id,
          identity=run_identity(run))  # as bench's records (nfbench.pipeline.identity)
    write_record(record, args.out)
    if args.save_model:
        print(f"model saved to {save_detector(kept[0], args.save_model, record=record)}")
    m = record["metrics"]
    print(f"{args.method} {args.dataset}/{record['category']}: image AUROC "
          f"{format_metric(m['image_auroc'])}, pixel AUROC {format_metric(m['pixel_auroc'])}, "
          f"AUPRO {format_metric(m['aupro'])} -> {args.out}")


def cmd_decide(args: argparse.Namespace) -> None:
    from nfbench.atomic import check_output_file, write_text_atomic
    from nfbench.methods import method_class
    from nfbench.pipeline.decision import decision_markdown, decision_table
    from nfbench.pipeline.run_config import parse_sets
    from nfbench.pipeline.experiment import write_record

    method_class(args.method)
    if args.out.suffix != ".md":
        raise UserError(f"--out must name a Markdown file (.md), got {args.out}")
    check_output_file(args.out)
    from nfbench.pipeline.plan import load_params

    from nfbench.use_cli import check_model_folder, decide_model, save_decided

    if args.save_model:
        check_model_folder(args.save_model)
    detector = decide_model(args)  # --model DIR: a saved detector instead of fitting
    from nfbench.pipeline.run_config import profile_source

    params = load_params()
    profile = _profile(args, params)
    source = profile_source(args.method, args.dataset, profile, None, params)  # as `run`
    result = decision_table(args.method, args.dataset, _category(args), root=args.root,
                            profile=profile, seed=args.seed,
                            overrides={**source["settings"], **parse_sets(args.set)},
                            holdout=args.holdout,
                            quantile=args.quantile, detector=detector, progress=not args.quiet)
    fitted = result.pop("detector")
    result["settings_source"] = {k: source.get(k) for k in ("paper", "variant", "role",
                                                            "borrowed_from")}
    write_record(result, args.out.with_suffix(".json"))
    write_text_atomic(args.out, decision_markdown(result))
    if args.save_model:
        print(f"model saved to {save_decided(fitted, args.save_model, result)}")
    print(f"accuracy {100 * result['accuracy']:.2f} %, F1 (anomalous positive) "
          f"{100 * result['f1_anomalous_positive']:.2f} % -> {args.out}")


def _profile(args: argparse.Namespace, params: dict) -> str:
    from nfbench.pipeline.plan import active_profile

    return active_profile(params, args.profile)


def cmd_data_prepare(args: argparse.Namespace) -> None:
    """The pipeline's data stage: every dataset the profile's runs read."""
    from nfbench.datasets import obtain
    from nfbench.pipeline.plan import load_params, profile_datasets

    params = load_params()
    for name in profile_datasets(_profile(args, params), params):
        print(f"{name} ready at {obtain(name, progress=not args.quiet)}")


def cmd_plan(args: argparse.Namespace) -> None:
    from nfbench.pipeline.plan import describe_plan, load_params, pipeline_papers

    params = load_params()
    papers = pipeline_papers(params, args.paper)
    if args.gpus is not None and args.gpus < 1:
        raise UserError(f"--gpus must be at least 1, got {args.gpus}")
    if args.gpus is not None or args.cost:
        from nfbench.pipeline.estimate import estimate_profile, format_estimate

        estimate = estimate_profile(_profile(args, params), params, gpus=args.gpus or 1,
                                    device_kind=args.device_kind, precision=args.precision,
                                    results=args.results,
                                    papers=[args.paper] if args.paper else None)
        print(json.dumps(estimate, indent=2) if args.json else format_estimate(estimate))
        return
    print(describe_plan(papers, _profile(args, params), params, verbose=args.verbose))


def cmd_bench(args: argparse.Namespace) -> None:
    from nfbench.pipeline.plan import (bench_runs, load_params, parse_shard, pipeline_papers,
                                       select_runs)
    from nfbench.pipeline.runner import execute

    params = load_params()
    profile = _profile(args, params)
    if not args.paper and (args.variant or args.table):
        raise UserError("--variant and --table name a paper's variants and tables: add --paper")
    papers = pipeline_papers(params, args.paper)
    runs = [run for paper in papers
            for run in bench_runs(paper, profile, params, variants=args.variant,
                                  tables=args.table)]
    # categories, seeds and the shard over the papers' runs together: a category one paper
    # lacks is no error while another has it, and runs sharing a stage stay in one shard
    runs = select_runs(runs, categories=args.category, seeds=args.seed,
                       shard=parse_shard(args.shard) if args.shard else None)
    if args.quiet:
        from nfbench.progress import silence_bars

        silence_bars()  # no per-epoch bars; the run counter stays
    whole = not (args.variant or args.table or args.category or args.seed or args.shard)
    if whole:  # the papers' stage: records of runs the profile no longer has go (DVC output)
        _remove_unwanted_records(papers, runs, args.results, profile)
    names = list(dict.fromkeys(run.variant for run in runs)) if args.variant or args.table \
        else []
    label = f"{args.paper}/{'+'.join(names)}" if names else "+".join(papers)
    # One batch, one worker pool for every paper asked for, longest runs first: a CPU run's
    # torch threads depend on the jobs asked for, not on the batch (runner.threads_per_job),
    # so any subset gives the same numbers as the whole pipeline
    execute(runs, args.results, progress=not args.quiet, jobs=args.jobs, force=args.force,
            executor=args.executor, address=args.address, runs_per_gpu=args.runs_per_gpu,
            device=args.device, label=label, cpus_per_run=args.cpus_per_run,
            connect_timeout=args.ray_timeout, models_dir=args.save_models)


def _remove_unwanted_records(papers: list[str], runs: list, results: Path, profile: str) -> None:
    """Remove the files of runs of ``papers`` that ``profile`` no longer has (a category
    dropped from params.yaml), so that the stage's output holds what the params say."""
    from nfbench.pipeline.record import unwanted_files

    wanted = [Path(results) / r.record_path for r in runs]
    for paper in papers:
        gone = unwanted_files(results, f"{paper}/runs/*/*/seed*.*", wanted)
        for path in gone:
            path.unlink()
        if gone:
            print(f"{paper}: removed {len(gone)} file(s) of runs the {profile} profile no "
                  "longer has", file=sys.stderr)


def cmd_selfcheck(args: argparse.Namespace) -> None:
    from nfbench.pipeline.selfcheck import selfcheck

    failed = [c.name for c in selfcheck(args.device, args.work) if c.status == "FAIL"]
    if failed:
        raise UserError(f"{len(failed)} check(s) failed: {', '.join(failed)}")


def cmd_tables(args: argparse.Namespace) -> None:
    from nfbench.curves import write_loss_curves  # training curves for dvc plots
    from nfbench.pipeline.plan import load_params, pipeline_papers
    from nfbench.pipeline.tables import (build_protocol_tables, build_tables, write_protocol_tables,
                                write_tables)

    params = load_params()
    profile = _profile(args, params)
    for paper in pipeline_papers(params, args.paper):
        tables = build_tables(paper, profile, params, args.results)
        for path in write_tables(tables, args.results / paper):
            print(path)
        companions = build_protocol_tables(paper, profile, params, args.results)
        for path in write_protocol_tables(companions, args.results / paper):
            print(path)
        curves = write_loss_curves(paper, args.results)
        print(f"{len(curves)} loss curve(s) in {args.results / paper / 'plots' / 'loss'}")


def cmd_profile(args: argparse.Namespace) -> None:
    from nfbench.pipeline.complexity import profile_paper
    from nfbench.pipeline.devices import validate_device
    from nfbench.pipeline.plan import load_params, pipeline_papers
    from nfbench.pipeline.untimed_counts import count_untimed

    params = load_params()
    device = validate_device(args.device) if args.device else None
    profile = _profile(args, params)
    papers = pipeline_papers(params, args.paper)
    # the untimed counts of every paper first, on all cores; then each timing alone
    count_untimed(papers, profile, params, device=device, time_paper=args.time_paper)
    for paper in papers:
        print(f"{paper}:")
        profile_paper(paper, profile, params, args.results, device=device,
                      time_paper=args.time_paper, log=lambda line: print(f"  {line}"))


def cmd_report(args: argparse.Namespace) -> None:
    from nfbench.pipeline.plan import load_params, pipeline_papers
    from nfbench.report.index import write_index
    from nfbench.report.paper import write_report

    params = load_params()
    papers = pipeline_papers(params, args.paper)
    report = functools.partial(write_report, profile=_profile(args, params), params=params,
                               results_dir=args.results, reports_dir=args.reports)
    workers = min(len(papers), os.cpu_count() or 1)
    if workers > 1 and sys.platform == "linux":  # each paper's figures on a core of its own
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            written = list(pool.map(report, papers))
    else:
        written = [report(paper) for paper in papers]
    for path in written:
        print(path)
    print(write_index(args.reports, args.results, pipeline_papers(params), params,
                      _profile(args, params)))


#: ``nfbench check``'s exit status: a regression (1), records only missing (3); bad input is 2
CHECK_REGRESSION, CHECK_MISSING = 1, 3


def cmd_check(args: argparse.Namespace) -> int:
    from nfbench.pipeline.check import check

    if args.prune and not args.update:
        raise UserError("--prune drops baseline entries while rewriting it: add --update")
    result = check(args.baseline, args.results, update=args.update, papers=args.paper,
                   exact=args.exact, prune=args.prune)
    if args.update:
        print(f"baseline written: {args.baseline} ({len(result.added)} added, "
              f"{len(result.replaced)} replaced, {len(result.kept)} kept"
              + (f", {len(result.pruned)} without a record dropped" if args.prune else "")
              + ")")
        return 0
    if result.stale:  # a removed variant's records: not compared (nfbench.pipeline.record)
        print(f"note: {len(result.stale)} stale record(s) of variants no longer declared, "
              f"ignored (first: {result.stale[0]})", file=sys.stderr)
    for problem in result.problems:
        print(f"REGRESSION {problem}", file=sys.stderr)
    for run_id in result.missing:
        print(f"MISSING {run_id}: no fresh result record", file=sys.stderr)
    if result.unknown:
        print(f"note: {len(result.unknown)} run(s) not in the baseline (first: "
              f"{result.unknown[0]}); add them with --update", file=sys.stderr)
    if result.problems:
        print(f"error: {len(result.problems)} regression(s) against {args.baseline}"
              + (f" ({len(result.missing)} record(s) missing too)" if result.missing else ""),
              file=sys.stderr)
        return CHECK_REGRESSION
    if result.missing:
        print(f"error: no regression, but {len(result.missing)} baseline run(s) have no "
              f"record under {args.results} (run them, e.g. dvc repro)", file=sys.stderr)
        return CHECK_MISSING
    print(f"every baseline metric reproduced exactly: {args.baseline}" if args.exact
          else f"no regression against {args.baseline}")
    return 0


def cmd_results(args: argparse.Namespace) -> None:
    from nfbench.atomic import check_output_file
    from nfbench.pipeline import results
    from nfbench.pipeline.check import known_papers_only

    known_papers_only(args.paper)  # `--paper nope` is an error, not a header-only CSV
    if args.csv:
        check_output_file(args.csv, "--csv")  # before reading every record
    frame = results.load(args.results, args.paper)
    results.to_csv(frame, args.csv if args.csv else sys.stdout)
    if args.csv:
        print(f"{len(frame)} run(s) written to {args.csv}")


def _add_data_parsers(sub) -> None:
    """``nfbench data download | list | verify | prepare``."""
    data = sub.add_parser("data", help="obtain, list and verify datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    download = data_sub.add_parser("download", help="download a dataset (demo: build it)")
    download.add_argument("name", help="mvtec_ad | btad | mtd | dtd | demo")
    download.add_argument("--root", type=Path, help="target folder (default datasets/<name>)")
    download.add_argument("--quiet", action="store_true", help="no progress bars")
    download.set_defaults(func=cmd_data_download)
    data_sub.add_parser("list", help="registered datasets and where they are").set_defaults(
        func=cmd_data_list)
    verify = data_sub.add_parser("verify", help="check a dataset's layout and counts")
    verify.add_argument("name")
    verify.add_argument("--root", type=Path)
    verify.add_argument("--category")
    verify.set_defaults(func=cmd_data_verify)

    prepare = data_sub.add_parser("prepare", help="pipeline data stage for a profile")
    prepare.add_argument("--profile", help="one of params.yaml's profiles (default: its profile)")
    prepare.add_argument("--quiet", action="store_true")
    prepare.set_defaults(func=cmd_data_prepare)


def _add_methods_parser(sub) -> None:
    methods = sub.add_parser("methods", help="list registered methods")
    methods.add_argument("--settings", metavar="NAME",
                         help="every setting of method NAME: default and where it comes from")
    methods.set_defaults(func=cmd_methods)


def _pipeline_command(sub, name: str, help_text: str, func, paper_required: bool = True):
    """A command over a paper's runs: ``--paper``, ``--profile``, ``--results``."""
    command = sub.add_parser(name, help=help_text)
    command.add_argument("--paper", required=paper_required, help="csflow | patchflow | clscnf")
    command.add_argument("--profile",
                         help="one of params.yaml's profiles (default: its profile)")
    command.add_argument("--results", type=Path, default=Path("results"))
    command.set_defaults(func=func)
    return command


def _add_plan_parser(sub) -> None:
    plan = _pipeline_command(sub, "plan", "list the runs and tables a profile would produce", cmd_plan,
                            paper_required=False)
    plan.add_argument("--verbose", "-v", action="store_true", help="list every run")
    plan.add_argument("--gpus", type=int, help="estimate device-hours and the wall time on N "
                      "GPUs per paper and table (cost model: benchmarks/cost.yaml)")
    plan.add_argument("--cost", action="store_true", help="the estimate table on 1 GPU")
    plan.add_argument("--device-kind", default="rtx2080ti", choices=("rtx2080ti", "a100", "h100"),
                      help="the GPU the estimate is for (peaks: benchmarks/cost.yaml devices)")
    plan.add_argument("--precision", choices=("fp32", "tf32", "bf16"),
                      help="price every run at this precision (default: each run's setting)")
    plan.add_argument("--json", action="store_true", help="the estimate as JSON")


def _add_bench_parser(sub) -> None:
    bench = _pipeline_command(sub, "bench", "execute the runs of every paper params.yaml runs, "
                              "or of --paper (all, or --variant ...)", cmd_bench,
                              paper_required=False)
    bench.add_argument("--variant", action="append", help="only this variant (repeatable)")
    bench.add_argument("--table", action="append", help="only the variants this table needs")
    bench.add_argument("--category", action="append", help="only this category (repeatable)")
    bench.add_argument("--seed", action="append", type=int, help="only this seed (repeatable)")
    bench.add_argument("--shard", metavar="i/N", help="only shard i of N (0 <= i < N) of the "
                       "selected runs: a stable split for job arrays")
    bench.add_argument("--force", action="store_true",
                       help="rerun runs whose record exists with the same identity")
    bench.add_argument("--quiet", action="store_true",
                       help="no bars; one progress line per run on stderr")
    bench.add_argument("--jobs", type=int, help="CPU worker processes (default up to 4, "
                       "sharing the CPU cores; on GPUs: one per GPU slot)")
    bench.add_argument("--executor", choices=["local", "ray"], default="local")
    bench.add_argument("--address", help="Ray cluster address (default: start a local one)")
    bench.add_argument("--runs-per-gpu", type=float, default=1, metavar="K",
                       help="runs sharing one GPU (Ray: 1/K GPU per run)")
    bench.add_argument("--cpus-per-run", type=int, metavar="N",
                       help="Ray: CPUs (and torch threads) per run (default NFBENCH_RAY_THREADS or 1)")
    bench.add_argument("--ray-timeout", type=float, metavar="SECONDS",
                       help="Ray: wait at most this long for --address to answer (default 30)")
    bench.add_argument("--device", help="cpu | cuda | cuda:N (default: the settings' auto)")
    bench.add_argument("--save-models", type=Path, metavar="DIR",
                       help="save every fitted detector to DIR/<paper>/<variant>/<category>/"
                       "seed<k> (runs skipped by identity save none: add --force)")


def _add_output_parsers(sub) -> None:
    """The commands that turn records into tables, profiles, reports and checks."""
    _pipeline_command(sub, "tables", "build the tidy tables of every paper params.yaml runs, or "
                      "of --paper, from the records", cmd_tables, paper_required=False)
    prof = _pipeline_command(sub, "profile", "FLOPs, parameters and speed of the method of every "
                             "paper params.yaml runs, or of --paper", cmd_profile,
                             paper_required=False)
    prof.add_argument("--device", help="cpu | cuda | cuda:N")
    prof.add_argument("--time-paper", action="store_true",
                      help="also time the paper configuration (slow on a CPU)")
    report = _pipeline_command(sub, "report", "write reports/<paper>.md and reports/README.md",
                              cmd_report, paper_required=False)
    report.add_argument("--reports", type=Path, default=Path("reports"))
    check = sub.add_parser(
        "check", help="compare fresh records with a committed baseline",
        description="Compare fresh records with a committed baseline. Exit status: 0 every "
                    "baseline run reproduced, 1 a regression (REGRESSION lines), 3 no "
                    "regression but baseline runs without a record (MISSING lines), 2 bad "
                    "input (an unknown paper, duplicate run ids, a metric or tolerance that "
                    "is not a finite number in [0, 1]).")
    check.add_argument("--baseline", type=Path, required=True)
    check.add_argument("--results", type=Path, default=Path("results"))
    check.add_argument("--paper", action="append", help="only this paper (repeatable)")
    check.add_argument("--update", action="store_true", help="rewrite the baseline deliberately")
    check.add_argument("--prune", action="store_true", help="with --update: drop the baseline "
                       "runs that have no record (runs the profile no longer makes)")
    check.add_argument("--exact", action="store_true", help="every metric to the last digit, "
                       "either way, instead of the tolerance (a refactor's check)")
    check.set_defaults(func=cmd_check)
    selfcheck = sub.add_parser("selfcheck", help="check this machine: smoke runs, "
                               "determinism, precision, executors, GPU memory (README: "
                               "Checking a GPU machine)")
    selfcheck.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                           help="cpu: the CPU half (CI); cuda: also the GPU half")
    selfcheck.add_argument("--work", type=Path, help="keep the runs' records here "
                           "(default: a temporary folder)")
    selfcheck.set_defaults(func=cmd_selfcheck)
    tidy = sub.add_parser("results", help="every run record as one tidy CSV (one row per run)")
    tidy.add_argument("--results", type=Path, default=Path("results"))
    tidy.add_argument("--paper", action="append", help="only this paper (repeatable)")
    tidy.add_argument("--csv", type=Path, help="write here instead of standard output")
    tidy.set_defaults(func=cmd_results)
    dvc = sub.add_parser("dvc-yaml", help="write dvc.yaml from the paper specs "
                         "(benchmarks/*.yaml)")
    dvc.add_argument("--check", action="store_true",
                     help="write nothing; exit 1 when dvc.yaml is not the generated file")
    dvc.set_defaults(func=cmd_dvc_yaml)


def _add_run_parser(sub) -> None:
    run = sub.add_parser("run", help="fit and score one method on one category, write a record")
    run.add_argument("--method", help="required unless --config names it")
    run.add_argument("--dataset", help="required unless --config names it")
    run.add_argument("--root", type=Path, help="dataset folder in its official layout")
    run.add_argument("--category")
    run.add_argument("--profile", help="one of params.yaml's profiles (default: its "
                     "profile); its block for this method and "
                     "dataset gives the settings, as in bench")
    run.add_argument("--seed", type=int)
    run.add_argument("--shots", type=int, help="train on this many random normal images")
    run.add_argument("--joint", action="store_true",
                     help="train on every category at once, score each (CS-Flow §4.5)")
    run.add_argument("--variant", help="label stored in the record; a variant of the paper "
                     "running this method also selects its settings (default: its main one)")
    run.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                     help="override config settings (several after one flag; repeatable)")
    run.add_argument("--device", help="cpu | cuda | cuda:N (validated)")
    run.add_argument("--config", type=Path, help="a config YAML from --print-config "
                     "(--set pairs win over it)")
    run.add_argument("--print-config", action="store_true",
                     help="print the fully resolved config as YAML and stop")
    run.add_argument("--out", type=Path, help="result record (JSON); default: "
                     "RESULTS/run/runs/<method>/<category>/seed<k>.json, where nfbench "
                     "results reads")
    run.add_argument("--results", type=Path, default=Path("results"),
                     help="results folder of the default --out")
    run.add_argument("--save-model", type=Path, metavar="DIR",
                     help="also save the fitted detector as a model folder (nfbench predict, "
                     "export, decide --model, nfbench.load_detector)")
    run.set_defaults(func=cmd_run)


def _add_decide_parser(sub) -> None:
    decide = sub.add_parser(
        "decide", help="confusion matrix at a threshold set on held-out normal training images "
                       "(PatchFlow Table 2 kind), e.g. on --dataset folder --root DIR")
    for flag in ("--method", "--dataset"):
        decide.add_argument(flag, required=True)
    decide.add_argument("--root", type=Path, help="dataset folder (MVTec AD layout for folder)")
    decide.add_argument("--category")
    decide.add_argument("--profile", help="one of params.yaml's profiles (default: its profile)")
    decide.add_argument("--seed", type=int, default=0)
    decide.add_argument("--holdout", type=float, default=0.2,
                        help="share of normal training images held out to set the threshold")
    decide.add_argument("--quantile", type=float, default=1.0,
                        help="threshold = this quantile of the held-out normal scores")
    decide.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE")
    decide.add_argument("--out", type=Path, required=True,
                        help="Markdown table (a JSON record is written beside it)")
    decide.add_argument("--model", type=Path, metavar="DIR",
                        help="a saved model folder: score with it instead of fitting")
    decide.add_argument("--save-model", type=Path, metavar="DIR",
                        help="save the fitted detector with its threshold (for predict)")
    decide.add_argument("--quiet", action="store_true", help="no progress lines")
    decide.set_defaults(func=cmd_decide)


def cmd_dvc_yaml(args: argparse.Namespace) -> int:
    from nfbench.paths import project_root
    from nfbench.pipeline import dvc_yaml

    path = project_root() / "dvc.yaml"
    if args.check:
        if dvc_yaml.write(path, check=True):
            print(f"{path} is the generated file")
            return 0
        print(f"{path} differs from the generated file: run `nfbench dvc-yaml`", file=sys.stderr)
        return 1
    dvc_yaml.write(path)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nfbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_data_parsers, _add_methods_parser, _add_plan_parser, _add_bench_parser,
                _add_output_parsers, _add_run_parser, _add_decide_parser):
        add(sub)
    from nfbench.peers.cli import add_parsers as add_peer_parsers  # nfbench peer / peers
    add_peer_parsers(sub)
    from nfbench.use_cli import add_parsers as add_use_parsers, decorate  # predict, export
    add_use_parsers(sub)
    decorate(parser)  # --version, defaults and examples in every help
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args) or 0
    except UserError as exc:
        from nfbench.use_cli import for_command

        print(f"error: {for_command(str(exc), args)}", file=sys.stderr)
        return 2
    except TrainingDivergedError as exc:
        print(f"error: training diverged: {exc} (try a smaller lr)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `nfbench plan | head`: the reader left; end quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return status


if __name__ == "__main__":
    sys.exit(main())
