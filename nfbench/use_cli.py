"""The CLI's "use what you reproduced" parts: ``nfbench predict`` and ``export``, the model
folders of ``run``/``decide``, and the help every subcommand shows (``--version``, defaults
and examples). Kept apart from :mod:`nfbench.cli` so that the commands stay small there."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nfbench.errors import UserError

#: ``nfbench run``'s records without --out: RESULTS/run/runs/<method>[-<variant>]/...
RUN_PAPER = "run"


def run_of(args: argparse.Namespace, category: str, overrides: dict[str, Any]):
    """The :class:`~nfbench.pipeline.plan.Run` an ``nfbench run`` makes: its identity (as in
    ``bench``) goes into the record, its record path is the default ``--out``. Its own
    "paper" (``run``), so that it never overwrites a pipeline record."""
    from nfbench.pipeline.plan import Run

    chosen = (getattr(args, "settings_source", None) or {}).get("variant")  # not asked for
    variant = args.method if args.variant in (None, "default", chosen) else \
        f"{args.method}-{args.variant}"
    return Run(paper=RUN_PAPER, method=args.method, variant=variant, dataset=args.dataset,
               category=category, seed=int(args.seed), profile=args.profile,
               settings=dict(overrides), shots=args.shots, joint=bool(args.joint),
               root=str(args.root) if args.root else None)


def check_model_folder(folder: Path) -> None:
    """Refuse, before any training, a model folder that cannot be written."""
    from nfbench.artifacts import MANIFEST

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir())
                                                    and not (folder / MANIFEST).is_file())):
        raise UserError(f"--save-model {folder} exists and is not a model folder; choose a "
                        "new one")
    from nfbench.atomic import check_output_file

    check_output_file(folder / MANIFEST, "--save-model")


def decide_model(args: argparse.Namespace):
    """``decide --model DIR``: the saved detector (it must be of ``--method``), else None."""
    if args.model is None:
        return None
    from nfbench.artifacts import load_detector

    detector = load_detector(args.model)
    if detector.name != args.method:
        raise UserError(f"--model {args.model} holds a {detector.name} detector, not "
                        f"{args.method}")
    if args.set:
        raise UserError("--set changes how a detector is fitted; a --model is already fitted")
    return detector


def save_decided(detector, folder: Path, result: dict[str, Any]) -> Path:
    """Save ``decide``'s fitted detector with its threshold (``predict`` reuses it)."""
    from nfbench.artifacts import save_detector

    threshold = {"value": result["threshold"], "rule": result["threshold_rule"],
                 "set_by": "nfbench decide"}
    record = {k: v for k, v in result.items() if k != "predictions"}
    return save_detector(detector, folder, record=record, threshold=threshold,
                         category=result["category"])


def for_command(message: str, args: argparse.Namespace) -> str:
    """An error message that fits the command it ends: "or pass --root" (the dataset
    loaders' hint) becomes the environment variable where the command has no ``--root``
    (``bench``, ``data prepare``). Rewritten here, not in the loaders: nfbench/datasets is
    part of every run's identity (:data:`nfbench.pipeline.identity.SHARED_CODE`)."""
    if message.endswith("or pass --root") and not hasattr(args, "root"):
        return (message[: -len("pass --root")] + "set NFBENCH_DATA to the folder holding it "
                "(default: ./datasets)")
    return message


# -- predict, export ----------------------------------------------------------------------------

def cmd_predict(args: argparse.Namespace) -> None:
    from nfbench.predict import predict

    if args.quiet:
        from nfbench.progress import silence_bars

        silence_bars()
    summary = predict(args.model, args.images, args.out, threshold=args.threshold,
                      normal=args.normal, quantile=args.quantile, size=args.size,
                      device=args.device, progress=not args.quiet)
    threshold = summary["threshold"]
    flagged = sum(r.get("prediction", 0) for r in summary["predictions"])
    decided = (f", {flagged} anomalous at threshold {threshold['value']:.6g}" if threshold
               else " (no threshold: give --normal DIR or --threshold)")
    print(f"{summary['n_images']} image(s) scored{decided} -> {args.out}")


def cmd_export(args: argparse.Namespace) -> None:
    from nfbench.export import export_model

    report = export_model(args.model, args.format, args.out, images=args.images,
                          atol=args.atol, rtol=args.rtol)
    print(f"{report['method']} exported to {report['file']} ({args.format}); check batch: "
          f"max |difference| {max(report['max_abs_diff']):.3g} within atol {args.atol:g}, "
          f"rtol {args.rtol:g}")


#: nfbench.export's FORMATS, ATOL and RTOL (tests/test_use_cli.py checks they agree), repeated
#: so that building the parser (every command, a bench too) does not import the exporter
FORMATS, ATOL, RTOL = ("torchscript", "onnx"), 1e-4, 1e-4


