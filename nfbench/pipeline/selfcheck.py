"""``nfbench selfcheck --device cpu|cuda``: does this machine compute what the suite expects?

One command, one screen: every check prints one line ``STATUS  name  measured  [tolerance]``
with STATUS ``PASS``, ``FAIL`` or ``SKIP`` (not applicable here, with the reason); the exit
code is non-zero when a check fails. README "Checking a GPU machine" explains each line.

CPU half (``--device cpu``; CI runs it, about a minute on 2 cores):

* ``smoke cpu <method>``: every method's smoke run (its ``smoke_settings``, the ``smoke``
  profile, the demo dataset's ``brick``, ``deterministic: true``) finishes with image and
  pixel AUROC in [0, 1];
* ``deterministic cpu``: a second CPU run of PatchFlow gives identical metrics;
* ``executor local``: the same run through ``bench``'s executor writes a record with the
  direct run's metrics and its identity, and a second ``execute`` skips it.

GPU half (``--device cuda``, at most about 8 minutes on one GPU; needs CUDA):

* ``smoke cuda <method>``: the smoke run on the GPU (``deterministic: true``); image and pixel
  AUROC within :data:`CPU_GPU_TOLERANCE` of the CPU run (float sums run in another order on a
  GPU, and a few epochs amplify that, so equality is not expected);
* ``deterministic cuda <method>``: a second GPU run gives identical metrics (the
  ``deterministic`` setting: :mod:`nfbench.precision`);
* ``bf16 vs fp32 <method>``: ``precision: bf16`` (flow subnets in bfloat16) within
  :data:`BF16_TOLERANCE` of fp32, for each method with a flow;
* ``two runs on one gpu``: two runs through the local executor with ``--runs-per-gpu 2``
  (two worker processes on one GPU); the run also made alone gives identical metrics;
* ``ray executor, one gpu``: the same run as a Ray task on a local one-GPU Ray cluster gives
  identical metrics (SKIP without Ray);
* ``peak memory <method>``: ``torch.cuda.max_memory_allocated`` around one forward and
  backward of the method's images → scores network at the paper profile's settings (paper
  defaults: input size, backbone, hidden sizes) on a synthetic batch of the config's
  ``batch_size``, with the flows' parameters trainable and the backbone frozen (as training
  has it for CS-Flow and the CNF stage): a training step's memory, up to the optimizer
  state. FAIL on out-of-memory;
* ``profiling cuda <method>``: the profiling stage's timing (:func:`nfbench.profiling.profile_method`,
  paper settings, batch 1) on the GPU: images per second.

Runs use ``NFBENCH_ORIGINAL_PROTOCOL=0`` (the protocol hook changes no metric) and write into
a temporary folder (``--work`` keeps them); the demo dataset is built if missing.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

#: |Δ| allowed between a CPU and a GPU smoke run's image and pixel AUROC
CPU_GPU_TOLERANCE = 0.05
#: |Δ| allowed between a bf16 and an fp32 GPU smoke run's image and pixel AUROC
BF16_TOLERANCE = 0.05
#: the metrics the tolerances apply to
KEYS = ("image_auroc", "pixel_auroc")
CATEGORY = "brick"


@dataclass
class Check:
    """One line of the summary."""

    name: str
    status: str  # PASS | FAIL | SKIP
    value: str = ""
    tolerance: str = ""


@dataclass
class SelfCheck:
    """The checks of one ``selfcheck`` call and what they share (the CPU runs' metrics)."""

    work: Path
    log: Callable[[str], None] = print
    #: the methods to check (default: every registered one)
    methods: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    metrics: dict[tuple, dict] = field(default_factory=dict)
    #: wall seconds of each method's first smoke run (what picks :attr:`quick`)
    seconds: dict[str, float] = field(default_factory=dict)
    _flows: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.methods:
            from nfbench.methods import list_methods

            self.methods = list_methods()

    @property
    def quick(self) -> str:
        """The method of the determinism and executor checks: the flow method whose smoke run
        was fastest (the first flow method before any ran)."""
        flows = [m for m in self.methods if self.has_flows(m)] or self.methods
        return min(flows, key=lambda m: (self.seconds.get(m, float("inf")), flows.index(m)))

    def has_flows(self, method: str) -> bool:
        """Whether ``method``'s network has coupling subnets, what ``precision: bf16``
        autocasts (:func:`nfbench.precision.subnets`); without any (a Gaussian baseline)
        nothing runs in bf16."""
        if method not in self._flows:
            from nfbench.methods import create_method, method_class
            from nfbench.precision import subnets

            detector = create_method(method, **method_class(method).smoke_settings)
            self._flows[method] = bool(subnets(detector.inference_module(pretrained=False)))
        return self._flows[method]

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        self.log(format_line(check))
        return check

    def attempt(self, name: str, body: Callable[[], Check | tuple[bool, str, str]]) -> Check:
        """Run one check; an exception is a FAIL whose value is the error's last line."""
        try:
            result = body()
        except Exception as exc:  # noqa: BLE001 - every failure is one summary line
            text = str(exc).strip().splitlines()
            return self.add(Check(name, "FAIL", f"{type(exc).__name__}: {text[-1] if text else ''}"))
        if isinstance(result, Check):
            return self.add(result)
        ok, value, tolerance = result
        return self.add(Check(name, "PASS" if ok else "FAIL", value, tolerance))

    def smoke(self, method: str, device: str, **settings: Any) -> dict[str, float]:
        """Metrics of ``method``'s smoke run on ``device`` (memoised by its settings)."""
        from nfbench.methods import method_class
        from nfbench.pipeline.experiment import run_experiment

        key = (method, device, tuple(sorted(settings.items())))
        if key not in self.metrics:
            overrides = {**method_class(method).smoke_settings, "device": device,
                         "deterministic": True, **settings}
            start = time.perf_counter()
            record = run_experiment(method, "demo", CATEGORY, profile="smoke", seed=0,
                                    overrides=overrides, original_protocol=False)
            self.seconds.setdefault(method, time.perf_counter() - start)
            self.metrics[key] = record["metrics"]
        return self.metrics[key]

    def rerun(self, method: str, device: str, **settings: Any) -> dict[str, float]:
        """A fresh run (not memoised) of the same smoke settings."""
        key = (method, device, tuple(sorted(settings.items())))
        first = self.metrics.pop(key, None)
        try:
            return self.smoke(method, device, **settings)
        finally:
            if first is not None:
                self.metrics[key] = first


def format_line(check: Check) -> str:
    tolerance = f"  [{check.tolerance}]" if check.tolerance else ""
    return f"{check.status:4s}  {check.name:32s}  {check.value}{tolerance}".rstrip()


def _describe(metrics: dict) -> str:
    return " ".join(f"{k.split('_')[0]} {metrics[k]:.4f}" if metrics.get(k) is not None
                    else f"{k.split('_')[0]} n/a" for k in KEYS)


def _valid(metrics: dict) -> bool:
    return all(metrics.get(k) is not None and 0.0 <= metrics[k] <= 1.0 for k in KEYS)


def _largest_gap(a: dict, b: dict) -> float:
    return max(abs(a[k] - b[k]) for k in KEYS)


def _run(method: str, category: str = CATEGORY, device: str = "cpu", seed: int = 0):
    """The smoke run of ``method`` as a pipeline :class:`~nfbench.pipeline.plan.Run`."""
    from nfbench.methods import method_class
    from nfbench.pipeline.plan import Run

    settings = {**method_class(method).smoke_settings, "device": device, "deterministic": True}
    return Run(paper="selfcheck", method=method, variant="smoke", dataset="demo",
               category=category, seed=seed, profile="smoke", settings=settings)


def _record_metrics(results: Path, run) -> dict:
    import json

    return json.loads((results / run.record_path).read_text())["metrics"]


def ensure_demo() -> Path:
    """The demo dataset's folder, built first if missing."""
    from nfbench.datasets import obtain

    return Path(obtain("demo", progress=False))


# --------------------------------------------------------------------------------------------
# the CPU half


def cpu_checks(ctx: SelfCheck) -> None:
    from nfbench.pipeline.runner import execute

    for method in ctx.methods:
        def smoke(method=method):
            start = time.perf_counter()
            metrics = ctx.smoke(method, "cpu")
            return (_valid(metrics), f"{_describe(metrics)} ({time.perf_counter() - start:.0f} s)",
                    "AUROC in [0, 1]")
        ctx.attempt(f"smoke cpu {method}", smoke)

    def deterministic():
        first = ctx.smoke(ctx.quick, "cpu")
        second = ctx.rerun(ctx.quick, "cpu")
        return first == second, f"{ctx.quick}: {_describe(second)}", "identical metrics"
    ctx.attempt("deterministic cpu", deterministic)

    def executor():
        run, results = _run(ctx.quick), ctx.work / "results-local"
        execute([run], results, progress=False, jobs=1)
        record = results / run.record_path
        written = record.stat().st_mtime_ns
        execute([run], results, progress=False, jobs=1)  # same identity: skipped
        same = _record_metrics(results, run) == ctx.smoke(ctx.quick, "cpu")
        skipped = record.stat().st_mtime_ns == written
        return (same and skipped, f"record {'=' if same else '!='} direct run, rerun "
                f"{'skipped' if skipped else 'REDONE'}", "identical metrics; skip by identity")
    ctx.attempt("executor local", executor)


# --------------------------------------------------------------------------------------------
# the GPU half

GPU_CHECKS = ("smoke cuda", "deterministic cuda", "bf16 vs fp32", "two runs on one gpu",
              "ray executor, one gpu", "peak memory", "profiling cuda")


def gpu_checks(ctx: SelfCheck) -> None:
    """Every GPU check, or one SKIP line per check when this machine has no CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        for name in GPU_CHECKS:
            ctx.add(Check(name, "SKIP", "no CUDA GPU (torch.cuda.is_available() is False)"))
        return
    methods = ctx.methods
    for method in methods:
        def smoke(method=method):
            gpu, cpu = ctx.smoke(method, "cuda"), ctx.smoke(method, "cpu")
            gap = _largest_gap(gpu, cpu)
            return (gap <= CPU_GPU_TOLERANCE, f"{_describe(gpu)} (max |d| {gap:.4f} vs cpu)",
                    f"|d| <= {CPU_GPU_TOLERANCE}")
        ctx.attempt(f"smoke cuda {method}", smoke)
    for method in methods:
        def deterministic(method=method):
            first, second = ctx.smoke(method, "cuda"), ctx.rerun(method, "cuda")
            differing = [k for k in first if first[k] != second[k]]
            return (not differing, "identical" if not differing else
                    f"differ: {', '.join(differing)}", "identical metrics")
        ctx.attempt(f"deterministic cuda {method}", deterministic)
    for method in methods:
        if not ctx.has_flows(method):  # no coupling subnets: nothing runs in bf16
            continue

        def bf16(method=method):
            low, full = ctx.smoke(method, "cuda", precision="bf16"), ctx.smoke(method, "cuda")
            gap = _largest_gap(low, full)
            return (gap <= BF16_TOLERANCE, f"{_describe(low)} (max |d| {gap:.4f})",
                    f"|d| <= {BF16_TOLERANCE}")
        ctx.attempt(f"bf16 vs fp32 {method}", bf16)

    def shared():
        from nfbench.pipeline.runner import execute

        runs = [_run(ctx.quick, device="cuda"), _run(ctx.quick, "coin", device="cuda")]
        results = ctx.work / "results-shared"
        execute(runs, results, progress=False, runs_per_gpu=2, device="cuda:0")
        same = _record_metrics(results, runs[0]) == ctx.smoke(ctx.quick, "cuda")
        other = _valid(_record_metrics(results, runs[1]))
        return (same and other, f"2 workers on cuda:0, {ctx.quick} record "
                f"{'=' if same else '!='} run alone", "identical metrics")
    ctx.attempt("two runs on one gpu", shared)
    ctx.attempt("ray executor, one gpu", lambda: ray_check(ctx))
    for method in methods:
        ctx.attempt(f"peak memory {method}", lambda method=method: peak_memory(method))
    for method in methods:
        def profiling(method=method):
            from nfbench.profiling import profile_method

            result = profile_method(method, {"device": "cuda"}, batch_size=1, min_run_time=0.5)
            fps = result["images_per_second"]
            return (math.isfinite(fps) and fps > 0 and result["timing"]["device"].startswith("cuda"),
                    f"{fps:.1f} images/s at {result['input_size']} px, batch 1 "
                    f"({result['device_name']})", "timed on the GPU")
        ctx.attempt(f"profiling cuda {method}", profiling)


def ray_check(ctx: SelfCheck) -> Check | tuple[bool, str, str]:
    """The quick run as a Ray task on a local cluster with this machine's one GPU."""
    try:
        import ray
    except ImportError:
        return Check("ray executor, one gpu", "SKIP", 'Ray is not installed (pip install -e ".[ray]")')
    from nfbench.pipeline.runner import execute

    run, results = _run(ctx.quick, device="cuda"), ctx.work / "results-ray"
    started = not ray.is_initialized()
    if started:
        ray.init(num_gpus=1, num_cpus=min(4, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        execute([run], results, progress=False, executor="ray")
    finally:
        if started:
            ray.shutdown()
    same = _record_metrics(results, run) == ctx.smoke(ctx.quick, "cuda")
    return (same and gpus >= 1, f"{gpus:g} GPU in the cluster, record "
            f"{'=' if same else '!='} local run", "identical metrics")


def peak_memory(method: str) -> tuple[bool, str, str]:
    """Peak GPU memory of one forward + backward at the paper's settings (module docstring)."""
    import torch
    from FrEIA.modules import InvertibleModule

    from nfbench.methods import create_method

    detector = create_method(method, device="cuda")  # the paper profile: every paper default
    cfg = detector.config
    module = detector.inference_module(pretrained=False).cuda().train()
    trainable = []
    for part in module.modules():
        if isinstance(part, InvertibleModule):
            trainable += list(part.parameters())
    ids = {id(p) for p in trainable}
    for parameter in module.parameters():
        parameter.requires_grad_(id(parameter) in ids)
    batch = int(getattr(cfg, "batch_size", 1))
    images = torch.rand(batch, 3, cfg.input_size, cfg.input_size, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    try:
        scores, maps = module(images)
        if trainable:
            (scores.float().sum() + maps.float().mean()).backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    finally:
        del module
        torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    what = "fwd+bwd" if trainable else "fwd"
    return (peak <= total, f"{peak / 2**30:.1f} GiB ({what}, batch {batch}, {cfg.input_size} px; "
            f"model {base / 2**30:.1f} GiB)", f"<= {total / 2**30:.0f} GiB on this GPU")


# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _environment(work: Path):
    """Selfcheck's runs: no original-protocol pass, a feature and stage cache of their own
    (under ``work``: nothing stale is reused), torch's flags back to the defaults after."""
    from nfbench.precision import apply_run_settings

    names = ("NFBENCH_ORIGINAL_PROTOCOL", "NFBENCH_QUIET", "NFBENCH_CACHE")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["NFBENCH_ORIGINAL_PROTOCOL"] = "0"
    os.environ["NFBENCH_QUIET"] = "1"
    os.environ["NFBENCH_CACHE"] = str(work / "cache")
    try:
        yield
    finally:
        apply_run_settings(None)  # fp32, not deterministic: what a run without settings gets
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def selfcheck(device: str = "cpu", work: Path | None = None,
              log: Callable[[str], None] = print,
              methods: list[str] | None = None) -> list[Check]:
    """Run the CPU half, and with ``device == "cuda"`` the GPU half, for ``methods`` (default
    all); returns every check (each also printed by ``log`` as it finishes)."""
    import torch

    from nfbench.progress import silence_bars

    if device not in ("cpu", "cuda"):
        from nfbench.errors import UserError

        raise UserError(f"selfcheck --device expects cpu or cuda, got {device!r}")
    if device == "cuda":
        from nfbench.pipeline.devices import validate_device

        validate_device("cuda")
    silence_bars()
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nfbench-selfcheck-")))
        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        stack.enter_context(_environment(work))
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        log(f"nfbench selfcheck --device {device}: torch {torch.__version__}, "
            f"{torch.get_num_threads()} CPU threads, GPU: {gpu}")
        ctx = SelfCheck(work, log, list(methods or []))
        ctx.attempt("demo dataset", lambda: (True, str(ensure_demo()), "present or built"))
        cpu_checks(ctx)
        if device == "cuda":
            gpu_checks(ctx)
        else:
            for name in GPU_CHECKS:
                ctx.add(Check(name, "SKIP", "--device cpu"))
    counts = {s: sum(c.status == s for c in ctx.checks) for s in ("PASS", "FAIL", "SKIP")}
    log(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in "
        f"{time.perf_counter() - start:.0f} s")
    return ctx.checks
