"""The ``nfbench peer`` (one run) and ``nfbench peers`` (pipeline stage) subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nfbench.errors import UserError
from nfbench.peers import CONFIGS, METHODS


def cmd_peer(args: argparse.Namespace) -> None:
    from nfbench.atomic import check_output_file
    from nfbench.peers.common import run_peer
    from nfbench.pipeline.experiment import write_record

    check_output_file(args.out)  # before training: a bad --out is found now
    if args.quiet:
        from nfbench.progress import silence_bars

        silence_bars()
    else:
        print(f"[peer] anomalib {args.method} ({args.config}) on {args.dataset}/"
              f"{args.category}: features, fit and scoring take minutes", file=sys.stderr,
              flush=True)
    from nfbench.pipeline.plan import active_profile, load_params

    record = run_peer(args.method, args.dataset, args.category, config=args.config,
                      seed=args.seed, profile=active_profile(load_params(), args.profile),
                      root=args.root)
    write_record(record, args.out)
    if record["status"] != "ok":
        print(f"peer {args.method} skipped: {record['note']} -> {args.out}")
        return
    m = record["metrics"]
    print(f"anomalib {args.method} ({args.config}) {args.dataset}/{args.category} seed "
          f"{args.seed}: image AUROC {m['image_auroc']:.4f}, pixel AUROC {m['pixel_auroc']:.4f}"
          f" -> {args.out}")


def cmd_peers(args: argparse.Namespace) -> None:
    import shutil
    import time

    import torch

    from nfbench.pipeline.experiment import write_record
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
    if out.exists():  # the stage's output is the whole folder: no stale records
        shutil.rmtree(out)
    start = time.perf_counter()
    paths = run_stage(profile, params, Path(args.results), quiet=args.quiet)
    seconds = time.perf_counter() - start
    write_record({"kind": "peer_index", "profile": profile, "peer_version": peer_version(),
                  "seconds": seconds, "threads": torch.get_num_threads(),
                  "records": [str(p.relative_to(out)) for p in paths]}, out / "index.json")
    print(f"peers: {len(paths)} records in {seconds:.0f} s -> {out}")


def add_parsers(sub) -> None:
    """Register ``peer`` and ``peers`` on the CLI's subparsers."""
    peer = sub.add_parser("peer", help="train anomalib's implementation on our cached features "
                                       "(independent cross-check), write a peer record")
    peer.add_argument("--method", required=True, choices=METHODS)
    peer.add_argument("--dataset", required=True)
    peer.add_argument("--category", required=True)
    peer.add_argument("--root", type=Path, help="dataset folder in its official layout")
    peer.add_argument("--seed", type=int, default=0)
    peer.add_argument("--config", default="shipped", choices=CONFIGS,
                      help="shipped: anomalib's defaults; matched: set to the paper's where "
                           "anomalib deviates")
    peer.add_argument("--profile", help="whose run of the method to mirror (features, size, "
                      "budget): one of params.yaml's profiles (default: its profile)")
    peer.add_argument("--out", type=Path, required=True, help="peer record (JSON)")
    peer.add_argument("--quiet", action="store_true", help="no progress bars")
    peer.set_defaults(func=cmd_peer)

    stage = sub.add_parser("peers", help="pipeline stage: every peer run of params.yaml `peers:`")
    stage.add_argument("--profile", help="default: params.yaml `profile`")
    stage.add_argument("--results", type=Path, default=Path("results"))
    stage.add_argument("--quiet", action="store_true")
    stage.set_defaults(func=cmd_peers)