def add_parsers(sub) -> None:
    predict = sub.add_parser("predict", help="score your own images with a saved model: "
                             "scores, anomaly maps, overlays, predictions")
    predict.add_argument("--model", type=Path, required=True,
                         help="model folder (run --save-model, decide --save-model)")
    predict.add_argument("--images", type=Path, required=True,
                         help="folder of images (any size; searched recursively)")
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    predict.add_argument("--normal", type=Path, metavar="DIR", help="normal images: the "
                         "threshold is --quantile of their scores (as in decide)")
    predict.add_argument("--quantile", type=float, default=1.0,
                         help="threshold quantile of the --normal scores")
    predict.add_argument("--threshold", type=float, help="a given image-score threshold")
    predict.add_argument("--size", type=int, help="score at this input size (default: the "
                         "model's input_size)")
    predict.add_argument("--device", help="cpu | cuda | cuda:N (default: the model's)")
    predict.add_argument("--quiet", action="store_true", help="no progress bars")
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="export a saved model's inference module "
                            "(image in, score and map out) and check it")
    export.add_argument("--model", type=Path, required=True, help="model folder")
    export.add_argument("--format", choices=FORMATS, default="torchscript")
    export.add_argument("--out", type=Path, help="exported file (default: "
                        "MODEL/model.torchscript.pt or MODEL/model.onnx)")
    export.add_argument("--images", type=Path, help="check on these images (default: seeded "
                        "noise)")
    export.add_argument("--atol", type=float, default=ATOL, help="absolute tolerance")
    export.add_argument("--rtol", type=float, default=RTOL, help="relative tolerance")
    export.set_defaults(func=cmd_export)


# -- help ---------------------------------------------------------------------------------------

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every option's help (where there is one to show: not None, False or an
    empty list, and not where the help already says it); examples (the epilog) as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default == [] or default is argparse.SUPPRESS
                or "default" in text):
            return text
        return super()._get_help_string(action)


#: one or two examples per subcommand (the demo profile's, runnable as written)
EXAMPLES = {
    "data": "nfbench data download demo\nnfbench data list",
    "data download": "nfbench data download demo\n"
                     "nfbench data download mvtec_ad --root /data/mvtec",
    "data list": "nfbench data list",
    "data verify": "nfbench data verify demo --category brick",
    "data prepare": "nfbench data prepare --quiet",
    "methods": "nfbench methods\nnfbench methods --settings csflow",
    "plan": "nfbench plan -v\nnfbench plan --profile paper --gpus 8 --device-kind h100 --json",
    "bench": "nfbench bench --paper csflow --variant full --category brick --quiet\n"
             "nfbench bench --paper patchflow --shard 0/4",
    "tables": "nfbench tables --paper csflow",
    "profile": "nfbench profile --paper csflow",
    "report": "nfbench report",
    "check": "nfbench check --baseline benchmarks/baselines/demo.json --paper csflow",
    "results": "nfbench results --csv runs.csv\nnfbench results --paper csflow",
    "dvc-yaml": "nfbench dvc-yaml\nnfbench dvc-yaml --check",
    "run": "nfbench run --method gaussian --dataset demo --category brick\n"
           "nfbench run --method csflow --dataset demo --category brick --print-config > r.yaml\n"
           "nfbench run --config r.yaml --set epochs=2 --save-model models/csflow-brick",
    "decide": "nfbench decide --method gaussian --dataset demo --category brick --out brick.md\n"
              "nfbench decide --method gaussian --dataset demo --category brick --out brick.md "
              "--model models/gaussian-brick",
    "predict": "nfbench predict --model models/gaussian-brick --images my-images --out scored\n"
               "nfbench predict --model models/gaussian-brick --images my-images "
               "--normal good-images --out scored",
    "export": "nfbench export --model models/gaussian-brick --format torchscript\n"
              "nfbench export --model models/gaussian-brick --format onnx",
    "peer": "nfbench peer --method csflow --dataset demo --category brick --out peer.json",
    "peers": "nfbench peers --quiet",
    "selfcheck": "nfbench selfcheck --device cpu\nnfbench selfcheck --device cuda",
}

#: help for options that were declared without any (so that their default shows)
OPTION_HELP = {
    "--results": "folder of the run records",
    "--category": "dataset category",
    "--seed": "random seed",
    "--baseline": "baseline file of committed metrics (JSON)",
    "--root": "dataset folder (default: datasets/<name>, or $NFBENCH_DATA/<name>)",
    "--reports": "folder of the reports",
    "--quiet": "no progress bars",
    "--paper": "csflow | patchflow | clscnf",
    "--set": "override config settings (KEY=VALUE; several after one flag; repeatable)",
    "--executor": "where the runs execute",
    "--method": "a registered method (nfbench methods)",
    "--dataset": "a registered dataset (nfbench data list)",
    "--format": "export format",
}


def decorate(parser: argparse.ArgumentParser, path: str = "") -> None:
    """``--version`` on the top parser; on every subcommand the defaults after each option's
    help, the missing help texts (:data:`OPTION_HELP`) and the examples (:data:`EXAMPLES`)."""
    import nfbench

    if not path:
        parser.add_argument("--version", action="version",
                            version=f"nfbench {nfbench.__version__}")
        parser.epilog = "examples:\n  nfbench data download demo\n  nfbench run --method " \
                        "gaussian --dataset demo --category brick\n  nfbench <command> --help"
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                full = f"{path} {name}".strip()
                if full in EXAMPLES and child.epilog is None:
                    child.epilog = "examples:\n" + "\n".join(
                        f"  {line}" for line in EXAMPLES[full].splitlines())
                decorate(child, full)
        elif action.help is None and action.option_strings:
            action.help = OPTION_HELP.get(action.option_strings[0], action.dest.replace("_", " "))
