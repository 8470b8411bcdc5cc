"""CS-Flow's hyperparameters: a frozen dataclass whose defaults are the paper's MVTec AD setting
(§4.2) completed by the original code, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from nfbench.errors import UserError
from nfbench.methods.base import (BELOW_ONE, IMAGE_SIDE, NON_NEGATIVE, POSITIVE, setting,
                                  validate_config)
from nfbench.precision import PRECISIONS
from nfbench.methods.csflow.flow import LOG_JAC_REDUCTIONS

#: ``scale_mode`` choices, the scale ablation of Table 3 (see :mod:`.torch_model`).
SCALE_MODES = ("cross", "single", "separate", "concat")


@dataclass(frozen=True)
class CSFlowConfig:
    """Defaults are the paper's MVTec AD setting (§4.2) completed by the original code."""

    backbone: str = "efficientnet_b5"  # §4.2: EfficientNet-B5, ImageNet weights, frozen
    layer: str = "stride32"  # §4.2 "layer 36" = _blocks[35], 304 channels (docs/original-code.md §1a)
    input_size: int = setting(768, range=IMAGE_SIDE)  # §4.2: 768/384/192 for MVTec AD (MTD: 384)
    n_scales: int = 3  # §4.2: s = 3
    scale_mode: str = setting("cross", choices=SCALE_MODES)  # Table 3 ablation: cross | single | separate | concat
    scale_index: int = setting(0, range=NON_NEGATIVE)  # scale used by scale_mode=single (0 = full resolution)
    n_blocks: int = 4  # §4.2: n_blocks = 4 (Table 4 varies 1-6)
    hidden_channels: int = 1024  # original config.py fc_internal
    # null = the original rule (cs-flow config.py): [3] * (n_blocks - 1) + [5], i.e. §4.2's
    # (3, 3, 3, 5) for 4 blocks; an explicit list needs one odd size per block
    kernel_sizes: tuple[int, ...] | None = None
    clamp: float = setting(3.0, range=POSITIVE)  # §4.2: alpha = 3 (Eq. 4)
    epochs: int = 240  # §4.2: 240 for MVTec AD, 60 for MTD
    batch_size: int = 16  # §4.2
    lr: float = setting(2e-4, range=POSITIVE)  # §4.2
    weight_decay: float = setting(1e-5, range=NON_NEGATIVE)  # §4.2
    adam_eps: float = setting(1e-4, range=POSITIVE)  # original train.py (paper silent)
    adam_betas: tuple[float, float] = setting((0.9, 0.999), range=BELOW_ONE)  # original code; paper says (0.5, 0.9): deviation
    grad_clip: float = setting(1.0, range=POSITIVE)  # original config.py max_grad_norm
    # sample: log-determinant per sample (original utils.get_loss) | batch_sum: summed over
    # the batch, so weighted by the batch size (anomalib 2.7's csflow; a deviation)
    log_jac_reduction: str = setting("sample", choices=LOG_JAC_REDUCTIONS)
    device: str = "auto"
    deterministic: bool = False  # torch deterministic algorithms + cuDNN/cuBLAS flags (nfbench.precision)
    precision: str = field(default="fp32", metadata={"choices": PRECISIONS})  # fp32 (TF32 off) | tf32 | bf16 subnets (nfbench.precision)

    def __post_init__(self) -> None:
        if self.kernel_sizes is not None and not isinstance(self.kernel_sizes, tuple):
            object.__setattr__(self, "kernel_sizes", tuple(self.kernel_sizes))
        if not isinstance(self.adam_betas, tuple):
            object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        validate_config(self)  # each field's type and rule first, then the rules across fields
        if not 0 <= self.scale_index < self.n_scales:
            raise UserError(f"scale_index must be in 0..{self.n_scales - 1}")
        if self.input_size % 2 ** (self.n_scales - 1 + 5):
            # stride 32 at the smallest scale must divide exactly (original: multiple of 128)
            raise UserError(f"input_size must be a multiple of {2 ** (self.n_scales + 4)} for "
                            f"{self.n_scales} scales, got {self.input_size}")
        if self.kernel_sizes is not None:
            kernels = self.kernel_sizes
            if len(kernels) != self.n_blocks or any(
                    not isinstance(k, int) or k < 1 or k % 2 == 0 for k in kernels):
                raise UserError(f"kernel_sizes needs one odd size per block ({self.n_blocks}) "
                                f"or null (the original's [3] * (n_blocks - 1) + [5]), got "
                                f"{list(kernels)}")
