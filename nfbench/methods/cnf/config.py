"""The settings CFlow-AD and CLS-CNFs share, declared once.

:class:`CNFSettings` holds what builds and trains the conditional flows; :class:`CNFMethodConfig`
adds what both methods' detectors share (encoder, input size, normalisation, per-category
settings). ``CFlowConfig`` and ``CLSCNFConfig`` inherit it, so the flat keys (``--set lr=...``,
params.yaml, benchmarks/*.yaml) are these field names. Every config is validated when it is
made (``__post_init__``): :func:`~nfbench.methods.base.validate_config`, then :meth:`check`,
which each method extends.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from nfbench.errors import UserError
from nfbench.methods.base import (FRACTION, IMAGE_SIDE, NON_NEGATIVE, POSITIVE, PROBABILITY,
                                  build_config, setting, validate_config)
from nfbench.precision import PRECISIONS
from nfbench.methods.cnf.encoder import PADDINGS

NORMALIZATIONS = ("transductive", "inductive")


@dataclass(frozen=True)
class CNFSettings:
    """How the conditional flows are built and trained. Defaults: CFlow-AD's MVTec AD setting
    (gudovskiy/cflow-ad main.py / config.py), which AD-CLSCNFs' config.py keeps."""

    n_blocks: int = 8  # cflow-ad coupling_blocks (CLS-CNFs compares with 6, §IV-B)
    condition_dim: int = 128  # cflow-ad condition_vec
    clamp: float = setting(1.9, range=POSITIVE)  # cflow-ad clamp_alpha
    permute_soft: bool = True  # cflow-ad freia_cflow_head
    fiber_batch: int = 256  # cflow-ad N (fiber batch)
    lr: float = setting(2e-4, range=POSITIVE)  # cflow-ad lr (Adam, default betas)
    meta_epochs: int = 25  # cflow-ad meta_epochs
    sub_epochs: int = 8  # cflow-ad sub_epochs
    # cflow-ad lr_warm_epochs (linear warm-up from lr/10) of its 25 meta-epochs
    # (schedule_meta_epochs). A run of meta_epochs != schedule_meta_epochs (demo, smoke,
    # --set meta_epochs=...) keeps the schedule's shape: the warm-up lasts
    # warm_epochs * meta_epochs / schedule_meta_epochs meta-epochs (8 % of the run) and the
    # cosine spans the meta_epochs run; the effective schedule is in the record's fit_info.
    warm_epochs: int = setting(2, range=NON_NEGATIVE)
    schedule_meta_epochs: int = 25  # the meta-epochs the warm-up was set for (cflow-ad, AD-CLSCNFs config.py; BTAD scripts: 8)
    lr_min_factor: float = setting(1e-3, range=PROBABILITY)  # cflow-ad cosine eta_min = lr * lr_decay_rate**3 = lr * 1e-3
    batch_size: int = 32  # cflow-ad batch_size (images per step)
    fiber_fraction: float = setting(1.0, range=FRACTION)  # share of fibers used per batch (budget knob; original 1.0)
    # how the flows compute (nfbench.precision); part of a trained stage's cache key
    deterministic: bool = False  # torch deterministic algorithms + cuDNN/cuBLAS flags (nfbench.precision)
    precision: str = field(default="fp32", metadata={"choices": PRECISIONS})  # fp32 (TF32 off) | tf32 | bf16 subnets (nfbench.precision)
    #: wrap the fiber-batch loss (flow forward and NLL) in torch.compile. Opt-in, off by
    #: default: not yet measured or checked on a GPU, and not bit-identical to eager mode.
    compile: bool = False


def cnf_fields(settings: Any) -> dict[str, Any]:
    """The :class:`CNFSettings` fields of ``settings`` (a CNFSettings or a method config)."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(CNFSettings)}


@dataclass(frozen=True)
class CNFMethodConfig(CNFSettings):
    """The detector settings of both CNF methods, on top of :class:`CNFSettings`."""

    backbone: str = "wide_resnet50_2"  # cflow-ad / CLS-CNFs §III-B2: torchvision WRN50-2 (= timm wide_resnet50_2.tv_in1k)
    input_size: int = setting(256, range=IMAGE_SIDE)  # cflow-ad README: 128-512 per category; CLS-CNFs §IV-B: 256 for all
    padding: str = setting("reflect", choices=PADDINGS)  # cflow-ad custom_models/resnet.py, AD-CLSCNFs model.py: padding_mode='reflect'
    normalization: str = setting("transductive", choices=NORMALIZATIONS)  # cflow-ad train.py, CLS-CNFs Eq. 8: n_max over the test set | inductive: train set
    #: per-category overrides of any other field, e.g. {"01": {"lr": 5e-5}} (benchmark data)
    category_settings: dict = field(default_factory=dict)
    reuse_stages: bool = True  # reuse identical, already trained stages from the on-disk cache
    device: str = "auto"

    def __post_init__(self) -> None:
        validate_config(self)
        self.check()

    def check(self) -> None:
        """The checks beyond each field's own type and rule; a method's config extends them."""
        fields = {f.name for f in dataclasses.fields(self)} - {"category_settings", "input_size"}
        for category, overrides in self.category_settings.items():
            if not isinstance(overrides, dict):  # found here, at resolve time, not at fit
                raise UserError(f"category_settings[{category!r}] must be a mapping of "
                                f"settings, got {overrides!r}")
            bad = sorted(set(overrides) - fields)
            if bad:
                raise UserError(f"category_settings[{category!r}] has invalid key(s) "
                                f"{', '.join(map(str, bad))}")
        if self.condition_dim % 4:
            raise UserError(f"condition_dim must be a multiple of 4, got {self.condition_dim}")


def category_of(images: Any) -> str | None:
    """The category of an image set named ``<category>/<split>`` (``None`` if unnamed)."""
    return images.name.split("/")[0] if images.name else None


def apply_category_settings(config: Any, category: str | None) -> Any:
    """``config`` with ``config.category_settings[category]`` applied (keys checked): the
    effective settings of one category (detectors keep them in ``settings_``)."""
    overrides = dict(config.category_settings.get(category, {})) if category else {}
    if not overrides:
        return config
    fields = {f.name for f in dataclasses.fields(config)}
    bad = sorted(set(overrides) - fields) + sorted({"category_settings", "input_size"} & set(overrides))
    if bad:
        raise UserError(f"category_settings[{category!r}] has invalid key(s) {', '.join(bad)}")
    merged = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    merged.update(overrides)
    return build_config(type(config), merged)
