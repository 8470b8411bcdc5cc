"""The ``nfbench`` command: obtain datasets, list methods, run one experiment.

Every user error ends in one line ``error: ...`` on stderr and exit status 2, with no
traceback and no partial output file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from nfbench.errors import UserError


def _parse_sets(pairs: Sequence[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {pair!r}")
        settings[key.strip()] = value.strip()
    return settings


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
        where = "(--root required)" if name == "folder" else f"{root} [{state}]"
        print(f"{name:10s} {spec.description}  {where}")


def cmd_data_verify(args: argparse.Namespace) -> None:
    from nfbench.datasets import load_table
    from nfbench.datasets.mvtec_ad import split_counts

    table = load_table(args.name, args.root, args.category and [args.category])
    print(f"{'category':16s} {'train':>6s} {'test good':>10s} {'test defective':>15s}")
    for category, rows in table.groupby("category"):
        train, good, bad = split_counts(rows)
        print(f"{category:16s} {train:6d} {good:10d} {bad:15d}")
    train, good, bad = split_counts(table)
    print(f"{'total':16s} {train:6d} {good:10d} {bad:15d}")


def cmd_methods(args: argparse.Namespace) -> None:
    from nfbench.methods import list_methods, method_class

    for name in list_methods():
        doc = (method_class(name).__doc__ or "").strip().splitlines()[0]
        print(f"{name:12s} {doc}")


def cmd_run(args: argparse.Namespace) -> None:
    from nfbench.datasets import categories_of
    from nfbench.experiment import run_experiment, write_record
    from nfbench.methods import method_class

    method_class(args.method)  # fail fast on an unknown method, before any data work
    overrides = _parse_sets(args.set)
    category = args.category
    if args.joint:
        category = "all"
    elif category is None:
        categories = categories_of(args.dataset, args.root)
        if len(categories) != 1:
            raise UserError(f"--category is required for {args.dataset}; one of: "
                            f"{', '.join(categories)}")
        category = categories[0]
    record = run_experiment(args.method, args.dataset, category, root=args.root,
                            profile=args.profile, seed=args.seed, overrides=overrides,
                            shots=args.shots, variant=args.variant, joint=args.joint)
    write_record(record, args.out)
    m = record["metrics"]
    print(f"{args.method} {args.dataset}/{record['category']}: image AUROC {m['image_auroc']:.4f}, "
          f"pixel AUROC {m['pixel_auroc']:.4f}, AUPRO {m['aupro']:.4f} -> {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nfbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="obtain, list and verify datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    download = data_sub.add_parser("download", help="download a dataset (demo: build it)")
    download.add_argument("name", help="mvtec_ad | btad | mtd | demo")
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

    sub.add_parser("methods", help="list registered methods").set_defaults(func=cmd_methods)

    run = sub.add_parser("run", help="fit and score one method on one category, write a record")
    run.add_argument("--method", required=True)
    run.add_argument("--dataset", required=True)
    run.add_argument("--root", type=Path, help="dataset folder in its official layout")
    run.add_argument("--category")
    run.add_argument("--profile", default="demo", choices=["demo", "paper"])
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--shots", type=int, help="train on this many random normal images")
    run.add_argument("--joint", action="store_true",
                     help="train on every category at once, score each (CS-Flow §4.5)")
    run.add_argument("--variant", default="default", help="label stored in the record")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config setting (repeatable)")
    run.add_argument("--out", type=Path, required=True, help="result record (JSON)")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
