"""Model complexity and speed: FLOPs, parameters, size and inference timing.

FLOPs are counted twice, by two independent counters with different conventions, so a reader
can trust the number and compare it with a paper's:

* fvcore's ``FlopCountAnalysis`` counts one fused multiply-add as ONE flop, so its total is
  really GMACs (labelled as such);
* ``torch.utils.flop_counter.FlopCounterMode`` counts a multiply-add as TWO flops.

For convolutions and matmuls the second is twice the first; each counter also reports the
operators it skipped (fvcore: element-wise ops such as exp/atan/add; FlopCounterMode counts
only matmul/conv/attention-like ops), which :func:`count_flops` lists.

FlopCounterMode's formulas read shapes only, so it runs on fake tensors (nothing computed: a
paper-size network counts in seconds, with the same counts). fvcore traces the network with
the JIT, which computes every layer (minutes at paper size on a CPU), so a count-only
measurement may leave it out (``fvcore=False``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from nfbench.precision import apply_run_settings


def parameter_stats(module: nn.Module) -> dict[str, float]:
    """Parameter count and size in MB of float parameters (4 bytes each for float32)."""
    params = list(module.parameters())
    count = sum(p.numel() for p in params)
    size = sum(p.numel() * p.element_size() for p in params)
    return {"parameters": count, "size_mb": size / 2**20}


def torch_flop_counter(module: nn.Module, inputs: tuple) -> Any:
    """``FlopCounterMode`` after ``module(*inputs)`` run on fake tensors (shapes only, no
    compute); a network whose forward reads values (data-dependent control flow) is run for
    real instead. The counts are the same either way."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():
            fake = tuple(mode.from_tensor(x) if isinstance(x, torch.Tensor) else x
                         for x in inputs)
            with FlopCounterMode(display=False) as counter:
                module(*fake)
        return counter
    except Exception:  # noqa: BLE001 - any op fake tensors cannot run: count for real
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*inputs)
        return counter


