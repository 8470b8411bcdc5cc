"""The ``nfbench peer`` (one run) and ``nfbench peers`` (pipeline stage) subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nfbench.errors import UserError
from nfbench.peers import CONFIGS, METHODS


def cmd_peer(args: argparse.Namespace) -> None:
    """One peer run mirroring a run exactly as ``nfbench run`` resolves it: the same resolver
    (:func:`nfbench.pipeline.run_config.resolve_run_args`: params.yaml's block of the variant
    our report compares with, ``--config FILE``, ``--set``, ``--device``)."""
    from nfbench.atomic import check_output_file
    from nfbench.errors import UserError, check_choice
    from nfbench.peers import deviations
    from nfbench.peers.common import run_peer
    from nfbench.pipeline.record import format_metric, write_record
    from nfbench.pipeline.run_config import resolve_run_args

    check_output_file(args.out)  # before training: a bad --out is found now
    if args.variant is None and args.config is None and args.method is not None:
        args.variant = deviations()[args.method]["variant"]  # the variant our report compares
    args.shots, args.joint = None, False
    overrides = resolve_run_args(args)  # --config, params.yaml's block, --set, --device
    method = args.method
    check_choice("peer --method", method, METHODS)  # a --config file may name another method
    if args.shots or args.joint:
        raise UserError("peer runs mirror single-category runs on every training image "
                        "(no shots, no joint training)")
    if args.category is None:
        raise UserError("--category is required (or a --config file naming it)")
    if args.quiet:
        from nfbench.progress import silence_bars

        silence_bars()
    else:
        print(f"[peer] anomalib {method} ({args.peer_config}) on {args.dataset}/"
              f"{args.category}: features, fit and scoring take minutes", file=sys.stderr,
              flush=True)
    record = run_peer(method, args.dataset, args.category, config=args.peer_config,
                      seed=args.seed, profile=args.profile, root=args.root, overrides=overrides)
    write_record(record, args.out)
    if record["status"] != "ok":
        print(f"peer {method} skipped: {record['note']} -> {args.out}")
        return
    m = record["metrics"]  # an undefined metric is null: "n/a"
    print(f"anomalib {method} ({args.peer_config}) {args.dataset}/{args.category} seed "
          f"{args.seed} on {record['timing']['device']}: image AUROC "
          f"{format_metric(m['image_auroc'])}, pixel AUROC {format_metric(m['pixel_auroc'])} "
          f"-> {args.out}")


def cmd_peers(args: argparse.Namespace) -> None:
    import time

    import torch

    from nfbench.pipeline.record import write_record
    from nfbench.peers import peer_version
    from nfbench.peers.common import run_stage
    from nfbench.pipeline.plan import active_profile, load_params
    from nfbench.progress import silence_bars

    if args.quiet:  # no bars in the workers either
        silence_bars()
    params = load_params()
    profile = active_profile(params, args.profile)
    out = Path(args.results) / "peers"
    if out.is_symlink() or (out.exists() and not out.is_dir()):  # never follow it to delete
        raise UserError(f"{out} is a {'symbolic link' if out.is_symlink() else 'file'}; the "
                        "peers stage owns that folder: remove it or give another --results")
    start = time.perf_counter()
    # skipped by identity like bench runs; records of runs no longer in the block are removed
    paths, trained = run_stage(profile, params, Path(args.results), quiet=args.quiet,
                               force=args.force)
    seconds = time.perf_counter() - start
    write_record({"kind": "peer_index", "profile": profile, "peer_version": peer_version(),
                  "seconds": seconds, "trained": trained, "threads": torch.get_num_threads(),
                  "records": [str(p.relative_to(out)) for p in paths]}, out / "index.json")
    print(f"peers: {len(paths)} records ({trained} trained, {len(paths) - trained} unchanged) "
          f"in {seconds:.0f} s -> {out}")


def add_parsers(sub) -> None:
    """Register ``peer`` and ``peers`` on the CLI's subparsers."""
    peer = sub.add_parser("peer", help="train anomalib's implementation on our features like "
                                       "`nfbench run` would run the method (independent "
                                       "cross-check), write a peer record")
    peer.add_argument("--method", choices=METHODS, help="required unless --config names it")
    peer.add_argument("--dataset", help="required unless --config names it")
    peer.add_argument("--category", help="required unless --config names it")
    peer.add_argument("--root", type=Path, help="dataset folder in its official layout")
    peer.add_argument("--seed", type=int)
    peer.add_argument("--peer-config", default="shipped", choices=CONFIGS,
                      help="shipped: anomalib's defaults; matched: the deviations listed in "
                           "nfbench/peers/deviations.yaml set to the run's values")
    peer.add_argument("--profile", help="whose run of the method to mirror (features, size, "
                      "budget): one of params.yaml's profiles (default: its profile)")
    peer.add_argument("--variant", help="the paper variant whose settings to mirror (default: "
                      "the one our report compares with, deviations.yaml)")
    peer.add_argument("--config", type=Path, help="a run config YAML from `nfbench run "
                      "--print-config` (--set pairs win over it): mirror that run")
    peer.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                      help="override our run's settings, as in `nfbench run`")
    peer.add_argument("--device", help="cpu | cuda | cuda:N (validated; default: the run's)")
    peer.add_argument("--out", type=Path, required=True, help="peer record (JSON)")
    peer.add_argument("--quiet", action="store_true", help="no progress bars")
    peer.set_defaults(func=cmd_peer)

    stage = sub.add_parser("peers", help="pipeline stage: every peer run of params.yaml `peers:`")
    stage.add_argument("--profile", help="default: params.yaml `profile`")
    stage.add_argument("--results", type=Path, default=Path("results"))
    stage.add_argument("--quiet", action="store_true")
    stage.add_argument("--force", action="store_true",
                       help="retrain every peer run, even those recorded with the same identity")
    stage.set_defaults(func=cmd_peers)
