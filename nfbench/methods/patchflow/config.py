"""PatchFlow's hyperparameters: a frozen dataclass whose defaults are the paper's MVTec AD
setting completed by the original code (github.com/BOX-LEO/PatchFlow, see
docs/original-code.md §1d), each field naming its source; validated on construction.
Deviations are listed in ``benchmarks/patchflow.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field

from nfbench.errors import UserError
from nfbench.methods.base import (IMAGE_SIDE, NON_NEGATIVE, OPEN_FRACTION, POSITIVE, setting,
                                  validate_config)
from nfbench.precision import PRECISIONS
from nfbench.methods.patchflow.flow import SUBNETS

#: Adapter output channels C_g per ``adapter`` choice.
ADAPTERS = {
    "code": 128,  # original model.py FeatureAdaptor: 1x1 conv 1488 -> 128 (= flow_feature_dim)
    "paper": 768,  # paper §Implementation Detail: "decrease the feature size to 768x96x96"
}
#: How the adapter is trained.
ADAPTER_TRAINING = ("volume", "plain", "frozen")
VALIDATIONS = ("none", "synthetic")


@dataclass(frozen=True)
class PatchFlowConfig:
    """Defaults are the paper's MVTec AD setting completed by the original code."""

    backbone: str = "efficientnet_b5"  # §Implementation Detail: EfficientNet-B5, frozen
    layers: tuple[str, ...] = ("stride8", "stride16", "stride32")  # blocks 12, 19, 35 (0-based)
    n_scales: int = 3  # §Feature Aggregation "three scales" (Table 4: 3, 2, 1)
    patch_size: int = 3  # Eq. 2 f; code GetPatchFeature AvgPool2d(3, stride 1, padding 1)
    input_size: int = setting(768, range=IMAGE_SIDE)  # §Implementation Detail: 768x768 (code data.py Resize(768, 768))
    # code (model.py PatchflowModel crop_size=(672, 672)): the backbone sees the WHOLE 768
    # image at scale 0 and the whole image resized (nearest) to 672 // 2**s at scales 1, 2;
    # every map is resized to (672 // 8)² = 84², the 84² anomaly map squeezed into the central
    # 672² of the output and padded with -1. 0 or null = no crop (paper text: 96x96 maps)
    crop_size: int | None = setting(672, range=NON_NEGATIVE)
    adapter: str = setting("code", choices=tuple(ADAPTERS))  # code: 1x1 conv -> 128 | paper: 1x1 conv -> 768 (§Impl. Detail)
    # The adapter is trained jointly with the flow (code: Adam over model.parameters()).
    # plain: Eq. 5 only, as paper and code (the default: it made the published numbers);
    # volume: Eq. 5 minus the adapter's log-volume 0.5 log det(W W^T) per position = exact NLL
    # of the features' projection onto the adapter's row space. Eq. 5 alone is unbounded
    # below (shrink the adapter, let the flow rescale); volume removes that, but cost about
    # 0.7 AUROC points on real MVTec AD transistor (issue 11); frozen: adapter at random init.
    adapter_training: str = setting("plain", choices=ADAPTER_TRAINING)
    subnet: str = setting("code", choices=SUBNETS)  # code: conv3x3 -> conv3x3 -> BN -> LeakyReLU | paper: three 1x1 convs
    flow_steps: int = 1  # §Ablation, Table 3: 1 step is best (code flow_steps=1)
    hidden: int = 128  # §Impl. Detail: "bottleneck dimension of the flow is fixed at 128"
    clamp: float = setting(2.0, range=POSITIVE)  # FrEIA AllInOneBlock default affine_clamping, used by the code
    lr: float = setting(1e-3, range=POSITIVE)  # code train.py Adam (paper silent)
    weight_decay: float = setting(1e-4, range=NON_NEGATIVE)  # code train.py
    batch_size: int = 16  # code data.py / main.py
    epochs: int = 10  # code main.py
    # none: the last epoch | synthetic: the epoch with the best pixel AUROC on synthetic
    # anomalies made from held-out TRAIN images (code gen_validation_set.py + train.py)
    validation: str = setting("none", choices=VALIDATIONS)
    validation_fraction: float = setting(0.2, range=OPEN_FRACTION)  # code gen_validation_set.py: 20 % of the train images
    device: str = "auto"
    deterministic: bool = False  # torch deterministic algorithms + cuDNN/cuBLAS flags (nfbench.precision)
    precision: str = field(default="fp32", metadata={"choices": PRECISIONS})  # fp32 (TF32 off) | tf32 | bf16 subnets (nfbench.precision)

    def __post_init__(self) -> None:
        if not isinstance(self.layers, tuple):
            object.__setattr__(self, "layers", tuple(self.layers))
        validate_config(self)  # each field's type and rule first, then the rules across fields
        if self.patch_size % 2 != 1:
            raise UserError(f"patch_size must be an odd positive number, got {self.patch_size}")
        if self.crop_size and not 8 <= self.crop_size <= self.input_size:
            raise UserError(f"crop_size must be in 8..input_size ({self.input_size}) or 0, "
                            f"got {self.crop_size}")
