"""The Gaussian baseline's hyperparameters: a frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from nfbench.methods.base import IMAGE_SIDE, POSITIVE, setting, validate_config
from nfbench.precision import PRECISIONS


@dataclass(frozen=True)
class GaussianConfig:
    """Defaults follow PaDiM where it applies (d = 100 random channels, eps = 0.01, Gaussian
    smoothing sigma = 4 of the upsampled map); the backbone is the offline Lite0."""

    backbone: str = "efficientnet_lite0"
    layers: tuple[str, ...] = ("stride8", "stride16")  # PaDiM: the first three ResNet stages
    input_size: int = setting(256, range=IMAGE_SIDE)  # PaDiM: 256 resize, 224 crop; no crop here
    n_features: int = 100  # PaDiM: random subset of d = 100 channels
    covariance_eps: float = setting(0.01, range=POSITIVE)  # PaDiM: Sigma + 0.01 I
    blur_sigma: float = setting(4.0, range=POSITIVE)  # PaDiM: Gaussian filter sigma = 4 on the score map
    batch_size: int = 16
    device: str = "auto"
    deterministic: bool = False  # torch deterministic algorithms + cuDNN/cuBLAS flags (nfbench.precision)
    precision: str = field(default="fp32", metadata={"choices": PRECISIONS})  # fp32 (TF32 off) | tf32 | bf16 subnets (nfbench.precision)

    def __post_init__(self) -> None:
        if not isinstance(self.layers, tuple):
            object.__setattr__(self, "layers", tuple(self.layers))
        validate_config(self)
