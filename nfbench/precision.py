"""Determinism and numerical precision of a run: two settings every method's config has.

* ``deterministic`` (default false): torch's deterministic algorithms
  (``torch.use_deterministic_algorithms(True)``; an op without a deterministic kernel then
  raises instead of silently varying), ``cudnn.deterministic = True``, ``cudnn.benchmark =
  False`` and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS' requirement for reproducible
  matmuls; it must be in the environment before CUDA initialises, so it is also set when a
  Ray task or a bench starts, see :func:`prepare_process`). On CUDA the bilinear/bicubic and
  reflect-padding backward passes are nondeterministic by default: only with this setting
  can ``nfbench check --exact`` hold on a GPU. On the CPU every kernel the suite uses is
  deterministic already, so the setting changes no CPU number. CS-Flow's cross-convolutions
  upsample bilinearly inside the trained subnet: with the setting on, on CUDA, they use
  :func:`resize_bilinear`'s interpolation matrices (deterministic matmuls) instead of
  ``F.interpolate``, whose CUDA backward has no deterministic kernel. Ops left without one
  (CLS-CNFs' encoder fine-tuning: reflect padding and bicubic upsampling backward) run with a
  warning (``warn_only``) rather than failing; ``nfbench selfcheck --device cuda`` says
  whether two runs still agree.
* ``precision``: ``fp32`` (default) computes in IEEE float32 everywhere, TF32 *explicitly*
  off (``torch.backends.cuda.matmul.allow_tf32 = False``, ``cudnn.allow_tf32 = False``;
  PyTorch's own default lets cuDNN convolutions use TF32 on Ampere and later), so that an
  RTX 2080 Ti and an H100 compute the same thing; ``tf32`` allows TF32 for matmuls and
  convolutions (about 8x the FP32 peak on an A100/H100, 10-bit mantissa inputs); ``bf16``
  keeps fp32 (TF32 off) but runs the coupling blocks' subnets (the networks that regress
  the affine coefficients: CS-Flow's cross-convolutions, FrEIA's ``AllInOneBlock`` subnets
  of CFlow-AD, CLS-CNFs and PatchFlow) under ``torch.autocast(dtype=torch.bfloat16)`` and
  casts their output back to float32: the affine clamp, the exponent, the log-determinant,
  the latent's log-likelihood, the loss and every normalisation stay float32. The frozen
  feature extractor is not autocast: its features are cached and shared by runs of every
  precision (:mod:`nfbench.feature_cache`), so they stay float32.

The legacy ``allow_tf32`` flags are used, not torch's newer ``fp32_precision`` strings: in
torch 2.9+ mixing the two raises, and reading ``cudnn.allow_tf32`` after setting only the
new ones fails; the legacy setters keep both views consistent.
"""

from __future__ import annotations

import os
from typing import Any

import torch

PRECISIONS = ("fp32", "tf32", "bf16")

#: what cuBLAS needs for deterministic results (PyTorch's "Reproducibility" notes)
CUBLAS_WORKSPACE = ":4096:8"

#: attribute names under which a coupling block (a FrEIA ``InvertibleModule``) holds the
#: subnets that regress its affine coefficients: FrEIA's ``AllInOneBlock.subnet`` (CFlow-AD,
#: CLS-CNFs, PatchFlow) and CS-Flow's ``CrossScaleCoupling.s1``/``s2``
SUBNET_ATTRIBUTES = ("subnet", "subnet1", "subnet2", "s1", "s2")


def check_precision(value: str) -> None:
    """Refuse an unknown ``precision`` with one line (a config's ``__post_init__`` calls it)."""
    from nfbench.errors import UserError

    if value not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}")


