"""CS-Flow (Rudolph et al., WACV 2022) behind the Detector protocol.

Frozen EfficientNet-B5 block-35 features of the input at 3 scales (§4.2) are mapped by the
fully convolutional cross-scale flow (§3.2, :mod:`.flow`) to Gaussian latents, trained by
maximum likelihood (Eq. 6). The image score is the mean of z²/2 over every latent entry of all
scales (original train.py); the localisation map is Σ_c z² of the largest scale, bilinearly
upsampled (§3.3, Fig. 7).

``scale_mode`` covers the scale ablation of Table 3:

* ``cross``: CS-Flow, one flow over all scales with cross-scale convolutions;
* ``single``: one flow on the feature map of scale ``scale_index`` only;
* ``separate``: one independent single-scale flow per scale, log-likelihoods added;
* ``concat``: the maps of all scales upsampled (bilinear) to the largest and concatenated along
  channels, one single-scale flow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nfbench.datasets.base import ImageSet
from nfbench.errors import UserError
from nfbench.feature_cache import cached_features, get_extractor, scaled_inputs
from nfbench.methods import register_method
from nfbench.progress import bars_enabled
from nfbench.methods.base import Scores, descent_step, resolve_device
from nfbench.methods.csflow.flow import (LOG_JAC_REDUCTIONS, build_cs_flow, image_score,
                                         localization_map, nll_loss)

SCALE_MODES = ("cross", "single", "separate", "concat")


@dataclass(frozen=True)
class CSFlowConfig:
    """Defaults are the paper's MVTec AD setting (§4.2) completed by the original code."""

    backbone: str = "efficientnet_b5"  # §4.2: EfficientNet-B5, ImageNet weights, frozen
    layer: str = "stride32"  # §4.2 "layer 36" = _blocks[35], 304 channels (original-code §1a)
    input_size: int = 768  # §4.2: 768/384/192 for MVTec AD (MTD: 384)
    n_scales: int = 3  # §4.2: s = 3
    scale_mode: str = "cross"  # Table 3 ablation: cross | single | separate | concat
    scale_index: int = 0  # scale used by scale_mode=single (0 = full resolution)
    n_blocks: int = 4  # §4.2: n_blocks = 4 (Table 4 varies 1-6)
    hidden_channels: int = 1024  # original config.py fc_internal
    # null = the original rule (cs-flow config.py): [3] * (n_blocks - 1) + [5], i.e. §4.2's
    # (3, 3, 3, 5) for 4 blocks; an explicit list needs one odd size per block
    kernel_sizes: tuple[int, ...] | None = None
    clamp: float = 3.0  # §4.2: alpha = 3 (Eq. 4)
    epochs: int = 240  # §4.2: 240 for MVTec AD, 60 for MTD
    batch_size: int = 16  # §4.2
    lr: float = 2e-4  # §4.2
    weight_decay: float = 1e-5  # §4.2
    adam_eps: float = 1e-4  # original train.py (paper silent)
    adam_betas: tuple[float, float] = (0.9, 0.999)  # original code; paper says (0.5, 0.9): deviation
    grad_clip: float = 1.0  # original config.py max_grad_norm
    # sample: log-determinant per sample (original utils.get_loss) | batch_sum: summed over
    # the batch, so weighted by the batch size (anomalib 2.7's csflow; a deviation)
    log_jac_reduction: str = "sample"
    device: str = "auto"


class _SeparateFlows(nn.Module):
    """One single-scale flow per scale; their latents and log-determinants are gathered so
    that the summed log-likelihood is the score (Table 3, "separate multi-scale")."""

    def __init__(self, flows: list[nn.Module]):
        super().__init__()
        self.flows = nn.ModuleList(flows)

    def forward(self, maps: list[torch.Tensor]):
        latents, log_jac = [], 0.0
        for flow, fmap in zip(self.flows, maps):
            z, jac = flow([fmap])
            latents.extend(z)
            log_jac = log_jac + jac
        return latents, log_jac