@torch.no_grad()
def count_flops(module: nn.Module, example: Any, fvcore: bool = True) -> dict[str, Any]:
    """FLOPs of one forward pass on ``example`` (a tensor or a tuple of inputs), per batch.

    Returns ``gmacs_fvcore`` (fvcore: 1 per multiply-add; ``None`` with ``fvcore=False``),
    ``gflops_torch`` (FlopCounterMode: 2 per multiply-add), and the operators each counter
    skipped.
    """
    inputs = example if isinstance(example, tuple) else (example,)
    module = module.eval()
    fvcore_total, skipped_fvcore = None, []
    if fvcore:
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(module, inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        fvcore_total = analysis.total() / 1e9
        skipped_fvcore = sorted(analysis.unsupported_ops())
    counter = torch_flop_counter(module, inputs)
    counted_torch = sorted(str(op) for op in counter.get_flop_counts().get("Global", {}))
    return {"gmacs_fvcore": fvcore_total, "gflops_torch": counter.get_total_flops() / 1e9,
            "fvcore_skipped_ops": skipped_fvcore, "torch_counted_ops": counted_torch}


def time_inference(function: Callable[[], Any], device: torch.device | str = "cpu",
                   warmup: int = 3, min_run_time: float = 1.0) -> dict[str, float]:
    """Median and spread of ``function()``'s wall time in seconds, by
    :meth:`torch.utils.benchmark.Timer.blocked_autorange`: it picks the number of calls per
    block, synchronises CUDA around each block itself and runs for at least
    ``min_run_time`` seconds, on the current thread count."""
    from torch.utils.benchmark import Timer

    device = torch.device(device)
    with torch.no_grad():
        for _ in range(warmup):
            function()
        timer = Timer(stmt="function()", globals={"function": function},
                      num_threads=torch.get_num_threads())
        measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return {"median_s": measurement.median, "iqr_s": measurement.iqr,
            "min_s": min(measurement.times), "repeats": len(measurement.times),
            "device": str(device)}


def measure_module(module: nn.Module, size: int, batch_size: int, device: torch.device,
                   time_it: bool = True, min_run_time: float = 1.0) -> dict[str, Any]:
    """FLOPs per image (:func:`count_flops`; fvcore's only if ``time_it``) of an images →
    (scores, map) ``module`` at ``size`` px and, if ``time_it``, its speed on a batch of
    ``batch_size`` (:func:`time_inference`, timed
    for at least ``min_run_time`` seconds)."""
    # fvcore (it runs the network) only where the network is timed, i.e. run anyway
    result = count_flops(module, torch.rand(1, 3, size, size, device=device), fvcore=time_it)
    if time_it:
        batch = torch.rand(batch_size, 3, size, size, device=device)
        timing = time_inference(lambda: module(batch), device=device, warmup=1,
                                min_run_time=min_run_time)
        result.update({"timing": timing, "images_per_second": batch_size / timing["median_s"],
                       "device_name": _device_name(device)})
    return result


def profile_method(method: str, settings: dict, batch_size: int = 1, time_it: bool = True,
                   min_run_time: float = 1.0) -> dict[str, Any]:
    """FLOPs per image, parameters and inference time of ``method`` with ``settings``.

    The method's ``inference_module(pretrained=False)`` (images -> (image scores, map), the
    forward ``score()`` runs) is measured untrained: FLOPs, size and speed do not depend on
    the weights, and no weight download is needed.
    """
    from nfbench.methods import create_method
    from nfbench.methods.base import resolve_device

    detector = create_method(method, **settings)
    apply_run_settings(detector.config)  # timed in the run's precision (TF32 off for fp32)
    device = resolve_device(detector.config.device)
    module = detector.inference_module(pretrained=False)
    size = detector.config.input_size
    return {"method": method, "settings": settings, "input_size": size,
            **measure_module(module, size, batch_size, device, time_it, min_run_time),
            **parameter_stats(module), "batch_size": batch_size}


def profile_components(method: str, settings: dict, rows: list[str], batch_size: int,
                       time_it: bool = True, min_run_time: float = 1.0) -> list[dict[str, Any]]:
    """Size, and when ``time_it`` also FLOPs per image and speed, of each named network of a
    method (``profiling_components``, e.g. CLS-CNFs' Table 3, which gives sizes and fps only).

    Each row is ``detector.inference_module(row, pretrained=False)``; a row without an
    images -> scores network raises :class:`~nfbench.methods.base.ProfilingNotSupported`, and
    the module it carries (``sized``, e.g. a bare feature extractor) gets size only. A row the
    method does not declare is one :class:`UserError`.
    """
    from nfbench.errors import UserError
    from nfbench.methods import create_method
    from nfbench.methods.base import ProfilingNotSupported, resolve_device

    detector = create_method(method, **settings)
    apply_run_settings(detector.config)  # timed in the run's precision (TF32 off for fp32)
    device = resolve_device(detector.config.device)
    size = detector.config.input_size
    undeclared = [name for name in rows if name not in detector.profiling_components]
    if undeclared:
        raise UserError(f"{method} declares no profiling component {', '.join(undeclared)} "
                        f"(its profiling_components: "
                        f"{', '.join(detector.profiling_components) or 'none'})")
    entries = []
    for name in rows:
        try:
            module, sized = detector.inference_module(name, pretrained=False).eval(), None
        except ProfilingNotSupported as exc:
            module, sized = None, exc.sized
        entry: dict[str, Any] = {"component": name, "input_size": size, "batch_size": batch_size,
                                 "backbone": detector.config.backbone}
        if module is not None or sized is not None:
            entry.update(parameter_stats(module if module is not None else sized))
        if time_it and module is not None:
            entry.update(measure_module(module, size, batch_size, device,
                                        min_run_time=min_run_time))
        entries.append(entry)
    return entries


def _device_name(device: torch.device) -> str:
    return (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({torch.get_num_threads()} threads)")