def prepare_process(deterministic: bool = True) -> None:
    """Set ``CUBLAS_WORKSPACE_CONFIG`` before CUDA initialises (a worker's or task's start);
    a value the user set is kept."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def apply_run_settings(config: Any) -> dict[str, Any]:
    """Set torch's process-wide flags for a run of ``config`` (its ``deterministic`` and
    ``precision``; a config without them gets the defaults) and return what was applied, for
    the record. Every flag is set both ways, so a worker that runs several runs never carries
    one run's setting into the next."""
    deterministic = bool(getattr(config, "deterministic", False))
    precision = str(getattr(config, "precision", "fp32"))
    check_precision(precision)
    prepare_process(deterministic)
    # warn_only: an op with no deterministic CUDA kernel warns instead of failing the run
    # (CLS-CNFs' reflect padding and bicubic upsampling backward, see the module docstring).
    # Called only to change the state: the call imports torch._inductor (about 3 s a process)
    if deterministic or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return {"deterministic": deterministic, "precision": precision,
            "tf32": tf32, "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


def current_settings() -> dict[str, Any]:
    """torch's flags as they stand (what :func:`apply_run_settings` set), for tests/selfcheck."""
    return {"deterministic": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_tf32": torch.backends.cudnn.allow_tf32}


def subnets(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The coupling subnets of ``model`` (see :data:`SUBNET_ATTRIBUTES`)."""
    from FrEIA.modules import InvertibleModule

    found = []
    for module in model.modules():
        if isinstance(module, InvertibleModule):
            found += [getattr(module, name) for name in SUBNET_ATTRIBUTES
                      if isinstance(getattr(module, name, None), torch.nn.Module)]
    return found


def _to_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value


def _device_type(value: Any) -> str | None:
    """The device type of the first tensor in a forward's arguments."""
    if isinstance(value, torch.Tensor):
        return value.device.type
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _device_type(item)
            if found is not None:
                return found
    return None


class _SubnetAutocast:
    """Forward hooks that run one module under bf16 autocast (on the device type of its
    input) and hand float32 back. Hooks (not a wrapper module) keep the state dict's keys,
    survive ``copy.deepcopy`` and, with ``always_call``, leave autocast even when the forward
    raises."""

    def __init__(self) -> None:
        self.active: list[torch.autocast] = []

    def enter(self, module, args):
        context = torch.autocast(_device_type(args) or "cpu", dtype=torch.bfloat16)
        context.__enter__()
        self.active.append(context)

    def leave(self, module, args, output):
        if self.active:
            self.active.pop().__exit__(None, None, None)
        return _to_float32(output)


def autocast_subnets(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """With ``precision == "bf16"``, make every coupling subnet of ``model`` compute under
    bf16 autocast and return float32 (see the module docstring); any other precision leaves
    ``model`` untouched. Returns ``model``; calling it twice adds no second hook."""
    if precision != "bf16":
        return model
    for module in subnets(model):
        if getattr(module, "_nfbench_autocast", False):
            continue
        hooks = _SubnetAutocast()
        module.register_forward_pre_hook(hooks.enter)
        module.register_forward_hook(hooks.leave, always_call=True)
        module._nfbench_autocast = True
    return model


def _bilinear_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """``[n_out, n_in]`` weights of 1-D linear interpolation with ``align_corners=False``, the
    source coordinates exactly as ``F.interpolate(size=...)`` computes them:
    ``max(0, (i + 0.5) * n_in / n_out - 0.5)``, neighbours ``floor`` and ``floor + 1``
    (clamped to the last index)."""
    scale = n_in / n_out
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0)
    low = src.floor().long().clamp(max=n_in - 1)
    high = (low + 1).clamp(max=n_in - 1)
    frac = src - low
    matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    matrix.index_put_((rows, low), 1 - frac, accumulate=True)
    matrix.index_put_((rows, high), frac, accumulate=True)
    return matrix.to(device=like.device, dtype=like.dtype)


def resize_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)``; when deterministic
    algorithms are on and ``x`` is a CUDA tensor that needs a gradient, computed as
    ``A_h @ x @ A_w^T`` with interpolation matrices (same values up to rounding; a matmul's
    backward is deterministic, ``upsample_bilinear2d``'s CUDA backward is not). Elsewhere
    (the CPU, inference, the default) it is ``F.interpolate`` itself: no number changes."""
    import torch.nn.functional as F

    if not (torch.are_deterministic_algorithms_enabled() and x.is_cuda and x.requires_grad
            and torch.is_grad_enabled()):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    height, width = (int(v) for v in size)
    rows = _bilinear_matrix(x.shape[-2], height, x)
    cols = _bilinear_matrix(x.shape[-1], width, x)
    return torch.matmul(torch.matmul(rows, x), cols.T)