@register_method("csflow")
class CSFlowDetector:
    """CS-Flow: cross-scale normalizing flow on multi-scale EfficientNet features."""

    Config = CSFlowConfig
    #: settings for a seconds-long run (conformance tests, CI smoke)
    smoke_settings = {"backbone": "efficientnet_lite0", "input_size": 128, "hidden_channels": 16,
                      "n_blocks": 2, "epochs": 2, "batch_size": 8}

    def __init__(self, config: CSFlowConfig = CSFlowConfig()):
        if config.scale_mode not in SCALE_MODES:
            raise UserError(f"scale_mode must be one of {', '.join(SCALE_MODES)}, "
                            f"got {config.scale_mode!r}")
        if config.log_jac_reduction not in LOG_JAC_REDUCTIONS:
            raise UserError(f"log_jac_reduction must be one of {', '.join(LOG_JAC_REDUCTIONS)}, "
                            f"got {config.log_jac_reduction!r}")
        if not 0 <= config.scale_index < config.n_scales:
            raise UserError(f"scale_index must be in 0..{config.n_scales - 1}")
        if config.input_size % 2 ** (config.n_scales - 1 + 5):
            # stride 32 at the smallest scale must divide exactly (original: multiple of 128)
            raise UserError(f"input_size must be a multiple of {2 ** (config.n_scales + 4)} for "
                            f"{config.n_scales} scales, got {config.input_size}")
        if config.kernel_sizes is not None:
            kernels = tuple(config.kernel_sizes)
            if len(kernels) != config.n_blocks or any(
                    not isinstance(k, int) or k < 1 or k % 2 == 0 for k in kernels):
                raise UserError(f"kernel_sizes needs one odd size per block ({config.n_blocks}) "
                                f"or null (the original's [3] * (n_blocks - 1) + [5]), got "
                                f"{list(kernels)}")
            config = dataclasses.replace(config, kernel_sizes=kernels)
        self.config = config
        self.device = resolve_device(config.device)
        self.flow: nn.Module | None = None
        self._input_shapes: list[tuple[int, int, int]] = []
        self.loss_history: list[float] = []

    # -- features -----------------------------------------------------------------------
    def _features(self, images: ImageSet) -> list[torch.Tensor]:
        cfg = self.config
        per_scale = cached_features(cfg.backbone, [cfg.layer], images, n_scales=cfg.n_scales,
                                    device=self.device)
        return [maps[0] for maps in per_scale]

    def _flow_inputs(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The feature maps the flow sees under ``scale_mode``."""
        mode = self.config.scale_mode
        if mode == "single":
            return [maps[self.config.scale_index]]
        if mode == "concat":
            size = maps[0].shape[-2:]
            return [torch.cat([maps[0]] + [F.interpolate(m, size=size, mode="bilinear",
                                                         align_corners=False) for m in maps[1:]],
                              dim=1)]
        return list(maps)

    def _build_flow(self, shapes: list[tuple[int, int, int]]) -> nn.Module:
        cfg = self.config
        kwargs = dict(n_blocks=cfg.n_blocks, hidden=cfg.hidden_channels,
                      kernel_sizes=cfg.kernel_sizes, clamp=cfg.clamp)
        if cfg.scale_mode == "separate":
            return _SeparateFlows([build_cs_flow([shape], **kwargs) for shape in shapes])
        return build_cs_flow(shapes, **kwargs)

    # -- Detector protocol --------------------------------------------------------------
    def fit(self, train: ImageSet, evaluate: Callable[[str], None] | None = None) -> "CSFlowDetector":
        """``evaluate(label)``, if given, is called where the original tested (every E/4
        epochs, nfbench.protocols); it must not change the model."""
        from nfbench.methods.base import evaluation_epochs

        cfg = self.config
        inputs = self._flow_inputs(self._features(train))
        self._input_shapes = [tuple(x.shape[1:]) for x in inputs]
        self.flow = self._build_flow(self._input_shapes).to(self.device)
        optimizer = torch.optim.Adam(self.flow.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                     eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
        n = inputs[0].shape[0]
        generator = torch.Generator().manual_seed(int(torch.initial_seed()) % 2**63)
        self.flow.train()
        self.loss_history = []
        bar = tqdm(range(cfg.epochs), desc="csflow fit", leave=False, disable=not bars_enabled())
        for epoch in bar:
            order = torch.randperm(n, generator=generator)  # shuffle=True, drop_last=False
            epoch_losses = []
            for step, start in enumerate(range(0, n, cfg.batch_size)):
                index = order[start:start + cfg.batch_size]
                z, log_jac = self.flow([x[index].to(self.device) for x in inputs])
                loss = nll_loss(z, log_jac, cfg.log_jac_reduction)
                epoch_losses.append(descent_step(
                    optimizer, loss, "CS-Flow", lambda: f"epoch {epoch + 1}, step {step + 1}",
                    clip=(self.flow.parameters(), cfg.grad_clip)))
            self.loss_history.append(float(np.mean(epoch_losses)))
            bar.set_postfix(loss=f"{self.loss_history[-1]:.4f}")
            if evaluate is not None and epoch + 1 in evaluation_epochs(cfg.epochs):
                self.flow.eval()
                evaluate(f"epoch {epoch + 1}/{cfg.epochs}")
                self.flow.train()
        self.flow.eval()
        return self

    @torch.no_grad()
    def latents(self, images: ImageSet, batch_size: int = 32) -> list[torch.Tensor]:
        """Latents ``z`` per flow output (CPU), for scoring and figures."""
        if self.flow is None:
            raise RuntimeError("CSFlowDetector used before fit")
        inputs = self._flow_inputs(self._features(images))
        chunks = []
        for start in range(0, inputs[0].shape[0], batch_size):
            z, _ = self.flow([x[start:start + batch_size].to(self.device) for x in inputs])
            chunks.append([t.cpu() for t in z])
        return [torch.cat(parts) for parts in zip(*chunks)]

    def score(self, images: ImageSet) -> Scores:
        z = self.latents(images)
        maps = localization_map(z)[:, None]
        pixel = F.interpolate(maps, size=(images.size, images.size), mode="bilinear",
                              align_corners=False)[:, 0]
        return Scores(image=image_score(z).numpy(), pixel=pixel.numpy())

    def state_dict(self) -> dict:
        if self.flow is None:
            raise RuntimeError("CSFlowDetector has no state before fit")
        return {"flow": self.flow.state_dict(), "shapes": torch.tensor(self._input_shapes)}

    def load_state_dict(self, state: dict) -> None:
        self._input_shapes = [tuple(int(v) for v in row) for row in state["shapes"].tolist()]
        self.flow = self._build_flow(self._input_shapes).to(self.device)
        self.flow.load_state_dict(state["flow"])
        self.flow.eval()

    # -- profiling --------------------------------------------------------------------
    def inference_module(self, pretrained: bool = True) -> nn.Module:
        """Images in [0, 1] → image scores: backbone at every scale, then the flow. Used to
        count FLOPs and time inference of the whole method. Before ``fit`` the flow is built
        untrained from a dry run (FLOPs and speed do not depend on trained weights), and
        ``pretrained=False`` skips loading backbone weights for the same reason."""
        extractor = get_extractor(self.config.backbone, [self.config.layer], self.device,
                                  pretrained=pretrained)
        flow = self.flow
        if flow is None:
            with torch.no_grad():
                probe = torch.zeros(1, 3, self.config.input_size, self.config.input_size,
                                    device=self.device)
                maps = [extractor(x)[0] for x in scaled_inputs(probe, self.config.n_scales)]
            flow = self._build_flow([tuple(x.shape[1:]) for x in self._flow_inputs(maps)])
        return _CSFlowInference(self, extractor, flow.to(self.device).eval())


class _CSFlowInference(nn.Module):
    def __init__(self, detector: CSFlowDetector, extractor: nn.Module, flow: nn.Module):
        super().__init__()
        self.extractor = extractor
        self.flow = flow
        self.detector = detector

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.detector.config
        maps = [self.extractor(x)[0] for x in scaled_inputs(images, cfg.n_scales)]
        z, _ = self.flow(self.detector._flow_inputs(maps))
        return image_score(z)
